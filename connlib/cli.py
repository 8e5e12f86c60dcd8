"""Command line: ``python -m connlib allocate ...`` and ``python -m connlib run ...``.

Exit codes of ``allocate``: 0 allocated, 2 invalid credentials, 3 no answer from the relay
(after the request backoff gave up), 64 bad arguments (EX_USAGE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass

from . import backoff
from .allocation import FreeReason
from .credentials import REALM
from .driver import Driver
from .node import KNOWN_FIXES, Node, RelayRemoved
from .stun import Address, format_address

EXIT_OK, EXIT_AUTH, EXIT_NO_RESPONSE, EXIT_PROTOCOL, EXIT_USAGE = 0, 2, 3, 4, 64
DISABLE_FIXES_ENV = "CONNLIB_TEST_DISABLE_FIXES"  # test-only: re-create the pre-#6666 bugs


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2, which `allocate` uses for auth
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class _Relay:
    id: str
    v4: Address | None
    v6: Address | None
    username: str
    password: str
    realm: str = REALM


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def disabled_fixes_from_env() -> frozenset[str]:
    raw = os.environ.get(DISABLE_FIXES_ENV, "")
    fixes = frozenset(f.strip() for f in raw.split(",") if f.strip())
    if fixes - KNOWN_FIXES:
        raise UsageError(f"{DISABLE_FIXES_ENV}: unknown fix names {sorted(fixes - KNOWN_FIXES)}")
    return fixes


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--relay must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def _resolve(host: str, port: int) -> tuple[Address | None, Address | None]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve relay host {host!r}: {exc}") from exc
    v4 = next(((i[4][0], port) for i in infos if i[0] == socket.AF_INET), None)
    v6 = next(((i[4][0], port) for i in infos if i[0] == socket.AF_INET6), None)
    return v4, v6


async def allocate(args: argparse.Namespace) -> int:
    host, port = _split_host_port(args.relay)
    v4, v6 = await _resolve(host, port)
    relay = _Relay("cli", v4, v6, args.username, args.password, args.realm)
    loop = asyncio.get_running_loop()
    node = Node(loop.time(), max_elapsed=args.timeout)
    removed: list[RelayRemoved] = []
    driver = Driver(node, clock=loop.time, on_event=lambda e: removed.append(e) if isinstance(e, RelayRemoved) else None)
    async with driver:
        driver.call(lambda now: node.update_relays([], [relay], now))
        allocation = node.allocations["cli"]

        def finished() -> bool:
            return bool(removed) or (allocation.has_allocation() and bool(allocation.srflx))

        await driver.wait_until(finished, timeout=args.timeout + 5)
    if removed:
        reason = removed[0].reason
        if reason == str(FreeReason.AUTHENTICATION_ERROR):
            print(f"error: relay {args.relay} rejected the credentials (authentication error)", file=sys.stderr)
            return EXIT_AUTH
        if reason == str(FreeReason.NO_RESPONSE):
            print(f"error: no response from relay {args.relay} within {args.timeout:g}s", file=sys.stderr)
            return EXIT_NO_RESPONSE
        print(f"error: relay {args.relay} failed: {reason}", file=sys.stderr)
        return EXIT_PROTOCOL
    if not finished():
        print(f"error: no allocation from relay {args.relay} within {args.timeout:g}s", file=sys.stderr)
        return EXIT_NO_RESPONSE
    result = {
        "relay": args.relay,
        "srflx": format_address(next(iter(allocation.srflx.values())).addr),
        "relayed": [format_address(c.addr) for c in allocation.relay_candidates()],
        "lifetime": int(allocation.lifetime[1]) if allocation.lifetime else None,
    }
    print(json.dumps(result), flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m connlib", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default depends on command)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    alloc = commands.add_parser("allocate", help="allocate on one relay and print the addresses as JSON")
    alloc.add_argument("--relay", required=True, help="relay HOST:PORT (UDP)")
    alloc.add_argument("--username", required=True)
    alloc.add_argument("--password", required=True)
    alloc.add_argument("--realm", default=REALM)
    alloc.add_argument(
        "--timeout", type=float, default=backoff.MAX_ELAPSED,
        help=f"give up a request after this many seconds (default {backoff.MAX_ELAPSED:g})",
    )  # fmt: skip
    alloc.set_defaults(handler=allocate, default_log_level="ERROR")

    from . import run as run_command  # the client/gateway runtime

    run_command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level or args.default_log_level)
    try:
        return asyncio.run(args.handler(args))
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
