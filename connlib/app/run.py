"""``python -m connlib run``: the handler that builds a ``Peer`` from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal

from ..core import fixes
from ..core.allocation import CHANNEL_LIFETIME
from ..core.logfmt import kv
from .errors import UsageError
from .peer import Peer, PeerConfig
from .virtual import BufferedLines, client_configs, run_clients

log = logging.getLogger("connlib.run")

DISABLE_FIXES_ENV = "CONNLIB_TEST_DISABLE_FIXES"  # test-only: re-create the bugs the fixes prevent


def disabled_fixes_from_env() -> frozenset[str]:
    try:
        return fixes.parse(os.environ.get(DISABLE_FIXES_ENV, ""))
    except ValueError as exc:
        raise UsageError(f"{DISABLE_FIXES_ENV}: {exc}") from None


async def run(args: argparse.Namespace) -> int:
    if args.clients > 1 and args.role != "client":
        raise UsageError("--clients: only a client can be virtualised")
    seed = args.seed if args.seed is not None else secrets.randbits(64)
    config = PeerConfig(
        role=args.role,
        portal=args.portal,
        token=args.token,
        peer_id=args.peer_id or args.role,
        name=args.name,
        connect_to=args.connect_to,
        policy=args.policy,
        rate=args.rate,
        count=args.count,
        report_interval=args.report_interval,
        bind=args.bind,
        seed=seed,
        heartbeat_interval=args.heartbeat_interval,
        disabled_fixes=disabled_fixes_from_env(),
        status_file=args.status_file,
        channel_lifetime=args.channel_lifetime if args.channel_lifetime is not None else CHANNEL_LIFETIME,
    )
    log.info("Seeded %s", kv(seed=seed))
    if config.disabled_fixes:
        log.warning("TEST BUILD: fixes disabled %s", kv(fixes=",".join(sorted(config.disabled_fixes))))
    if args.clients == 1:
        peer = Peer(config)
        loop = asyncio.get_running_loop()
        # SIGTERM (docker stop) ends the peer as its stream's end does: its allocations are deleted.
        loop.add_signal_handler(signal.SIGTERM, peer.finish)
        # SIGUSR1 / SIGUSR2: the client goes idle (no stream, no connection) / streams again.
        loop.add_signal_handler(signal.SIGUSR1, peer.go_idle)
        loop.add_signal_handler(signal.SIGUSR2, peer.resume)
        return await peer.run_forever()
    for signum in (signal.SIGUSR1, signal.SIGUSR2):  # not the default action (exit) either
        asyncio.get_running_loop().add_signal_handler(signum, _ignored, signum)
    log.info("Virtual clients %s", kv(clients=args.clients, spawn_rate=args.spawn_rate, base_id=config.peer_id))
    return await run_clients(client_configs(config, args.clients), BufferedLines(), spawn_rate=args.spawn_rate)


def _ignored(signum: int) -> None:
    log.warning("Ignoring a signal %s", kv(signal=signal.Signals(signum).name, reason="virtual clients cannot idle"))
