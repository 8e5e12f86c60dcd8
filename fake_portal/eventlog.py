"""A bounded, sequence-numbered log of everything the portal sent, received or decided.

Bounded twice: at most ``maxlen`` entries, and every entry is a *summary* (:func:`summarize`): at
most :data:`SUMMARY_NODES` values, strings cut at :data:`SUMMARY_STRING_CHARS`, nesting cut at
:data:`SUMMARY_DEPTH`. A 63 KB frame costs a few hundred bytes, not a deep copy of its payload.
The kinds an entry can have are the :class:`EventKind` schema; readers (the dashboard, the chaos
harness) may rely on it.

The log is public (``GET /api/events``, the dashboard), so secrets never enter it: every value
under a secret key (a relay's ``stamp_secret``, TURN ``password``\\s, ICE ``pwd``\\s), at any
depth, is replaced by ``"redacted:<fingerprint>"`` (the same sha256 fingerprint the relays view
shows), and so is such a key's value inside raw text excerpts of malformed frames.

A frame the portal sent may be recorded as its encoded text (:class:`EncodedPayload`): the text
exists anyway, one string is a fraction of the memory of a summary's nested copy, and the summary
is made when the entry is first read instead of once per frame on the fan-out path. Readers see
the same entry either way. Only short texts are kept so (:data:`LAZY_TEXT_CHARS`); a longer one
is summarized at once, so the bound per entry stands.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

from fake_portal.identity import secret_fingerprint

SECRET_KEYS = frozenset({"stamp_secret", "password", "pwd"})
REDACTED_PREFIX = "redacted:"
# `"key": "value"` inside text (a truncated frame excerpt); the value may lack its closing quote.
_SECRET_IN_TEXT = re.compile(r'("(?:' + "|".join(sorted(SECRET_KEYS)) + r')"\s*:\s*")((?:[^"\\]|\\.)*)')


SUMMARY_NODES = 40
SUMMARY_STRING_CHARS = 120
SUMMARY_CHARS = 600
"""All the string characters one summary keeps (keys and values together)."""
SUMMARY_DEPTH = 4
TRUNCATED = "…"
LAZY_TEXT_CHARS = 2048
"""The longest frame text an entry keeps in place of its payload summary (a summary of at most
:data:`SUMMARY_NODES` values and :data:`SUMMARY_CHARS` characters is about as big)."""


class EventKind(StrEnum):
    """Every ``kind`` the portal's event log (``GET /api/events``) can hold."""

    FRAME = "frame"
    """A frame in or out (``dir``, ``sid``, ``role``, ``id``, ``topic``, ``event``, ``ref``,
    ``payload`` summary, ``payload_bytes``), or a malformed one (``error``, ``raw`` excerpt)."""
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    REJECTED = "rejected"
    RELAY_ONLINE = "relay_online"
    RELAY_OFFLINE = "relay_offline"
    PRESENCE_FLUSH = "presence_flush"
    CREDENTIALS_ROTATED = "credentials_rotated"
    """Admin ``rotate-credentials``: new usernames for a relay that did not reboot (``id``, ``rotation``)."""
    PARTITION = "partition"
    HEAL = "heal"
    STREAM_STATS = "stream_stats"
    FORGOTTEN = "forgotten"
    """Offline peers dropped from memory to keep the portal bounded (``role``, ``ids``)."""


@dataclass(frozen=True, slots=True)
class EncodedPayload:
    """The payload of an encoded frame ``text`` (JSON) at ``key``: ``"payload"`` in a Phoenix v1
    frame (an object), ``4`` in a v2 frame (an array)."""

    text: str
    key: str | int

    def summary(self) -> Any:
        # Not kept: the text is the smaller of the two, and readers poll for new entries, so
        # most entries are summarized once either way.
        return summarize(json.loads(self.text)[self.key])


def summarize(value: Any) -> Any:
    """A bounded, redacted copy of a JSON-like ``value`` (see the module docstring). Iterative."""
    budget = SUMMARY_NODES
    chars = SUMMARY_CHARS

    def leaf(item: Any, key: Any) -> Any:
        nonlocal chars
        if isinstance(item, str):
            if isinstance(key, str) and key in SECRET_KEYS:
                return mask(item)
            keep = max(0, min(SUMMARY_STRING_CHARS, chars))
            chars -= min(len(item), keep) + (len(key) if isinstance(key, str) else 0)
            text = item if len(item) <= keep else item[:keep] + TRUNCATED
            return _redact_text(text)
        return item

    if not isinstance(value, (dict, list)):
        if not isinstance(value, str) or (len(value) <= SUMMARY_STRING_CHARS and '"' not in value):
            return value  # what leaf() returns for it, without its bookkeeping (most fields)
        return leaf(value, None)
    root: dict[Any, Any] | list[Any] = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, dict[Any, Any] | list[Any], int]] = [(value, root, 1)]
    while stack:
        source, target, depth = stack.pop()
        items = list(source.items()) if isinstance(source, dict) else list(enumerate(source))
        for index, (key, item) in enumerate(items):
            if budget <= 0:
                _put(target, "…", f"{len(items) - index} more")
                break
            budget -= 1
            if isinstance(item, (dict, list)):
                if depth >= SUMMARY_DEPTH:
                    _put(target, key, TRUNCATED)
                    continue
                child: dict[Any, Any] | list[Any] = {} if isinstance(item, dict) else []
                _put(target, key, child)
                stack.append((item, child, depth + 1))
            else:
                _put(target, key, leaf(item, key))
    return root


def _put(target: dict[Any, Any] | list[Any], key: Any, item: Any) -> None:
    if isinstance(target, dict):
        target[str(key)[:SUMMARY_STRING_CHARS]] = item
    else:
        target.append(item if key != "…" else f"{TRUNCATED} {item}")


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
        node: Any = stack.pop()
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

    Stored as a tuple per entry, ``(field names, seq, ts, kind, *values)``, the names one shared
    tuple per shape of entry: a fifth of a dict's memory, and a portal with thousands of peers
    holds tens of thousands of entries. ``since`` builds the dicts.
    """

    keeps = True  # False: a log that keeps nothing (the simulator's), so writers may skip building entries

    def __init__(self, maxlen: int) -> None:
        self._entries: deque[tuple[Any, ...]] = deque(maxlen=maxlen)
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.last_seq = 0

    def record(self, ts: float, kind: EventKind | str, **fields: Any) -> None:
        kind = EventKind(kind)  # ValueError for a kind outside the schema: a bug in the writer
        self.last_seq += 1
        shape = tuple(fields)
        values = (
            mask(value)
            if key in SECRET_KEYS and isinstance(value, str)
            else _pending(value)
            if isinstance(value, EncodedPayload)
            else summarize(value)
            for key, value in fields.items()
        )
        self._entries.append((self._shapes.setdefault(shape, shape), self.last_seq, round(ts, 6), str(kind), *values))

    def __len__(self) -> int:
        return len(self._entries)

    def since(self, seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        first = self._entries[0][1] if self._entries else self.last_seq + 1
        start = max(0, seq + 1 - first)
        stop = len(self._entries) if limit is None else min(len(self._entries), start + limit)
        out = []
        for entry in islice(self._entries, start, stop):
            values = (v.summary() if isinstance(v, EncodedPayload) else v for v in entry[4:])
            out.append({"seq": entry[1], "ts": entry[2], "kind": entry[3], **dict(zip(entry[0], values, strict=True))})
        return out


def _pending(value: EncodedPayload) -> Any:
    """What an entry holds for ``value`` until it is read: the text if short, else the summary."""
    return value if len(value.text) <= LAZY_TEXT_CHARS else value.summary()
