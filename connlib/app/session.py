"""``PeerSession``: the glue between the portal, a ``Tunnel`` and the client's echo stream, sans-IO.

It is what ``python -m connlib run`` does between its sockets, as a pure state machine so that the
asyncio :class:`~connlib.app.peer.Peer` and the deterministic simulator (``sim/``) run the same
code. Contract:

- inputs, each taking ``now`` (monotonic seconds): :meth:`handle_portal_message` (a push from the
  portal: ``init``, ``relays_presence``, signalling), :meth:`handle_portal_state` (the channel's
  ``connecting/connected/joined/disconnected/closed``), :meth:`handle_tunnel_event` (every event the
  tunnel's driver drained) and :meth:`handle_timeout` (the stream's pacing, connection requests,
  reports). ``wall`` (unix seconds) is only used for the gap lines humans read.
- commands to the tunnel are made directly on it: the caller flushes the tunnel's transmits after
  every input (the asyncio driver's ``call`` does).
- outputs: :meth:`poll_line` (JSON-line records for stdout, :mod:`connlib.app.lines`),
  :meth:`poll_signal` (``Signal`` messages for the portal), :meth:`poll_timeout`.
- :attr:`needs_wakeup` is True when a condition the session waits for (a usable relay, the
  connection up) has come true since the last ``handle_timeout``; the caller then calls
  ``handle_timeout`` at once.

The client streams numbered datagrams to its gateway at ``rate`` once the connection is up,
re-requests the connection when the gateway did not answer within ``ANSWER_TIMEOUT``, expires
lost echoes and reports every ``report_interval``; the gateway echoes whatever it receives.
:meth:`go_idle` and :meth:`resume` (``connlib run``'s SIGUSR1 and SIGUSR2) make the client idle
as the simulator's ``stream_idle`` fault does: nothing sent and no connection, until resumed.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
from dataclasses import dataclass
from typing import Any

from ..core import messages
from ..core.addr import format_address
from ..core.ice import Connected, Failed, PathLost
from ..core.logfmt import kv
from ..core.node import CandidateNew, NoRelays, RelayAdded, RelayRemoved
from ..core.tunnel import Migrating, Received, Signal, Tunnel
from . import lines
from .stream import StreamStats

log = logging.getLogger("connlib.run")

ANSWER_TIMEOUT = 5.0  # a connection request the gateway has not answered by then is sent again
RELAY_WAIT = 5.0  # how long the client waits for a first allocation before connecting anyway
CONNECT_RETRY = 1.0  # while the connection is not up, it is re-checked (and maybe re-asked) this often


class Phase(enum.Enum):
    WAIT_INIT = "wait-init"  # the client waits for the portal's first init
    WAIT_RELAY = "wait-relay"  # ... then for a first usable relay (at most RELAY_WAIT)
    CONNECTING = "connecting"  # ... then for the connection to come up
    STREAMING = "streaming"
    DONE = "done"  # ``count`` datagrams sent and every echo in or lost


@dataclass(frozen=True)
class SessionConfig:
    role: str
    peer_id: str
    connect_to: str | None = None
    rate: float = 50.0
    count: int | None = None
    report_interval: float = 1.0


class PeerSession:
    """See the module docstring."""

    def __init__(self, config: SessionConfig, tunnel: Tunnel, now: float) -> None:
        self.config = config
        self.tunnel = tunnel
        self._lines: collections.deque[lines.Line] = collections.deque()
        self._signals: collections.deque[Signal] = collections.deque()
        self.stats = StreamStats(rate=config.rate, emit=self._lines.append)
        self.initialised = False
        self.portal_joined = False
        self._connect_requested_at: float | None = None
        streams = config.role == "client" and config.connect_to is not None
        self.phase = Phase.WAIT_INIT if streams else Phase.DONE
        self._phase_deadline: float | None = None
        self._next_send: float | None = None
        self._next_report = now + config.report_interval
        self.idle = False  # go_idle until resume

    # ------------------------------------------------------------------ portal → tunnel
    def handle_portal_state(self, state: str, now: float) -> None:
        if state == "joined":
            self.portal_joined = True
        elif state in ("disconnected", "closed"):
            self.portal_joined = False
        self._lines.append(lines.PortalState(state))

    def handle_portal_message(self, event: str, payload: dict[str, Any], now: float) -> None:
        try:
            typed = messages.decode_payload(event, payload)
        except messages.MessageError as exc:
            log.warning("Ignoring malformed portal message %s", kv(event_name=event, error=exc))
            return
        match typed:
            case messages.Init():
                relays = messages.merge_relays(typed.relays)
                self._lines.append(lines.Init([r.id for r in relays]))
                self.tunnel.update_relays([], relays, now)
                if self.initialised:
                    self.tunnel.portal_reconnected(now)
                self.initialised = True
                if self.phase is Phase.WAIT_INIT:
                    self.phase, self._phase_deadline = Phase.WAIT_RELAY, now + RELAY_WAIT
            case messages.RelaysPresence():
                relays = messages.merge_relays(typed.connected)
                self._lines.append(lines.RelaysPresence(list(typed.disconnected_ids), [r.id for r in relays]))
                self.tunnel.update_relays(typed.disconnected_ids, relays, now)
            case messages.Disconnect():
                log.warning("Portal disconnected us %s", kv(reason=typed.reason))
            case _:
                self.tunnel.handle_signal(event, typed, now)

    # ------------------------------------------------------------------ tunnel → world
    def handle_tunnel_event(self, event: object, now: float, wall: float) -> None:
        match event:
            case Signal():
                if event.event == messages.Event.NO_RELAYS:
                    self._lines.append(lines.NoRelaysLine())
                self._signals.append(event)
            case Received(peer_id=peer, payload=payload):
                if self.config.role == "gateway":
                    self.tunnel.send(peer, payload, now)  # echo
                else:
                    self.stats.on_echo(payload, now, wall)
            case Connected(peer_id=peer, local=local, remote=remote):
                self._lines.append(lines.Connected(peer, local.rid, format_address(local.addr), format_address(remote)))
            case Failed(peer_id=peer, reason=reason):
                self._lines.append(lines.ConnectionFailed(peer, reason))
            case PathLost(peer_id=peer, rid=rid):
                self._lines.append(lines.PathLost(peer, rid))
            case Migrating(peer_id=peer, from_relay=old, to_relay=new):
                self._lines.append(lines.Migrating(peer, old, new))
            case RelayAdded(rid=rid):
                self._lines.append(lines.RelayAdded(rid))
                self._report_relays()
            case RelayRemoved(rid=rid, reason=reason):
                self._lines.append(lines.RelayRemoved(rid, reason))
                self._report_relays()
            case CandidateNew(candidate=candidate) if candidate.kind == "relay":
                self._report_relays()  # allocated: the relay is usable from now on
            case NoRelays():
                pass  # reported with its no_relays signal

    # ------------------------------------------------------------------ time
    @property
    def needs_wakeup(self) -> bool:
        gateway = self.config.connect_to or ""
        if self.phase is Phase.WAIT_RELAY:
            return self.tunnel.has_usable_relay()
        if self.phase is Phase.CONNECTING:
            return self.tunnel.is_connected(gateway)
        return False

    def poll_timeout(self) -> float | None:
        # Asked after every flush of the driver: no intermediate list.
        best = self._next_report
        phase = self.phase
        if phase is Phase.STREAMING:
            if self._next_send is not None and self._next_send < best:
                best = self._next_send
        elif phase in (Phase.WAIT_RELAY, Phase.CONNECTING):
            if self._phase_deadline is not None and self._phase_deadline < best:
                best = self._phase_deadline
        return best

    def handle_timeout(self, now: float, wall: float) -> None:
        gateway = self.config.connect_to or ""
        if self.phase is Phase.WAIT_RELAY and (self.tunnel.has_usable_relay() or now >= self._deadline()):
            # Ask until the connection is up (the gateway may not be online yet).
            self._ensure_connection(gateway, now)
            self.phase, self._phase_deadline = Phase.CONNECTING, now + CONNECT_RETRY
        if self.phase is Phase.CONNECTING:
            if self.tunnel.is_connected(gateway):
                # The stream starts now, and every loss after that counts.
                self.phase, self._phase_deadline, self._next_send = Phase.STREAMING, None, now
            elif now >= self._deadline():
                self._ensure_connection(gateway, now)
                self._phase_deadline = now + CONNECT_RETRY
        while self.phase is Phase.STREAMING and self._next_send is not None and now >= self._next_send:
            self._ensure_connection(gateway, now)
            if self.config.count is None or self.stats.sent < self.config.count:
                self.tunnel.send(gateway, self.stats.next_packet(now), now)
            elif not self.stats.pending:
                self.phase = Phase.DONE
                break
            self.stats.expire(now)
            self._next_send += 1.0 / self.config.rate
        if now >= self._next_report:
            self._next_report += self.config.report_interval
            if self._next_report <= now:
                self._next_report = now + self.config.report_interval
            self._report(now)

    def pause_stream(self, until: float) -> bool:
        """Send nothing before ``until`` (a stream with nothing to say for a while); False, and no
        change, unless the stream is flowing."""
        if self.phase is not Phase.STREAMING:
            return False
        self._next_send = until
        return True

    def go_idle(self, now: float) -> bool:
        """Have nothing to send until :meth:`resume`: the stream pauses and the connection to the
        gateway is dropped (nothing is sent: the gateway's side fails by ICE timeout), so the
        channels it used go unused and lapse; echoes in flight are lost. What the simulator's
        ``stream_idle`` does (``SimPeer.go_idle``), with an open end. False, and no change, unless
        the stream is flowing and not idle already."""
        if self.idle or not self.pause_stream(math.inf):
            return False
        self.idle = True
        gateway = self.config.connect_to or ""
        self.tunnel.drop_connection(gateway)
        self._lines.append(lines.StreamIdle(gateway))
        return True

    def resume(self, now: float, wall: float) -> bool:
        """End :meth:`go_idle`: the next datagram is due at ``now`` and asks for a new connection.
        The next gap is measured from ``now`` (the idle time is no gap; the wait for the new
        connection is). False, and no change, unless idle."""
        if not self.idle:
            return False
        self.idle = False
        self._next_send = now
        self.stats.restart_gap_clock(now, wall)
        self._lines.append(lines.StreamResumed(self.config.connect_to or ""))
        return True

    def _deadline(self) -> float:
        return self._phase_deadline if self._phase_deadline is not None else 0.0

    @property
    def done(self) -> bool:
        return self.config.role == "client" and self.config.connect_to is not None and self.phase is Phase.DONE

    def _ensure_connection(self, gateway: str, now: float) -> None:
        """Request the connection if there is none (never asked, or it failed), or if the gateway
        did not answer in time (it was offline, or the request was lost in a partition)."""
        state = self.tunnel.connection_state(gateway)
        unanswered = (
            state is not None
            and not state.answered
            and self._connect_requested_at is not None
            and now - self._connect_requested_at > ANSWER_TIMEOUT
        )
        if state is None or unanswered:
            if self._connect_requested_at is not None:
                log.info("Requesting the connection again %s", kv(peer=gateway))
            self._connect_requested_at = now
            self.tunnel.connect(gateway, now)

    def _report_relays(self) -> None:
        self._lines.append(lines.Relays(self.tunnel.held_relays(), self.tunnel.usable_relays()))

    def _report(self, now: float) -> None:
        self._report_relays()
        if self.config.role != "client":
            self._lines.append(lines.Status(self.tunnel.connected_peers(), self.tunnel.usable_relays()))
            return
        self.stats.expire(now)
        state = self.tunnel.connection_state(self.config.connect_to or "")
        relay = state.carrying_relay if state is not None else None
        report = self.stats.report(connected=relay is not None, relay=relay)
        self._lines.append(report)
        # The portal's dashboard shows it live. Only while joined: reports queued during an
        # outage would be stale on arrival and would fill the channel's buffer (and WARN).
        if not self.portal_joined:
            return
        try:
            recent = self.stats.gaps[-messages.MAX_STREAM_GAPS :]
            stats = messages.StreamReport(
                sent=report.sent,
                delivered=report.delivered,
                lost=report.lost,
                in_flight=report.in_flight,
                gaps=report.gaps,
                connected=relay is not None,
                relay=relay,
                peer_id=self.config.connect_to,
                recent_gaps=tuple(messages.StreamGap(g.start, g.end, g.duration_s) for g in recent),
            )
        except messages.MessageError as exc:  # the probe broke its own invariants: a bug
            log.error("Cannot report the stream to the portal %s", kv(error=exc))
            return
        self._signals.append(Signal(str(messages.Event.STREAM_STATS), stats.to_json()))

    def final_report(self) -> lines.Stream:
        return self.stats.report()

    # ------------------------------------------------------------------ outputs
    def poll_line(self) -> lines.Line | None:
        return self._lines.popleft() if self._lines else None

    def poll_signal(self) -> Signal | None:
        return self._signals.popleft() if self._signals else None
