"""Pure functions over a :class:`~harness.history.History`: what happened, when, and verdicts.

Nothing here touches the system; scenarios wait for conditions with these functions and compute
their figures with them afterwards. Times are the history's monotonic seconds. A peer's ``gap``
op is recorded when the gap *ends* (the echo that ends it), so its ``t`` is the moment the stream
resumed and ``t - duration_s`` the moment it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from connlib.app.lines import LineEvent

from .fleet import CLIENT_ID
from .history import History, Op


@dataclass(frozen=True)
class Gap:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


# ---------------------------------------------------------------------------- faults
def fault_time(history: History, what: str, target: str | None = None, after: float | None = None) -> float | None:
    """When the harness began the fault (its ``invoke`` op)."""
    for op in history.select(what, kind="fault", target=target, after=after):
        if op.outcome == "invoke":
            return op.t
    return None


# ---------------------------------------------------------------------------- peer events
def peer_events(history: History, what: str | Iterable[str], peer: str, after: float | None = None) -> list[Op]:
    return history.select(what, kind="observe", target=peer, after=after)


def first_event(
    history: History, what: str | Iterable[str], peer: str, after: float | None = None, **match: Any
) -> Op | None:
    """The first ``what`` of ``peer`` after ``after`` whose data has every ``match`` item
    (a list-valued field matches when it contains the value)."""
    for op in peer_events(history, what, peer, after):
        if all(_matches(op.data.get(key), value) for key, value in match.items()):
            return op
    return None


def _matches(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, list) and not isinstance(wanted, list):
        return wanted in actual
    return actual == wanted


def removals(
    history: History, peer: str, relay: str, after: float | None = None, reason: str | None = None
) -> list[Op]:
    """``relay_removed`` ops of ``peer`` for ``relay`` (whose reason starts with ``reason``)."""
    return [
        op
        for op in peer_events(history, LineEvent.RELAY_REMOVED, peer, after)
        if op.data.get("relay") == relay and (reason is None or str(op.data.get("reason", "")).startswith(reason))
    ]


def carrying_relay(history: History, peer: str) -> str | None:
    """The relay on ``peer``'s side of its connection's latest nominated path."""
    connected = peer_events(history, LineEvent.CONNECTED, peer)
    return connected[-1].data.get("relay") if connected else None


def known_relays(history: History, peer: str, before: float | None = None) -> set[str]:
    """The relays ``peer`` holds allocations on, replayed from ``relay_added``/``relay_removed``."""
    known: set[str] = set()
    for op in peer_events(history, (LineEvent.RELAY_ADDED, LineEvent.RELAY_REMOVED), peer):
        if before is not None and op.t > before:
            break
        (known.add if op.what == LineEvent.RELAY_ADDED else known.discard)(op.data["relay"])
    return known


ZOMBIE_BOUND = 15.0
"""A relay a peer holds must be usable (allocated), or be gone, within this long (issue 9): one
being retried with the bounded backoff is freed well inside it."""


@dataclass(frozen=True)
class Zombie:
    peer: str
    relay: str
    since: float
    until: float  # the last report that still showed it held and unusable

    @property
    def duration(self) -> float:
        return self.until - self.since


def zombies(history: History, peer: str, after: float, bound: float = ZOMBIE_BOUND) -> list[Zombie]:
    """Relays ``peer``'s periodic ``relays`` reports show held but not usable for longer than
    ``bound`` (continuously, from the first such report after ``after``)."""
    since: dict[str, float] = {}
    found: dict[str, Zombie] = {}
    for op in peer_events(history, LineEvent.RELAYS, peer, after):
        unusable = set(op.data.get("held", [])) - set(op.data.get("usable", []))
        for rid in list(since):
            if rid not in unusable:
                del since[rid]
        for rid in unusable:
            start = since.setdefault(rid, op.t)
            if op.t - start > bound:
                found[rid] = Zombie(peer, rid, start, op.t)
    return sorted(found.values(), key=lambda z: z.since)


def delivered(history: History, peer: str = CLIENT_ID) -> int:
    """Echoes delivered according to the client's latest ``stream`` report."""
    reports = peer_events(history, LineEvent.STREAM, peer)
    return int(reports[-1].data.get("delivered", 0)) if reports else 0


def lost_between(history: History, start: float, end: float, peer: str = CLIENT_ID) -> tuple[int, int]:
    """(delivered, lost) counted by the client's reports in ``[start, end]``."""
    reports = [op for op in peer_events(history, LineEvent.STREAM, peer) if start <= op.t <= end]
    if len(reports) < 2:
        return 0, 0
    first, last = reports[0].data, reports[-1].data
    return last["delivered"] - first["delivered"], last["lost"] - first["lost"]


# ---------------------------------------------------------------------------- the stream
def gaps(history: History, peer: str = CLIENT_ID, after: float | None = None) -> list[Gap]:
    """Gaps in the echo stream that ended after ``after``."""
    return [Gap(op.t - float(op.data["duration_s"]), op.t) for op in peer_events(history, LineEvent.GAP, peer, after)]


def longest_gap(history: History, after: float, peer: str = CLIENT_ID, before: float | None = None) -> float:
    """The longest stream gap that ended after ``after`` (and started before ``before``); 0 if none."""
    durations = [g.duration for g in gaps(history, peer, after) if before is None or g.start <= before]
    return max(durations, default=0.0)


def resumed_at(history: History, after: float, peer: str = CLIENT_ID) -> float | None:
    """When the stream was flowing again after an outage that began before or around ``after``:
    the end of the first gap that ends after ``after``; ``None`` while no such gap has ended."""
    ended = gaps(history, peer, after)
    return ended[0].end if ended else None


def flowing_since(history: History, since: float) -> float | None:
    """``since`` when no gap is open and fresh echoes came at least 2 s after it (a fault the stream
    rode through, with no gap to end); None otherwise."""
    reports = [op for op in peer_events(history, "stream", CLIENT_ID, since + 2.0) if op.data.get("connected")]
    return since if len(reports) >= 2 and reports[-1].data["delivered"] > reports[0].data["delivered"] else None


def outage_at(history: History, t: float, peer: str = CLIENT_ID) -> Gap | None:
    """The (ended) gap that covers time ``t``, if any."""
    for gap in gaps(history, peer):
        if gap.start <= t <= gap.end:
            return gap
    return None


# ---------------------------------------------------------------------------- statistics
def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0–100); with few samples p95 is the maximum."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p95(values: Iterable[float]) -> float:
    return percentile(values, 95)


# ---------------------------------------------------------------------------- errors
def error_lines(history: History) -> list[Op]:
    """ERROR lines any of the stack's processes wrote (recorded by the Docker backend)."""
    return history.select("error_log")
