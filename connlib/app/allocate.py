"""``python -m connlib allocate``: one allocation on one relay, printed as a JSON line.

Exit codes: 0 allocated, 2 invalid credentials, 3 no answer from the relay (after the request
backoff gave up), 4 any other failure of the relay (a protocol error), 64 bad arguments (EX_USAGE).
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import time

from ..aio.blocking import BlockingDriver
from ..core.addr import Address, format_address, split_host_port
from ..core.allocation import FreeReason
from ..core.node import Node, RelayRemoved
from ..core.relay import RelayConfig
from .errors import UsageError

EXIT_OK, EXIT_AUTH, EXIT_NO_RESPONSE, EXIT_PROTOCOL = 0, 2, 3, 4
RELAY_ID = "cli"


def _resolve(host: str, port: int) -> tuple[Address | None, Address | None]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve relay host {host!r}: {exc}") from exc
    v4 = next(((str(i[4][0]), port) for i in infos if i[0] == socket.AF_INET), None)
    v6 = next(((str(i[4][0]), port) for i in infos if i[0] == socket.AF_INET6), None)
    return v4, v6


def allocate(args: argparse.Namespace) -> int:
    try:
        host, port = split_host_port(args.relay)
    except ValueError as exc:
        raise UsageError(f"--relay must be HOST:PORT: {exc}") from exc
    v4, v6 = _resolve(host, port)
    relay = RelayConfig(RELAY_ID, v4, v6, args.username, args.password, args.realm)
    node = Node(time.monotonic(), seed=secrets.randbits(64), max_elapsed=args.timeout)
    removed: list[RelayRemoved] = []

    def on_event(event: object) -> None:
        if isinstance(event, RelayRemoved):
            removed.append(event)

    def finished() -> bool:
        state = node.relay_state(RELAY_ID)
        return bool(removed) or (state is not None and state.allocated and bool(state.srflx))

    # A blocking driver: this one-shot command need not pay for asyncio's start-up.
    with BlockingDriver(node, on_event=on_event) as driver:
        driver.call(lambda now: node.update_relays([], [relay], now))
        driver.run_until(finished, timeout=args.timeout + 5)
        state = node.relay_state(RELAY_ID)
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
    if state is None or not finished():
        print(f"error: no allocation from relay {args.relay} within {args.timeout:g}s", file=sys.stderr)
        return EXIT_NO_RESPONSE
    result = {
        "relay": args.relay,
        "srflx": format_address(state.srflx[0]),
        "relayed": [format_address(a) for a in state.relayed],
        "lifetime": int(state.lifetime) if state.lifetime is not None else None,
    }
    print(json.dumps(result), flush=True)
    return EXIT_OK
