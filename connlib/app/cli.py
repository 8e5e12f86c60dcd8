"""Command line: ``python -m connlib allocate ...`` and ``python -m connlib run ...``.

Exit codes of ``allocate``: see :mod:`connlib.app.allocate`. ``run`` exits 0 when its stream
lost nothing, 1 when it lost datagrams, 2 when the portal refused it, 64 on bad arguments.

Each subcommand names its handler as ``module:function``, imported only when that subcommand
runs: ``allocate`` starts in a fraction of the time it would take to load the client/gateway
runtime (portal transport, websockets, ICE) that ``run`` needs.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Coroutine

from ..core import backoff
from ..core.credentials import REALM
from . import quickargs
from .errors import EXIT_USAGE, UsageError

# argparse is loaded only off the plain `allocate` line (see connlib.app.quickargs); mypy treats a
# module's own TYPE_CHECKING as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from .quickargs import Options

PROG = "python -m connlib"
POLICIES = ("relay-only", "all")  # connlib.core.tunnel's POLICY_RELAY_ONLY and POLICY_ALL
DEFAULT_SPAWN_RATE = 100.0  # virtual clients started per second (connlib.app.virtual)


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]  # argparse exits 2, which `allocate` uses for auth
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    return _Parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _positive(text: str) -> float:
    import argparse  # loaded already: only argparse calls this

    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _at_least_one(text: str) -> int:
    import argparse  # loaded already: only argparse calls this

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> float:
    import argparse  # loaded already: only argparse calls this

    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


GLOBAL_OPTIONS: Options = {
    "--log-level": {"default": None, "help": "DEBUG, INFO, WARNING (default depends on command)"},
}
ALLOCATE_OPTIONS: Options = {
    "--relay": {"required": True, "help": "relay HOST:PORT (UDP)"},
    "--username": {"required": True},
    "--password": {"required": True},
    "--realm": {"default": REALM},
    "--timeout": {
        "type": float,
        "default": backoff.MAX_ELAPSED,
        "help": f"give up a request after this many seconds (default {backoff.MAX_ELAPSED:g})",
    },
}
ALLOCATE_DEFAULTS = {"handler": "connlib.app.allocate:allocate", "default_log_level": "ERROR"}


def build_parser() -> argparse.ArgumentParser:
    parser_class = _parser_class()
    parser = parser_class(prog=PROG, description=(__doc__ or "").splitlines()[0])
    for flag, spec in GLOBAL_OPTIONS.items():
        parser.add_argument(flag, **spec)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=parser_class)

    alloc = commands.add_parser("allocate", help="allocate on one relay and print the addresses as JSON")
    for flag, spec in ALLOCATE_OPTIONS.items():
        alloc.add_argument(flag, **spec)
    alloc.set_defaults(**ALLOCATE_DEFAULTS)

    cmd = commands.add_parser(
        "run",
        help="run a client or gateway against the portal",
        description="Run a client or gateway against the portal. Signals: SIGTERM ends it (its allocations "
        "deleted); a client goes idle on SIGUSR1 (stream paused, connection dropped, its channels left to "
        "lapse) and streams again on a new connection on SIGUSR2.",
    )
    cmd.add_argument("--role", choices=("client", "gateway"), default="client")
    cmd.add_argument("--portal", required=True, help="portal base URL, e.g. ws://127.0.0.1:8080")
    cmd.add_argument("--token", required=True, help="portal token for this role")
    cmd.add_argument("--id", dest="peer_id", default=None, help="external id (default: the role)")
    cmd.add_argument("--name", default=None)
    cmd.add_argument("--connect", dest="connect_to", default=None, help="client: gateway id to stream to")
    cmd.add_argument("--policy", choices=POLICIES, default=POLICIES[0])
    cmd.add_argument("--rate", type=_positive, default=50.0, help="client: datagrams per second (default 50)")
    cmd.add_argument("--count", type=int, default=None, help="client: stop after this many datagrams")
    cmd.add_argument("--report-interval", type=_positive, default=1.0, help="seconds between stream lines")
    cmd.add_argument(
        "--channel-lifetime",
        type=_positive,
        default=None,
        help="seconds a TURN channel binding lasts: the relay's (coturn --channel-lifetime); default RFC 8656's 600",
    )
    cmd.add_argument("--bind", default="0.0.0.0", help="local IPv4 address for the UDP socket")
    cmd.add_argument("--heartbeat-interval", type=_positive, default=10.0)
    cmd.add_argument("--seed", type=int, default=None, help="seed of the protocol cores (default: from the OS)")
    cmd.add_argument(
        "--clients",
        type=_at_least_one,
        default=1,
        help="client: host this many virtual clients in this process (ids <id>-1 .. <id>-N, seeds seed+k)",
    )
    cmd.add_argument(
        "--spawn-rate",
        type=_non_negative,
        default=DEFAULT_SPAWN_RATE,
        help=f"with --clients: start this many clients per second, 0 = all at once (default {DEFAULT_SPAWN_RATE:g})",
    )
    cmd.add_argument("--status-file", default=None, help="keep the portal channel's state in this JSON file")
    cmd.set_defaults(handler="connlib.app.run:run", default_log_level="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The plain `allocate` line needs no argparse (connlib.app.quickargs); any other goes to it.
    args: Any = quickargs.parse(argv, GLOBAL_OPTIONS, "allocate", ALLOCATE_OPTIONS, ALLOCATE_DEFAULTS)
    if args is None:
        args = build_parser().parse_args(argv)
    configure_logging(args.log_level or args.default_log_level)
    try:
        module, _, function = args.handler.partition(":")
        handler = getattr(importlib.import_module(module), function)
        result = handler(args)
        if isinstance(result, Coroutine):  # `run` lives on asyncio; `allocate` needs no event loop
            result = importlib.import_module("asyncio").run(result)
        return int(result)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
