"""One history of everything that happened in a run, in the spirit of Jepsen.

Faults injected, portal events, connlib's JSON lines and stream gaps all become ``Op`` records
with a monotonic timestamp. Checks read the history; they never poke at the system.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
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
