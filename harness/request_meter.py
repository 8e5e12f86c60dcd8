"""How many STUN requests each relay receives per second, sampled from outside connlib.

Issue 9's no-storm bound (at most 10 requests per second to any relay) is checked on what the
relay received (``Fleet.stun_requests``: an iptables counter in the relay container), not on what
connlib says it sent. A :class:`RequestMeter` samples every relay it watches about once a second
while its block runs and records each sample in the history (``stun_requests`` observations), so
the figures can be recomputed from the history afterwards.

A counter that goes backwards was reset (the relay restarted and the rule was put back): that
sample counts from zero.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from .fleet import Fleet
from .waiting import wait_for

SAMPLE_INTERVAL = 1.0
PEAK_WINDOW = 3.0
"""The peak rate is the highest average over this many seconds: one second's burst of an
allocation (401, ALLOCATE, CHANNEL-BIND and permissions from two peers) is not a storm."""


@dataclass
class RelayRate:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic t, requests since last)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.samples)

    def peak(self, window: float = PEAK_WINDOW) -> float:
        """The highest requests/s over any ``window`` seconds of samples (0 with fewer than two)."""
        best = 0.0
        for i, (start, _) in enumerate(self.samples):
            count = 0
            for t, n in self.samples[i + 1 :]:
                count += n
                if t - start >= window:
                    best = max(best, count / (t - start))
                    break
        return best


class RequestMeter:
    def __init__(self, fleet: Fleet, relays: Iterable[str], interval: float = SAMPLE_INTERVAL) -> None:
        self.fleet = fleet
        self.relays = {name: RelayRate() for name in relays}
        self.interval = interval
        self._last: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RequestMeter:
        await self._sample_all()
        self._task = asyncio.create_task(self._run(), name="request-meter")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if exc_type is None:
            await self._sample_all()

    async def _run(self) -> None:
        while True:
            # the sampling period, not a synchronisation: each sample carries its own time
            await asyncio.sleep(self.interval)
            await self._sample_all()

    async def _sample_all(self) -> None:
        for name, rate in self.relays.items():
            try:
                count = await self.fleet.stun_requests(name)
            except RuntimeError:  # the relay is restarting (exec refused): the next sample counts it
                continue
            t, last = time.monotonic(), self._last.get(name)
            self._last[name] = count
            if last is None:  # the baseline: counting starts here
                rate.samples.append((t, 0))
                continue
            delta = count - last if count >= last else count
            rate.samples.append((t, delta))
            self.fleet.history.observe("stun_requests", name, requests=delta)

    async def wait_samples(self, n: int, timeout: float) -> None:
        """Until every relay has ``n`` samples more than now (bounded by ``timeout``)."""
        want = {name: len(rate.samples) + n for name, rate in self.relays.items()}
        await wait_for(
            lambda: all(len(rate.samples) >= want[name] for name, rate in self.relays.items()),
            timeout,
            f"{n} more request samples",
        )

    def peak(self) -> dict[str, float]:
        return {name: round(rate.peak(), 2) for name, rate in self.relays.items()}

    def totals(self) -> dict[str, int]:
        return {name: rate.total for name, rate in self.relays.items()}
