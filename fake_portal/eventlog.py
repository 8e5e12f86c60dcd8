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

Such texts are kept as a difference (:class:`_Patched`): the frames of one kind that the portal
sends thousands of peers (``relays_presence`` in a fan-out, every client's ``init`` and join reply)
differ in a few JSON strings (credentials, addresses) and share the rest. Split at the ``"``
characters, a text is its family's *base* text (the first of that family, or the first that did
not fit the base before it) with the tokens that differ put back; an identical text is the base
itself. The text read back is the very text sent, so is its summary. Per entry the log also keeps
no sequence number (it is the entry's place in the log) and shares the ``kind`` string and a
timestamp equal to the previous entry's (a fan-out's thousands of entries have one).
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from itertools import compress, count, islice
from operator import ne
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
    frame (an object), ``4`` in a v2 frame (an array). Texts of one ``family`` (the writer's name
    for frames that tend to differ in a few strings only: the portal's is the frame's serializer,
    topic and event) are stored as differences from one another."""

    text: str
    key: str | int
    family: Any = None

    def summary(self) -> Any:
        # Not kept: the text is the smaller of the two, and readers poll for new entries, so
        # most entries are summarized once either way.
        return summarize(json.loads(self.text)[self.key])


@dataclass(frozen=True, slots=True)
class _Base:
    """A family's base text, shared by the entries patched from it."""

    text: str
    key: str | int


class _Patched(tuple[Any, ...]):  # (base, changed tokens joined by '"', *their indices)
    """An encoded payload kept as its family's base text with the ``"``-separated tokens that differ.

    A tuple: one object per entry (~70 bytes and 8 per changed token, plus the changed text),
    against the ~400-630 bytes of a whole ``relays_presence`` or ``init`` text.
    """

    __slots__ = ()

    def text(self) -> str:
        base: _Base = self[0]
        if len(self) == 2:  # nothing changed: the base itself
            return base.text
        tokens = base.text.split('"')
        # Tokens never hold a '"', so the changed ones split back apart exactly as they were joined.
        for index, token in zip(self[2:], self[1].split('"'), strict=True):
            tokens[index] = token
        return '"'.join(tokens)

    def summary(self) -> Any:
        base: _Base = self[0]
        return summarize(json.loads(self.text())[base.key])


class _EmptyObject:
    """An empty JSON object, one for every entry whose value is one; each reader gets its own ``{}``."""

    __slots__ = ()

    def summary(self) -> dict[str, Any]:
        return {}


_EMPTY_OBJECT = _EmptyObject()
_LAZY = (EncodedPayload, _Patched, _EmptyObject)
"""Values whose summary an entry makes when it is read."""

_MAX_FAMILIES = 64
"""Families remembered at once (the portal's are a dozen); beyond, the log starts over."""


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

    Stored as a tuple per entry, ``(field names, ts, kind, *values)``, the names one shared tuple
    per shape of entry: a fifth of a dict's memory, and a portal with thousands of peers holds tens
    of thousands of entries. An entry's ``seq`` is ``last_seq`` less the entries after it. ``since``
    builds the dicts.
    """

    keeps = True  # False: a log that keeps nothing (the simulator's), so writers may skip building entries

    def __init__(self, maxlen: int) -> None:
        self._entries: deque[tuple[Any, ...]] = deque(maxlen=maxlen)
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._families: dict[Any, tuple[_Base, list[str], _Patched]] = {}
        """Family → its base, the base's tokens and the entry value of a text equal to the base."""
        self._ts = 0.0
        self.last_seq = 0

    def record(self, ts: float, kind: EventKind | str, **fields: Any) -> None:
        # A member or its value (a StrEnum hashes as its string); EventKind(kind) raises ValueError
        # for a kind outside the schema: a bug in the writer.
        kind_text = _KIND_TEXTS.get(kind) or EventKind(kind).value
        shape = tuple(fields)
        entry = self._begin(self._shapes.setdefault(shape, shape), ts, kind_text)
        for key, value in fields.items():
            entry.append(mask(value) if key in SECRET_KEYS and isinstance(value, str) else self._kept(value))
        self._entries.append(tuple(entry))

    def record_frame(
        self,
        ts: float,
        direction: str,
        sid: int,
        role: str,
        peer_id: str | None,
        topic: Any,
        event: Any,
        ref: Any,
        payload: Any,
        size: int,
    ) -> None:
        """``record(ts, EventKind.FRAME, dir=direction, sid=sid, role=role, id=peer_id, topic=topic,
        event=event, ref=ref, payload=payload, payload_bytes=size)``, the same entry, without the
        keyword dicts: a fan-out records one per peer. None of these keys is secret."""
        kept = self._kept
        entry = self._begin(_FRAME_SHAPE, ts, _FRAME_TEXT)
        entry += (direction, sid, kept(role), kept(peer_id), kept(topic), kept(event), kept(ref), kept(payload), size)
        self._entries.append(tuple(entry))

    def _begin(self, shape: tuple[str, ...], ts: float, kind_text: str) -> list[Any]:
        """A new entry's first values; the sequence number moves on."""
        self.last_seq += 1
        ts = round(ts, 6)
        if ts == self._ts:
            ts = self._ts  # the same float object: one per batch of entries, not one each
        self._ts = ts
        return [shape, ts, kind_text]

    def _kept(self, value: Any) -> Any:
        """What an entry keeps of a value under a key that is not secret: summarize(value), with
        its common cases inline (a fan-out records thousands of entries)."""
        if isinstance(value, str):
            return summarize(value) if len(value) > SUMMARY_STRING_CHARS or '"' in value else value
        if isinstance(value, EncodedPayload):
            return self._pending(value)
        if isinstance(value, (dict, list)):
            return summarize(value) if value or type(value) is not dict else _EMPTY_OBJECT
        return value  # anything else (numbers, None) summarizes to itself

    def __len__(self) -> int:
        return len(self._entries)

    def since(self, seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        first = self.last_seq - len(self._entries) + 1  # the oldest entry's seq
        start = max(0, seq + 1 - first)
        stop = len(self._entries) if limit is None else min(len(self._entries), start + limit)
        out = []
        for offset, entry in enumerate(islice(self._entries, start, stop), first + start):
            values = (v.summary() if isinstance(v, _LAZY) else v for v in entry[3:])
            out.append({"seq": offset, "ts": entry[1], "kind": entry[2], **dict(zip(entry[0], values, strict=True))})
        return out

    def _pending(self, value: EncodedPayload) -> Any:
        """What an entry holds for ``value`` until it is read: the text if short (as a difference
        from its family's base when it has one), else the summary."""
        if len(value.text) > LAZY_TEXT_CHARS:
            return value.summary()
        if value.family is None:
            return value
        tokens = value.text.split('"')
        known = self._families.get(value.family)
        if known is not None and len(known[1]) == len(tokens) and known[0].key == value.key:
            base, base_tokens, same = known
            changed = tuple(compress(count(), map(ne, tokens, base_tokens)))
            if not changed:
                return same
            joined = '"'.join([tokens[i] for i in changed])
            # Patching pays while the changes are well short of the text (a client's ``init`` is
            # ~40 % new: its addresses and credentials); a text that is mostly new becomes the
            # family's next base instead (entries keep the base they were made from).
            if 4 * (len(joined) + 8 * len(changed)) < 3 * len(value.text):
                return _Patched((base, joined, *changed))
        if len(self._families) >= _MAX_FAMILIES:
            self._families.clear()
        base = _Base(value.text, value.key)
        same = _Patched((base, ""))
        self._families[value.family] = (base, tokens, same)
        return same


_KIND_TEXTS: dict[str, str] = {kind: kind.value for kind in EventKind}
"""Each kind's plain string, one shared copy (``str(kind)`` makes a new one at every call)."""
_FRAME_TEXT = _KIND_TEXTS[EventKind.FRAME]
_FRAME_SHAPE = ("dir", "sid", "role", "id", "topic", "event", "ref", "payload", "payload_bytes")
