"""Message names, payload shapes and Phoenix framing shared by connlib and fake_portal.

This is the only place that knows what travels over the portal websocket (spec §3), so the two ends
cannot drift apart. Everything that parses untrusted input raises :class:`MessageError` (a
``ValueError``) with a reason a human can act on, and nothing else.

Framing (spec §3.5): Phoenix v1 frames are JSON objects ``{"topic","event","payload","ref"}`` (what
connlib speaks); v2 frames are arrays ``[join_ref, ref, topic, event, payload]`` (what the Phoenix JS
client speaks when the URL carries ``vsn=2.0.0``).

Signalling between a client and a gateway (issue 4) is relayed by the portal. Every signalling
payload names the *other* side in ``peer_id``: the sender puts the recipient's id there and the
portal rewrites it to the sender's id before forwarding, so one shape serves both directions::

    client  --request_connection{peer_id=G, ufrag, pwd}-->  portal --connection_request{peer_id=C, ..}--> gateway
    gateway --connection_accepted{peer_id=C, ufrag, pwd}--> portal --connection_accepted{peer_id=G, ..}--> client
    either  --new_ice_candidates / invalidate_ice_candidates{peer_id, candidates}--> portal --> the other

``relay_id`` is optional on these payloads: a peer that includes it tells the portal which relay it
is using, which the portal records for the chaos harness.

A client also reports its traffic probe for the portal's dashboard: ``stream_stats``
(:class:`StreamReport`) once per report interval, only while its channel is joined.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .addr import family, parse_address
from .candidate import CandidateError, candidate_kind
from .logfmt import kv
from .relay import RelayConfig

log = logging.getLogger("connlib.messages")

MAX_FRAME_BYTES = 64 * 1024
"""Frames above this are refused by both ends; a real init with many relays is a few KiB."""

MAX_ID_CHARS = 128
ID_PATTERN = r"[A-Za-z0-9._:@+/=\[\]-]{1,128}"
"""Ids, names, ufrags and pwds: printable ASCII without spaces, quotes or control characters, so a
value can never forge a log line or break out of a ``key=value`` field."""
_ID = re.compile(ID_PATTERN)
MAX_JSON_DEPTH = 32
"""Nesting allowed in any JSON the portal or connlib parses; real frames nest 4 deep."""
MAX_JSON_INT_DIGITS = 19
JSON_INT_BOUND = 2**63
JSON_FLOAT_BOUND = 1e18
MAX_CANDIDATES = 64
MAX_CANDIDATE_CHARS = 512


class MessageError(ValueError):
    """Input that does not match the wire format or a payload shape; ``str()`` says why."""


class Topic(StrEnum):
    CLIENT = "client"
    GATEWAY = "gateway"
    RELAY = "relay"
    PHOENIX = "phoenix"


class Event(StrEnum):
    # Phoenix control events.
    PHX_JOIN = "phx_join"
    PHX_LEAVE = "phx_leave"
    PHX_REPLY = "phx_reply"
    PHX_CLOSE = "phx_close"
    PHX_ERROR = "phx_error"
    HEARTBEAT = "heartbeat"
    # Portal → peer.
    INIT = "init"
    RELAYS_PRESENCE = "relays_presence"
    DISCONNECT = "disconnect"
    CONNECTION_REQUEST = "connection_request"
    # Peer → portal.
    NO_RELAYS = "no_relays"
    REQUEST_CONNECTION = "request_connection"
    STREAM_STATS = "stream_stats"  # client → portal: its traffic probe's latest report (dashboard)
    # Both ways (portal forwards).
    CONNECTION_ACCEPTED = "connection_accepted"
    NEW_ICE_CANDIDATES = "new_ice_candidates"
    INVALIDATE_ICE_CANDIDATES = "invalidate_ice_candidates"


class Vsn(StrEnum):
    """Phoenix serializer versions, as given by the ``vsn`` URL parameter."""

    V1 = "1.0.0"
    V2 = "2.0.0"


class ReplyStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


# Reasons the portal puts in error replies; connlib re-joins on UNMATCHED_TOPIC.
UNMATCHED_TOPIC = "unmatched topic"


# ---------------------------------------------------------------------------------------------
# Field helpers


def _expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise MessageError(f"{what} lacks field {key!r}")
    value = obj[key]
    # bool is an int in Python, never in JSON schemas.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise MessageError(f"{what} field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise MessageError(f"{what} must be 1-{MAX_ID_CHARS} chars of A-Z a-z 0-9 . _ : @ + / = [ ] -")
    return value


def is_safe_id(value: object) -> bool:
    """Whether ``value`` is an id the portal accepts (see :data:`ID_PATTERN`)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------
# Strict JSON


def _reject_constant(name: str) -> Any:
    raise MessageError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise MessageError(f"integer of {len(text)} digits is out of range")
    value = int(text)
    if not -JSON_INT_BOUND <= value < JSON_INT_BOUND:
        raise MessageError("integer out of the 64-bit range")
    return value


def _bounded_float(text: str) -> float:
    if len(text) > 64:
        raise MessageError("number literal too long")
    value = float(text)
    if not math.isfinite(value) or abs(value) > JSON_FLOAT_BOUND:
        raise MessageError(f"number {text[:20]} is not finite or out of range")
    return value


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`MessageError` unless ``value`` nests at most ``max_depth`` deep, has only valid
    UTF-8 strings (no lone surrogates) and only bounded, finite numbers. Iterative."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _has_lone_surrogate(node):
                raise MessageError("string holds a lone surrogate (not valid UTF-8)")
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not -JSON_INT_BOUND <= node < JSON_INT_BOUND:
                raise MessageError("integer out of the 64-bit range")
        elif isinstance(node, float):
            if not math.isfinite(node) or abs(node) > JSON_FLOAT_BOUND:
                raise MessageError("number is not finite or out of range")
        elif isinstance(node, (dict, list)):
            if depth >= max_depth:
                raise MessageError(f"JSON nested too deep (more than {max_depth} levels)")
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str) or _has_lone_surrogate(key):
                        raise MessageError("object key holds a lone surrogate (not valid UTF-8)")
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)
        else:
            raise MessageError(f"{type(node).__name__} is not a JSON value")


def loads_strict(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted input: strict UTF-8, no NaN/Infinity, bounded numbers and depth,
    no lone surrogates. Raises :class:`MessageError` and nothing else."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    # Cheap pre-check so that a 64 KiB run of brackets never reaches the recursive C parser.
    if data.count("[") + data.count("{") > max_depth and _bracket_depth(data) > max_depth:
        raise MessageError(f"JSON nested too deep (more than {max_depth} levels)")
    try:
        if data.startswith("\ufeff"):  # what json.loads refuses before it decodes
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        value = _STRICT_DECODER.decode(data)
    except MessageError:
        raise
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    # The parse hooks have bounded every number and the pre-check the depth, so what ``check_json``
    # can still find is a lone surrogate, which only a ``\\u`` escape or the text itself can
    # carry: a frame with neither (the common case) is not walked again.
    if "\\u" in data or _has_lone_surrogate(data):
        check_json(value, max_depth)
    return value


# What ``json.loads(data, parse_constant=..., parse_int=..., parse_float=...)`` builds per call
# (a decoder keeps no state between calls): one for every frame.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_bounded_float)


def _bracket_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting in JSON text, skipping string contents."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _optional_ident(obj: dict[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _ident(value, f"{what} field {key!r}")


# ---------------------------------------------------------------------------------------------
# Phoenix frames

Ref = int | str | None


@dataclass(frozen=True)
class Frame:
    """One Phoenix message. ``payload`` is always an object (JSON ``null`` decodes to ``{}``)."""

    topic: str
    event: str
    payload: dict[str, Any] = field(default_factory=dict)
    ref: Ref = None
    join_ref: Ref = None


class PayloadError(MessageError):
    """A well-formed Phoenix frame whose content is unexpected (a payload that is not an object, a
    bad ref): the receiver errors the channel and keeps the socket. ``request`` carries what could
    be read (topic, event, refs; an empty payload) so that the error reply can be addressed."""

    def __init__(self, message: str, request: Frame) -> None:
        super().__init__(message)
        self.request = request


def decode_frame(data: str | bytes, vsn: Vsn = Vsn.V1) -> Frame:
    """Parse one websocket text message in the given serializer version.

    Raises :class:`PayloadError` for a well-formed envelope with unexpected content and plain
    :class:`MessageError` for anything that cannot be decoded as a Phoenix frame.
    """
    if len(data) > MAX_FRAME_BYTES:
        raise MessageError(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME_BYTES}")
    try:
        raw = loads_strict(data)
    except MessageError as exc:
        raise MessageError(f"frame is not JSON: {exc}") from None
    if vsn is Vsn.V2:
        if not isinstance(raw, list) or len(raw) != 5:
            raise MessageError("v2 frame must be an array [join_ref, ref, topic, event, payload] (not a Phoenix frame)")
        join_ref, ref, topic, event, payload = raw
    else:
        if not isinstance(raw, dict):
            raise MessageError(f"v1 frame must be a JSON object, got {type(raw).__name__} (not a Phoenix frame)")
        missing = [k for k in ("topic", "event") if k not in raw]
        if missing:
            raise MessageError(f"v1 frame lacks {', '.join(missing)}")
        topic, event = raw["topic"], raw["event"]
        payload, ref, join_ref = raw.get("payload"), raw.get("ref"), raw.get("join_ref")
    if not isinstance(topic, str) or not topic:
        raise MessageError("frame topic must be a non-empty string")
    if not isinstance(event, str) or not event:
        raise MessageError("frame event must be a non-empty string")
    if payload is None:
        payload = {}
    if isinstance(payload, dict) and _is_ref(ref) and _is_ref(join_ref):
        return Frame(topic=topic, event=event, payload=payload, ref=ref, join_ref=join_ref)
    # What could be read, for the error reply: the good refs and an empty payload.
    good_ref = ref if _is_ref(ref) else None
    good_join_ref = join_ref if _is_ref(join_ref) else None
    request = Frame(topic=topic, event=event, payload={}, ref=good_ref, join_ref=good_join_ref)
    if not isinstance(payload, dict):
        raise PayloadError(f"frame payload must be a JSON object, got {type(payload).__name__}", request)
    if not _is_ref(ref):
        raise PayloadError("frame ref must be an integer, a string or null", request)
    raise PayloadError("frame join_ref must be an integer, a string or null", request)


def _is_ref(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def encode_frame(frame: Frame, vsn: Vsn = Vsn.V1) -> str:
    if vsn is Vsn.V2:
        raw: Any = [frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload]
    else:
        raw = {"topic": frame.topic, "event": frame.event, "payload": frame.payload, "ref": frame.ref}
    return _FRAME_ENCODER.encode(raw)


# What ``json.dumps(raw, separators=(",", ":"), allow_nan=False)`` builds per call (it keeps no
# state between calls): one for every frame.
_FRAME_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Reply:
    """The payload of a ``phx_reply``."""

    status: ReplyStatus
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        reason = self.response.get("reason")
        return reason if isinstance(reason, str) else None

    @classmethod
    def from_json(cls, payload: Any) -> Reply:
        obj = _expect_object(payload, "phx_reply payload")
        status = _field(obj, "status", str, "phx_reply payload")
        try:
            parsed = ReplyStatus(status)
        except ValueError:
            raise MessageError(f"phx_reply status must be ok or error, got {status!r}") from None
        response = obj.get("response")
        return cls(parsed, {} if response is None else _expect_object(response, "phx_reply response"))

    def to_json(self) -> dict[str, Any]:
        return {"status": str(self.status), "response": self.response}


def reply_frame(request: Frame, status: ReplyStatus, response: dict[str, Any] | None = None) -> Frame:
    """The reply to ``request``: same topic, ref and join_ref."""
    return Frame(
        topic=request.topic,
        event=Event.PHX_REPLY,
        payload=Reply(status, response or {}).to_json(),
        ref=request.ref,
        join_ref=request.join_ref,
    )


def error_reply(request: Frame, reason: str) -> Frame:
    return reply_frame(request, ReplyStatus.ERROR, {"reason": reason})


# ---------------------------------------------------------------------------------------------
# Relays (spec §3.1)


def parse_addr(addr: Any) -> tuple[str, int, int]:
    """``"ip:port"`` or ``"[ipv6]:port"`` → ``(host, port, family)``, family 4 or 6, host unbracketed."""
    if not isinstance(addr, str):
        raise MessageError("relay addr must be a string")
    try:
        host, port = parse_address(addr)
    except ValueError as exc:
        raise MessageError(f"relay addr: {exc}") from None
    return host, port, family((host, port))


RELAY_TYPES = ("turn", "stun")


@dataclass(frozen=True)
class Relay:
    """One relay entry as the portal sends it; a dual-stack relay is two entries with one id.

    ``expires_at`` is in unix seconds. ``stun`` entries carry no credentials.
    """

    id: str
    type: str
    addr: str
    username: str = ""
    password: str = ""
    expires_at: int = 0

    def __post_init__(self) -> None:
        _ident(self.id, "relay id")
        if self.type not in RELAY_TYPES:
            raise MessageError(f"relay type must be one of {RELAY_TYPES}, got {self.type!r}")
        parse_addr(self.addr)
        if self.type == "turn":
            for name in ("username", "password"):
                value = getattr(self, name)
                if not isinstance(value, str) or not value:
                    raise MessageError(f"turn relay {self.id} needs a non-empty {name}")
                if not _is_utf8(value):  # e.g. a lone surrogate: valid JSON, no UTF-8 (HMAC key input)
                    raise MessageError(f"turn relay {self.id} {name} is not valid UTF-8")
            if not isinstance(self.expires_at, int) or isinstance(self.expires_at, bool) or self.expires_at < 0:
                raise MessageError(f"turn relay {self.id} expires_at must be a non-negative integer")

    @classmethod
    def from_json(cls, raw: Any) -> Relay:
        obj = _expect_object(raw, "relay")
        kind = _field(obj, "type", str, "relay")
        common = {"id": obj.get("id"), "type": kind, "addr": _field(obj, "addr", str, "relay")}
        if kind != "turn":
            return cls(**common)
        return cls(
            **common,
            username=_field(obj, "username", str, "turn relay"),
            password=_field(obj, "password", str, "turn relay"),
            expires_at=_field(obj, "expires_at", int, "turn relay"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "addr": self.addr}
        if self.type == "turn":
            out.update(username=self.username, password=self.password, expires_at=self.expires_at)
        return out


def _relay_list(raw: Any, what: str) -> tuple[Relay, ...]:
    if not isinstance(raw, list):
        raise MessageError(f"{what} must be a list")
    return tuple(Relay.from_json(r) for r in raw)


def merge_relays(relays: list[Relay] | tuple[Relay, ...]) -> list[RelayConfig]:
    """Firezone's ``tunnel::turn()``: drop stun entries, merge same-id entries into dual-stack.

    Unlike Firezone's ``chunk_by`` this groups non-adjacent entries too. A second address of the
    same family, or an entry whose credentials differ from the first one of that id, is ignored
    with a WARN. The result is sorted by id so that callers iterate deterministically.
    """
    merged: dict[str, RelayConfig] = {}
    for relay in relays:
        if relay.type != "turn":
            continue
        host, port, family = parse_addr(relay.addr)
        slot = "v4" if family == 4 else "v6"
        known = merged.get(relay.id)
        if known is None:
            merged[relay.id] = RelayConfig(relay.id, None, None, relay.username, relay.password)
            known = merged[relay.id]
        elif (known.username, known.password) != (relay.username, relay.password):
            log.warning("Relay entries disagree on credentials; ignoring one %s", kv(rid=relay.id, addr=relay.addr))
            continue
        if getattr(known, slot) is not None:
            log.warning("Duplicate address family for relay; ignoring %s", kv(rid=relay.id, addr=relay.addr))
            continue
        address = (host, port)
        merged[relay.id] = (
            dataclasses.replace(known, v4=address) if slot == "v4" else dataclasses.replace(known, v6=address)
        )
    return [merged[rid] for rid in sorted(merged)]


# ---------------------------------------------------------------------------------------------
# Payloads


@dataclass(frozen=True)
class RelayJoin:
    """A relay's ``phx_join`` payload: the secret its credentials derive from (spec §4.1)."""

    stamp_secret: str

    def __post_init__(self) -> None:
        if (
            not isinstance(self.stamp_secret, str)
            or not self.stamp_secret
            or len(self.stamp_secret) > 256
            or _has_lone_surrogate(self.stamp_secret)
        ):
            raise MessageError("stamp_secret must be a non-empty UTF-8 string of at most 256 chars")

    @classmethod
    def from_json(cls, raw: Any) -> RelayJoin:
        return cls(_field(_expect_object(raw, "relay join payload"), "stamp_secret", str, "relay join payload"))

    def to_json(self) -> dict[str, Any]:
        return {"stamp_secret": self.stamp_secret}


@dataclass(frozen=True)
class Init:
    """``init`` (spec §3.2). Absent lists default to empty, as connlib's serde defaults do."""

    relays: tuple[Relay, ...] = ()
    interface: dict[str, Any] = field(default_factory=dict)
    resources: tuple[Any, ...] = ()

    @classmethod
    def from_json(cls, raw: Any) -> Init:
        obj = _expect_object(raw, "init payload")
        resources = obj.get("resources", [])
        if not isinstance(resources, list):
            raise MessageError("init resources must be a list")
        return cls(
            relays=_relay_list(obj.get("relays", []), "init relays"),
            interface=_expect_object(obj.get("interface", {}), "init interface"),
            resources=tuple(resources),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "resources": list(self.resources),
            "relays": [r.to_json() for r in self.relays],
        }


@dataclass(frozen=True)
class RelaysPresence:
    """``relays_presence`` (spec §3.3): feed to ``update_relays(disconnected_ids, connected)``."""

    disconnected_ids: tuple[str, ...] = ()
    connected: tuple[Relay, ...] = ()

    @classmethod
    def from_json(cls, raw: Any) -> RelaysPresence:
        obj = _expect_object(raw, "relays_presence payload")
        ids = _field(obj, "disconnected_ids", list, "relays_presence payload")
        return cls(
            disconnected_ids=tuple(_ident(i, "disconnected id") for i in ids),
            connected=_relay_list(_field(obj, "connected", list, "relays_presence payload"), "connected"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"disconnected_ids": list(self.disconnected_ids), "connected": [r.to_json() for r in self.connected]}


@dataclass(frozen=True)
class Disconnect:
    """A forced logout, e.g. ``{"reason": "token_expired"}``; connlib treats it as fatal."""

    reason: str

    @classmethod
    def from_json(cls, raw: Any) -> Disconnect:
        return cls(_field(_expect_object(raw, "disconnect payload"), "reason", str, "disconnect payload"))

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason}


def candidate_type(candidate: Any) -> str:
    """The ``typ`` of an ICE candidate line (the grammar is :mod:`connlib.core.candidate`)."""
    if not isinstance(candidate, str) or not candidate.startswith("candidate:"):
        raise MessageError("an ICE candidate must be a string starting with 'candidate:'")
    if len(candidate) > MAX_CANDIDATE_CHARS:
        raise MessageError(f"ICE candidate longer than {MAX_CANDIDATE_CHARS} chars")
    try:
        return candidate_kind(candidate)
    except CandidateError as exc:
        raise MessageError(str(exc)) from None


@dataclass(frozen=True)
class ConnectionSignal:
    """``request_connection``, ``connection_request`` and ``connection_accepted``: ICE credentials.

    ``ufrag``/``pwd`` are the sender's ICE username fragment and password; sending a new pair for
    an existing peer is an ICE restart.
    """

    peer_id: str
    ufrag: str
    pwd: str
    relay_id: str | None = None

    def __post_init__(self) -> None:
        _ident(self.peer_id, "peer_id")
        _ident(self.ufrag, "ufrag")
        _ident(self.pwd, "pwd")
        if ":" in self.ufrag:
            raise MessageError("ufrag must not contain ':' (STUN USERNAME is remote:local)")
        if self.relay_id is not None:
            _ident(self.relay_id, "relay_id")

    @classmethod
    def from_json(cls, raw: Any) -> ConnectionSignal:
        obj = _expect_object(raw, "connection signal")
        return cls(
            peer_id=_field(obj, "peer_id", str, "connection signal"),
            ufrag=_field(obj, "ufrag", str, "connection signal"),
            pwd=_field(obj, "pwd", str, "connection signal"),
            relay_id=_optional_ident(obj, "relay_id", "connection signal"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer_id": self.peer_id, "ufrag": self.ufrag, "pwd": self.pwd}
        if self.relay_id is not None:
            out["relay_id"] = self.relay_id
        return out


@dataclass(frozen=True)
class CandidateSignal:
    """``new_ice_candidates`` and ``invalidate_ice_candidates``: candidate lines for one peer."""

    peer_id: str
    candidates: tuple[str, ...]
    relay_id: str | None = None

    def __post_init__(self) -> None:
        _ident(self.peer_id, "peer_id")
        if len(self.candidates) > MAX_CANDIDATES:
            raise MessageError(f"more than {MAX_CANDIDATES} candidates in one message")
        for candidate in self.candidates:
            candidate_type(candidate)
        if self.relay_id is not None:
            _ident(self.relay_id, "relay_id")

    @classmethod
    def from_json(cls, raw: Any) -> CandidateSignal:
        obj = _expect_object(raw, "candidate signal")
        return cls(
            peer_id=_field(obj, "peer_id", str, "candidate signal"),
            candidates=tuple(_field(obj, "candidates", list, "candidate signal")),
            relay_id=_optional_ident(obj, "relay_id", "candidate signal"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer_id": self.peer_id, "candidates": list(self.candidates)}
        if self.relay_id is not None:
            out["relay_id"] = self.relay_id
        return out


MAX_STREAM_GAPS = 20
"""``stream_stats`` carries at most this many of the most recent gaps."""


def _count(obj: dict[str, Any], key: str, what: str) -> int:
    value = _field(obj, key, int, what)
    if value < 0:
        raise MessageError(f"{what} field {key!r} must not be negative")
    if value >= JSON_INT_BOUND:
        raise MessageError(f"{what} field {key!r} must be below 2**63")
    return value


def _seconds(obj: dict[str, Any], key: str, what: str) -> float:
    value = _field(obj, key, (int, float), what)
    if not math.isfinite(value):
        raise MessageError(f"{what} field {key!r} must be a finite number")
    return float(value)


@dataclass(frozen=True)
class StreamGap:
    """One silence in the client's echo stream: wall-clock ``start``/``end``, ``duration_s``."""

    start: float
    end: float
    duration_s: float

    def __post_init__(self) -> None:
        if self.duration_s < 0:
            raise MessageError("gap duration_s must not be negative")

    @classmethod
    def from_json(cls, raw: Any) -> StreamGap:
        obj = _expect_object(raw, "stream gap")
        return cls(
            _seconds(obj, "start", "stream gap"),
            _seconds(obj, "end", "stream gap"),
            _seconds(obj, "duration_s", "stream gap"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "duration_s": self.duration_s}


@dataclass(frozen=True)
class StreamReport:
    """``stream_stats`` (client → portal): the traffic probe's report, for the dashboard.

    Counters are cumulative since the client started; ``gaps`` counts every gap while
    ``recent_gaps`` holds the last :data:`MAX_STREAM_GAPS` of them. ``relay`` is the relay on the
    client's side of the nominated path (``None`` while not connected); ``peer_id`` the gateway.
    """

    sent: int
    delivered: int
    lost: int
    in_flight: int
    gaps: int
    connected: bool
    relay: str | None = None
    peer_id: str | None = None
    recent_gaps: tuple[StreamGap, ...] = ()

    def __post_init__(self) -> None:
        if self.delivered + self.lost + self.in_flight > self.sent:
            raise MessageError("stream_stats: delivered + lost + in_flight exceeds sent")
        if len(self.recent_gaps) > MAX_STREAM_GAPS:
            raise MessageError(f"stream_stats carries more than {MAX_STREAM_GAPS} recent gaps")
        if len(self.recent_gaps) > self.gaps:
            raise MessageError("stream_stats: more recent gaps than gaps in total")
        if self.relay is not None:
            _ident(self.relay, "stream_stats relay")
        if self.peer_id is not None:
            _ident(self.peer_id, "stream_stats peer_id")

    @classmethod
    def from_json(cls, raw: Any) -> StreamReport:
        what = "stream_stats payload"
        obj = _expect_object(raw, what)
        recent = obj.get("recent_gaps", [])
        if not isinstance(recent, list):
            raise MessageError(f"{what} field 'recent_gaps' must be a list")
        if len(recent) > MAX_STREAM_GAPS:
            raise MessageError(f"stream_stats carries more than {MAX_STREAM_GAPS} recent gaps")
        return cls(
            sent=_count(obj, "sent", what),
            delivered=_count(obj, "delivered", what),
            lost=_count(obj, "lost", what),
            in_flight=_count(obj, "in_flight", what),
            gaps=_count(obj, "gaps", what),
            connected=_field(obj, "connected", bool, what),
            relay=_optional_ident(obj, "relay", what),
            peer_id=_optional_ident(obj, "peer_id", what),
            recent_gaps=tuple(StreamGap.from_json(g) for g in recent),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "lost": self.lost,
            "in_flight": self.in_flight,
            "gaps": self.gaps,
            "connected": self.connected,
            "relay": self.relay,
            "peer_id": self.peer_id,
            "recent_gaps": [g.to_json() for g in self.recent_gaps],
        }


PAYLOAD_TYPES: dict[str, Any] = {
    Event.INIT: Init,
    Event.RELAYS_PRESENCE: RelaysPresence,
    Event.DISCONNECT: Disconnect,
    Event.REQUEST_CONNECTION: ConnectionSignal,
    Event.CONNECTION_REQUEST: ConnectionSignal,
    Event.CONNECTION_ACCEPTED: ConnectionSignal,
    Event.NEW_ICE_CANDIDATES: CandidateSignal,
    Event.INVALIDATE_ICE_CANDIDATES: CandidateSignal,
    Event.STREAM_STATS: StreamReport,
}
"""Events whose payload has a dataclass; ``no_relays`` and ``heartbeat`` carry ``{}``."""


def decode_payload(event: str, payload: Any) -> Any:
    """The typed payload of an application event, e.g. ``Init`` for ``init``."""
    kind = PAYLOAD_TYPES.get(event)
    if kind is None:
        raise MessageError(f"event {event!r} has no payload type")
    return kind.from_json(payload)
