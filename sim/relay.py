"""``SimRelay``: a TURN relay that behaves like coturn 4.6.1 with ``use-auth-secret`` (sans-IO).

Contract: ``handle(packet, src, dst, now, unix)`` takes one datagram that arrived at ``dst`` (the
listening address or one of its relayed addresses) from ``src`` and returns the datagrams to send
as ``(from, to, bytes)``. No clock, no rng: ``now`` is monotonic, ``unix`` the wall time TURN-REST
usernames are checked against. State (allocations, channels, permissions, nonces) expires lazily.

What coturn does, as observed (``tests/sim/test_calibration.py`` compares with a real
``turnserver``):

- BINDING is answered without authentication;
- a request without MESSAGE-INTEGRITY gets **401** (REALM, NONCE; unsigned); a stale or unknown
  nonce **438** (new NONCE; unsigned); a bad password or an expired REST username **401**
  (unsigned);
- ALLOCATE on a 5-tuple that has an allocation gets **437** (unsigned) unless it is a retransmit
  (same transaction id: the cached answer); over the quotas **486** (per username) / **508**
  (total), signed;
- REFRESH without an allocation: **437**, signed; CHANNEL-BIND without one: **400**, signed; under
  another username than the allocation's: **441** (unsigned);
- REFRESH(LIFETIME=0) deletes, but the allocation lingers ``LINGER`` s (ALLOCATE gets 437, a
  REFRESH revives it); once it is gone, the nonces of that 5-tuple are stale (438);
- CHANNEL-BIND: a number bound to another peer, or a peer bound under another number, gets
  **400** ("You cannot use the same peer with different channel number"), signed;
- a channel binding outlives its lifetime: coturn 4.6.1 started with ``--channel-lifetime 3
  --permission-lifetime 5`` still refused another number for the peer (and the number for another
  peer) 22 s after the last bind, and still relayed ChannelData on it after 8 s. So the model keeps
  every binding (number ↔ peer) for the allocation's life; a re-bind of the same pair refreshes it;
- lifetimes: allocation min(requested or 600, 3600) s; permission 300 s (the channel's 600 s is
  what a client plans with; the relay does not end a binding by it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connlib.core import allocation, stun
from connlib.core.addr import Address
from connlib.core.credentials import REALM, long_term_key, rest_password
from connlib.core.stun import Class, Message, Method

DEFAULT_LIFETIME, MAX_LIFETIME = 600, 3600
CHANNEL_LIFETIME, PERMISSION_LIFETIME = allocation.CHANNEL_LIFETIME, 300.0  # the default: coturn's, the RFC's
NONCE_LIFETIME = 600.0
LINGER = 1.0  # a deleted allocation is kept this long (observed: ALLOCATE gets 437 for ~1 s)
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    441: "Wrong Credentials",
    486: "Allocation Quota Reached",
    508: "Insufficient Capacity",
}
Out = tuple[Address, Address, bytes]


@dataclass
class RelayAllocation:
    client: Address
    relayed: Address
    username: str
    expires_at: float
    channels: dict[int, tuple[Address, float]] = field(default_factory=dict)  # number → (peer, nominal expiry)
    permissions: dict[str, float] = field(default_factory=dict)  # peer IP → expiry

    def channel_for(self, peer: Address) -> int | None:
        """The number ``peer`` is bound under (bindings do not lapse; see the module docstring)."""
        for number, (bound, _) in self.channels.items():
            if bound == peer:
                return number
        return None


class SimRelay:
    """See the module docstring. ``user_quota``/``total_quota`` 0 means unlimited."""

    def __init__(
        self,
        name: str,
        ip: str,
        secret: str,
        *,
        port: int = 3478,
        nonce_lifetime: float = NONCE_LIFETIME,
        channel_lifetime: float = CHANNEL_LIFETIME,
    ):
        self.name = name
        self.ip = ip
        self.port = port
        self.secret = secret
        self.nonce_lifetime = nonce_lifetime
        self.channel_lifetime = channel_lifetime  # nominal (coturn's --channel-lifetime): no binding ends by it
        self.user_quota = 0
        self.total_quota = 0
        self.boots = 0
        self._credentials: dict[tuple[str, str], tuple[str, bytes]] = {}  # see _credential
        self._reset()

    def _reset(self) -> None:
        self.allocations: dict[Address, RelayAllocation] = {}
        self.by_relayed: dict[Address, RelayAllocation] = {}
        self._nonces: dict[tuple[Address, str], float] = {}  # (5-tuple, nonce) → expiry
        self._next_port = 49152
        self._nonce_counter = 0
        self._last_allocate: dict[Address, tuple[bytes, bytes]] = {}  # 5-tuple → (tid, answer)
        self._now = 0.0

    @property
    def addr(self) -> Address:
        return (self.ip, self.port)

    # ------------------------------------------------------------------ lifecycle
    def reboot(self, secret: str | None = None) -> None:
        """State lost; the secret is kept unless a new one is given."""
        self.boots += 1
        if secret is not None:
            self.secret = secret
        self._reset()

    def move(self, ip: str) -> None:
        """A new address: the process came up on another network (state lost)."""
        self.ip = ip
        self.reboot()

    def password_for(self, username: str) -> str:
        return self._credential(username)[0]

    def _credential(self, username: str) -> tuple[str, bytes]:
        """``username``'s REST password under the current secret and its long-term key (MD5),
        each computed once per (secret, username): every signed request asks for both."""
        index = (self.secret, username)
        credential = self._credentials.get(index)
        if credential is None:
            if len(self._credentials) > 256:
                self._credentials.clear()
            password = rest_password(self.secret, username)
            credential = self._credentials[index] = (password, long_term_key(username, REALM, password))
        return credential

    def live_allocation(self, client: Address, now: float) -> RelayAllocation | None:
        allocation = self.allocations.get(client)
        if allocation is not None and allocation.expires_at <= now:
            self._delete(allocation)
            for key in [k for k in self._nonces if k[0] == client]:
                del self._nonces[key]  # the session is gone with its allocation
            return None
        return allocation

    def _delete(self, allocation: RelayAllocation) -> None:
        self.allocations.pop(allocation.client, None)
        self.by_relayed.pop(allocation.relayed, None)

    # ------------------------------------------------------------------ datagrams
    def handle(self, packet: bytes, src: Address, dst: Address, now: float, unix: float) -> list[Out]:
        self._now = now
        if dst != self.addr:
            return self._from_peer(packet, src, dst, now)
        if stun.is_channel_data(packet):
            return self._channel_data(packet, src, now)
        if not stun.is_stun(packet):
            return []
        try:
            message = stun.decode(packet)
        except stun.StunParseError:
            return []
        if message.cls != Class.REQUEST:
            return []
        if message.method == Method.BINDING:
            reply = Message(Method.BINDING, Class.SUCCESS, message.transaction_id, [("XOR-MAPPED-ADDRESS", src)])
            return [(self.addr, src, reply.encode())]
        return [(self.addr, src, wire) for wire in self._request(message, src, now, unix)]

    def _request(self, message: Message, src: Address, now: float, unix: float) -> list[bytes]:
        method, tid = message.method, message.transaction_id
        if method == Method.ALLOCATE:
            cached = self._last_allocate.get(src)
            if cached is not None and cached[0] == tid and self.live_allocation(src, now) is not None:
                return [cached[1]]
            if self.live_allocation(src, now) is not None:
                return [self._error(message, 437)]
        if "MESSAGE-INTEGRITY" not in message:
            return [self._error(message, 401, challenge=True, client=src)]
        username, nonce = message.get("USERNAME"), message.get("NONCE")
        if not isinstance(username, str) or not isinstance(nonce, str):
            return [self._error(message, 400)]
        if self.allocations.get(src) is not None:
            self.live_allocation(src, now)  # expire it (and its session's nonces) first
        if self._nonces.get((src, nonce), -1.0) <= now:
            return [self._error(message, 438, challenge=True, client=src)]
        key = self._credential(username)[1]
        if not _rest_valid(username, unix) or not message.verify_integrity(key):
            return [self._error(message, 401, challenge=True, client=src)]
        if method == Method.ALLOCATE:
            return [self._allocate(message, src, username, key, now)]
        allocation = self.live_allocation(src, now)
        if method in (Method.REFRESH, Method.CHANNEL_BIND, Method.CREATE_PERMISSION):
            if allocation is None:
                return [self._error(message, 437 if method == Method.REFRESH else 400, key=key)]
            if allocation.username != username:
                return [self._error(message, 441)]
        assert allocation is not None
        if method == Method.REFRESH:
            return [self._refresh(message, allocation, key, now)]
        if method == Method.CHANNEL_BIND:
            return [self._channel_bind(message, allocation, key, now)]
        if method == Method.CREATE_PERMISSION:
            for peer in message.get_all("XOR-PEER-ADDRESS"):
                allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
            return [Message(method, Class.SUCCESS, tid).encode(key)]
        return [self._error(message, 400, key=key)]

    def _allocate(self, message: Message, src: Address, username: str, key: bytes, now: float) -> bytes:
        if message.get("REQUESTED-TRANSPORT") != stun.TRANSPORT_UDP:
            return self._error(message, 400, key=key)
        for client in list(self.allocations):
            self.live_allocation(client, now)  # expire lazily before counting
        if self.total_quota and len(self.allocations) >= self.total_quota:
            return self._error(message, 508, key=key)
        mine = sum(1 for a in self.allocations.values() if a.username == username)
        if self.user_quota and mine >= self.user_quota:
            return self._error(message, 486, key=key)
        requested = message.get("LIFETIME")
        lifetime = min(requested if requested else DEFAULT_LIFETIME, MAX_LIFETIME)
        relayed = (self.ip, self._next_port)
        self._next_port += 1
        allocation = RelayAllocation(src, relayed, username, now + lifetime)
        self.allocations[src] = allocation
        self.by_relayed[relayed] = allocation
        reply = Message(Method.ALLOCATE, Class.SUCCESS, message.transaction_id)
        reply.add("XOR-RELAYED-ADDRESS", relayed).add("XOR-MAPPED-ADDRESS", src).add("LIFETIME", lifetime)
        wire = reply.encode(key)
        self._last_allocate[src] = (message.transaction_id, wire)
        return wire

    def _refresh(self, message: Message, allocation: RelayAllocation, key: bytes, now: float) -> bytes:
        requested = message.get("LIFETIME")
        if requested == 0:
            allocation.expires_at = min(allocation.expires_at, now + LINGER)
            allocation.channels.clear()
            lifetime = 0
        else:
            lifetime = min(requested if requested else DEFAULT_LIFETIME, MAX_LIFETIME)
            allocation.expires_at = now + lifetime
        return Message(Method.REFRESH, Class.SUCCESS, message.transaction_id, [("LIFETIME", lifetime)]).encode(key)

    def _channel_bind(self, message: Message, allocation: RelayAllocation, key: bytes, now: float) -> bytes:
        number, peer = message.get("CHANNEL-NUMBER"), message.get("XOR-PEER-ADDRESS")
        if number is None or peer is None or not stun.CHANNEL_MIN <= number <= stun.CHANNEL_MAX:
            return self._error(message, 400, key=key)
        bound = allocation.channels.get(number)
        if bound is not None and bound[0] != peer:
            return self._error(message, 400, key=key)
        other = allocation.channel_for(peer)
        if other is not None and other != number:
            return self._error(
                message, 400, key=key, reason="You cannot use the same peer with different channel number"
            )
        allocation.channels[number] = (peer, now + self.channel_lifetime)
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        return Message(Method.CHANNEL_BIND, Class.SUCCESS, message.transaction_id).encode(key)

    def _channel_data(self, packet: bytes, src: Address, now: float) -> list[Out]:
        allocation = self.live_allocation(src, now)
        if allocation is None:
            return []
        try:
            number, payload = stun.decode_channel_data(packet)
        except stun.StunParseError:
            return []
        bound = allocation.channels.get(number)
        if bound is None:
            return []
        return [(allocation.relayed, bound[0], payload)]

    def _from_peer(self, packet: bytes, src: Address, dst: Address, now: float) -> list[Out]:
        allocation = self.by_relayed.get(dst)
        if allocation is None or self.live_allocation(allocation.client, now) is None:
            return []
        if allocation.permissions.get(src[0], -1.0) <= now:
            return []
        number = allocation.channel_for(src)
        if number is not None:
            return [(self.addr, allocation.client, stun.encode_channel_data(number, packet))]
        indication = Message(Method.DATA, Class.INDICATION, b"\x00" * 12, [("XOR-PEER-ADDRESS", src), ("DATA", packet)])
        return [(self.addr, allocation.client, indication.encode())]

    # ------------------------------------------------------------------ answers
    def _nonce(self, client: Address, now: float) -> str:
        self._nonce_counter += 1
        nonce = f"{self.boots:x}{self._nonce_counter:08x}{self.name}"
        self._nonces[(client, nonce)] = now + self.nonce_lifetime
        return nonce

    def _error(
        self,
        request: Message,
        code: int,
        *,
        key: bytes | None = None,
        challenge: bool = False,
        reason: str = "",
        client: Address = ("", 0),
    ) -> bytes:
        reply = Message(request.method, Class.ERROR, request.transaction_id)
        reply.add("ERROR-CODE", (code, reason or REASONS.get(code, "Error")))
        if challenge:
            reply.add("REALM", REALM).add("NONCE", self._nonce(client, self._now))
        return reply.encode(key)


def _rest_valid(username: str, unix: float) -> bool:
    expiry, _, _ = username.partition(":")
    return expiry.isdigit() and int(expiry) > unix
