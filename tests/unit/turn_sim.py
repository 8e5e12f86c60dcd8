"""An in-process simulated TURN relay (sans-IO) and a tiny simulated network, for unit tests.

``TurnSim.handle(packet, from_addr, now) -> [(dst, bytes)]`` behaves like coturn with
``use-auth-secret`` (and like Firezone's relay where they agree): BINDING answers with
XOR-MAPPED-ADDRESS; an unauthenticated request gets 401 + REALM + NONCE (unsigned); an unknown
nonce gets 438; a wrong TURN-REST password gets 401 (unsigned, like coturn); so do 437 to ALLOCATE
and 441 (another username on the 5-tuple); successes are signed
with the long-term key. ALLOCATE on an existing 5-tuple and REFRESH/CHANNEL-BIND without an
allocation get 437; REFRESH with LIFETIME=0 deletes. ChannelData is relayed between allocations
on the same relay. Switches: ``reboot()``, ``black_hole``, ``error_key``, ``sign_successes``,
``inject``, ``refuse``, ``quota``, ``lifetime``, ``linger`` (coturn answers ALLOCATE with 437 for a moment after a
delete). ``Net`` routes datagrams between agents (``Node``/``Allocation``) and relays with a
fake clock: ``net.run(until)`` jumps from one ``poll_timeout``/delivery to the next.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from connlib.core import stun
from connlib.core.addr import Address
from connlib.core.allocation import Allocation, RelaySocket
from connlib.core.credentials import REALM, long_term_key, rest_credentials, rest_password
from connlib.core.messages import RelayConfig
from connlib.core.node import Node
from connlib.core.sansio import Transmit
from connlib.core.stun import Class, Message, Method

DEFAULT_LIFETIME, MAX_LIFETIME, CHANNEL_LIFETIME = 600, 3600, 600.0
FAR_EXPIRY = 4_102_444_800  # 2100-01-01: the sim does not check expiry (the clock is fake)
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    441: "Wrong Credentials",
    486: "Allocation Quota Reached",
    442: "Unsupported Transport Protocol",
    500: "Server Error",
}
_ids = itertools.count(1)
Handler = Callable[[Message, Address, bytes, float], tuple[Address, bytes]]


def family(addr: Address) -> int:
    return ipaddress.ip_address(addr[0]).version


@dataclass
class SimAllocation:
    client: Address
    relayed: list[Address]
    expires_at: float
    channels: dict[int, tuple[Address, float]] = field(default_factory=dict)  # number -> (peer, expiry)
    deleted: bool = False  # REFRESH(LIFETIME=0) received, session still lingering (``linger``)
    username: str = ""  # coturn answers another username on this 5-tuple with 441


class TurnSim:
    def __init__(
        self,
        v4: Address | None = None,
        v6: Address | None = None,
        *,
        secret: str = "sim-secret",
        realm: str = REALM,
        latency: float = 0.0,
    ) -> None:
        n = next(_ids)
        self.v4, self.v6 = (v4 or (f"192.0.2.{n}", 3478)) if v4 or not v6 else None, v6
        self.secret, self.realm, self.latency = secret, realm, latency
        self.black_hole = False  # drop everything (relay gone / partitioned)
        self.error_key: bytes | None = None  # sign every error with this (wrong) key
        self.sign_successes = True
        self.lifetime = DEFAULT_LIFETIME  # granted when the client asks for none
        self.linger = 0.0  # coturn keeps a deleted allocation (437 to ALLOCATE) this long after
        self.inject: dict[Method | int, int] = {}  # one-shot error code for the next authenticated request
        self.refuse: dict[Method | int, int] = {}  # error code for every authenticated request (until cleared)
        self.quota: int | None = None  # allocations at once (coturn --total-quota): 486 beyond
        self.allocations: dict[Address, SimAllocation] = {}
        self.nonces: dict[Address, str] = {}
        self.requests: list[tuple[float, Method | int, bool]] = []  # (now, method, signed)
        self._nonce_n = itertools.count(1)
        self._ports = itertools.count(49152)

    # -- test controls --------------------------------------------------------------------
    @property
    def addresses(self) -> list[Address]:
        return [a for a in (self.v4, self.v6) if a is not None]

    @property
    def socket(self) -> RelaySocket:
        return RelaySocket(self.v4, self.v6)

    def credentials(self, salt: str = "client") -> tuple[str, str]:
        return rest_credentials(self.secret, FAR_EXPIRY, salt)

    def config(self, rid: str, salt: str = "client") -> RelayConfig:
        return RelayConfig(rid, self.v4, self.v6, *self.credentials(salt), realm=self.realm)

    def reboot(self, new_secret: str | None = None) -> None:
        """Forget every allocation and nonce; optionally start with a new secret."""
        self.allocations.clear()
        self.nonces.clear()
        self.secret = new_secret or self.secret

    def expire_nonces(self) -> None:
        self.nonces.clear()

    def address_for(self, dst: Address) -> Address | None:
        return self.v4 if family(dst) == 4 else self.v6

    def count(self, method: Method) -> int:
        return sum(1 for _, m, _ in self.requests if m == method)

    # -- the relay -------------------------------------------------------------------------
    def handle(self, packet: bytes, from_: Address, now: float) -> list[tuple[Address, bytes]]:
        if self.black_hole:
            return []
        for client, alloc in list(self.allocations.items()):
            if now >= alloc.expires_at:
                del self.allocations[client]
                if alloc.deleted:  # the session is closed with it, nonce and all
                    self.nonces.pop(client, None)
        if stun.is_channel_data(packet):
            return self._relay(packet, from_, now)
        try:
            msg = stun.decode(packet)
        except stun.StunParseError:
            return []
        if msg.cls != Class.REQUEST:
            return []
        self.requests.append((now, msg.method, "MESSAGE-INTEGRITY" in msg))
        if msg.method == Method.BINDING:
            return [self._reply(from_, msg, [("XOR-MAPPED-ADDRESS", from_)], None)]
        username, nonce = msg.get("USERNAME"), msg.get("NONCE")
        if "MESSAGE-INTEGRITY" not in msg or username is None or nonce is None:
            return [self._challenge(from_, msg, 401)]
        if self.nonces.get(from_) != nonce:
            self.nonces.pop(from_, None)
            return [self._challenge(from_, msg, 438)]
        key = long_term_key(username, self.realm, rest_password(self.secret, username))
        if not msg.verify_integrity(key):
            return [self._challenge(from_, msg, 401)]
        if msg.method in self.inject:
            return [self._error(from_, msg, self.inject.pop(msg.method), key)]
        if msg.method in self.refuse:
            return [self._error(from_, msg, self.refuse[msg.method], key)]
        held = self.allocations.get(from_)
        if held is not None and held.username != username and msg.method != Method.ALLOCATE:
            return [self._error(from_, msg, 441, None)]  # like coturn (unsigned): the 5-tuple is someone else's
        handlers: dict[Method | int, Handler] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CHANNEL_BIND: self._channel_bind,
        }
        handler = handlers.get(msg.method)
        if handler is None:
            return [self._error(from_, msg, 400, key)]
        return [handler(msg, from_, key, now)]

    def _allocate(self, msg: Message, from_: Address, key: bytes, now: float) -> tuple[Address, bytes]:
        if from_ in self.allocations:
            return self._error(from_, msg, 437, None)  # unsigned, like coturn
        if self.quota is not None and len(self.allocations) >= self.quota:
            return self._error(from_, msg, 486, key)
        if msg.get("REQUESTED-TRANSPORT") != stun.TRANSPORT_UDP:
            return self._error(from_, msg, 442 if "REQUESTED-TRANSPORT" in msg else 400, key)
        want_v6 = msg.get("ADDITIONAL-ADDRESS-FAMILY") == stun.ADDRESS_FAMILY_IPV6 or self.v4 is None
        hosts = [a[0] for a in (self.v4, self.v6 if want_v6 else None) if a is not None]
        relayed = [(host, next(self._ports)) for host in hosts]
        lifetime = self._lifetime(msg)
        self.allocations[from_] = SimAllocation(from_, relayed, now + lifetime, username=msg.get("USERNAME"))
        attrs = [("XOR-RELAYED-ADDRESS", r) for r in relayed]
        return self._reply(from_, msg, attrs + [("LIFETIME", lifetime), ("XOR-MAPPED-ADDRESS", from_)], key)

    def _refresh(self, msg: Message, from_: Address, key: bytes, now: float) -> tuple[Address, bytes]:
        alloc = self.allocations.get(from_)
        if alloc is None:
            return self._error(from_, msg, 437, key)
        lifetime = 0 if alloc.deleted else self._lifetime(msg)
        if lifetime == 0 and not self.linger:
            del self.allocations[from_]
        alloc.deleted = lifetime == 0
        alloc.expires_at = now + (self.linger if lifetime == 0 else lifetime)
        return self._reply(from_, msg, [("LIFETIME", lifetime)], key)

    def _channel_bind(self, msg: Message, from_: Address, key: bytes, now: float) -> tuple[Address, bytes]:
        alloc = self.allocations.get(from_)
        if alloc is None or alloc.deleted:
            return self._error(from_, msg, 437, key)
        number, peer = msg.get("CHANNEL-NUMBER"), msg.get("XOR-PEER-ADDRESS")
        if number is None or peer is None or not stun.CHANNEL_MIN <= number <= stun.CHANNEL_MAX:
            return self._error(from_, msg, 400, key)
        clash = [n for n, (p, _) in alloc.channels.items() if (n == number) != (p == peer)]
        if clash:  # the number is bound to another peer, or the peer to another number
            return self._error(from_, msg, 400, key)
        alloc.channels[number] = (peer, now + CHANNEL_LIFETIME)
        return self._reply(from_, msg, [], key)

    def _relay(self, packet: bytes, from_: Address, now: float) -> list[tuple[Address, bytes]]:
        alloc = self.allocations.get(from_)
        try:
            number, payload = stun.decode_channel_data(packet)
        except stun.StunParseError:
            return []
        if alloc is None or alloc.deleted or number not in alloc.channels or alloc.channels[number][1] <= now:
            return []
        peer = alloc.channels[number][0]
        target = next((a for a in self.allocations.values() if peer in a.relayed), None)
        if target is None:
            return [(peer, payload)]  # a peer outside the relay: plain UDP from the relayed address
        source = next((r for r in alloc.relayed if family(r) == family(peer)), None)
        back = [n for n, (p, expiry) in target.channels.items() if p == source and expiry > now]
        return [(target.client, stun.encode_channel_data(back[0], payload))] if back else []

    # -- replies ----------------------------------------------------------------------------
    def _lifetime(self, msg: Message) -> int:
        requested = msg.get("LIFETIME")
        return self.lifetime if requested is None else min(requested, MAX_LIFETIME)

    def _reply(self, dst: Address, req: Message, attrs: list, key: bytes | None) -> tuple[Address, bytes]:
        message = Message(req.method, Class.SUCCESS, req.transaction_id, attrs + [("SOFTWARE", "turn-sim")])
        return dst, message.encode(key if self.sign_successes else None, fingerprint=True)

    def _challenge(self, dst: Address, req: Message, code: int) -> tuple[Address, bytes]:
        if code == 438 or dst not in self.nonces:
            self.nonces[dst] = f"nonce-{next(self._nonce_n)}"
        return self._error(dst, req, code, None, [("REALM", self.realm), ("NONCE", self.nonces[dst])])

    def _error(
        self, dst: Address, req: Message, code: int, key: bytes | None, extra: list | None = None
    ) -> tuple[Address, bytes]:
        attrs = [("ERROR-CODE", (code, REASONS.get(code, "Error")))] + (extra or [])
        message = Message(req.method, Class.ERROR, req.transaction_id, attrs + [("SOFTWARE", "turn-sim")])
        return dst, message.encode(self.error_key or key, fingerprint=True)


class Agent(Protocol):
    """What ``Net`` drives: a ``Node``, an ``Allocation`` or a ``Tunnel``."""

    def poll_transmit(self) -> Transmit | None: ...
    def poll_timeout(self) -> float | None: ...
    def handle_timeout(self, now: float) -> None: ...
    def handle_input(self, packet: bytes, from_: Address, local: Address | None, now: float) -> bool: ...


AgentT = TypeVar("AgentT", bound=Agent)


class Net:
    """Delivers datagrams between agents (a ``Node`` or an ``Allocation``) and ``TurnSim`` relays.

    Each agent has one address per family; a relay's one-way ``latency`` applies both ways.
    ``drop(src, dst, payload) -> bool`` may lose packets. ``received`` collects relayed app data.
    """

    def __init__(self, *relays: TurnSim, now: float = 0.0) -> None:
        self.now = now
        self.relays: dict[Address, TurnSim] = {}
        self.agents: dict[Address, Agent] = {}
        self.sent: list[tuple[float, Address, Address, bytes]] = []  # every datagram an agent sent
        self.received: list[tuple[float, Agent, object]] = []  # (now, agent, ChannelData | (peer, data))
        self.drop = lambda src, dst, payload: False
        self._queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._seq = itertools.count()
        for relay in relays:
            self.add_relay(relay)

    def add_relay(self, relay: TurnSim) -> TurnSim:
        self.relays.update({addr: relay for addr in relay.addresses})
        return relay

    def attach(self, agent: AgentT, *addrs: Address) -> AgentT:
        self.agents.update({addr: agent for addr in addrs})
        return agent

    def _source(self, agent: Agent, dst: Address) -> Address | None:
        return next((a for a, g in self.agents.items() if g is agent and family(a) == family(dst)), None)

    def _send(self, src: Address, dst: Address, payload: bytes, now: float) -> None:
        relay = self.relays.get(dst) or self.relays.get(src)
        if not self.drop(src, dst, payload):
            at = now + (relay.latency if relay else 0.0)
            heapq.heappush(self._queue, (at, next(self._seq), src, dst, payload))

    def transmit(self, agent: Agent, transmit: Transmit) -> None:
        """Send something an agent handed out directly (e.g. ``encapsulate``'s result)."""
        src = self._source(agent, transmit.dst)
        if src is not None:  # no address of that family: the datagram cannot leave the host
            self.sent.append((self.now, src, transmit.dst, transmit.payload))
            self._send(src, transmit.dst, transmit.payload, self.now)

    def flush(self) -> None:
        """Put everything the agents want to send on the wire."""
        for agent in dict.fromkeys(self.agents.values()):
            while (transmit := agent.poll_transmit()) is not None:
                self.transmit(agent, transmit)

    def _deliver(self, src: Address, dst: Address, payload: bytes) -> None:
        if dst in self.relays:
            relay = self.relays[dst]
            for out_dst, out in relay.handle(payload, src, self.now):
                out_src = relay.address_for(out_dst)
                assert out_src is not None  # the relay answers in the family it heard from
                self._send(out_src, out_dst, out, self.now)
        elif (agent := self.agents.get(dst)) is not None:
            result: object  # ChannelData or (peer, data) from decapsulate; a bool from handle_input
            if isinstance(agent, Allocation | Node) and stun.is_channel_data(payload):
                result = agent.decapsulate(src, payload, self.now)
            else:
                result = agent.handle_input(payload, src, dst, self.now)
            if result not in (True, False, None):
                self.received.append((self.now, agent, result))

    def run(self, until: float, max_steps: int = 100_000) -> None:
        """Advance the fake clock to ``until``, delivering packets and firing timeouts on the way."""
        agents = list(dict.fromkeys(self.agents.values()))
        for _ in range(max_steps):
            self.flush()
            deadlines = [t for a in agents if (t := a.poll_timeout()) is not None]
            deadlines += [self._queue[0][0]] if self._queue else []
            if not deadlines or min(deadlines) > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, min(deadlines))
            while self._queue and self._queue[0][0] <= self.now:
                _, _, src, dst, payload = heapq.heappop(self._queue)
                self._deliver(src, dst, payload)
            for agent in agents:
                if (t := agent.poll_timeout()) is not None and t <= self.now:
                    agent.handle_timeout(self.now)
        raise AssertionError(f"no progress after {max_steps} steps at t={self.now}: busy loop?")

    def step(self, dt: float) -> None:
        self.run(self.now + dt)
