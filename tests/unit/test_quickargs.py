"""connlib.app.quickargs: the plain ``allocate`` line parses to argparse's namespace; the rest to None."""

from __future__ import annotations

import pytest

from connlib.app import cli, quickargs

BASE = ["allocate", "--relay", "127.0.0.1:3478", "--username", "1:u", "--password", "p"]
PLAIN = [
    BASE,
    ["--log-level", "DEBUG", *BASE],
    ["--log-level=INFO", *BASE, "--realm", "r", "--timeout", "2.5"],
    ["allocate", "--relay=h:1", "--username=a=b", "--password=", "--timeout=1e1"],
    [*BASE, "--password", "second"],  # the last one wins
    [*BASE, "--username", "allocate"],
    ["--log-level", "x", "--log-level", "y", *BASE],
]
NOT_PLAIN = [
    [],
    ["allocate"],
    ["-h"],
    ["allocate", "--help"],
    BASE[:-2],  # --password missing
    [*BASE, "--timeout", "soon"],
    [*BASE, "--timeout", "-1"],  # a separate value like an option: argparse's rules
    [*BASE, "--pass", "abbreviated"],
    [*BASE, "extra"],
    [*BASE, "--"],
    [*BASE, "--log-level", "DEBUG"],  # a global option after the command
    ["run", "--portal", "ws://x", "--token", "t"],
    ["--log-level", *BASE],
]


def _quick(argv: list[str]) -> dict | None:
    args = quickargs.parse(argv, cli.GLOBAL_OPTIONS, "allocate", cli.ALLOCATE_OPTIONS, cli.ALLOCATE_DEFAULTS)
    return None if args is None else vars(args)


@pytest.mark.parametrize("argv", PLAIN)
def test_a_plain_line_parses_as_argparse_parses_it(argv: list[str]) -> None:
    assert _quick(argv) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", NOT_PLAIN)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert _quick(argv) is None
