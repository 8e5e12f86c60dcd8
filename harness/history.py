"""One history of everything that happened in a run, in the spirit of Jepsen.

Faults injected, portal events, connlib's JSON lines and stream gaps all become ``Op`` records
with a monotonic timestamp. Checks read the history; they never poke at the system.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Op:
    t: float  # monotonic seconds
    kind: str  # "fault" | "observe" | "check"
    what: str  # e.g. "restart", "gap", "relay_removed"
    target: str = ""
    outcome: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class History:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ops: list[Op] = []
        self._listeners: list[Callable[[Op], None]] = []

    def record(self, kind: str, what: str, target: str = "", outcome: str = "", **data: Any) -> Op:
        op = Op(self.clock(), kind, what, target, outcome, data)
        self.ops.append(op)
        for listener in self._listeners:
            listener(op)
        return op

    def fault(self, what: str, target: str, outcome: str = "ok", **data: Any) -> Op:
        return self.record("fault", what, target, outcome, **data)

    def observe(self, what: str, target: str = "", **data: Any) -> Op:
        return self.record("observe", what, target, **data)

    def observe_line(self, line: dict[str, Any]) -> Op:
        """A JSON line from a connlib peer (``{"event": ..., "id": ..., ...}``)."""
        data = {k: v for k, v in line.items() if k not in ("event", "id")}
        return self.observe(str(line.get("event", "?")), str(line.get("id", "")), **data)

    def subscribe(self, listener: Callable[[Op], None]) -> None:
        self._listeners.append(listener)

    def select(
        self,
        what: str | Iterable[str] | None = None,
        *,
        kind: str | None = None,
        target: str | None = None,
        after: float | None = None,
    ) -> list[Op]:
        names = {what} if isinstance(what, str) else set(what) if what is not None else None
        return [
            op
            for op in self.ops
            if (names is None or op.what in names)
            and (kind is None or op.kind == kind)
            and (target is None or op.target == target)
            and (after is None or op.t >= after)
        ]

    def first(self, what: str | Iterable[str], **filters: Any) -> Op | None:
        ops = self.select(what, **filters)
        return ops[0] if ops else None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for op in self.ops:
                out.write(json.dumps(op.to_json()) + "\n")


class EventClock:
    """``time.monotonic``, except while an observation that carries its own wall-clock time is
    being recorded: then the history reads that time, mapped onto the monotonic axis.

    Containers share the host's clock, so a peer's ``ts`` (``time.time()`` when it happened) minus
    the offset below is when it happened on this process's monotonic clock.
    """

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()
        self._pinned: float | None = None

    def __call__(self) -> float:
        return self._pinned if self._pinned is not None else time.monotonic()

    def to_monotonic(self, wall: float) -> float:
        return wall - self.offset

    @contextlib.contextmanager
    def at_wall(self, wall: float | None) -> Iterator[None]:
        self._pinned = None if wall is None else self.to_monotonic(wall)
        try:
            yield
        finally:
            self._pinned = None


def new_history() -> History:
    """A history on an :class:`EventClock` (what every fleet records into)."""
    return History(clock=EventClock())


def at_own_time(history: History, wall: Any) -> contextlib.AbstractContextManager[None]:
    """Record at ``wall`` (a peer's or the portal's ``ts``) when the history's clock allows it."""
    clock = history.clock
    if isinstance(clock, EventClock) and isinstance(wall, (int, float)):
        return clock.at_wall(float(wall))
    return contextlib.nullcontext()


def observe_at(history: History, line: dict[str, Any]) -> None:
    """Record a peer's JSON line at its own ``ts`` when the history's clock allows it."""
    with at_own_time(history, line.get("ts")):
        history.observe_line(line)
