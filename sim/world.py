"""``World``: the whole system in one process, on a fake clock and one seeded ``random.Random``.

Contents: the real ``fake_portal.core.Portal``; a client and a gateway (``SimPeer``: real Tunnel,
Node, Allocation, ICE, PhoenixChannel and PeerSession); ``relays`` relays (``RelayAgent``: a
``SimRelay`` and its portal agent); the ``Network``. Contract:

- ``run(until)`` advances time from one due thing to the next: a scheduled callback (datagram
  deliveries, websocket frames, faults, checks) or an actor's ``deadline``. Nothing reads a clock
  or draws OS randomness; the only rng is ``World.rng``.
- every datagram, websocket frame and event goes through ``trace``, which feeds a SHA-256: two
  runs of the same seed and schedule have the same ``digest()`` (byte-for-byte replay).
- ``violation(kind, detail)`` records a broken invariant and stops the run.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from connlib.app import lines
from fake_portal.config import PortalConfig
from fake_portal.core import Close, Portal, Send
from fake_portal.eventlog import EventLog

from .actors import TOKEN, WS_DELAY, ChannelHolder, RelayAgent, SimPeer
from .net import Network
from .schedule import CHANNEL_LIFETIME, KEEPALIVE, RATE

UNIX_OFFSET = 1_800_000_000.0  # 2027-01-15: the wall clock credentials' expiry is read against
CLIENT_ID, GATEWAY_ID = "client", "gateway"
MAX_SPINS = 2000  # timeouts of one actor within SPIN_WINDOW: a busy loop
SPIN_WINDOW = 0.001
CLOCK_STEP = 1e-6


@dataclass(frozen=True)
class Violation:
    at: float
    kind: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "kind": self.kind, "detail": self.detail}


class ErrorRecords(logging.Handler):
    """Collects ERROR records emitted while a world runs (each one is a bug)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _NullEventLog(EventLog):
    keeps = False  # the portal builds no frame entries for it

    def __init__(self) -> None:
        super().__init__(1)

    def record(self, ts: float, kind: str, **fields: Any) -> None:
        pass


class World:
    def __init__(
        self,
        seed: int,
        *,
        relays: int = 3,
        disabled_fixes: Iterable[str] = (),
        rate: float = RATE,
        keepalive: float = KEEPALIVE,
        channel_lifetime: float = CHANNEL_LIFETIME,
        trace: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.disabled_fixes = frozenset(disabled_fixes)
        self.keepalive = keepalive
        self.channel_lifetime = channel_lifetime  # the relays' (coturn's --channel-lifetime) and the peers'
        self.net = Network(self.rng)
        self._heap: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()
        self._hash = hashlib.sha256() if trace else None
        self.trace_items = 0
        self.violations: list[Violation] = []
        self.stopped = False
        self.line_observers: list[Callable[[SimPeer, lines.Line, float], None]] = []
        self.udp_observers: list[Callable[[tuple[str, int], tuple[str, int], bytes, float], None]] = []
        self.portal_config = PortalConfig(token=TOKEN, event_log_size=16)
        self.portal: Portal | None = None
        self.portal_boots = 0
        self.ws_holders: dict[int, ChannelHolder] = {}
        self.ws_black_holes: dict[str, float] = {}  # holder name → until
        self.routes: dict[str, SimPeer | RelayAgent] = {}
        self._start_portal()
        self.relays = [RelayAgent(self, i + 1, self._secret()) for i in range(relays)]
        self._by_rid = {agent.rid: agent for agent in self.relays}  # a relay's id is its name's: fixed
        for agent in self.relays:
            self.route(agent.relay.ip, agent)
        self.gateway = SimPeer(self, "gateway", GATEWAY_ID, "10.0.2.1", connect_to=None, rate=rate)
        self.client = SimPeer(self, "client", CLIENT_ID, "10.0.1.1", connect_to=GATEWAY_ID, rate=rate)
        self.peers = [self.client, self.gateway]
        for peer in self.peers:
            self.route(peer.ip, peer)
        self.actors: list[ChannelHolder] = [*self.peers, *self.relays]
        self.active_faults: dict[int, Any] = {}
        self.last_heal = 0.0
        self.last_disturbance = 0.0  # the last fault start or heal

    def new_secret(self) -> str:
        return self._secret()

    def _secret(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def unix(self, now: float) -> float:
        return now + UNIX_OFFSET

    # ------------------------------------------------------------------ plumbing
    def schedule(self, at: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), fn, args))

    def trace(self, kind: str, who: str, item: object) -> None:
        if self._hash is not None:
            self._hash.update(f"{self.now:.6f}|{kind}|{who}|{item!r}\n".encode())
        self.trace_items += 1

    def digest(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""

    def violation(self, kind: str, detail: str) -> None:
        if not self.stopped:
            self.violations.append(Violation(self.now, kind, detail))
            self.stopped = True

    def observe_line(self, peer: SimPeer, line: lines.Line, now: float) -> None:
        self.trace("line", peer.peer_id, line)
        for observer in self.line_observers:
            observer(peer, line, now)

    def route(self, ip: str, actor: SimPeer | RelayAgent) -> None:
        self.routes[ip] = actor

    def unroute(self, ip: str) -> None:
        self.routes.pop(ip, None)

    # ------------------------------------------------------------------ datagrams
    def udp(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        now = self.now
        if self._hash is not None:
            self.trace("udp", f"{src}>{dst}", payload)
        else:
            self.trace_items += 1  # what trace() counts; the text is built only for the digest
        for observer in self.udp_observers:
            observer(src, dst, payload, now)
        heap, deliver = self._heap, self._deliver
        for delay in self.net.fate(src[0], dst[0], now):
            heapq.heappush(heap, (now + delay, next(self._seq), deliver, (src, dst, payload)))

    def _deliver(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        actor = self.routes.get(dst[0])
        if type(actor) is SimPeer:
            actor.udp_in(payload, src, dst, self.now)
        elif type(actor) is RelayAgent and actor.up and not actor.frozen:
            now = self.now
            for out_src, out_dst, data in actor.relay.handle(payload, src, dst, now, self.unix(now)):
                self.udp(out_src, out_dst, data)

    # ------------------------------------------------------------------ the portal's websockets
    def _start_portal(self) -> None:
        self.portal = Portal(self.portal_config, unix_offset=UNIX_OFFSET)
        self.portal.events = _NullEventLog()  # the dashboard's log: nobody reads it here
        self.portal_boots += 1
        self.ws_holders = {}

    def stop_portal(self) -> None:
        """The portal process dies: every socket closes, its state is gone."""
        self.portal = None
        holders, self.ws_holders = self.ws_holders, {}
        for sid, holder in sorted(holders.items()):
            self.schedule(self.now + WS_DELAY, holder.ws_closed, sid, "portal stopped")

    def start_portal(self) -> None:
        self._start_portal()

    def ws_blocked(self, holder: ChannelHolder) -> bool:
        """A silent cut between ``holder`` and the portal: frames vanish, dials time out."""
        until = self.ws_black_holes.get(holder.name)
        return until is not None and until > self.now

    def ws_to_portal(self, sid: int, text: str) -> None:
        self.trace("ws>", str(sid), text)
        holder = self.ws_holders.get(sid)
        if holder is not None and self.ws_blocked(holder):
            return
        self.schedule(self.now + WS_DELAY, self._portal_frame, self.portal_boots, sid, text)

    def ws_to_portal_closed(self, sid: int, reason: str) -> None:
        self.ws_holders.pop(sid, None)
        self.schedule(self.now + WS_DELAY, self._portal_closed, self.portal_boots, sid, reason)

    def _portal_frame(self, boot: int, sid: int, text: str) -> None:
        if self.portal is not None and boot == self.portal_boots:
            self.portal.handle_input(sid, text, self.now)
            self.drain_portal()

    def _portal_closed(self, boot: int, sid: int, reason: str) -> None:
        if self.portal is not None and boot == self.portal_boots:
            self.portal.closed(sid, self.now, reason)
            self.drain_portal()

    def drain_portal(self) -> None:
        portal = self.portal
        if portal is None:
            return
        while (out := portal.poll_transmit()) is not None:
            holder = self.ws_holders.get(out.sid)
            if holder is None:
                continue
            match out:
                case Send(sid=sid, text=text):
                    self.trace("ws<", str(sid), text)
                    if self.ws_blocked(holder):
                        continue
                    self.schedule(self.now + WS_DELAY, holder.frame_in, sid, text)
                case Close(sid=sid, reason=reason):
                    self.ws_holders.pop(sid, None)
                    self.schedule(self.now + WS_DELAY, holder.ws_closed, sid, reason)

    # ------------------------------------------------------------------ the loop
    def run(self, until: float) -> None:
        heap, actors, pop, never = self._heap, self.actors, heapq.heappop, float("inf")
        spins = 0
        last: tuple[float, Any] = (-1.0, None)
        while not self.stopped:
            best: Any = None
            due = heap[0][0] if heap else never
            for actor in actors:
                deadline = actor.deadline
                if deadline is not None and deadline < due:
                    due, best = deadline, actor
            portal = self.portal
            if portal is not None:
                portal_due = portal.poll_timeout()
                if portal_due is not None and portal_due < due:
                    due, best = portal_due, portal
            if due > until:
                self.now = max(self.now, until)
                return
            if due > self.now:
                self.now = due
            if best is None:
                _, _, fn, args = pop(heap)
                fn(*args)
                continue
            if last[1] is best and self.now - last[0] < SPIN_WINDOW:
                # Due again at once: a real driver's clock has moved on by the next wake-up
                # (``a + b - a < b`` in floating point makes some deadlines due "again").
                self.now += CLOCK_STEP
                spins += 1
                if spins > MAX_SPINS:
                    self.violation("timer-spin", f"{getattr(best, 'name', 'portal')} due again at {self.now:.3f}")
                    return
            else:
                spins, last = 0, (self.now, best)
            if best is self.portal:
                self.portal.handle_timeout(self.now)
                self.drain_portal()
            else:
                best.timeout(self.now)

    # ------------------------------------------------------------------ lookups
    def agent(self, name: str) -> RelayAgent:
        for agent in self.relays:
            if agent.name == name:
                return agent
        raise KeyError(name)

    def peer(self, name: str) -> SimPeer:
        return self.client if name == CLIENT_ID else self.gateway

    def agent_by_rid(self, rid: str) -> RelayAgent | None:
        return self._by_rid.get(rid)
