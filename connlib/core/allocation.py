"""``Allocation``: the sans-IO state machine for one TURN relay (spec §1, Firezone snownet).

It learns the server-reflexive address with BINDING, allocates a relay address (long-term
credentials, RFC 8656), refreshes it, binds channels to peers and wraps/unwraps channel data.
Everything is driven from outside: ``handle_input``/``handle_timeout`` take ``now`` (a monotonic
float in seconds); ``poll_transmit``/``poll_event``/``poll_timeout`` hand out what it wants done.
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import math
import random
from dataclasses import dataclass

from . import backoff as backoff_mod
from . import stun
from .addr import Address, family, format_address
from .backoff import Backoff
from .credentials import long_term_key
from .fixes import FIX_CHANNEL_NUMBER_REUSE, FIX_DELETE_ON_REPLACE, FIX_REFUSAL_RETRY
from .logfmt import kv
from .sansio import Transmit
from .stun import Class, Message, Method

TYPE_CHECKING = False  # ``typing`` for the type checker only (see ``sansio``)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _Method = TypeVar("_Method", bound=Callable[..., Any])

log = logging.getLogger("connlib.allocation")

SOFTWARE = "snownet"
BINDING_INTERVAL = 25.0
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12; a relay may be configured shorter (coturn --channel-lifetime)
MAX_BUFFERED_CHANNEL_BINDINGS = 100
LINGER_RETRY = 0.25  # ALLOCATE again this often while coturn lingers on our deleted allocation (437)
# How long after our delete a 437 to ALLOCATE is coturn's linger (~1 s, to its next timer tick).
# Later, the 5-tuple holds an allocation of ours whose success was lost (each retransmit is a new
# transaction, which coturn answers 437): deleted again, as any 437 to ALLOCATE.
LINGER_MAX = 3.0
MAX_REDELETES = 1  # deletes for a 437 past the linger before the ALLOCATE is left to its deadline
# A relay that refuses ALLOCATE/REFRESH with an error we cannot act on (486 quota, 508, 5xx,
# 441, ...) is asked again after each of these delays, then freed: about 7 s after the first
# refusal, well inside the 15 s no-zombie bound. Firezone logs such errors and keeps the
# allocation, which then holds no relay address and no timer (a zombie); we do better.
REFUSAL_RETRY_DELAYS = (1.0, 2.0, 4.0)


class FreeReason(enum.Enum):
    NO_RESPONSE = "no response received. Is STUN blocked?"
    AUTHENTICATION_ERROR = "authentication error"
    PROTOCOL_FAILURE = "protocol failure"
    REFUSED = "the relay keeps refusing our requests"
    STALLED = "no allocation and nothing left to try"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RelaySocket:
    """The relay's addresses: IPv4, IPv6 or both (dual-stack)."""

    v4: Address | None = None
    v6: Address | None = None

    def __post_init__(self) -> None:
        if self.v4 is None and self.v6 is None:
            raise ValueError("a relay needs at least one address")

    def addresses(self) -> list[Address]:
        return [a for a in (self.v4, self.v6) if a is not None]

    def __contains__(self, addr: object) -> bool:
        # Asked for every datagram (is it from this relay?): two comparisons, no list.
        return addr == self.v4 or addr == self.v6


@dataclass(frozen=True)
class Candidate:
    kind: str  # "host" | "srflx" | "relay"
    addr: Address
    related: Address | None = None  # the base a srflx/relay candidate was learnt from

    @property
    def family(self) -> int:
        return family(self.addr)


@dataclass(frozen=True)
class New:
    candidate: Candidate


@dataclass(frozen=True)
class Invalid:
    candidate: Candidate


Event = New | Invalid


@dataclass(frozen=True)
class Rejection:
    """The last error response a relay sent us: what ``allocate`` reports, even unsigned."""

    method: str
    code: int
    reason: str
    authenticated: bool  # signed with our key (or an answer to an unsigned request)


def _is_delete(pending: _Pending) -> bool:
    return pending.message.method == Method.REFRESH and pending.message.get("LIFETIME") == 0


@dataclass
class _Pending:
    dst: Address
    message: Message  # without USERNAME/REALM/NONCE/MESSAGE-INTEGRITY; those are added per send
    backoff: Backoff
    sent_at: float
    signed: bool = False
    retransmitted: bool = False
    peer: Address | None = None  # for CHANNEL-BIND: whom the channel is for
    after_delete: bool = False  # an ALLOCATE sent because our REFRESH(LIFETIME=0) succeeded
    # An unsigned error to this signed request (RFC 8489 §9.2.5): not trusted, so the request stays
    # in flight; if nothing authenticated arrives by its deadline, this decides the outcome.
    provisional: Rejection | None = None
    credentials: tuple[str, bytes] | None = None  # (username, key) other than ours: the predecessor's


@dataclass(frozen=True)
class ChannelTimes:
    """A channel's lifetime and what follows from it: a channel in use is re-bound at half its
    lifetime, and an expired number waits half a lifetime more before it is handed out again
    (300 s each for the RFC's 600 s)."""

    lifetime: float = CHANNEL_LIFETIME

    def __post_init__(self) -> None:
        if not self.lifetime > 0:
            raise ValueError("a channel lifetime must be positive")

    @property
    def refresh_age(self) -> float:
        return self.lifetime / 2

    @property
    def rebind_timeout(self) -> float:
        return self.lifetime / 2


DEFAULT_CHANNEL_TIMES = ChannelTimes()


@dataclass
class Channel:
    number: int
    peer: Address
    bound_at: float  # when the (re)bind was sent
    bound: bool = False
    last_received: float | None = None
    times: ChannelTimes = DEFAULT_CHANNEL_TIMES

    def connected(self, now: float) -> bool:
        return self.bound and now - self.bound_at < self.times.lifetime

    def alive(self, now: float) -> bool:
        """Bound or in flight, and not expired: data may be sent on it (optimistically)."""
        return now - self.bound_at < self.times.lifetime

    @property
    def active(self) -> bool:
        """Carried data since the (re)bind: only such a channel is kept (idle ones may lapse)."""
        return self.last_received is not None and self.last_received > self.bound_at

    def needs_refresh(self, now: float) -> bool:
        return self.bound and self.active and now - self.bound_at >= self.times.refresh_age

    def reusable(self, now: float) -> bool:
        last = max(self.bound_at, self.last_received or self.bound_at)
        return now - last >= self.times.lifetime + self.times.rebind_timeout


def _moves_deadlines(method: _Method) -> _Method:
    """Marks an ``Allocation`` method that may change what ``poll_timeout`` answers (requests in
    flight, lifetime, retries, channels): the deadline is computed again at the next poll. The
    commands and inputs are marked, and so are the helpers that start, retransmit or retry a
    request (``_send``, ``_retransmit``, ``_refused``), which a test or a caller may use directly
    (a REFRESH sent by hand). The data path is not: ``encapsulate`` moves ``next_binding`` alone,
    which ``poll_timeout`` reads live, and ``decapsulate`` says when it activates a channel.
    """

    @functools.wraps(method)
    def marked(self: Allocation, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._deadline = None

    return marked  # type: ignore[return-value]


class Allocation:
    def __init__(
        self,
        server: RelaySocket,
        username: str,
        password: str,
        realm: str,
        now: float,
        *,
        relay_id: str = "",
        max_elapsed: float = backoff_mod.MAX_ELAPSED,
        rng: random.Random | None = None,
        disabled_fixes: frozenset[str] = frozenset(),
        predecessor: tuple[str, str] | None = None,
        channel_times: ChannelTimes = DEFAULT_CHANNEL_TIMES,
    ) -> None:
        self.server = server
        self.channel_times = channel_times
        # (username, password) of the allocation we replace on this 5-tuple: if the relay still
        # holds that one, it refuses our delete under the new username (441) and we delete it
        # under the old credentials instead (see _handle_error). One use only.
        self._predecessor = predecessor
        self.disabled_fixes = disabled_fixes
        self.relay_id = relay_id
        self.username = username
        self.password = password
        self.realm = realm
        self.max_elapsed = max_elapsed
        self._rng = rng or random.Random(0)  # transaction ids; the Node passes its seeded rng
        self._key = long_term_key(username, realm, password)
        self.nonce: str | None = None
        self.credentials_valid = True
        self.active_socket: Address | None = None
        self.next_binding: float | None = None
        self.hosts: dict[int, Candidate] = {}  # one per family: a dual-stack relay answers on both
        self.srflx: dict[int, Candidate] = {}
        self.relayed: dict[int, Candidate] = {}
        self.lifetime: tuple[float, float] | None = None  # (received_at, lifetime)
        # Until when the relay may hold an allocation of ours on this 5-tuple, as far as we know:
        # moved by every ALLOCATE and REFRESH success, None after a delete was answered or a 437
        # to a REFRESH (the relay holds none). Not cleared when we stop using the allocation: a
        # relay that is forgotten and later handed back refuses a new one until then (Node).
        self.held_until: float | None = None
        self.sent_requests: dict[bytes, _Pending] = {}
        self.channels: dict[int, Channel] = {}
        # The channel ``encapsulate`` found for a peer: the first alive one of ``channels`` in order.
        # An entry is dropped whenever a channel of its peer comes, goes or is bound again (the only
        # changes that can make an earlier one of that peer's alive); expiry is checked on use.
        # Without it, finding the peer's channel was a pass over all of them per datagram: at a
        # gateway with N clients, N channels per allocation.
        self._channel_of: dict[Address, Channel] = {}
        self.buffered_channel_bindings: collections.deque[Address] = collections.deque(
            maxlen=MAX_BUFFERED_CHANNEL_BINDINGS
        )
        self._next_channel = stun.CHANNEL_MIN
        self.explicit_failure: FreeReason | None = None
        self.rejection: Rejection | None = None
        self._refusals = 0  # consecutive ALLOCATE/REFRESH refusals (REFUSAL_RETRY_DELAYS)
        self._retry: tuple[float, Method] | None = None  # (when, method) of the next attempt
        self.srtt: float | None = None
        self._answered_at: float | None = None  # when the relay last answered a request of ours
        self._deleted_at: float | None = None  # when our delete (REFRESH 0) to re-allocate was answered
        self._redeletes = 0  # deletes for a 437 past the linger since the last allocation
        self._events: collections.deque[Event] = collections.deque()
        self._transmits: collections.deque[Transmit] = collections.deque()
        self._deadline: float | None = None  # _control_deadline(), None when it must be computed again
        self.released = False  # release() was called: only the delete is still answered
        self._send_bindings(now)

    # ------------------------------------------------------------------ public predicates
    def has_allocation(self) -> bool:
        return bool(self.relayed)

    def relay_candidates(self) -> list[Candidate]:
        return list(self.relayed.values())

    def relay_candidate(self, family: int) -> Candidate | None:
        """The relay candidate of address family ``family`` (4 or 6), if allocated."""
        return self.relayed.get(family)

    def has_output(self) -> bool:
        """Whether ``poll_transmit`` or ``poll_event`` has something: lets the Node skip the polls."""
        return bool(self._transmits or self._events)

    def candidates(self) -> list[Candidate]:
        return list(self.hosts.values()) + list(self.srflx.values()) + list(self.relayed.values())

    @property
    def host(self) -> Candidate | None:
        """The host candidate of the active socket's family (or the first one learnt)."""
        if self.active_socket is not None and family(self.active_socket) in self.hosts:
            return self.hosts[family(self.active_socket)]
        return next(iter(self.hosts.values()), None)

    def matches_credentials(self, username: str, password: str) -> bool:
        return self.username == username and self.password == password

    def matches_socket(self, server: RelaySocket) -> bool:
        return self.server == server

    def is_suspended(self) -> bool:
        return (
            not self.has_allocation()
            and not self.sent_requests
            and not self.buffered_channel_bindings
            and self.poll_timeout() is None
        )

    def releasing(self) -> bool:
        """Released, and its delete not yet answered or given up."""
        return self.released and bool(self.sent_requests)

    def can_be_freed(self) -> FreeReason | None:
        if self.released:
            return None  # the peer is exiting: nothing to report, nothing to replace
        if self.explicit_failure is not None:
            return self.explicit_failure
        if self._events or self._transmits or self.sent_requests:
            return None
        if self.active_socket is None:
            return FreeReason.NO_RESPONSE
        if not self.credentials_valid:
            return FreeReason.AUTHENTICATION_ERROR
        if (
            not self.has_allocation()
            and self._retry is None
            and not self.buffered_channel_bindings
            and FIX_REFUSAL_RETRY not in self.disabled_fixes
        ):
            # No relay address, nothing in flight, no timer: nothing will ever change (a zombie).
            return FreeReason.STALLED
        return None

    def _in_flight(self, method: Method) -> bool:
        return any(p.message.method == method for p in self.sent_requests.values())

    # ------------------------------------------------------------------ poll API
    def poll_transmit(self) -> Transmit | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        # Asked after every input (several times per datagram in the simulator). Relayed data
        # moves only the keep-alive BINDING (``next_binding``, read here live); everything else
        # is kept from the last control input (see ``_moves_deadlines``).
        best = self._deadline
        if best is None:
            best = self._deadline = self._control_deadline()
        if self.relayed and self.next_binding is not None and self.next_binding < best:
            best = self.next_binding
        return best if best != math.inf else None

    def _control_deadline(self) -> float:
        """The earliest deadline but the keep-alive BINDING's; ``math.inf`` if none."""
        best = math.inf
        refresh_in_flight = False
        binding: set[int] | None = None
        for pending in self.sent_requests.values():
            best = min(best, pending.backoff.poll_timeout())
            method = pending.message.method
            if method == Method.REFRESH:
                refresh_in_flight = True
            elif method == Method.CHANNEL_BIND:
                if binding is None:
                    binding = set()
                binding.add(pending.message.get("CHANNEL-NUMBER"))
        if self.lifetime is not None:
            received_at, lifetime = self.lifetime
            best = min(best, received_at + lifetime)
            if not refresh_in_flight and self._retry is None:
                best = min(best, received_at + lifetime / 2)
        if self._retry is not None:
            best = min(best, self._retry[0])
        for channel in self.channels.values():
            if channel.bound and (binding is None or channel.number not in binding):
                if channel.active:
                    best = min(best, channel.bound_at + channel.times.refresh_age)
        return best

    # ------------------------------------------------------------------ input
    @_moves_deadlines
    def handle_input(self, packet: bytes, from_: Address, local: Address | None, now: float) -> bool:
        """Handle a STUN response from the relay. Returns False if the packet is not ours."""
        if from_ not in self.server or not stun.is_stun(packet):
            return False
        try:
            message = stun.decode(packet)
        except stun.StunParseError as exc:
            log.debug("Dropping malformed STUN packet from relay %s", kv(rid=self.relay_id, error=exc))
            return True
        pending = self.sent_requests.get(message.transaction_id)
        if pending is None or message.cls not in (Class.SUCCESS, Class.ERROR):
            log.debug("Dropping unexpected STUN message %s", kv(rid=self.relay_id, method=message.method))
            return False if pending is None and message.cls == Class.REQUEST else True
        if message.method != pending.message.method:
            log.debug("Response method does not match request %s", kv(rid=self.relay_id))
            return True
        if message.cls == Class.ERROR and message.error_code is None:
            # Malformed (and acceptable unsigned): like any bad packet it must not touch the request.
            log.debug("Dropping error response without ERROR-CODE %s", kv(rid=self.relay_id))
            return True
        if message.method == Method.BINDING and message.cls == Class.ERROR:
            # The keep-alive BINDING is no TURN request: an error to it (never signed, and coturn
            # sends none) says nothing about our allocation. Leave it to its backoff.
            log.debug("Ignoring error response to BINDING %s", kv(rid=self.relay_id, code=message.error_code))
            return True
        if message.method != Method.BINDING and not self._accept_integrity(message, pending):
            return True
        del self.sent_requests[message.transaction_id]
        self._answered_at = now
        if not pending.retransmitted:  # Karn: ambiguous samples from retransmits are skipped
            sample = now - pending.sent_at
            self.srtt = sample if self.srtt is None else 7 / 8 * self.srtt + sample / 8
        if self.released and not (message.cls == Class.ERROR and message.error_code == 438):
            return True  # the delete is answered (a stale nonce: sent again with the new one, below)
        if message.cls == Class.SUCCESS:
            self._handle_success(message, pending, from_, local, now)
        else:
            self._handle_error(message, pending, now)
        return True

    def _accept_integrity(self, message: Message, pending: _Pending) -> bool:
        """Whether a non-BINDING response may change our state (RFC 8489 §9.2.5).

        Signed responses must verify with our long-term key. Unsigned successes are never taken.
        An unsigned error is taken only when our request was unsigned (the relay could not sign
        it), when it is a 438 (stale nonce; it may come unsigned, and all it does is make us
        re-sign with its NONCE under a new transaction id), or a 437 to ALLOCATE (coturn sends it
        unsigned). An unsigned 401 to a signed request is
        provisional: the request keeps retransmitting and fails as an authentication error only
        if nothing authenticated arrives by its deadline. Any other unsigned error to a signed
        request is discarded (Firezone ignores every non-BINDING response that fails integrity;
        we ignore it too but remember it, so that the deadline and ``allocate`` can tell a relay
        that refuses us from one that does not answer).
        """
        code = message.error_code
        reason = message.get("ERROR-CODE")[1] if code is not None else ""
        name = pending.message.method_name  # the response's method equals it (checked)
        key = pending.credentials[1] if pending.credentials else self._key
        if "MESSAGE-INTEGRITY" in message:
            if message.verify_integrity(key):
                return True
            log.warning(
                "Message integrity check failed %s",
                kv(rid=self.relay_id, method=name, code=code),
            )
            return False
        if message.cls == Class.SUCCESS:
            log.warning("Ignoring unsigned success %s", kv(rid=self.relay_id, method=name))
            return False
        assert code is not None
        if not pending.signed:
            return True
        if code == 438:
            return True
        if code == 441 and self._predecessor is not None and _is_delete(pending):
            # coturn's (unsigned) answer when the 5-tuple holds our predecessor's allocation; a
            # forged one only makes us delete, under the old credentials, what we want gone.
            return True
        if code == 437 and pending.message.method == Method.ALLOCATE:
            # coturn answers ALLOCATE on a 5-tuple that already has an allocation with an unsigned
            # 437. We hold no allocation while an ALLOCATE is in flight, so a forged one costs
            # only a delete and a new ALLOCATE; ignoring coturn's would cost the relay.
            return True
        rejection = Rejection(name, code, reason, authenticated=False)
        self.rejection = rejection
        pending.provisional = rejection
        log.warning(
            "Unsigned error to a signed request; keeping it in flight %s",
            kv(rid=self.relay_id, method=name, code=code),
        )
        return False

    def _handle_success(
        self, message: Message, pending: _Pending, from_: Address, local: Address | None, now: float
    ) -> None:
        method = message.method
        if method == Method.BINDING:
            self._handle_binding_success(message, pending, local, now)
        elif method == Method.ALLOCATE:
            self._handle_allocate_success(message, now)
        elif method == Method.REFRESH:
            lifetime = message.get("LIFETIME")
            if lifetime == 0:
                self.held_until = None
                log.debug("Allocation deleted; allocating again %s", kv(rid=self.relay_id))
                self._deleted_at = now
                self._send_allocate(now, after_delete=True)
            elif lifetime is not None:
                self.lifetime = (now, float(lifetime))
                self.held_until = now + float(lifetime)
                self._refusals = 0
            else:
                # Keeping the old lifetime would send the next REFRESH at once, forever.
                log.warning("REFRESH success without LIFETIME %s", kv(rid=self.relay_id))
                self.explicit_failure = FreeReason.PROTOCOL_FAILURE
                self.invalidate_allocation()
        elif method == Method.CHANNEL_BIND:
            number = pending.message.get("CHANNEL-NUMBER")
            channel = self.channels.get(number)
            if channel is not None and channel.peer == pending.peer:
                channel.bound = True
                log.debug(
                    "Channel bound %s", kv(rid=self.relay_id, channel=hex(number), peer=format_address(channel.peer))
                )

    def _handle_binding_success(self, message: Message, pending: _Pending, local: Address | None, now: float) -> None:
        mapped = message.get("XOR-MAPPED-ADDRESS") or message.get("MAPPED-ADDRESS")
        if local is not None:
            self._set_candidate("host", local, None)
        if mapped is not None:
            self._set_candidate("srflx", mapped, local)
        if self.active_socket is None:
            self.active_socket = pending.dst
            self.next_binding = now + BINDING_INTERVAL
            log.debug("Selected relay socket %s", kv(rid=self.relay_id, addr=format_address(pending.dst)))
            if self.has_allocation():
                self._send_refresh(now)
            elif not self._in_flight(Method.ALLOCATE):
                self._send_allocate(now)
        elif pending.dst != self.active_socket:
            log.debug("Ignoring BINDING from the other address family %s", kv(rid=self.relay_id))

    def _set_candidate(self, kind: str, addr: Address, related: Address | None) -> None:
        candidate = Candidate(kind, addr, related)
        if kind == "host":
            if self.hosts.get(candidate.family) == candidate:
                return
            self.hosts[candidate.family] = candidate
        else:
            # A changed srflx does not invalidate the old one: silent roaming must not disconnect.
            if self.srflx.get(candidate.family) == candidate:
                return
            self.srflx[candidate.family] = candidate
        self._events.append(New(candidate))

    def _handle_allocate_success(self, message: Message, now: float) -> None:
        lifetime = message.get("LIFETIME")
        relayed = message.get_all("XOR-RELAYED-ADDRESS")
        if lifetime is None or not relayed:
            log.warning("ALLOCATE success without LIFETIME or relayed address %s", kv(rid=self.relay_id))
            self.explicit_failure = FreeReason.PROTOCOL_FAILURE
            return
        self.lifetime = (now, float(lifetime))
        self.held_until = now + float(lifetime)
        self._refusals = self._redeletes = 0
        related = message.get("XOR-MAPPED-ADDRESS")
        for addr in relayed:
            candidate = Candidate("relay", addr, related)
            old = self.relayed.get(candidate.family)
            if old == candidate:
                continue
            if old is not None:
                self._events.append(Invalid(old))
            self.relayed[candidate.family] = candidate
            self._events.append(New(candidate))
        log.info(
            "Allocation created %s",
            kv(rid=self.relay_id, relayed=",".join(format_address(a) for a in relayed), lifetime=lifetime),
        )
        buffered = list(self.buffered_channel_bindings)
        self.buffered_channel_bindings.clear()
        for peer in buffered:
            self.bind_channel(peer, now)

    def _handle_error(self, message: Message, pending: _Pending, now: float) -> None:
        code = message.error_code
        assert code is not None
        method = Method(pending.message.method)
        reason = message.get("ERROR-CODE")[1]
        challenge = (code == 401 and not pending.signed) or code == 438
        if not challenge:  # the normal 401 challenge and a stale nonce are no rejection
            self.rejection = Rejection(method.name, code, reason, authenticated=True)
        if code == 401 and pending.signed:
            log.warning(
                "Invalid credentials, refusing to re-authenticate %s",
                kv(rid=self.relay_id, method=method.name.lower()),
            )
            self.credentials_valid = False
            self.invalidate_allocation()
            return
        if code in (401, 438):
            nonce, realm = message.get("NONCE"), message.get("REALM")
            if code == 401 and realm is not None and realm != self.realm:
                self.rejection = Rejection(method.name, code, reason, authenticated=True)
                # Firezone drops the request here; we keep it in flight so that a forged
                # challenge cannot stop us, and let its deadline decide (see _expire).
                log.warning("Refusing to authenticate with server %s", kv(rid=self.relay_id, realm=realm))
                pending.provisional = self.rejection
                self.sent_requests[message.transaction_id] = pending
                return
            if nonce is None:
                self.rejection = Rejection(method.name, code, reason, authenticated=True)
                log.warning(
                    "Error %s without NONCE; leaving the request to its backoff %s", code, kv(rid=self.relay_id)
                )
                pending.provisional = self.rejection
                self.sent_requests[message.transaction_id] = pending
                return
            self.nonce = nonce
            fresh = pending.backoff.restarted(now)
            renewed = self._send(
                self._renewed(pending.message), pending.dst, now, fresh, pending.peer, pending.after_delete
            )
            renewed.provisional = pending.provisional
            return
        if code == 437 and method == Method.ALLOCATE and pending.after_delete:
            if self._lingering(now):
                # coturn keeps a deleted allocation on the 5-tuple for a moment (a little over a
                # second, to its next timer tick) and answers 437 again; deleting again would loop
                # at RTT speed. Ask again at a short fixed interval until the request's own deadline:
                # the backoff's next step (1 s, then 1.5 s) would land up to 1.5 s after the linger.
                log.debug("Relay still holds the deleted allocation; retrying shortly %s", kv(rid=self.relay_id))
                remaining = pending.backoff.deadline - now
                if remaining > 0:
                    pending.backoff = backoff_mod.Backoff(
                        now, interval=min(LINGER_RETRY, remaining), max_elapsed=remaining, multiplier=1.0
                    )
                self.sent_requests[message.transaction_id] = pending
                return
            self._redeletes += 1  # past the linger: an allocation of ours whose answer was lost; delete it
        if code == 437:
            self.invalidate_allocation()
            if method == Method.ALLOCATE:
                self._send_refresh(now, lifetime=0)  # delete the stale allocation, then re-allocate
            elif method == Method.REFRESH:
                self.held_until = None
                self._send_allocate(now)
            elif method == Method.CHANNEL_BIND:
                self._send_allocate(now)
                if pending.peer is not None:
                    self.buffered_channel_bindings.append(pending.peer)
            return
        if (
            code == 441
            and self._predecessor is not None
            and _is_delete(pending)
            and FIX_DELETE_ON_REPLACE not in self.disabled_fixes
        ):
            # The relay did not reboot: it holds the allocation we replaced, under the old
            # username, and refuses our delete (and our ALLOCATE, 437) until it expires, up to
            # 600 s. Firezone has no answer to this; we delete it under the old credentials.
            username, password = self._predecessor
            self._predecessor = None
            log.info("Deleting the replaced allocation under its own credentials %s", kv(rid=self.relay_id))
            message = Message(Method.REFRESH, Class.REQUEST, self._new_tid(), [("LIFETIME", 0), ("SOFTWARE", SOFTWARE)])
            renewed = self._send(message, pending.dst, now, pending=False)
            renewed.credentials = (username, long_term_key(username, self.realm, password))
            self._transmits.append(Transmit(pending.dst, self._encode(renewed)))
            return
        if code == 420:
            log.warning("Relay does not understand our request %s", kv(rid=self.relay_id, method=method.name))
            self.explicit_failure = FreeReason.PROTOCOL_FAILURE
            return
        if method == Method.CHANNEL_BIND:
            number = pending.message.get("CHANNEL-NUMBER")
            self._drop_channel(number)
            log.warning("Channel bind failed %s", kv(rid=self.relay_id, channel=hex(number), code=code))
            return
        log.warning(
            "TURN request failed with unhandled error code %s",
            kv(rid=self.relay_id, method=method.name, code=code, reason=reason),
        )
        if method == Method.ALLOCATE:
            self.buffered_channel_bindings.clear()
        # ALLOCATE or REFRESH (incl. our delete): 486 quota, 508 capacity, 5xx, 441 (the relay
        # holds an allocation on our 5-tuple under other credentials), ... Never leave the
        # allocation without a request or a timer: ask again later, a bounded number of times.
        self._refused(method, now)

    def _lingering(self, now: float) -> bool:
        """Whether a 437 to ALLOCATE after our delete is taken for coturn's linger on it: within
        ``LINGER_MAX`` of the delete, and always once ``MAX_REDELETES`` deletes did not end it
        (then the ALLOCATE's deadline ends it, as before)."""
        deleted = self._deleted_at
        return deleted is None or now - deleted <= LINGER_MAX or self._redeletes >= MAX_REDELETES

    def _answered_since(self, pending: _Pending) -> bool:
        """Whether the relay answered a request of ours sent after ``pending`` (not an ALLOCATE,
        which nothing else retries): then it is reachable, and this one or its answer was lost.
        Seed 33008 of the simulator: a BINDING sent while the relay was paused timed out 1.2 s
        after it came back and had answered a CHANNEL_BIND, and the relay was dropped."""
        answered = self._answered_at
        return answered is not None and answered > pending.sent_at and pending.message.method != Method.ALLOCATE

    @_moves_deadlines
    def _refused(self, method: Method, now: float) -> None:
        if FIX_REFUSAL_RETRY in self.disabled_fixes:
            return  # the old behaviour: the error is logged, nothing else happens
        self._refusals += 1
        if self._refusals > len(REFUSAL_RETRY_DELAYS):
            log.warning("Relay keeps refusing; giving up %s", kv(rid=self.relay_id, attempts=self._refusals))
            self.explicit_failure = FreeReason.REFUSED
            self.invalidate_allocation()
            return
        if method != Method.REFRESH or not self.has_allocation():
            method = Method.ALLOCATE
        self._retry = (now + REFUSAL_RETRY_DELAYS[self._refusals - 1], method)

    # ------------------------------------------------------------------ time
    @_moves_deadlines
    def handle_timeout(self, now: float) -> None:
        for tid, pending in list(self.sent_requests.items()):
            if tid not in self.sent_requests:  # removed by an invalidation earlier in this loop
                continue
            if pending.backoff.is_expired(now):
                del self.sent_requests[tid]
                log.debug(
                    "Request timed out %s",
                    kv(rid=self.relay_id, method=pending.message.method_name, dst=format_address(pending.dst)),
                )
                if pending.provisional is not None:
                    self._provisional_final(pending, pending.provisional)
                    continue
                if self.active_socket is not None and family(self.active_socket) == family(pending.dst):
                    if self._answered_since(pending):
                        continue
                    log.info(
                        "Relay socket seems unreachable %s", kv(rid=self.relay_id, addr=format_address(pending.dst))
                    )
                    self.active_socket = None
                    self.invalidate_allocation()
            elif pending.backoff.is_due(now):
                self._retransmit(tid, pending, now)
        if self.released:
            return  # no refresh, keep-alive or channel bind after the delete

        if self._retry is not None and now >= self._retry[0]:
            method = self._retry[1]
            self._retry = None
            if method == Method.REFRESH and self.has_allocation():
                self._send_refresh(now)
            elif not self._in_flight(Method.ALLOCATE):
                self._send_allocate(now)

        if self.lifetime is not None:
            received_at, lifetime = self.lifetime
            if now >= received_at + lifetime:
                log.info("Allocation expired %s", kv(rid=self.relay_id))
                self.invalidate_allocation()
                if self.credentials_valid and self.explicit_failure is None:
                    self._refused(Method.ALLOCATE, now)  # allocate again, within the same bound
            elif now >= received_at + lifetime / 2 and not self._in_flight(Method.REFRESH) and self._retry is None:
                self._send_refresh(now)

        if (
            self.has_allocation()
            and self.active_socket is not None
            and self.next_binding is not None
            and now >= self.next_binding
        ):
            self.next_binding = now + BINDING_INTERVAL
            if not self._in_flight(Method.BINDING):
                self._send(self._binding_request(), self.active_socket, now)

        # The binds in flight, taken when the first channel is due (nothing sent before that):
        # most timeouts find no channel due and build no set.
        in_flight: set[int] | None = None
        for channel in list(self.channels.values()):
            if channel.needs_refresh(now):
                if in_flight is None:
                    in_flight = self._channels_in_flight()
                if channel.number not in in_flight:
                    self._send_channel_bind(channel, now)

    def _provisional_final(self, pending: _Pending, rejection: Rejection) -> None:
        """A request that got only unsigned errors until its deadline: take them now."""
        log.warning(
            "Request rejected without a signature until its deadline %s",
            kv(rid=self.relay_id, method=rejection.method, code=rejection.code),
        )
        if pending.message.method == Method.CHANNEL_BIND and rejection.code != 401:
            self._drop_channel(pending.message.get("CHANNEL-NUMBER"))  # that peer only
            return
        if rejection.code == 401:
            self.credentials_valid = False  # what coturn's unsigned 401 to a signed request means
        else:
            self.explicit_failure = FreeReason.REFUSED
        self.invalidate_allocation()

    @_moves_deadlines
    def _retransmit(self, tid: bytes, pending: _Pending, now: float) -> None:
        pending.backoff.advance()
        pending.retransmitted = True
        if pending.signed:
            # A signed request is re-signed under a fresh transaction id on every retransmit.
            del self.sent_requests[tid]
            pending.message = self._renewed(pending.message)
            self.sent_requests[pending.message.transaction_id] = pending
        self._transmits.append(Transmit(pending.dst, self._encode(pending)))

    # ------------------------------------------------------------------ commands
    @_moves_deadlines
    def release(self, now: float) -> None:
        """The peer exits: delete the allocation (REFRESH with LIFETIME 0, RFC 8656 §7), abandon
        every other request and send nothing else. Not deleted, coturn keeps the allocation for its
        lifetime (600 s) on our 5-tuple, and a later process that gets the same local port is
        refused on it (437 to its ALLOCATE, 441 to its REFRESH under other credentials) until then."""
        allocated = self.has_allocation() and self.credentials_valid and self.explicit_failure is None
        self.released = True
        self.sent_requests.clear()
        self._transmits.clear()  # requests abandoned, not yet sent
        self.buffered_channel_bindings.clear()
        self.lifetime = self._retry = self.next_binding = None
        if allocated:
            self._send_refresh(now, lifetime=0)

    @_moves_deadlines
    def refresh(self, now: float, backoff: Backoff | None = None) -> None:
        """Probe the relay: a single-shot REFRESH given up after 1 s (spec §1.7), or with
        ``backoff`` (e.g. ``backoff.path_probe``: retransmitted, so one lost packet is survived)."""
        if self.released:
            return
        if not self.has_allocation() and self._in_flight(Method.ALLOCATE):
            return
        if self.is_suspended():
            self.active_socket = None
            self._send_bindings(now)
            return
        if not self.credentials_valid or self.active_socket is None:
            return
        self._send_refresh(now, backoff=backoff or backoff_mod.probe(now))

    @_moves_deadlines
    def invalidate_allocation(self) -> None:
        log.info("Invalidating allocation %s", kv(rid=self.relay_id))
        for candidate in self.relayed.values():
            self._events.append(Invalid(candidate))
        self.relayed.clear()
        self.channels.clear()
        self._channel_of.clear()
        self.lifetime = None
        self.sent_requests.clear()

    @_moves_deadlines
    def bind_channel(self, peer: Address, now: float) -> None:
        if self.released or not self.credentials_valid or self.explicit_failure is not None:
            return
        if any(c.peer == peer and c.alive(now) for c in self.channels.values()):
            return
        if peer in self.buffered_channel_bindings:
            return
        if not self.has_allocation():
            self.buffered_channel_bindings.append(peer)
            return
        if family(peer) not in self.relayed:
            log.debug("No relay address for the peer's family %s", kv(rid=self.relay_id, peer=format_address(peer)))
            return
        lapsed = next((c for c in self.channels.values() if c.peer == peer), None)
        if lapsed is not None and FIX_CHANNEL_NUMBER_REUSE not in self.disabled_fixes:
            # RFC 8656 §12 (and Firezone): a peer keeps its channel number. The relay may still
            # hold the old binding; a new number would be refused (400) for as long as it does.
            if lapsed.number in self._channels_in_flight():
                return
            lapsed.bound = False
            self._send_channel_bind(lapsed, now)
            return
        number = self._free_channel_number(now)
        if number is None:
            log.warning("No free channel number %s", kv(rid=self.relay_id))
            return
        channel = Channel(number, peer, bound_at=now, times=self.channel_times)
        self.channels[number] = channel
        self._channel_of.pop(peer, None)
        self._send_channel_bind(channel, now)

    def _drop_channel(self, number: int | None) -> None:
        channel = self.channels.pop(number, None) if number is not None else None
        if channel is not None:
            self._channel_of.pop(channel.peer, None)

    def encapsulate(self, peer: Address, payload: bytes, now: float) -> Transmit | None:
        """Wrap ``payload`` for ``peer`` in ChannelData; None (and a bind started) if no channel."""
        channel = self._channel_of.get(peer)
        if channel is None or not channel.alive(now):
            for channel in self.channels.values():  # a loop, not next(genexpr)
                if channel.peer == peer and channel.alive(now):
                    self._channel_of[peer] = channel
                    break
            else:
                channel = None
        if channel is None or self.active_socket is None:
            self.bind_channel(peer, now)
            return None
        self.next_binding = now + BINDING_INTERVAL  # outgoing data keeps the NAT binding alive
        return Transmit(self.active_socket, stun.encode_channel_data(channel.number, payload))

    def decapsulate(self, from_: Address, packet: bytes, now: float) -> tuple[Address, bytes] | None:
        """Unwrap ChannelData from the relay: ``(peer, payload)``, or None if it is not ours."""
        if from_ not in self.server or not stun.is_channel_data(packet):
            return None
        try:
            number, payload = stun.decode_channel_data(packet)
        except stun.StunParseError:
            return None
        channel = self.channels.get(number)
        if channel is None:
            return None
        was_active = channel.active
        channel.last_received = now
        if channel.active != was_active:  # the first data since the bind: its refresh is now due
            self._deadline = None
        return channel.peer, payload

    def has_channel_to(self, peer: Address, now: float) -> bool:
        return any(c.peer == peer and c.connected(now) for c in self.channels.values())

    # ------------------------------------------------------------------ request plumbing
    def _binding_request(self) -> Message:
        return Message(Method.BINDING, Class.REQUEST, self._new_tid(), [("SOFTWARE", SOFTWARE)])

    def _send_bindings(self, now: float) -> None:
        for addr in self.server.addresses():
            self._send(self._binding_request(), addr, now)

    def _send_allocate(self, now: float, after_delete: bool = False) -> None:
        if self.active_socket is None:
            return
        message = Message(Method.ALLOCATE, Class.REQUEST, self._new_tid())
        message.add("REQUESTED-TRANSPORT", stun.TRANSPORT_UDP)
        if self.server.v6 is not None:
            message.add("ADDITIONAL-ADDRESS-FAMILY", stun.ADDRESS_FAMILY_IPV6)
        message.add("SOFTWARE", SOFTWARE)
        self._send(message, self.active_socket, now, after_delete=after_delete)

    def _send_refresh(self, now: float, lifetime: int | None = None, backoff: Backoff | None = None) -> None:
        if self.active_socket is None:
            return
        message = Message(Method.REFRESH, Class.REQUEST, self._new_tid())
        if lifetime is not None:
            message.add("LIFETIME", lifetime)
        message.add("SOFTWARE", SOFTWARE)
        self._send(message, self.active_socket, now, backoff)

    def _send_channel_bind(self, channel: Channel, now: float) -> None:
        if self.active_socket is None:
            return
        channel.bound_at = now
        self._channel_of.pop(channel.peer, None)  # an earlier channel of this peer may be alive again
        message = Message(Method.CHANNEL_BIND, Class.REQUEST, self._new_tid())
        message.add("CHANNEL-NUMBER", channel.number)
        message.add("XOR-PEER-ADDRESS", channel.peer)
        message.add("SOFTWARE", SOFTWARE)
        self._send(message, self.active_socket, now, peer=channel.peer)

    @_moves_deadlines
    def _send(
        self,
        message: Message,
        dst: Address,
        now: float,
        backoff: Backoff | None = None,
        peer: Address | None = None,
        after_delete: bool = False,
        *,
        pending: bool = True,
    ) -> _Pending:
        """Track ``message`` in flight and queue it (``pending=False``: the caller queues it)."""
        entry = _Pending(
            dst=dst,
            message=message,
            backoff=backoff or Backoff(now, max_elapsed=self.max_elapsed),
            sent_at=now,
            peer=peer,
            after_delete=after_delete,
        )
        self.sent_requests[message.transaction_id] = entry
        if pending:
            self._transmits.append(Transmit(dst, self._encode(entry)))
        return entry

    def _encode(self, pending: _Pending) -> bytes:
        message = pending.message
        if message.method == Method.BINDING:
            return message.encode()
        signed = self.credentials_valid and self.nonce is not None
        pending.signed = signed
        if not signed:
            return message.encode()
        wire = Message(message.method, message.cls, message.transaction_id, list(message.attributes))
        username, key = pending.credentials or (self.username, self._key)
        wire.add("USERNAME", username).add("REALM", self.realm).add("NONCE", self.nonce)
        return wire.encode(key)

    def _channels_in_flight(self) -> set[int]:
        return {
            p.message.get("CHANNEL-NUMBER")
            for p in self.sent_requests.values()
            if p.message.method == Method.CHANNEL_BIND
        }

    def _free_channel_number(self, now: float) -> int | None:
        span = stun.CHANNEL_MAX - stun.CHANNEL_MIN + 1
        for offset in range(span):
            number = stun.CHANNEL_MIN + (self._next_channel - stun.CHANNEL_MIN + offset) % span
            lapsed = self.channels.get(number)
            # A lapsed channel is forgotten only when its number is handed out again, never
            # before: its record is how ``bind_channel`` gives its peer the old number back, and
            # coturn holds a binding past its lifetime (tests/sim/test_calibration.py), so the
            # peer under a new number would be refused (400) while the relay still has the old.
            # Nor while its bind is in flight (up to max_elapsed, 10 s, can outlive 1.5 short
            # lifetimes): a retransmit answered later binds the peer under that number.
            if lapsed is not None and lapsed.reusable(now) and number not in self._channels_in_flight():
                self._drop_channel(number)
            if number not in self.channels:
                self._next_channel = stun.CHANNEL_MIN + (number - stun.CHANNEL_MIN + 1) % span
                return number
        return None

    def _new_tid(self) -> bytes:
        return stun.new_transaction_id(self._rng)

    def _renewed(self, message: Message) -> Message:
        return Message(message.method, message.cls, self._new_tid(), list(message.attributes))
