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
# The path probe (a connection's relay path went quiet, maybe from congestion): sent at 0, 0.5 and
# 1.25 and 2.375 s, given up at 2.5 s, so that one lost packet does not free a relay others depend on.
PATH_PROBE_INTERVAL = 0.5
PATH_PROBE_TIMEOUT = 2.5


@dataclass
class Backoff:
    start: float
    interval: float = INITIAL_INTERVAL
    max_elapsed: float = MAX_ELAPSED
    multiplier: float = MULTIPLIER
    next_trigger: float = field(init=False)
    initial: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_elapsed <= 0 or self.multiplier < 1:
            raise ValueError("backoff intervals must be positive and the multiplier ≥ 1")
        self.next_trigger = self.start + self.interval
        self.initial = self.interval

    def restarted(self, now: float) -> Backoff:
        """The same schedule, started afresh at ``now`` (a re-signed request after 401/438)."""
        return Backoff(now, interval=self.initial, max_elapsed=self.max_elapsed, multiplier=self.multiplier)

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


def path_probe(now: float) -> Backoff:
    return Backoff(now, interval=PATH_PROBE_INTERVAL, max_elapsed=PATH_PROBE_TIMEOUT)
