"""The portal's state machine, sans-IO: sockets in, frames and closes out, time passed in.

The asyncio server (``fake_portal.server``) owns the websockets. It tells the core when a socket
opens (``open``), what it received (``handle_input``) and when it ended (``closed``), calls
``handle_timeout`` at ``poll_timeout()`` and carries out ``poll_transmit()``: :class:`Send` and
:class:`Close`. ``now`` is monotonic seconds; ``unix_offset`` turns it into wall-clock time for
credentials' expiry and for humans.

A socket the core closes is forgotten at once, so a late ``closed`` or frame for it is ignored.

A presence flush decides everything at once (who gets which relays) but builds each peer's frame
when ``poll_transmit`` asks for it, so that the shell writes the first frame of a fan-out to
thousands without waiting for the last to be built. Nothing can tell: every other entry point
(and ``events``) first builds what is left, in order, so outputs, state and the event log are
what an eager flush would have made.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

from connlib.core.logfmt import kv
from connlib.core.messages import (
    UNMATCHED_TOPIC,
    CandidateSignal,
    ConnectionSignal,
    Event,
    Frame,
    Init,
    MessageError,
    PayloadError,
    RelayJoin,
    RelaysPresence,
    ReplyStatus,
    StreamReport,
    Topic,
    Vsn,
    decode_frame,
    encode_frame,
    error_reply,
    reply_frame,
)
from fake_portal.config import PortalConfig
from fake_portal.eventlog import EncodedPayload, EventKind, EventLog
from fake_portal.identity import Endpoint, relay_id_from_secret, salt_for, secret_fingerprint, tunnel_interface
from fake_portal.relays import RelayRecord, relay_entries, select_relays

log = logging.getLogger("fake_portal.portal")

RAW_EXCERPT_CHARS = 200
STREAM_HISTORY = 120
"""``stream_stats`` samples kept per client for the dashboard's traffic chart (2 min at 1/s)."""

_NAMES: dict[str, str] = {name.value: name.value for name in (*Topic, *Event)}


def _shared(name: Any) -> Any:
    """The one copy of a known topic or event name for the event log: a decoded frame's are new
    strings, which thousands of entries would each hold. Anything but a plain ``str`` (the enum
    members of the frames the portal builds) is kept as it is."""
    return _NAMES.get(name, name) if type(name) is str else name


class CloseCode(enum.IntEnum):
    MALFORMED = 1007
    PARTITIONED = 4001
    HEARTBEAT_TIMEOUT = 4002
    REPLACED = 4003
    KICKED = 4004
    SLOW_CONSUMER = 4005


@dataclass(frozen=True, slots=True)
class Send:
    sid: int
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    sid: int
    code: int
    reason: str


@dataclass(frozen=True)
class Rejection:
    """Refuse a websocket upgrade with HTTP ``status``; ``retry_after`` seconds if known."""

    status: int
    reason: str
    retry_after: float | None = None


@dataclass(slots=True)  # slots: a portal holds thousands
class Session:
    """One websocket."""

    sid: int
    endpoint: Endpoint
    peer_id: str | None
    heartbeat_deadline: float
    joined: bool = False
    join_ref: Any = None
    handed_out: dict[str, tuple[str, tuple[str, ...], int]] = field(default_factory=dict)
    """Relays last sent to this socket, id → identity, to compute ``relays_presence`` diffs."""

    @property
    def role(self) -> Topic:
        return self.endpoint.role


@dataclass(slots=True)
class PeerRecord:
    """A client or gateway, remembered across its websocket connections."""

    id: str
    role: Topic
    name: str
    external_id: str
    public_key: str
    expires_at: int
    online: bool = False
    since: float = 0.0
    sid: int | None = None
    salt: str = field(init=False, repr=False)
    """The credentials' salt (:func:`~fake_portal.identity.salt_for`), a SHA-256 of a key that
    never changes: made once, not per relay entry of every fan-out."""

    def __post_init__(self) -> None:
        self.salt = salt_for(self.public_key or self.id)


@dataclass
class ConnectionRecord:
    """Signalling seen between one client and one gateway."""

    client_id: str
    gateway_id: str
    state: str
    created: float
    updated: float
    client_relay_id: str | None = None
    gateway_relay_id: str | None = None
    candidates: dict[str, int] = field(default_factory=lambda: {"client": 0, "gateway": 0})

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class StreamRecord:
    """The latest ``stream_stats`` of one client, and a short history of its counters."""

    client_id: str
    report: StreamReport
    received_at: float  # unix
    received_mono: float
    reports: int = 1
    rate_per_s: float | None = None
    history: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=STREAM_HISTORY))

    def update(self, report: StreamReport, unix: float, now: float) -> None:
        elapsed = now - self.received_mono
        # A counter that went backwards is a restarted client: no rate across that, and a new chart.
        restarted = report.sent < self.report.sent or report.delivered < self.report.delivered
        if restarted:
            self.history.clear()
        self.rate_per_s = (
            None if restarted or elapsed <= 0 else round((report.delivered - self.report.delivered) / elapsed, 2)
        )
        self.report, self.received_at, self.received_mono = report, unix, now
        self.reports += 1
        self.history.append((round(unix, 3), report.delivered, report.lost))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _settled(method: Callable[Concatenate[Portal, _P], _R]) -> Callable[Concatenate[Portal, _P], _R]:
    """An entry point that first finishes a fan-out in progress (see the module docstring)."""

    @functools.wraps(method)
    def settled(self: Portal, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._fanout is not None:
            self._finish_fanout()
        return method(self, *args, **kwargs)

    return settled


class Portal:
    def __init__(self, config: PortalConfig, *, unix_offset: float = 0.0) -> None:
        self.config = config
        self.unix_offset = unix_offset
        self._events = EventLog(config.event_log_size)
        self._sessions: dict[int, Session] = {}
        self._next_sid = 1
        self._relays: dict[str, RelayRecord] = {}
        self._peers: dict[Topic, dict[str, PeerRecord]] = {Topic.CLIENT: {}, Topic.GATEWAY: {}}
        self._connections: dict[tuple[str, str], ConnectionRecord] = {}
        self._streams: dict[str, StreamRecord] = {}
        self._partitions: dict[str, float] = {}
        self._offline: dict[Topic, dict[str, None]] = {Topic.CLIENT: {}, Topic.GATEWAY: {}, Topic.RELAY: {}}
        """Offline peers and relays, oldest first: beyond ``max_offline_peers`` the oldest are forgotten."""
        self._heartbeat_deadlines: list[tuple[float, int]] = []
        self._flush_at: float | None = None
        self._output: deque[Send | Close] = deque()
        self._fanout: Iterator[None] | None = None
        """The presence flush's frames not built yet: each step builds one (see ``poll_transmit``)."""
        self._handlers: dict[tuple[Topic, str], Callable[[Session, Frame, float], None]] = {
            (Topic.CLIENT, Event.NO_RELAYS): self._on_no_relays,
            (Topic.GATEWAY, Event.NO_RELAYS): self._on_no_relays,
            (Topic.CLIENT, Event.REQUEST_CONNECTION): self._on_request_connection,
            (Topic.GATEWAY, Event.CONNECTION_ACCEPTED): self._on_connection_accepted,
            (Topic.CLIENT, Event.NEW_ICE_CANDIDATES): self._on_candidates,
            (Topic.GATEWAY, Event.NEW_ICE_CANDIDATES): self._on_candidates,
            (Topic.CLIENT, Event.INVALIDATE_ICE_CANDIDATES): self._on_candidates,
            (Topic.GATEWAY, Event.INVALIDATE_ICE_CANDIDATES): self._on_candidates,
            (Topic.CLIENT, Event.STREAM_STATS): self._on_stream_stats,
        }

    def unix(self, now: float) -> float:
        return now + self.unix_offset

    @property
    def events(self) -> EventLog:
        if self._fanout is not None:
            self._finish_fanout()
        return self._events

    @events.setter
    def events(self, log: EventLog) -> None:  # e.g. the simulator's, which keeps nothing
        self._events = log

    # -- socket lifecycle ---------------------------------------------------------------------

    @_settled
    def admit(self, endpoint: Endpoint, now: float) -> Rejection | None:
        """Decide whether a websocket upgrade may proceed (before ``open``)."""
        if endpoint.token != self.config.token_for(endpoint.role):
            rejection = Rejection(401, "invalid or missing token")
        elif endpoint.peer_id is not None and (remaining := self._partition_remaining(endpoint.peer_id, now)):
            rejection = Rejection(503, "partitioned by the admin API", None if remaining == float("inf") else remaining)
        else:
            return None
        self._events.record(
            self.unix(now),
            EventKind.REJECTED,
            role=endpoint.role,
            id=endpoint.peer_id,
            status=rejection.status,
            reason=rejection.reason,
        )
        log.info("Refused websocket upgrade %s", kv(role=endpoint.role, id=endpoint.peer_id, status=rejection.status))
        return rejection

    @_settled
    def open(self, endpoint: Endpoint, now: float) -> int:
        sid = self._next_sid
        self._next_sid += 1
        deadline = now + self.config.heartbeat_timeout
        self._sessions[sid] = Session(sid, endpoint, endpoint.peer_id, deadline)
        heapq.heappush(self._heartbeat_deadlines, (deadline, sid))
        self._events.record(
            self.unix(now), EventKind.CONNECT, sid=sid, role=endpoint.role, id=endpoint.peer_id, vsn=endpoint.vsn
        )
        log.info("Socket opened %s", kv(sid=sid, role=endpoint.role, id=endpoint.peer_id, vsn=endpoint.vsn))
        return sid

    @_settled
    def closed(self, sid: int, now: float, reason: str = "socket closed") -> None:
        session = self._sessions.get(sid)
        if session is not None:
            self._drop(session, now, reason)

    @_settled
    def handle_input(self, sid: int, data: str | bytes, now: float) -> None:
        session = self._sessions.get(sid)
        if session is None:
            return
        # Any frame is a sign of life, as on a Phoenix server (its socket times out after 60 s of
        # silence); the heap keeps one entry per socket, re-armed lazily in handle_timeout.
        session.heartbeat_deadline = now + self.config.heartbeat_timeout
        try:
            frame = decode_frame(data, session.endpoint.vsn)
        except PayloadError as exc:
            # A well-formed frame with unexpected content: error the channel, keep the socket.
            self._record(session, "in", now, frame=exc.request, size=len(data), error=str(exc))
            log.warning("Frame with unexpected content %s", kv(sid=sid, id=session.peer_id, error=exc))
            self._send(session, error_reply(exc.request, str(exc)), now)
            return
        except MessageError as err:  # (not ``exc``: compiled, mypyc would hold it to the PayloadError above)
            excerpt = data[:RAW_EXCERPT_CHARS]
            raw = excerpt.hex() if isinstance(excerpt, bytes) else excerpt.encode("utf-8", "backslashreplace").decode()
            self._record(session, "in", now, size=len(data), error=str(err)[:RAW_EXCERPT_CHARS], raw=raw)
            log.warning("Malformed frame; closing the socket %s", kv(sid=sid, id=session.peer_id, error=repr(str(err))))
            self._close(session, CloseCode.MALFORMED, f"malformed frame: {err}", now)
            return
        self._record(session, "in", now, frame=frame, size=len(data))
        if frame.topic == Topic.PHOENIX:
            if frame.event == Event.HEARTBEAT:
                self._send(session, reply_frame(frame, ReplyStatus.OK), now)
            else:
                self._send(session, error_reply(frame, "unknown event"), now)
        elif frame.event == Event.PHX_JOIN:
            self._on_join(session, frame, now)
        elif not session.joined or frame.topic != session.role:
            self._send(session, error_reply(frame, UNMATCHED_TOPIC), now)
        elif frame.event == Event.PHX_LEAVE:
            self._on_leave(session, frame, now)
        elif (handler := self._handlers.get((session.role, frame.event))) is None:
            self._send(session, error_reply(frame, f"unknown event {frame.event[:50]}"), now)
        else:
            try:
                handler(session, frame, now)
            except MessageError as exc:
                self._send(session, error_reply(frame, str(exc)), now)

    @_settled
    def handle_timeout(self, now: float) -> None:
        while self._heartbeat_deadlines and self._heartbeat_deadlines[0][0] <= now:
            _, sid = heapq.heappop(self._heartbeat_deadlines)
            session = self._sessions.get(sid)
            if session is None:
                continue
            if session.heartbeat_deadline > now:  # it spoke since: wait for its latest deadline
                heapq.heappush(self._heartbeat_deadlines, (session.heartbeat_deadline, sid))
                continue
            log.info("Heartbeat timeout; closing the socket %s", kv(sid=sid, role=session.role, id=session.peer_id))
            self._close(session, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", now)
        if self._flush_at is not None and now >= self._flush_at:
            self._flush_presence(now)

    @property
    def presence_pending(self) -> bool:
        """A relays_presence push is waiting for its debounce timer."""
        return self._flush_at is not None

    def poll_timeout(self) -> float | None:
        # Asked at every step of the simulator's loop: no intermediate list.
        best = self._flush_at
        if self._heartbeat_deadlines:
            beat = self._heartbeat_deadlines[0][0]
            if best is None or beat < best:
                best = beat
        return best

    def poll_transmit(self) -> Send | Close | None:
        while not self._output and self._fanout is not None:
            if next(self._fanout, True):  # True: the fan-out is over
                self._fanout = None
        return self._output.popleft() if self._output else None

    # -- admin commands -----------------------------------------------------------------------

    @_settled
    def partition(self, peer_id: str, seconds: float | None, now: float) -> dict[str, Any]:
        """Cut a client, gateway or relay off: close its socket and refuse it until healed."""
        until = float("inf") if seconds is None else now + seconds
        self._partitions[peer_id] = until
        cut = [s for s in list(self._sessions.values()) if s.peer_id == peer_id]
        for session in cut:
            self._close(session, CloseCode.PARTITIONED, "partitioned", now)
        self._events.record(self.unix(now), EventKind.PARTITION, id=peer_id, seconds=seconds, sockets_closed=len(cut))
        log.info("Partitioned %s", kv(id=peer_id, seconds=seconds, sockets_closed=len(cut)))
        return {"id": peer_id, "until": None if seconds is None else self.unix(until), "sockets_closed": len(cut)}

    @_settled
    def heal(self, peer_id: str | None, now: float) -> list[str]:
        healed = [peer_id] if peer_id in self._partitions else [] if peer_id else list(self._partitions)
        for pid in healed:
            del self._partitions[pid]
        self._events.record(self.unix(now), EventKind.HEAL, ids=healed)
        log.info("Healed partitions %s", kv(ids=",".join(healed) or "-"))
        return healed

    @_settled
    def kick_relay(self, relay_id: str, now: float) -> bool:
        """Force a relay out of presence by closing its socket (its agent may re-join later)."""
        relay = self._relays.get(relay_id)
        if relay is None or relay.sid is None:
            return False
        self._close(self._sessions[relay.sid], CloseCode.KICKED, "disconnected by admin", now)
        return True

    @_settled
    def rotate_credentials(self, relay_id: str, now: float) -> int | None:
        """Hand out new credentials for an online relay that did not reboot (same secret, new
        usernames), pushed as one relays_presence; the rotation count, None if it is not online."""
        relay = self._relays.get(relay_id)
        if relay is None or not relay.online:
            return None
        relay.rotation += 1
        self._events.record(self.unix(now), EventKind.CREDENTIALS_ROTATED, id=relay_id, rotation=relay.rotation)
        log.info("Relay credentials rotated %s", kv(rid=relay_id, rotation=relay.rotation))
        self._presence_changed(now)
        return relay.rotation

    # -- views for the admin API --------------------------------------------------------------

    @_settled
    def relays_view(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "name": r.name,
                "addr": r.addrs[0],
                "addrs": list(r.addrs),
                "online": r.online,
                "secret_fingerprint": secret_fingerprint(r.secret),
                "since": r.since,
                "rotation": r.rotation,
            }
            for r in sorted(self._relays.values(), key=lambda r: r.name)
        ]

    @_settled
    def peers_view(self, role: Topic, now: float) -> list[dict[str, Any]]:
        out = []
        for peer in sorted(self._peers[role].values(), key=lambda p: p.id):
            session = self._sessions.get(peer.sid) if peer.sid is not None else None
            remaining = self._partition_remaining(peer.id, now)
            out.append(
                {
                    "id": peer.id,
                    "name": peer.name,
                    "external_id": peer.external_id,
                    "public_key": peer.public_key,
                    "online": peer.online,
                    "since": peer.since,
                    "expires_at": peer.expires_at,
                    "relays": list(session.handed_out) if session else [],
                    "partitioned": bool(remaining),
                    "partitioned_until": self.unix(now + remaining)
                    if remaining and remaining != float("inf")
                    else None,
                }
            )
        return out

    @_settled
    def connections_view(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self._connections.values()]

    @_settled
    def streams_view(self, now: float) -> list[dict[str, Any]]:
        """Each client's latest ``stream_stats``, its age and a short history of its counters."""
        out = []
        for record in sorted(self._streams.values(), key=lambda r: r.client_id):
            peer = self._peers[Topic.CLIENT].get(record.client_id)
            out.append(
                {
                    "client_id": record.client_id,
                    **record.report.to_json(),
                    "client_online": bool(peer and peer.online),
                    "received_at": record.received_at,
                    "age_s": round(now - record.received_mono, 3),
                    "reports": record.reports,
                    "rate_per_s": record.rate_per_s,
                    "history": [list(sample) for sample in record.history],
                }
            )
        return out

    # -- joins and leaves ---------------------------------------------------------------------

    def _on_join(self, session: Session, frame: Frame, now: float) -> None:
        if frame.topic != session.role:
            self._send(session, error_reply(frame, UNMATCHED_TOPIC), now)
            return
        if session.role is Topic.RELAY:
            self._join_relay(session, frame, now)
        else:
            self._join_peer(session, frame, now)

    def _join_relay(self, session: Session, frame: Frame, now: float) -> None:
        try:
            secret = RelayJoin.from_json(frame.payload).stamp_secret
        except MessageError as exc:
            self._send(session, error_reply(frame, str(exc)), now)
            return
        relay_id = session.peer_id or relay_id_from_secret(secret)
        if self._partition_remaining(relay_id, now):
            self._send(session, error_reply(frame, "partitioned"), now)
            self._close(session, CloseCode.PARTITIONED, "partitioned", now)
            return
        session.peer_id = relay_id
        known = self._relays.get(relay_id)
        if known is not None and known.sid not in (None, session.sid):
            self._close(self._sessions[known.sid], CloseCode.REPLACED, "replaced by a newer socket", now)
        self._offline[Topic.RELAY].pop(relay_id, None)
        self._relays[relay_id] = RelayRecord(
            relay_id,
            session.endpoint.name,
            session.endpoint.relay_addrs,
            secret,
            True,
            self.unix(now),
            session.sid,
            # the same secret again (a socket re-join, a restart that kept it): the same credentials
            known.rotation if known is not None and known.secret == secret else 0,
        )
        self._accept_join(session, frame, now)
        log.info(
            "Relay online %s",
            kv(rid=relay_id, name=session.endpoint.name, secret=secret_fingerprint(secret), rejoin=known is not None),
        )
        self._events.record(
            self.unix(now), EventKind.RELAY_ONLINE, id=relay_id, secret_fingerprint=secret_fingerprint(secret)
        )
        self._presence_changed(now)

    def _join_peer(self, session: Session, frame: Frame, now: float) -> None:
        endpoint = session.endpoint
        assert session.peer_id is not None  # clients and gateways are identified by their URL
        peers = self._peers[session.role]
        peer = peers.get(session.peer_id)
        if peer is None:
            expires_at = (
                self.config.gateway_expires_at
                if session.role is Topic.GATEWAY
                else int(self.unix(now)) + self.config.client_credentials_ttl
            )
            peer = peers[session.peer_id] = PeerRecord(
                session.peer_id, session.role, endpoint.name, endpoint.external_id, endpoint.public_key, expires_at
            )
        elif peer.sid not in (None, session.sid):
            self._close(self._sessions[peer.sid], CloseCode.REPLACED, "replaced by a newer socket", now)
        peer.online, peer.since, peer.sid = True, self.unix(now), session.sid
        self._offline[session.role].pop(peer.id, None)
        self._accept_join(session, frame, now)
        relays = self._select(session)
        init = Init(interface=tunnel_interface(peer.id)).to_json() | {"relays": self._entries(peer, relays)}
        self._push(session, Event.INIT, init, now)
        log.info("Peer joined %s", kv(role=session.role, id=peer.id, relays=",".join(r.id for r in relays) or "-"))

    def _accept_join(self, session: Session, frame: Frame, now: float) -> None:
        session.joined, session.join_ref = True, frame.ref if frame.join_ref is None else frame.join_ref
        self._send(session, reply_frame(frame, ReplyStatus.OK), now)

    def _on_leave(self, session: Session, frame: Frame, now: float) -> None:
        self._send(session, reply_frame(frame, ReplyStatus.OK), now)
        self._push(session, Event.PHX_CLOSE, {}, now)
        session.joined = False
        self._go_offline(session, now)

    # -- application events -------------------------------------------------------------------

    def _on_no_relays(self, session: Session, frame: Frame, now: float) -> None:
        self._send(session, reply_frame(frame, ReplyStatus.OK), now)
        relays = self._select(session)
        peer = self._peers[session.role][session.peer_id]  # type: ignore[index]
        presence = RelaysPresence(disconnected_ids=()).to_json() | {"connected": self._entries(peer, relays)}
        self._push(session, Event.RELAYS_PRESENCE, presence, now)

    def _on_request_connection(self, session: Session, frame: Frame, now: float) -> None:
        signal = ConnectionSignal.from_json(frame.payload)
        record = self._forward(session, frame, Event.CONNECTION_REQUEST, signal, now)
        if record is not None:
            record.state, record.client_relay_id = "requested", signal.relay_id or record.client_relay_id

    def _on_connection_accepted(self, session: Session, frame: Frame, now: float) -> None:
        signal = ConnectionSignal.from_json(frame.payload)
        record = self._forward(session, frame, Event.CONNECTION_ACCEPTED, signal, now)
        if record is not None:
            record.state, record.gateway_relay_id = "accepted", signal.relay_id or record.gateway_relay_id

    def _on_candidates(self, session: Session, frame: Frame, now: float) -> None:
        signal = CandidateSignal.from_json(frame.payload)
        record = self._forward(session, frame, frame.event, signal, now)
        if record is not None and signal.relay_id is not None:
            setattr(record, f"{session.role}_relay_id", signal.relay_id)
        if record is not None and frame.event == Event.NEW_ICE_CANDIDATES:
            record.candidates[session.role] += len(signal.candidates)

    def _on_stream_stats(self, session: Session, frame: Frame, now: float) -> None:
        report = StreamReport.from_json(frame.payload)  # MessageError → an error reply
        assert session.peer_id is not None  # clients are identified by their URL
        record = self._streams.get(session.peer_id)
        if record is None:
            record = self._streams[session.peer_id] = StreamRecord(session.peer_id, report, self.unix(now), now)
            record.history.append((round(self.unix(now), 3), report.delivered, report.lost))
        else:
            record.update(report, self.unix(now), now)
        self._events.record(
            self.unix(now),
            EventKind.STREAM_STATS,
            id=session.peer_id,
            peer=report.peer_id,
            sent=report.sent,
            delivered=report.delivered,
            lost=report.lost,
            in_flight=report.in_flight,
            gaps=report.gaps,
            connected=report.connected,
            relay=report.relay,
        )
        self._send(session, reply_frame(frame, ReplyStatus.OK), now)

    def _forward(
        self, session: Session, frame: Frame, event: str, signal: ConnectionSignal | CandidateSignal, now: float
    ) -> ConnectionRecord | None:
        """Hand a signalling message to the named peer of the other role, rewriting ``peer_id``."""
        other_role = Topic.GATEWAY if session.role is Topic.CLIENT else Topic.CLIENT
        target = self._peers[other_role].get(signal.peer_id)
        target_session = self._sessions.get(target.sid) if target and target.sid is not None else None
        if target_session is None or not target_session.joined:
            self._send(session, error_reply(frame, f"{other_role} {signal.peer_id} is offline"), now)
            return None
        assert session.peer_id is not None
        forwarded = dataclasses.replace(signal, peer_id=session.peer_id)
        self._push(target_session, event, forwarded.to_json(), now)
        self._send(session, reply_frame(frame, ReplyStatus.OK), now)
        key = (session.peer_id, signal.peer_id) if session.role is Topic.CLIENT else (signal.peer_id, session.peer_id)
        record = self._connections.get(key)
        if record is None:
            record = self._connections[key] = ConnectionRecord(*key, "signalling", self.unix(now), self.unix(now))
        record.updated = self.unix(now)
        return record

    # -- presence -----------------------------------------------------------------------------

    def _presence_changed(self, now: float) -> None:
        # The first change arms the timer and later ones ride along, so a burst costs one push
        # and the delay stays bounded by the debounce (Firezone's 1 s timer, spec §3.3).
        if self._flush_at is None:
            self._flush_at = now + self.config.debounce

    def _flush_presence(self, now: float) -> None:
        self._flush_at = None
        self._fanout = self._fan_out(now)

    def _finish_fanout(self) -> None:
        assert self._fanout is not None
        for _ in self._fanout:
            pass
        self._fanout = None

    def _fan_out(self, now: float) -> Iterator[None]:
        """The flush, one step per frame pushed: state is the flush's own until the last step,
        since every other entry point finishes it first."""
        online = {rid: r for rid, r in self._relays.items() if r.online}
        pushed = 0
        for session in list(self._sessions.values()):
            if session.role is Topic.RELAY or not session.joined:
                continue
            relays = select_relays(session.peer_id or "", online, session.handed_out, self.config.relays_per_client)
            selected = {r.id: r.identity for r in relays}
            if selected == session.handed_out:
                continue
            disconnected = tuple(rid for rid in session.handed_out if rid not in selected)
            peer = self._peers[session.role][session.peer_id]  # type: ignore[index]
            presence = RelaysPresence(disconnected).to_json() | {"connected": self._entries(peer, relays)}
            session.handed_out = selected
            self._push(session, Event.RELAYS_PRESENCE, presence, now)
            pushed += 1
            yield None
        self._events.record(self.unix(now), EventKind.PRESENCE_FLUSH, online=sorted(online), pushed=pushed)
        log.info("Relay presence flushed %s", kv(online=len(online), pushed=pushed))

    def _select(self, session: Session) -> list[RelayRecord]:
        online = {rid: r for rid, r in self._relays.items() if r.online}
        relays = select_relays(session.peer_id or "", online, session.handed_out, self.config.relays_per_client)
        session.handed_out = {r.id: r.identity for r in relays}
        return relays

    def _entries(self, peer: PeerRecord, relays: list[RelayRecord]) -> list[dict[str, Any]]:
        # JSON entries in the payload's `relays`/`connected` place (the key keeps its position):
        # no Relay object, and so no re-check of the relay's address, per peer (fake_portal.relays).
        return [entry for relay in relays for entry in relay_entries(relay, peer.expires_at, peer.salt)]

    # -- plumbing -----------------------------------------------------------------------------

    def _partition_remaining(self, peer_id: str, now: float) -> float:
        until = self._partitions.get(peer_id)
        if until is None:
            return 0.0
        if until <= now:
            del self._partitions[peer_id]
            return 0.0
        return until - now

    def _send(self, session: Session, frame: Frame, now: float) -> None:
        vsn = session.endpoint.vsn
        text = encode_frame(frame, vsn)
        if self._events.keeps:
            # One family per serializer, topic and event: a fan-out's frames differ in a few strings.
            payload = EncodedPayload(text, 4 if vsn is Vsn.V2 else "payload", (vsn, frame.topic, frame.event))
            self._record(session, "out", now, frame=frame, size=len(text), payload=payload)
        self._output.append(Send(session.sid, text))

    def _push(self, session: Session, event: str, payload: dict[str, Any], now: float) -> None:
        self._send(session, Frame(session.role, event, payload, None, session.join_ref), now)

    def _record(
        self,
        session: Session,
        direction: str,
        now: float,
        frame: Frame | None = None,
        size: int = 0,
        payload: EncodedPayload | None = None,
        **extra: Any,
    ) -> None:
        # The log summarizes (bounded size); it never keeps the payload itself, at most its
        # encoded text (``payload``, for a frame sent: see fake_portal.eventlog).
        if not self._events.keeps:
            return
        if frame is not None and not extra:  # a frame in or out: the log's own fast path, same entry
            self._events.record_frame(
                self.unix(now),
                direction,
                session.sid,
                session.role,
                session.peer_id,
                _shared(frame.topic),
                _shared(frame.event),
                frame.ref,
                payload or frame.payload,
                size,
            )
            return
        fields: dict[str, Any] = {"dir": direction, "sid": session.sid, "role": session.role, "id": session.peer_id}
        if frame is not None:
            fields.update(
                topic=_shared(frame.topic), event=_shared(frame.event), ref=frame.ref, payload=payload or frame.payload
            )
        fields["payload_bytes"] = size
        self._events.record(self.unix(now), EventKind.FRAME, **fields, **extra)

    def _close(self, session: Session, code: int, reason: str, now: float) -> None:
        self._output.append(Close(session.sid, code, reason))
        self._drop(session, now, reason)

    def _drop(self, session: Session, now: float, reason: str) -> None:
        del self._sessions[session.sid]
        self._go_offline(session, now)
        self._events.record(
            self.unix(now), EventKind.DISCONNECT, sid=session.sid, role=session.role, id=session.peer_id, reason=reason
        )
        log.info("Socket gone %s", kv(sid=session.sid, role=session.role, id=session.peer_id, reason=reason))

    def _go_offline(self, session: Session, now: float) -> None:
        if session.role is Topic.RELAY:
            relay = self._relays.get(session.peer_id or "")
            if relay is not None and relay.sid == session.sid:
                relay.online, relay.since, relay.sid = False, self.unix(now), None
                self._events.record(self.unix(now), EventKind.RELAY_OFFLINE, id=relay.id)
                log.info("Relay offline %s", kv(rid=relay.id, name=relay.name))
                self._presence_changed(now)
                self._went_offline(Topic.RELAY, relay.id, now)
        else:
            peer = self._peers[session.role].get(session.peer_id or "")
            if peer is not None and peer.sid == session.sid:
                peer.online, peer.since, peer.sid = False, self.unix(now), None
                self._went_offline(session.role, peer.id, now)

    def _went_offline(self, role: Topic, peer_id: str, now: float) -> None:
        offline = self._offline[role]
        offline.pop(peer_id, None)
        offline[peer_id] = None
        forgotten = []
        while len(offline) > self.config.max_offline_peers:
            old = next(iter(offline))
            del offline[old]
            forgotten.append(old)
            if role is Topic.RELAY:
                self._relays.pop(old, None)
                continue
            self._peers[role].pop(old, None)
            self._streams.pop(old, None)
            index = 0 if role is Topic.CLIENT else 1
            for key in [k for k in self._connections if k[index] == old]:
                del self._connections[key]
        if forgotten:
            self._events.record(self.unix(now), EventKind.FORGOTTEN, role=role, ids=forgotten)
            log.info("Forgot offline peers %s", kv(role=role, count=len(forgotten)))
