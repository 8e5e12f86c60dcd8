"""A long-running peer keeps nothing per line it emits: ``connlib run`` reports its stream once a
second for hours (a ``make up`` stack), and a thousand virtual clients share one process."""

from __future__ import annotations

import gc
import tracemalloc

from connlib.app import lines
from connlib.app.peer import Peer, PeerConfig

LINES = 10_000
RETAINED_BOUND = 64 * 1024  # bytes; one kept record per line would be ~4 MB


async def test_emitting_lines_retains_nothing():
    sent = [0]

    def sink(record: dict) -> None:
        sent[0] += 1

    peer = Peer(PeerConfig("client", "ws://127.0.0.1:9", "t", "c1"), emit=sink)
    line = lines.Stream(sent=1, delivered=1, lost=0, in_flight=0, gaps=0)
    peer.emit(line)  # the first call's one-off allocations (caches) are not what is measured
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(LINES):
            peer.emit(line)
        gc.collect()  # what is garbage is not retained
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sent[0] == LINES + 1
    assert retained < RETAINED_BOUND, f"{retained} bytes kept after {LINES} lines"
