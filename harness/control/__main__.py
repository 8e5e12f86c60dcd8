"""``python -m harness.control``: the chaos control service of one stack (``docker-compose.yml``'s
``chaos`` service runs it with the Docker socket mounted).

    python -m harness.control [--stack connlib-relays] --listen 0.0.0.0:8081 --token T \\
        --portal http://portal:8080 [--allowed-host chaos] [--log-level INFO]

Without ``--stack`` it acts on the stack its own container is labelled with (the compose service).

``--token`` (or ``CHAOS_TOKEN``) is what every route but ``/api/health`` wants, and what it sends to the
portal's admin API (the stack has one admin token). On start-up it prints one JSON line,
``{"event": "listening", "url", "stack"}``; SIGTERM or SIGINT undoes every timed fault still on and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys

import docker.errors

from harness.docker_engine import DockerUnavailable, connect
from harness.labels import STACK_LABEL

from .actions import Controller
from .api import ControlApi
from .journal import Journal
from .targets import Stack

log = logging.getLogger("harness.control")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.control", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--stack",
        default=os.environ.get("CHAOS_STACK") or None,
        help=f"the {STACK_LABEL} value to act on (default: its own container's, found by its host name)",
    )
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 8081))
    p.add_argument("--token", default=os.environ.get("CHAOS_TOKEN") or None)
    p.add_argument("--portal", default=None, help="the portal's admin API, e.g. http://portal:8080")
    p.add_argument("--allowed-host", action="append", default=[], help="a Host name to answer to (repeatable)")
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(args: argparse.Namespace) -> int:
    try:
        client = connect(timeout=30)
    except DockerUnavailable as exc:
        print(f"chaos control: {exc} (mount /var/run/docker.sock)", file=sys.stderr)
        return 1
    stack = args.stack
    if stack is None:
        try:  # in a container, the host name is the container's short id
            stack = client.containers.get(socket.gethostname()).labels.get(STACK_LABEL) or None
        except docker.errors.NotFound:
            pass
    if stack is None:
        print(f"chaos control: no --stack, and no container of mine labelled {STACK_LABEL}", file=sys.stderr)
        return 1
    args.stack = stack
    controller = Controller(Stack(client, stack), Journal(), args.portal, args.token)
    host, port = args.listen
    api = ControlApi(controller, token=args.token, bound=host, hosts=tuple(args.allowed_host))
    bound = await api.serve(host, port)
    print(json.dumps({"event": "listening", "url": f"http://{host}:{bound}", "stack": args.stack}), flush=True)
    log.info("Chaos control listening host=%s port=%d stack=%s", host, bound, args.stack)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await controller.close()
    await api.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
