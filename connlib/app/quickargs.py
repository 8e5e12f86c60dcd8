"""The plain command lines of a subcommand, parsed without argparse; anything else goes to argparse.

Why: ``python -m connlib allocate`` is a one-shot diagnostic whose start-up is the command's
cost, and argparse is a fifth of it before the first request: its module, ``gettext`` and
``locale`` for its messages, and ``shutil`` (with ``zlib``, ``bz2``, ``lzma``), imported by the
help formatter that every ``add_argument`` builds to check its metavar.

Contract: :func:`parse` returns the namespace argparse would return, or ``None`` when the command
line is anything but the plain form (then the caller runs argparse, which parses it or reports
the error exactly as before). The plain form: ``[--log-level L] COMMAND`` then the command's own
options, each spelled in full as ``--name VALUE`` or ``--name=VALUE``, every required one
present, every typed value converting. A separate value that starts with ``-`` (argparse's
negative-number and option-lookalike rules), an abbreviation, ``-h``, ``--``, a positional: all
go to argparse. A repeated option: the last one wins, as in argparse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace

# `typing` is not loaded on this path; mypy treats a module's own TYPE_CHECKING as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Options: TypeAlias = Mapping[str, Mapping[str, Any]]
    """``--flag`` → its ``add_argument`` keywords (``required``, ``default``, ``type``, ``help``, …)."""


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _pairs(tokens: Sequence[str], flags: Options) -> dict[str, str] | None:
    """``--flag VALUE`` / ``--flag=VALUE`` pairs (the last of a repeated flag wins, as in argparse)."""
    values: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        flag, equals, value = tokens[index].partition("=")
        if flag not in flags:
            return None
        if not equals:
            index += 1
            if index == len(tokens) or tokens[index].startswith("-"):
                return None
            value = tokens[index]
        values[flag] = value
        index += 1
    return values


def parse(
    argv: Sequence[str], global_options: Options, command: str, options: Options, defaults: Mapping[str, Any]
) -> SimpleNamespace | None:
    """``argv`` as argparse would parse it for ``command`` (``defaults``: its ``set_defaults``), or ``None``."""
    try:
        split = list(argv).index(command)
    except ValueError:
        return None
    head = _pairs(argv[:split], global_options)
    tail = _pairs(argv[split + 1 :], options)
    if head is None or tail is None:
        return None
    namespace: dict[str, Any] = {_dest(flag): spec.get("default") for flag, spec in global_options.items()}
    namespace["command"] = command
    for flag, spec in options.items():
        if flag not in tail:
            if spec.get("required"):
                return None
            namespace[_dest(flag)] = spec.get("default")
            continue
        convert: Callable[[str], Any] = spec.get("type", str)
        try:
            namespace[_dest(flag)] = convert(tail[flag])
        except (TypeError, ValueError):
            return None
    namespace.update({_dest(flag): value for flag, value in head.items()})
    namespace.update(defaults)
    return SimpleNamespace(**namespace)
