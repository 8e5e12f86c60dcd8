"""The simulated network: what happens to one datagram between two hosts (sans-IO, seeded).

Contract: ``Network.fate(src_host, dst_host, now) -> list[float]`` gives the delivery delays of
one datagram (empty: lost; two: duplicated; random per-datagram jitter reorders). Every draw comes
from the world's one ``random.Random``, in call order, so a run replays byte for byte.

Conditions, each until a time (faults set them, expiry heals them): a host **black-holed** (a
paused relay: nothing in, nothing out), a **partition** between two hosts, a **loss** rate on a
host (both directions). Base delay, jitter and the background duplication rate are fixed.

A condition whose time has passed is the same as none; once every condition has expired they are
all dropped (``_expire``), so the common case (no fault in force) costs one comparison per datagram.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BASE_DELAY = 0.010
JITTER = 0.010
DUPLICATE = 0.002
BACKGROUND_LOSS = 0.002


@dataclass
class Network:
    rng: random.Random
    black_holes: dict[str, float] = field(default_factory=dict)  # host → until
    partitions: dict[tuple[str, str], float] = field(default_factory=dict)  # sorted host pair → until
    loss: dict[str, tuple[float, float]] = field(default_factory=dict)  # host → (rate, until)
    sent: int = 0
    dropped: int = 0
    _in_force: bool = False  # some condition may still hold (none has been dropped by _expire)
    _last_until: float = 0.0  # every condition has expired from then on

    def fate(self, src: str, dst: str, now: float) -> list[float]:
        self.sent += 1
        rng = self.rng
        if self._in_force and self._expire(now):
            if self._blocked(src, dst, now):
                self.dropped += 1
                return []
            rate = BACKGROUND_LOSS + self._loss(src, now) + self._loss(dst, now)
        else:
            rate = BACKGROUND_LOSS  # what the sum is with no loss in force (+ 0.0 + 0.0)
        if rng.random() < rate:
            self.dropped += 1
            return []
        delays = [BASE_DELAY + rng.random() * JITTER]
        if rng.random() < DUPLICATE:
            delays.append(BASE_DELAY + rng.random() * 4 * JITTER)
        return delays

    def _expire(self, now: float) -> bool:
        """Whether a condition may be in force at ``now``; drops them all once every one expired."""
        if now < self._last_until:
            return True
        self.black_holes.clear()
        self.partitions.clear()
        self.loss.clear()
        self._in_force = False
        return False

    def _set(self, until: float) -> None:
        self._in_force = True
        self._last_until = max(self._last_until, until)

    def _blocked(self, src: str, dst: str, now: float) -> bool:
        for host in (src, dst):
            until = self.black_holes.get(host)
            if until is not None and until > now:
                return True
        until = self.partitions.get((src, dst) if src < dst else (dst, src))
        return until is not None and until > now

    def _loss(self, host: str, now: float) -> float:
        entry = self.loss.get(host)
        return entry[0] if entry is not None and entry[1] > now else 0.0

    def calm(self, now: float) -> bool:
        """No condition in force at ``now``: every host reaches every other."""
        return not (self._in_force and self._expire(now))

    def reachable(self, a: str, b: str, now: float) -> bool:
        """No black hole, partition or loss burst between ``a`` and ``b`` (ground truth)."""
        if self.calm(now):
            return True
        return not self._blocked(a, b, now) and not self._loss(a, now) and not self._loss(b, now)

    # ------------------------------------------------------------------ faults
    def black_hole(self, host: str, until: float) -> None:
        self.black_holes[host] = until
        self._set(until)

    def partition(self, a: str, b: str, until: float) -> None:
        self.partitions[(a, b) if a < b else (b, a)] = until
        self._set(until)

    def lossy(self, host: str, rate: float, until: float) -> None:
        self.loss[host] = (rate, until)
        self._set(until)
