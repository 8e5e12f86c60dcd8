"""The simulated processes: a client or gateway (``SimPeer``) and a relay with its portal agent.

Each is driven like the asyncio code drives the real objects, with the world's clock:

- ``ChannelHolder`` is ``connlib.aio.portal_client.PortalClient`` without sockets: it dials the
  world's portal (``admit``/``open``), feeds frames both ways with a delay, and turns the
  ``PhoenixChannel``'s events into dials, closes and pushes;
- ``SimPeer`` is ``connlib.app.peer.Peer`` plus ``connlib.aio.driver.Driver``: a real ``Tunnel``
  and the real ``PeerSession``; after every input it drains transmits into the network and events
  into the session, as the driver's ``_flush`` does;
- ``RelayAgent`` is the relay container's presence agent: it joins the portal on topic ``relay``
  with its ``stamp_secret``; its ``SimRelay`` answers TURN.

``deadline`` is when ``timeout(now)`` is due next; the world keeps it current after each input.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from connlib.app.session import PeerSession, SessionConfig
from connlib.core.allocation import ChannelTimes
from connlib.core.messages import Topic, Vsn
from connlib.core.phoenix import (
    ChannelClosed,
    Connect,
    ForcedLogout,
    GaveUp,
    Hiccup,
    Joined,
    LoginFailed,
    PhoenixChannel,
    Push,
    Reconnect,
    ReconnectBackoff,
    ReplyReceived,
)
from connlib.core.tunnel import Tunnel
from fake_portal.identity import Endpoint, relay_id_from_name, salt_for

from .relay import SimRelay

if TYPE_CHECKING:
    from .world import World

TOKEN = "sim-token"
WS_DELAY = 0.015
REPORT_INTERVAL = 10.0  # the peers' stream reports (lines, stream_stats): no invariant reads them


class ChannelHolder:
    """One Phoenix channel to the world's portal (see the module docstring)."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.sid: int | None = None
        self.channel = self._new_channel()
        self.frozen = False  # a paused process: no timers, no input
        self.deadline: float | None = None
        self.joined_since: float | None = None  # joined to the portal since (None: not joined)

    def _new_channel(self) -> PhoenixChannel:
        raise NotImplementedError

    def endpoint(self) -> Endpoint:
        raise NotImplementedError

    def on_push(self, event: str, payload: dict[str, Any], now: float) -> None: ...

    def on_state(self, state: str, now: float) -> None:
        if state == "joined":
            self.joined_since = now
        elif state in ("disconnected", "closed"):
            self.joined_since = None

    # ------------------------------------------------------------------ transport
    def dial(self, now: float) -> None:
        self.on_state("connecting", now)
        portal = self.world.portal
        if portal is None:
            self.channel.disconnected(now, reason="connect failed: refused")
            return
        if self.world.ws_blocked(self):
            self.channel.disconnected(now, reason="connect failed: TimeoutError")
            return
        endpoint = self.endpoint()
        rejection = portal.admit(endpoint, now)
        if rejection is not None:
            self.channel.disconnected(now, reason=f"HTTP {rejection.status}", retry_after=rejection.retry_after)
            return
        self.sid = portal.open(endpoint, now)
        self.world.ws_holders[self.sid] = self
        self.channel.connected(now)
        self.on_state("connected", now)

    def start_dial(self) -> None:
        """A scheduled first dial (process start)."""
        self.dial(self.world.now)
        self.pump(self.world.now)

    def frame_in(self, sid: int, text: str) -> None:
        now = self.world.now
        if sid == self.sid and not self.frozen:
            self.channel.handle_input(text, now)
            self.pump(now)

    def ws_closed(self, sid: int, reason: str) -> None:
        now = self.world.now
        if sid != self.sid:
            return
        self.sid = None
        self.channel.disconnected(now, reason=f"socket closed ({reason})")
        self.pump(now)

    def hang_up(self, now: float, reason: str) -> None:
        """Our side closes the socket (Reconnect, a stop or a crash)."""
        sid, self.sid = self.sid, None
        if sid is not None:
            self.world.ws_to_portal_closed(sid, reason)
        self.channel.disconnected(now, reason=reason)

    def pump(self, now: float) -> None:
        """Drain the channel: frames to the portal, events to us; until nothing is left."""
        while True:
            while (text := self.channel.poll_transmit()) is not None:
                if self.sid is not None:
                    self.world.ws_to_portal(self.sid, text)
            event = self.channel.poll_event()
            if event is None:
                break
            self.world.trace("phx", self.name, event)
            match event:
                case Push(event=name, payload=payload):
                    self.on_push(name, payload, now)
                case Joined():
                    self.on_state("joined", now)
                case Hiccup():
                    self.on_state("disconnected", now)
                case Connect():
                    self.dial(now)
                case Reconnect(reason=reason):
                    self.hang_up(now, reason)
                case LoginFailed() | ForcedLogout() | GaveUp():
                    self.world.violation("portal-gave-up", f"{self.name}: {event}")
                case ReplyReceived():
                    pass
        self.after_input(now)

    def after_input(self, now: float) -> None:
        self.deadline = self.channel.poll_timeout()

    def timeout(self, now: float) -> None:
        if self.frozen:
            return
        deadline = self.channel.poll_timeout()
        if deadline is not None and deadline <= now:
            self.channel.handle_timeout(now)
        self.pump(now)


class SimPeer(ChannelHolder):
    """A client or gateway: Tunnel + PeerSession + portal channel, driven like ``Peer``."""

    def __init__(self, world: World, role: str, peer_id: str, ip: str, *, connect_to: str | None, rate: float):
        self.role, self.peer_id, self.ip = role, peer_id, ip
        self.connect_to, self.rate = connect_to, rate
        self.port = 40000
        self.boots = 0
        self.idle_until = 0.0  # a stream_idle fault: nothing sent, no connection, until then
        super().__init__(world, peer_id)
        self._boot(world.now)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def _new_channel(self) -> PhoenixChannel:
        backoff = ReconnectBackoff(rng=random.Random(self.world.rng.getrandbits(32)))
        return PhoenixChannel(self.role, {}, backoff=backoff, vsn=Vsn.V1)

    def endpoint(self) -> Endpoint:
        key = f"connlib-{self.role}-{self.peer_id}"
        return Endpoint(Topic(self.role), Vsn.V1, TOKEN, self.peer_id, self.peer_id, self.peer_id, key)

    @property
    def salt(self) -> str:
        return salt_for(f"connlib-{self.role}-{self.peer_id}")

    def _boot(self, now: float) -> None:
        world = self.world
        seed = world.rng.getrandbits(32)
        self.tunnel = Tunnel(
            self.role,
            now,
            seed=seed,
            disabled_fixes=world.disabled_fixes,
            keepalive=world.keepalive,
            channel_times=ChannelTimes(world.channel_lifetime),
        )
        self.tunnel.set_host_candidates([self.addr])
        config = SessionConfig(
            self.role, self.peer_id, self.connect_to, rate=self.rate, report_interval=REPORT_INTERVAL
        )
        self.session = PeerSession(config, self.tunnel, now)
        self.joined_since: float | None = None
        world.schedule(now, self.start_dial)

    def restart(self, now: float) -> None:
        """The process dies and starts again: new socket port, new state, same id."""
        self.hang_up(now, "process restarted")
        self.boots += 1
        self.port = 40000 + self.boots
        self.idle_until = 0.0
        self.channel = self._new_channel()
        self._boot(now)

    def go_idle(self, now: float, until: float) -> None:
        """The client has nothing to send until ``until``: its stream pauses and it drops the
        connection (the gateway's fails by ICE timeout), so the channels it used go unused and
        lapse. The next datagram after ``until`` asks for a connection again. A client that is
        not streaming yet (no connection up) just goes on connecting."""
        idle_until = max(self.idle_until, until)
        if self.connect_to is None or not self.session.pause_stream(idle_until):
            return
        self.idle_until = idle_until
        self.tunnel.drop_connection(self.connect_to)
        self.flush(now)

    def idle(self, now: float) -> bool:
        return self.idle_until > now

    # ------------------------------------------------------------------ portal → session
    def on_push(self, event: str, payload: dict[str, Any], now: float) -> None:
        self.session.handle_portal_message(event, payload, now)
        self.flush(now)

    def on_state(self, state: str, now: float) -> None:
        self.session.handle_portal_state(state, now)
        super().on_state(state, now)
        self.flush(now)

    # ------------------------------------------------------------------ the driver
    def udp_in(self, payload: bytes, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        if dst != self.addr:
            return  # a datagram for the socket of a previous boot
        self.tunnel.handle_input(payload, src, dst, now)  # dst is our address
        self.flush(now)

    def timeout(self, now: float) -> None:
        deadline = self.tunnel.poll_timeout()
        if deadline is not None and deadline <= now:
            self.tunnel.handle_timeout(now)
        if self.session.poll_timeout() <= now:  # type: ignore[operator]
            self.session.handle_timeout(now, self.world.unix(now))
        super().timeout(now)  # the channel's timers, then flush via after_input

    def flush(self, now: float) -> None:
        world, tunnel, session, channel = self.world, self.tunnel, self.session, self.channel
        addr, unix, udp = self.addr, world.unix(now), world.udp
        poll_transmit, poll_event = tunnel.poll_transmit, tunnel.poll_event
        for _ in range(1000):
            # Another pass only after the session was handed something: sending datagrams into
            # the network changes nothing here, so a pass that only sent would find nothing new.
            progressed = False
            while (transmit := poll_transmit()) is not None:
                udp(addr, transmit.dst, transmit.payload)
            while (event := poll_event()) is not None:
                world.trace("ev", self.peer_id, event)
                session.handle_tunnel_event(event, now, unix)
                progressed = True
            if session.needs_wakeup:
                session.handle_timeout(now, unix)
                progressed = True
            while (line := session.poll_line()) is not None:
                world.observe_line(self, line, now)
            while (signal := session.poll_signal()) is not None:
                try:
                    channel.send(signal.event, signal.payload)
                except ChannelClosed:
                    pass
                progressed = True
            if not progressed:
                break
        while (text := channel.poll_transmit()) is not None:
            if self.sid is not None:
                world.ws_to_portal(self.sid, text)
        if channel.poll_event() is not None:
            raise AssertionError("channel events are drained by pump")
        self.deadline = _min(tunnel.poll_timeout(), session.poll_timeout(), channel.poll_timeout())

    def after_input(self, now: float) -> None:
        self.flush(now)


class RelayAgent(ChannelHolder):
    """A relay: its TURN model and its presence agent on the portal."""

    def __init__(self, world: World, index: int, secret: str) -> None:
        self.index = index
        self.generation = 0
        self.relay = SimRelay(f"relay-{index}", self._ip(), secret, channel_lifetime=world.channel_lifetime)
        self.up = True
        super().__init__(world, f"relay-{index}")
        self.rid = relay_id_from_name(self.name)
        world.schedule(world.now, self.start_dial)

    def _ip(self) -> str:
        return f"10.9.{self.index}.{self.generation + 1}"

    def _new_channel(self) -> PhoenixChannel:
        backoff = ReconnectBackoff(rng=random.Random(self.world.rng.getrandbits(32)))
        return PhoenixChannel("relay", {"stamp_secret": self.relay.secret}, backoff=backoff)

    def endpoint(self) -> Endpoint:
        addr = f"{self.relay.ip}:{self.relay.port}"
        return Endpoint(Topic.RELAY, Vsn.V1, TOKEN, self.rid, self.name, relay_addrs=(addr,))

    def timeout(self, now: float) -> None:
        if self.up:
            super().timeout(now)

    def after_input(self, now: float) -> None:
        self.deadline = self.channel.poll_timeout() if self.up and not self.frozen else None

    # ------------------------------------------------------------------ faults
    def stop(self, now: float) -> None:
        self.up = False
        self.hang_up(now, "relay stopped")
        self.deadline = None

    def start(self, now: float, secret: str | None) -> None:
        """Boot: state lost; a new secret if given; the agent joins the portal again."""
        self.relay.reboot(secret)
        self.up, self.frozen = True, False
        self.channel = self._new_channel()
        self.dial(now)
        self.pump(now)

    def rotate(self, now: float, secret: str) -> None:
        """New credentials without a reboot: allocations stay; the agent re-joins with the secret."""
        self.relay.secret = secret
        self.hang_up(now, "secret rotated")
        self.channel = self._new_channel()
        self.dial(now)
        self.pump(now)

    def move(self, now: float) -> None:
        """A new address (state lost), announced by a fresh join."""
        self.world.unroute(self.relay.ip)
        self.generation += 1
        self.relay.move(self._ip())
        self.world.route(self.relay.ip, self)
        self.hang_up(now, "address changed")
        self.channel = self._new_channel()
        self.dial(now)
        self.pump(now)


def _min(a: float | None, b: float | None, c: float | None) -> float | None:
    """The earliest of three deadlines (None: none); asked after every flush, so no list."""
    if b is not None and (a is None or b < a):
        a = b
    if c is not None and (a is None or c < a):
        a = c
    return a
