"""The chaos service's history: every action it took, with its outcome, newest last, bounded.

An entry is a dict (the JSON ``GET /api/history`` returns): ``seq`` (1, 2, ...), ``ts`` (unix time it
started), ``action`` (``restart``, ``loss``, ``partition``, ...), ``target``, ``params``,
``outcome`` (``pending`` while it runs, then ``ok`` or ``failed: <why>``), ``took_s``, ``end`` (unix
time its effect ended: when it finished; for a lasting fault — stop, kill, pause, loss,
partition — when it was undone or reversed; ``None`` while it lasts), ``until`` (when its duration
will undo it), ``undo_of`` (the seq an undo reverses), ``result`` (what the operation answered). Only the last ``capacity`` entries are kept.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

CAPACITY = 500


class Journal:
    def __init__(self, capacity: int = CAPACITY, clock: Callable[[], float] = time.time) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.clock = clock
        self.last_seq = 0

    def begin(self, action: str, target: str, params: dict[str, Any], undo_of: int | None = None) -> dict[str, Any]:
        self.last_seq += 1
        entry: dict[str, Any] = {
            "seq": self.last_seq,
            "ts": round(self.clock(), 3),
            "action": action,
            "target": target,
            "params": params,
            "outcome": "pending",
            "took_s": None,
            "end": None,
            "until": None,
            "undo_of": undo_of,
        }
        self.entries.append(entry)
        return entry

    def finish(
        self, entry: dict[str, Any], outcome: str, *, lasting: bool = False, duration: float | None = None
    ) -> None:
        """The action is done: ``outcome``. A ``lasting`` one's effect goes on until :meth:`ended`
        (after ``duration`` seconds, if given, its undo is due)."""
        now = self.clock()
        entry["outcome"] = outcome[:300]
        entry["took_s"] = round(now - entry["ts"], 3)
        if lasting and outcome == "ok":
            entry["until"] = round(now + duration, 3) if duration else None
        else:
            entry["end"] = round(now, 3)

    def ended(self, entry: dict[str, Any]) -> None:
        """Its lasting effect is over (undone, or reversed by hand)."""
        if entry["end"] is None:
            entry["end"] = round(self.clock(), 3)

    def since(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries after ``seq``, oldest first, at most the newest ``limit``."""
        found = [e for e in self.entries if e["seq"] > seq]
        return found[-limit:] if limit else found
