"""The client's traffic probe: a numbered stream of datagrams echoed by the gateway.

``StreamStats`` counts what came back, what was lost (no echo within ``LOSS_TIMEOUT``) and the
gaps: silences several packet intervals long. It takes both clocks from its caller: ``now``
(monotonic, for intervals) and ``wall`` (unix seconds, what a gap line reports).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from . import lines

PROBE_MAGIC = b"PRB1"
PROBE_HEADER = struct.Struct("!4sQd")  # magic, sequence number, send time (monotonic)
LOSS_TIMEOUT = 2.0  # an echo later than this counts as lost


@dataclass
class StreamStats:
    """The client's view of its echo stream: what was delivered, what was lost, and the gaps."""

    rate: float
    emit: Callable[[lines.Line], None]
    gap_threshold: float = 0.0
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    pending: dict[int, float] = field(default_factory=dict)
    last_delivery: float | None = None  # monotonic
    last_delivery_wall: float | None = None
    gaps: list[lines.Gap] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gap_threshold:
            # A gap is a silence several packet intervals long (and never below 250 ms).
            self.gap_threshold = max(0.25, 5.0 / self.rate)

    def next_packet(self, now: float) -> bytes:
        seq = self.sent
        self.sent += 1
        self.pending[seq] = now
        return PROBE_HEADER.pack(PROBE_MAGIC, seq, now)

    def on_echo(self, payload: bytes, now: float, wall: float) -> None:
        if len(payload) < PROBE_HEADER.size:
            return
        magic, seq, _ = PROBE_HEADER.unpack_from(payload)
        if magic != PROBE_MAGIC or self.pending.pop(seq, None) is None:
            return  # a duplicate, or an echo already counted as lost
        self.delivered += 1
        if (
            self.last_delivery is not None
            and self.last_delivery_wall is not None
            and now - self.last_delivery > self.gap_threshold
        ):
            gap = lines.Gap(
                start=round(self.last_delivery_wall, 3),
                end=round(wall, 3),
                duration_s=round(now - self.last_delivery, 3),
            )
            self.gaps.append(gap)
            self.emit(gap)
        self.last_delivery, self.last_delivery_wall = now, wall

    def restart_gap_clock(self, now: float, wall: float) -> None:
        """Measure the next gap from ``now``, not from the last echo: a stream that had nothing to
        send until now (an idle client) owes no echo for that time."""
        self.last_delivery, self.last_delivery_wall = now, wall

    def expire(self, now: float) -> None:
        for seq, sent_at in list(self.pending.items()):
            if now - sent_at > LOSS_TIMEOUT:
                del self.pending[seq]
                self.lost += 1

    def report(self, connected: bool | None = None, relay: str | None = None) -> lines.Stream:
        return lines.Stream(
            sent=self.sent,
            delivered=self.delivered,
            lost=self.lost,
            in_flight=len(self.pending),
            gaps=len(self.gaps),
            connected=connected,
            relay=relay,
        )
