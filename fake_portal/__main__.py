"""``python -m fake_portal``: run the fake portal until SIGINT/SIGTERM.

On start-up it prints one JSON line to stdout, ``{"event": "listening", "url", "admin_url",
"token"}``, so a harness that asked for port 0 learns the bound ports; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from fake_portal.config import GATEWAY_EXPIRES_AT, RELAY_ID_SOURCES, PortalConfig
from fake_portal.server import FakePortal

ADMIN_TOKEN_ENV = "FAKE_PORTAL_ADMIN_TOKEN"
ADMIN_HOSTS_ENV = "FAKE_PORTAL_ADMIN_HOSTS"


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    defaults = PortalConfig(token="unused")
    p = argparse.ArgumentParser(
        prog="python -m fake_portal",
        description="A fake Firezone portal: Phoenix-channel websockets for clients, gateways and relays, "
        "relay presence with rotating credentials, and an admin HTTP API for chaos tests.",
    )
    p.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="websocket listener; port 0 picks a free port (default 127.0.0.1:0)",
    )
    p.add_argument(
        "--admin",
        type=_host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="admin HTTP API listener (default 127.0.0.1:0)",
    )
    p.add_argument(
        "--admin-token",
        default=None,
        metavar="TOKEN",
        help="require this token on the admin API (Authorization: Bearer TOKEN, or open the dashboard once "
        f"as /?token=TOKEN); default: ${ADMIN_TOKEN_ENV}, else none",
    )
    p.add_argument(
        "--chaos-url",
        default=None,
        metavar="URL",
        help="the stack's chaos control service (e.g. http://chaos:8081): the dashboard gets fault buttons",
    )
    p.add_argument(
        "--admin-allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the admin API answers to besides 127.0.0.1, localhost, ::1 and its bind address "
        f"(repeatable; also ${ADMIN_HOSTS_ENV}, comma-separated)",
    )
    p.add_argument("--token", help="token accepted from every role (default: a random dev token, printed at start-up)")
    p.add_argument("--client-token", help="token for /client/websocket only (overrides --token for clients)")
    p.add_argument("--gateway-token", help="token for /gateway/websocket only (overrides --token for gateways)")
    p.add_argument("--relay-token", help="token for /relay/websocket only (overrides --token for relays)")
    p.add_argument(
        "--relay-id-from",
        choices=RELAY_ID_SOURCES,
        default=defaults.relay_id_from,
        help="derive a relay's id from its name (a rebooted relay keeps its id and gets new "
        "credentials) or from its stamp secret (a reboot gives a new id); default %(default)s",
    )
    p.add_argument(
        "--relays-per-client",
        type=int,
        default=defaults.relays_per_client,
        metavar="N",
        help="relays handed to each client/gateway (default %(default)s)",
    )
    p.add_argument(
        "--debounce",
        type=float,
        default=defaults.debounce,
        metavar="SECONDS",
        help="delay between a relay presence change and the relays_presence push (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=defaults.heartbeat_timeout,
        metavar="SECONDS",
        help="close a socket that sent no frame at all for this long (a relay then leaves presence) (default %(default)s)",
    )
    p.add_argument(
        "--client-credentials-ttl",
        type=int,
        default=defaults.client_credentials_ttl,
        metavar="SECONDS",
        help="client relay credentials expire this long after the client is first seen (default %(default)s)",
    )
    p.add_argument(
        "--gateway-expires-at",
        type=int,
        default=GATEWAY_EXPIRES_AT,
        metavar="UNIX",
        help="fixed expiry of gateway relay credentials (default %(default)s = 2038-01-01)",
    )
    p.add_argument(
        "--max-frame-bytes",
        type=int,
        default=defaults.max_frame_bytes,
        metavar="BYTES",
        help="larger websocket messages close the socket (default %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"), help="stderr log level")
    return p


def config_from_args(args: argparse.Namespace) -> PortalConfig:
    extra = {} if args.token is None else {"token": args.token}
    env_hosts = [h.strip() for h in os.environ.get(ADMIN_HOSTS_ENV, "").split(",") if h.strip()]
    return PortalConfig(
        admin_token=args.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
        admin_allowed_hosts=tuple([*args.admin_allowed_host, *env_hosts]),
        chaos_url=args.chaos_url,
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        admin_host=args.admin[0],
        admin_port=args.admin[1],
        client_token=args.client_token,
        gateway_token=args.gateway_token,
        relay_token=args.relay_token,
        relay_id_from=args.relay_id_from,
        relays_per_client=args.relays_per_client,
        debounce=args.debounce,
        heartbeat_timeout=args.heartbeat_timeout,
        client_credentials_ttl=args.client_credentials_ttl,
        gateway_expires_at=args.gateway_expires_at,
        max_frame_bytes=args.max_frame_bytes,
        **extra,
    )


async def _serve(config: PortalConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakePortal(config) as portal:
        print(
            json.dumps({"event": "listening", "url": portal.url, "admin_url": portal.admin_url, "token": config.token}),
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"fake_portal: {exc}", file=sys.stderr)
        return 2
    if args.token is None:
        logging.getLogger("fake_portal").info("No --token given; using dev token %s", config.token)
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
