"""A bounded, sequence-numbered log of everything the portal sent, received or decided.

The log is public (``GET /api/events``, the dashboard), so secrets never enter it: every value
under a secret key (a relay's ``stamp_secret``, TURN ``password``\\s, ICE ``pwd``\\s), at any
depth, is replaced by ``"redacted:<fingerprint>"`` (the same sha256 fingerprint the relays view
shows), and so is such a key's value inside raw text excerpts of malformed frames.
"""

from __future__ import annotations

import re
from collections import deque
from itertools import islice
from typing import Any

from fake_portal.identity import secret_fingerprint

SECRET_KEYS = frozenset({"stamp_secret", "password", "pwd"})
REDACTED_PREFIX = "redacted:"
# `"key": "value"` inside text (a truncated frame excerpt); the value may lack its closing quote.
_SECRET_IN_TEXT = re.compile(r'("(?:' + "|".join(sorted(SECRET_KEYS)) + r')"\s*:\s*")((?:[^"\\]|\\.)*)')


def mask(secret: str) -> str:
    return REDACTED_PREFIX + secret_fingerprint(secret)


def _redact_text(text: str) -> str:
    if '"' not in text:
        return text
    return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + mask(m.group(2)), text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (JSON-like) with every secret masked; ``value`` itself is untouched.

    Iterative, so a payload nested as deep as the JSON parser allows cannot exhaust the stack.
    """
    if isinstance(value, str):
        return _redact_text(value)
    if not isinstance(value, (dict, list)):
        return value
    root = dict(value) if isinstance(value, dict) else list(value)
    stack: list[dict[Any, Any] | list[Any]] = [root]
    while stack:
        node = stack.pop()
        for key, item in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(item, str):
                if isinstance(key, str) and key in SECRET_KEYS:
                    node[key] = mask(item)
                elif '"' in item:
                    node[key] = _redact_text(item)
            elif isinstance(item, (dict, list)):
                copy = dict(item) if isinstance(item, dict) else list(item)
                node[key] = copy
                stack.append(copy)
    return root


class EventLog:
    """Entries are dicts with ``seq`` (1, 2, …) and ``ts`` (unix seconds) plus the caller's fields.

    Readers poll with ``since(last_seq_they_saw)``; the oldest entries fall off after ``maxlen``.
    Field values are stored redacted (see the module docstring).
    """

    def __init__(self, maxlen: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.last_seq = 0

    def record(self, ts: float, kind: str, **fields: Any) -> None:
        self.last_seq += 1
        safe = {
            key: mask(value) if key in SECRET_KEYS and isinstance(value, str) else redact(value)
            for key, value in fields.items()
        }
        self._entries.append({"seq": self.last_seq, "ts": round(ts, 6), "kind": kind, **safe})

    def since(self, seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        first = self._entries[0]["seq"] if self._entries else self.last_seq + 1
        start = max(0, seq + 1 - first)
        stop = len(self._entries) if limit is None else min(len(self._entries), start + limit)
        return list(islice(self._entries, start, stop))
