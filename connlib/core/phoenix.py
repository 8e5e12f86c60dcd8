"""Sans-IO Phoenix channel client: connlib's side of the portal websocket (spec §3.5).

The object never touches a socket or a clock. A transport (``connlib.aio.portal_client``) feeds it
``connected(now)``, ``handle_input(text, now)``, ``disconnected(now)`` and ``handle_timeout(now)``,
writes whatever ``poll_transmit()`` returns, reacts to ``poll_event()`` and sleeps until
``poll_timeout()``. Behaviour mirrors Firezone's ``phoenix-channel`` crate:

- on every websocket connection refs restart at 0 and the first frame is ``phx_join`` (ref 0);
- application messages wait until the join is answered, at most ``max_buffered`` of them, and an
  exact duplicate of a queued message is not queued again;
- a heartbeat on topic ``phoenix`` every ``heartbeat_interval`` (first one one interval after
  connecting); more than ``max_unanswered_heartbeats`` in flight, or no join reply within
  ``join_timeout``, asks the transport to reconnect;
- an error reply to our join is fatal (:class:`LoginFailed`); ``unmatched topic`` on a later
  request means the server forgot our join, so we join again; ``phx_close`` reconnects;
  ``disconnect`` is a fatal forced logout;
- reconnects are paced by :class:`ReconnectBackoff`, which resets once a join succeeds.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .logfmt import kv
from .messages import (
    UNMATCHED_TOPIC,
    Event,
    Frame,
    MessageError,
    Reply,
    ReplyStatus,
    Topic,
    Vsn,
    decode_frame,
    encode_frame,
)

log = logging.getLogger("connlib.phoenix")

HEARTBEAT_INTERVAL = 10.0
JOIN_TIMEOUT = 5.0
MAX_UNANSWERED_HEARTBEATS = 3
MAX_BUFFERED_MESSAGES = 32


@dataclass
class ReconnectBackoff:
    """Exponential backoff with jitter, as the Rust ``backoff`` crate computes it.

    Each delay is the current interval scaled by a factor drawn uniformly from
    ``[1 - jitter, 1 + jitter]``; the interval then grows by ``multiplier`` up to ``max_interval``.
    ``max_elapsed`` (seconds since the first failure after a reset, ``None`` = forever) bounds the
    whole retry sequence. Pass a seeded ``rng`` for reproducible delays.
    """

    initial: float = 0.5
    multiplier: float = 1.5
    max_interval: float = 60.0
    jitter: float = 0.5
    max_elapsed: float | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # the transport seeds it
    _interval: float = field(init=False, default=0.0)
    _started: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._interval = self.initial
        self._started = None  # (mypyc, when compiled, gives an init=False field no default)

    def next_delay(self, now: float) -> float | None:
        """The delay before the next attempt, or ``None`` once ``max_elapsed`` has passed."""
        if self._started is None:
            self._started = now
        elif self.max_elapsed is not None and now - self._started > self.max_elapsed:
            return None
        spread = self.jitter * self._interval
        delay = self._interval - spread + self.rng.random() * 2 * spread
        self._interval = min(self._interval * self.multiplier, self.max_interval)
        return delay

    def reset(self) -> None:
        self._interval = self.initial
        self._started = None


# ---------------------------------------------------------------------------------------------
# Events for the transport and the application


@dataclass(frozen=True)
class Connect:
    """Open a new websocket now (the backoff delay has passed)."""


@dataclass(frozen=True)
class Reconnect:
    """Close the current websocket and call ``disconnected``; a :class:`Connect` follows."""

    reason: str


@dataclass(frozen=True)
class Hiccup:
    """The connection is down; a :class:`Connect` comes after ``delay`` seconds."""

    delay: float
    reason: str


@dataclass(frozen=True)
class Joined:
    topic: str
    response: dict[str, Any]


@dataclass(frozen=True)
class Push:
    """A push from the server (``init``, ``relays_presence``, signalling…)."""

    topic: str
    event: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ReplyReceived:
    """The server's answer to a message we sent; ``request_id`` is what ``send`` returned."""

    request_id: int
    event: str
    reply: Reply


@dataclass(frozen=True)
class LoginFailed:
    """Fatal: the server refused our join."""

    reason: str


@dataclass(frozen=True)
class ForcedLogout:
    """Fatal: the server sent ``disconnect`` (e.g. ``token_expired``)."""

    reason: str


@dataclass(frozen=True)
class GaveUp:
    """Fatal: the backoff's ``max_elapsed`` ran out."""

    reason: str


FATAL_EVENTS = (LoginFailed, ForcedLogout, GaveUp)


class ChannelClosed(Exception):
    """``send`` after the channel ended for good (fatal event or ``close``)."""


class _State(enum.Enum):
    DISCONNECTED = "disconnected"  # waiting for the backoff to pass
    CONNECTING = "connecting"  # Connect emitted, transport dialling
    JOINING = "joining"  # socket open, phx_join in flight
    JOINED = "joined"
    CLOSING = "closing"  # Reconnect emitted, waiting for disconnected()
    CLOSED = "closed"  # fatal or closed by the application


@dataclass(frozen=True)
class _Queued:
    request_id: int
    event: str
    payload: dict[str, Any]


class PhoenixChannel:
    """One Phoenix channel (``topic``) over one websocket at a time; see the module docstring."""

    def __init__(
        self,
        topic: str,
        join_payload: dict[str, Any] | None = None,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        join_timeout: float = JOIN_TIMEOUT,
        max_unanswered_heartbeats: int = MAX_UNANSWERED_HEARTBEATS,
        max_buffered: int = MAX_BUFFERED_MESSAGES,
        backoff: ReconnectBackoff | None = None,
        vsn: Vsn = Vsn.V1,
    ) -> None:
        self.topic = topic
        self.join_payload = join_payload
        self.heartbeat_interval = heartbeat_interval
        self.join_timeout = join_timeout
        self.max_unanswered_heartbeats = max_unanswered_heartbeats
        self.max_buffered = max_buffered
        self.backoff = backoff or ReconnectBackoff()
        self.vsn = vsn

        self._state = _State.CONNECTING  # the transport dials once without being asked
        self._next_ref = 0
        self._join_ref: int | None = None
        self._join_deadline: float | None = None
        self._next_heartbeat: float | None = None
        self._heartbeats_in_flight: set[int] = set()
        self._in_flight: dict[int, _Queued] = {}
        self._buffer: deque[_Queued] = deque()
        self._next_request_id = 0
        self._reconnect_at: float | None = None
        self._transmit: deque[str] = deque()
        self._events: deque[object] = deque()

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def is_joined(self) -> bool:
        return self._state is _State.JOINED

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    # -- inputs from the transport ------------------------------------------------------------

    def connected(self, now: float) -> None:
        """A websocket is open: start over with ref 0 and join."""
        if self._state is _State.CLOSED:
            return
        self._next_ref = 0
        self._heartbeats_in_flight.clear()
        self._in_flight.clear()
        self._transmit.clear()
        self._reconnect_at = None
        self._next_heartbeat = now + self.heartbeat_interval
        self._join(now)

    def disconnected(self, now: float, *, reason: str = "connection lost", retry_after: float | None = None) -> None:
        """The websocket closed or could not be opened; schedule the next attempt.

        ``retry_after`` (from an HTTP ``Retry-After``) overrides the backoff delay.
        """
        if self._state in (_State.CLOSED, _State.DISCONNECTED):
            return
        # Requests that were on the wire are lost with the socket: at most once, like Firezone.
        self._in_flight.clear()
        self._heartbeats_in_flight.clear()
        self._transmit.clear()
        self._join_ref = self._join_deadline = self._next_heartbeat = None
        delay = retry_after if retry_after is not None else self.backoff.next_delay(now)
        if delay is None:
            self._fail(GaveUp(f"gave up reconnecting to the portal; last error: {reason}"))
            return
        self._state = _State.DISCONNECTED
        self._reconnect_at = now + delay
        self._events.append(Hiccup(delay, reason))

    def handle_input(self, text: str | bytes, now: float) -> None:
        if self._state not in (_State.JOINING, _State.JOINED):
            return
        try:
            frame = decode_frame(text, self.vsn)
        except MessageError as exc:
            log.warning("Failed to decode portal frame; ignoring %s", kv(error=exc))
            return
        if frame.event == Event.PHX_REPLY:
            self._on_reply(frame, now)
        elif frame.topic != self.topic:
            log.debug("Frame for a topic we did not join %s", kv(topic=frame.topic, event_name=frame.event))
        elif frame.event == Event.PHX_CLOSE:
            self._reconnect("portal sent phx_close")
        elif frame.event == Event.PHX_ERROR:
            log.debug("Portal reported a channel error %s", kv(topic=frame.topic))
        elif frame.event == Event.DISCONNECT:
            reason = frame.payload.get("reason")
            self._fail(ForcedLogout(reason if isinstance(reason, str) else "unknown"))
        else:
            self._events.append(Push(frame.topic, frame.event, frame.payload))

    def handle_timeout(self, now: float) -> None:
        if self._state is _State.DISCONNECTED:
            if self._reconnect_at is not None and now >= self._reconnect_at:
                self._reconnect_at = None
                self._state = _State.CONNECTING
                self._events.append(Connect())
            return
        if self._state not in (_State.JOINING, _State.JOINED):
            return
        if self._join_deadline is not None and now >= self._join_deadline:
            self._reconnect(f"join not answered within {self.join_timeout}s")
            return
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_interval
            self._heartbeats_in_flight.add(self._write(Frame(Topic.PHOENIX, Event.HEARTBEAT)))
            if len(self._heartbeats_in_flight) > self.max_unanswered_heartbeats:
                self._reconnect(f"{len(self._heartbeats_in_flight)} heartbeats unanswered")

    # -- commands from the application -------------------------------------------------------

    def send(self, event: str, payload: dict[str, Any]) -> int:
        """Queue an application message; returns the request id its reply will carry."""
        if self._state is _State.CLOSED:
            raise ChannelClosed(f"channel {self.topic} is closed")
        for queued in self._buffer:
            if queued.event == event and queued.payload == payload:
                log.debug("Refusing to queue exact duplicate %s", kv(event_name=event))
                return queued.request_id
        message = _Queued(self._next_request_id, event, payload)
        self._next_request_id += 1
        self._buffer.append(message)
        if len(self._buffer) > self.max_buffered:
            dropped = self._buffer.popleft()
            log.warning(
                "Too many messages waiting for the portal; dropping the oldest %s",
                kv(event_name=dropped.event, limit=self.max_buffered),
            )
        self._flush_buffer()
        return message.request_id

    def close(self) -> None:
        """End the channel for good; the transport should close its socket."""
        self._state = _State.CLOSED
        self._reconnect_at = self._join_deadline = self._next_heartbeat = None

    # -- outputs ------------------------------------------------------------------------------

    def poll_transmit(self) -> str | None:
        return self._transmit.popleft() if self._transmit else None

    def poll_event(self) -> object | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        # Asked after every flush of the driver: no intermediate list.
        best = self._reconnect_at
        for deadline in (self._join_deadline, self._next_heartbeat):
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    # -- internals ----------------------------------------------------------------------------

    def _write(self, frame: Frame) -> int:
        ref = self._next_ref
        self._next_ref += 1
        join_ref = self._join_ref if frame.topic == self.topic else None
        if frame.event == Event.PHX_JOIN:
            join_ref = ref
        self._transmit.append(encode_frame(Frame(frame.topic, frame.event, frame.payload, ref, join_ref), self.vsn))
        return ref

    def _join(self, now: float) -> None:
        self._state = _State.JOINING
        self._join_ref = self._write(Frame(self.topic, Event.PHX_JOIN, self.join_payload or {}))
        self._join_deadline = now + self.join_timeout

    def _flush_buffer(self) -> None:
        while self._state is _State.JOINED and self._buffer:
            message = self._buffer.popleft()
            ref = self._write(Frame(self.topic, message.event, message.payload))
            self._in_flight[ref] = message

    def _on_reply(self, frame: Frame, now: float) -> None:
        try:
            reply = Reply.from_json(frame.payload)
        except MessageError as exc:
            log.warning("Malformed phx_reply; ignoring %s", kv(error=exc))
            return
        ref = frame.ref
        if ref is None:
            log.warning("Discarding reply because the portal omitted the ref")
            return
        if ref == self._join_ref and self._state is _State.JOINING and frame.topic == self.topic:
            self._on_join_reply(reply)
        elif ref in self._heartbeats_in_flight:
            self._heartbeats_in_flight.discard(ref)
        elif ref in self._in_flight:
            message = self._in_flight.pop(ref)
            if reply.status is ReplyStatus.ERROR and reply.reason == UNMATCHED_TOPIC and frame.topic == self.topic:
                # Keep the request: it is re-sent, in order, once the new join succeeds.
                self._buffer = deque(sorted([*self._buffer, message], key=lambda m: m.request_id))
                if self._state is _State.JOINED:
                    log.info("Portal lost our join; joining again %s", kv(topic=self.topic))
                    self._join(now)
                return
            self._events.append(ReplyReceived(message.request_id, message.event, reply))
        else:
            log.debug("Reply to an unknown ref %s", kv(ref=ref, topic=frame.topic))

    def _on_join_reply(self, reply: Reply) -> None:
        self._join_deadline = None
        if reply.status is ReplyStatus.ERROR:
            self._fail(LoginFailed(reply.reason or "unknown"))
            return
        self._state = _State.JOINED
        self.backoff.reset()
        self._events.append(Joined(self.topic, reply.response))
        self._flush_buffer()

    def _reconnect(self, reason: str) -> None:
        log.info("Reconnecting to portal %s", kv(reason=reason))
        self._state = _State.CLOSING
        self._join_deadline = self._next_heartbeat = None
        self._events.append(Reconnect(reason))

    def _fail(self, event: LoginFailed | ForcedLogout | GaveUp) -> None:
        self.close()
        self._events.append(event)
