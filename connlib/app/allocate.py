"""``python -m connlib allocate``: one allocation on one relay, printed as a JSON line.

Exit codes: 0 allocated, 2 invalid credentials (a 401 to our signed request), 3 no answer from the
relay (after the request backoff gave up), 4 the relay refused or failed otherwise (any other final
error, e.g. 400, 420, 486, 508, 5xx; or a protocol failure), 64 bad arguments (EX_USAGE).

The command ends at the relay's first final error, signed or not. The Node itself does not trust an
unsigned error to a signed request (RFC 8489 §9.2.5: it keeps retransmitting), but a one-shot
diagnostic has no state worth protecting, and waiting 10 s to report what the relay said in 1 ms
helps nobody.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from ..aio.blocking import BlockingDriver
from ..core.addr import Address, format_address, split_host_port
from ..core.allocation import FreeReason
from ..core.node import Node, RelayRemoved
from ..core.relay import RelayConfig
from .errors import UsageError

# argparse for the type checker only: the plain command line is parsed without it (cli.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

EXIT_OK, EXIT_AUTH, EXIT_NO_RESPONSE, EXIT_PROTOCOL = 0, 2, 3, 4
RELAY_ID = "cli"
NOT_FINAL = frozenset({437, 438})  # answered by the allocation itself (delete/re-allocate, re-sign)


def _resolve(host: str, port: int) -> tuple[Address | None, Address | None]:
    try:
        # An ASCII name (or an IP literal) goes as bytes: a str host is encoded with the "idna" codec,
        # whose import (stringprep, unicodedata) costs ~3 % of this command's start-up.
        name = host.encode("ascii") if host.isascii() else host
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_DGRAM)
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
    # secrets.randbits(64) exactly, without importing `secrets` (with `random` and `hmac`) first
    seed = int.from_bytes(os.urandom(8), "big")
    node = Node(time.monotonic(), seed=seed, max_elapsed=args.timeout)
    removed: list[RelayRemoved] = []

    def on_event(event: object) -> None:
        if isinstance(event, RelayRemoved):
            removed.append(event)

    def rejected() -> int | None:
        state = node.relay_state(RELAY_ID)
        if state is None or state.rejection is None or state.allocated:
            return None
        return state.rejection.code if state.rejection.code not in NOT_FINAL else None

    def finished() -> bool:
        state = node.relay_state(RELAY_ID)
        allocated = state is not None and state.allocated and bool(state.srflx)
        return bool(removed) or allocated or rejected() is not None

    # A blocking driver: this one-shot command need not pay for asyncio's start-up.
    with BlockingDriver(node, on_event=on_event) as driver:
        driver.call(lambda now: node.update_relays([], [relay], now))
        driver.run_until(finished, timeout=args.timeout + 5)
        state = node.relay_state(RELAY_ID)
        code = rejected()
    if code is not None and state is not None and state.rejection is not None:
        rejection = state.rejection
        detail = f"{rejection.method} {rejection.code} {rejection.reason!r}"
        if not rejection.authenticated:
            detail += " (unsigned)"
        if code == 401:
            print(
                f"error: relay {args.relay} rejected the credentials (authentication error): {detail}", file=sys.stderr
            )
            return EXIT_AUTH
        print(f"error: relay {args.relay} refused: {detail}", file=sys.stderr)
        return EXIT_PROTOCOL
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
    import json  # here, after the exchange: json's import would delay the first request by ~2 %

    print(json.dumps(result), flush=True)
    return EXIT_OK
