"""Retransmission schedule for requests to relays (spec §1.2), with ``now`` passed in.

The first retransmit comes ``initial`` seconds after the first send, each later interval is
``multiplier`` times the previous one, there is no jitter, and the request is abandoned exactly
``max_elapsed`` seconds after it was first sent. With the defaults (1 s, ×1.5, 10 s) a request is
sent at 0, 1, 2.5, 4.75 and 8.125 s and given up at 10 s. The REFRESH probe uses ``probe(now)``:
sent once, given up after 1 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INITIAL_INTERVAL = 1.0
MULTIPLIER = 1.5
MAX_ELAPSED = 10.0  # the seed's value (#6666); Firezone uses 8 s today
PROBE_TIMEOUT = 1.0


@dataclass
class Backoff:
    start: float
    interval: float = INITIAL_INTERVAL
    max_elapsed: float = MAX_ELAPSED
    multiplier: float = MULTIPLIER
    next_trigger: float = field(init=False)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_elapsed <= 0 or self.multiplier < 1:
            raise ValueError("backoff intervals must be positive and the multiplier ≥ 1")
        self.next_trigger = self.start + self.interval

    @property
    def deadline(self) -> float:
        return self.start + self.max_elapsed

    def is_expired(self, now: float) -> bool:
        return now >= self.deadline

    def is_due(self, now: float) -> bool:
        """A retransmit is due (and the request not yet abandoned)."""
        return not self.is_expired(now) and now >= self.next_trigger

    def advance(self) -> None:
        """Call after retransmitting: schedules the next trigger."""
        self.interval *= self.multiplier
        self.next_trigger += self.interval

    def poll_timeout(self) -> float:
        return min(self.next_trigger, self.deadline)


def probe(now: float) -> Backoff:
    return Backoff(now, interval=PROBE_TIMEOUT, max_elapsed=PROBE_TIMEOUT)
