"""``python -m connlib run --clients N``: N virtual clients in one process and one event loop.

Each virtual client is a whole :class:`~connlib.app.peer.Peer`: its own identity on the portal, its
own ``Tunnel`` (its own allocations on every relay, ICE agent and channel bindings), its own UDP
socket, portal websocket and echo stream. They share only the event loop, the process and stdout,
so a load test needs one process instead of a container per client. Contract:

- ids: :func:`virtual_ids` (``N == 1`` keeps the base id, so one client runs exactly as before;
  otherwise ``<base>-1`` .. ``<base>-N``); seeds: client ``k`` of ``N > 1`` gets ``seed + k``
  (mod 2**64), so one client of a run can be replayed alone with ``--id <base>-k --seed S+k``.
- the status file (a container healthcheck's) is kept by the first client only.
- :func:`run_clients` returns the worst exit code of all clients: 0 when no stream lost a
  datagram, 1 when one did, 2 when the portal refused one.
- start-up is paced (``spawn_rate`` clients per second, 0 = all at once): a thousand
  websockets opened and two thousand ALLOCATEs sent in the same instant is a thundering herd
  that no real fleet produces, and its retries would count against the streams.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import replace

from .peer import Peer, PeerConfig

SEED_SPACE = 2**64


def virtual_ids(base: str, count: int) -> list[str]:
    """The ids of ``count`` virtual clients derived from ``base``."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if count == 1:
        return [base]
    return [f"{base}-{k}" for k in range(1, count + 1)]


def client_configs(base: PeerConfig, count: int) -> list[PeerConfig]:
    """One ``PeerConfig`` per virtual client: derived id, name and seed; status file on the first."""
    if count == 1:
        return [base]
    return [
        replace(
            base,
            peer_id=peer_id,
            name=f"{base.name}-{k}" if base.name else None,
            seed=(base.seed + k) % SEED_SPACE,
            status_file=base.status_file if k == 1 else None,
        )
        for k, peer_id in enumerate(virtual_ids(base.peer_id, count), start=1)
    ]


class BufferedLines:
    """A JSON-line sink that flushes stdout once per loop turn instead of once per line.

    A thousand clients write a few thousand lines a second; a flush (a ``write`` system call) per
    line would be most of the process's output cost. The lines still leave within one loop turn.
    """

    def __init__(
        self, write: Callable[[str], object] = sys.stdout.write, flush: Callable[[], object] = sys.stdout.flush
    ):
        self._write = write
        self._flush = flush
        self._pending = False

    def __call__(self, line: dict) -> None:
        self._write(json.dumps(line) + "\n")
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._pending = False
        self._flush()


async def run_clients(
    configs: list[PeerConfig], emit: Callable[[dict], None] | None = None, *, spawn_rate: float = 0.0
) -> int:
    """Start every client (paced), wait until each finished, stop them all; the worst exit code."""
    peers: list[Peer] = []
    try:
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        for k, config in enumerate(configs):
            if spawn_rate > 0:
                # Paced on the schedule, not on the previous start: a slow start does not slow the rest.
                delay = started_at + k / spawn_rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            peer = Peer(config, emit=emit)
            await peer.start()
            peers.append(peer)
        codes = await asyncio.gather(*(peer.wait_finished() for peer in peers))
        return max(codes, default=0)
    finally:
        await asyncio.gather(*(peer.stop() for peer in peers))
