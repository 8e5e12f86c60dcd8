"""A bounded, sequence-numbered log of everything the portal sent, received or decided."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any


class EventLog:
    """Entries are dicts with ``seq`` (1, 2, …) and ``ts`` (unix seconds) plus the caller's fields.

    Readers poll with ``since(last_seq_they_saw)``; the oldest entries fall off after ``maxlen``.
    """

    def __init__(self, maxlen: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.last_seq = 0

    def record(self, ts: float, kind: str, **fields: Any) -> None:
        self.last_seq += 1
        self._entries.append({"seq": self.last_seq, "ts": round(ts, 6), "kind": kind, **fields})

    def since(self, seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        first = self._entries[0]["seq"] if self._entries else self.last_seq + 1
        start = max(0, seq + 1 - first)
        stop = len(self._entries) if limit is None else min(len(self._entries), start + limit)
        return list(islice(self._entries, start, stop))
