"""ICE-style connectivity between two peers (spec §2.3–2.4): candidates, checks, nomination.

``Connection`` is sans-IO like ``Allocation``. It owns candidate pairs, sends STUN Binding checks
(USERNAME ``remote:local``, PRIORITY, ICE-CONTROLLING/CONTROLLED, USE-CANDIDATE, short-term
MESSAGE-INTEGRITY, FINGERPRINT), answers the peer's checks, and nominates aggressively: the
controlling side (the client) puts USE-CANDIDATE on every check and the first pair that succeeds
carries the data. Once connected, keep-alive checks watch the nominated pair; when it goes quiet
the connection says so (``PathLost``) and goes back to checking every pair.
"""

from __future__ import annotations

import collections
import logging
import random
from dataclasses import dataclass, field

from . import stun
from .addr import Address, family, format_address
from .candidate import (
    RemoteCandidate,
    candidate_line,
    candidate_priority,
)
from .logfmt import Fields, kv
from .stun import Class, Message, Method, new_transaction_id

log = logging.getLogger("connlib.ice")

ICE_TIMEOUT = 10.0  # aligned with the relay request backoff (#6666)
INITIAL_RTO = 0.25
MAX_RTO = 1.5
KEEPALIVE_INTERVAL = 1.0  # the default; a Connection takes its own (``keepalive``)
MAX_REMOTE_CANDIDATES = 16  # host + srflx + relay of a dual-stack peer, with room for migrations
PATH_LOST_AFTER = 4.0  # no answer on the nominated pair for this long ⇒ it is lost
KEEPALIVES_BEFORE_LOST = PATH_LOST_AFTER / KEEPALIVE_INTERVAL  # the ratio is kept when ``keepalive`` differs


@dataclass(frozen=True)
class LocalCandidate:
    kind: str  # host | srflx | relay
    addr: Address
    rid: str | None = None  # the relay a relay candidate lives on
    related: Address | None = None

    @property
    def family(self) -> int:
        return family(self.addr)

    @property
    def priority(self) -> int:
        return candidate_priority(self.kind)

    def to_line(self) -> str:
        return candidate_line(self.kind, self.addr, self.priority, self.related)


def pair_priority(controlling: int, controlled: int) -> int:
    return (
        (min(controlling, controlled) << 32) + 2 * max(controlling, controlled) + (1 if controlling > controlled else 0)
    )


@dataclass
class Pair:
    local: LocalCandidate
    remote: RemoteCandidate
    priority: int
    state: str = "waiting"  # waiting | in-progress | succeeded
    next_check: float = 0.0
    rto: float = INITIAL_RTO
    tid: bytes | None = None
    last_response: float | None = None
    nominated: bool = False

    def key(self) -> tuple[LocalCandidate, Address]:
        return self.local, self.remote.addr


# ---------------------------------------------------------------- events and transmits
@dataclass(frozen=True)
class Connected:
    peer_id: str
    local: LocalCandidate
    remote: Address


@dataclass(frozen=True)
class Failed:
    peer_id: str
    reason: str


@dataclass(frozen=True)
class PathLost:
    """The nominated pair stopped answering; ``rid`` is the relay it ran through, if any."""

    peer_id: str
    rid: str | None


ConnectionEvent = Connected | Failed | PathLost


@dataclass(frozen=True)
class PathTransmit:
    """Send ``payload`` to ``dst`` from ``local`` (through its relay if it is a relay candidate)."""

    local: LocalCandidate
    dst: Address
    payload: bytes


@dataclass
class Connection:
    peer_id: str
    controlling: bool
    local_ufrag: str
    local_pwd: str
    created_at: float
    tie_breaker: int = 0
    relay_id: str | None = None
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    local_candidates: list[LocalCandidate] = field(default_factory=list)
    remote_candidates: dict[Address, RemoteCandidate] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    nominated: Pair | None = None
    checking_since: float | None = None
    failed: bool = False
    ever_connected: bool = False
    rng: random.Random = field(kw_only=True, repr=False)  # the Tunnel's seeded rng: check ids
    keepalive: float = field(default=KEEPALIVE_INTERVAL, kw_only=True)  # the nominated pair's check interval
    _events: collections.deque = field(default_factory=collections.deque)
    _transmits: collections.deque = field(default_factory=collections.deque)

    @classmethod
    def new(
        cls, peer_id: str, controlling: bool, now: float, rng: random.Random, keepalive: float = KEEPALIVE_INTERVAL
    ) -> Connection:
        return cls(
            peer_id=peer_id,
            controlling=controlling,
            local_ufrag=_token(rng, 8),
            local_pwd=_token(rng, 24),
            created_at=now,
            tie_breaker=rng.getrandbits(64),
            rng=rng,
            keepalive=keepalive,
        )

    # ------------------------------------------------------------------ state
    @property
    def path_lost_after(self) -> float:
        """No answer on the nominated pair for this long: the path is lost (``PATH_LOST_AFTER`` by default)."""
        return self.keepalive * KEEPALIVES_BEFORE_LOST

    @property
    def connected(self) -> bool:
        return self.nominated is not None and not self.failed

    def set_remote_credentials(self, ufrag: str, pwd: str, now: float) -> None:
        self.remote_ufrag, self.remote_pwd = ufrag, pwd
        self._start_checking(now)

    def add_local_candidate(self, candidate: LocalCandidate, now: float) -> bool:
        if candidate in self.local_candidates:
            return False
        self.local_candidates.append(candidate)
        for remote in self.remote_candidates.values():
            self._add_pair(candidate, remote, now)
        self._start_checking(now)
        return True

    def remove_local_candidates(self, predicate) -> list[LocalCandidate]:
        removed = [c for c in self.local_candidates if predicate(c)]
        if removed:
            self.local_candidates = [c for c in self.local_candidates if c not in removed]
            self._drop_pairs(lambda p: p.local in removed)
        return removed

    def add_remote_candidate(self, candidate: RemoteCandidate, now: float) -> bool:
        if candidate.addr in self.remote_candidates:
            return False
        if len(self.remote_candidates) >= MAX_REMOTE_CANDIDATES:
            # Each remote candidate costs pairs, checks and a channel bind on our relay.
            log.warning("Too many remote candidates; ignoring %s", kv(peer=self.peer_id, max=MAX_REMOTE_CANDIDATES))
            return False
        self.remote_candidates[candidate.addr] = candidate
        for local in self.local_candidates:
            self._add_pair(local, candidate, now)
        self._start_checking(now)
        return True

    def _room_for(self, addr: Address) -> bool:
        return addr in self.remote_candidates or len(self.remote_candidates) < MAX_REMOTE_CANDIDATES

    def remove_remote_candidate(self, addr: Address) -> None:
        if self.remote_candidates.pop(addr, None) is not None:
            self._drop_pairs(lambda p: p.remote.addr == addr)

    def _add_pair(self, local: LocalCandidate, remote: RemoteCandidate, now: float) -> Pair | None:
        if local.family != remote.family:
            return None
        if any(p.key() == (local, remote.addr) for p in self.pairs):
            return None
        ours, theirs = local.priority, remote.priority
        priority = pair_priority(ours, theirs) if self.controlling else pair_priority(theirs, ours)
        pair = Pair(local, remote, priority, next_check=now)
        self.pairs.append(pair)
        self.pairs.sort(key=lambda p: -p.priority)
        return pair

    def _drop_pairs(self, predicate) -> None:
        self.pairs = [p for p in self.pairs if not predicate(p)]
        nominated = self.nominated
        if nominated is not None and nominated not in self.pairs:
            log.info("Nominated path removed %s", kv(peer=self.peer_id))
            # A lost path, as if it had gone quiet: when the peer invalidates its end (its relay
            # rebooted), ours may be on the same relay and dead too, while the portal tells us
            # nothing (a reboot with the same secret inside its debounce). The tunnel then probes
            # our relay, which a quiet path would only get PATH_LOST_AFTER later.
            # No ``now`` here: every pair is due at once and the ICE clock restarts at the next
            # timeout (not at the connection's start, which would fail it at once).
            self._lose_path(nominated, next_check=0.0, checking_since=None)

    def _lose_path(self, nominated: Pair, next_check: float, checking_since: float | None) -> None:
        """The nominated pair is gone (quiet, or removed): say so, and check every pair left again."""
        self._events.append(PathLost(self.peer_id, nominated.local.rid))
        self.nominated = None
        nominated.nominated = False
        for pair in self.pairs:
            pair.state, pair.rto, pair.next_check = "waiting", INITIAL_RTO, next_check
        self.checking_since = checking_since

    def _start_checking(self, now: float) -> None:
        # New candidates (a migration, a late answer) restart the ICE clock.
        if self.nominated is None:
            self.checking_since = now

    # ------------------------------------------------------------------ checks
    def _credentials_ready(self) -> bool:
        return self.remote_ufrag is not None and self.remote_pwd is not None

    def _send_check(self, pair: Pair, now: float) -> None:
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        # A retransmit (no answer yet) keeps the transaction id (RFC 8489 §6.2.1): a late answer
        # to an earlier copy then still counts. A new check after an answer is a new transaction.
        tid = pair.tid if pair.tid is not None else new_transaction_id(self.rng)
        request = Message(Method.BINDING, Class.REQUEST, tid)
        request.add("USERNAME", f"{self.remote_ufrag}:{self.local_ufrag}")
        request.add("PRIORITY", candidate_priority("prflx"))
        if self.controlling:
            request.add("ICE-CONTROLLING", self.tie_breaker)
            request.add("USE-CANDIDATE")
        else:
            request.add("ICE-CONTROLLED", self.tie_breaker)
        pair.tid = request.transaction_id
        if pair.state == "waiting":
            pair.state = "in-progress"
        pair.next_check = now + pair.rto
        pair.rto = min(pair.rto * 2, MAX_RTO)
        payload = request.encode(self.remote_pwd.encode(), fingerprint=True)
        if log.isEnabledFor(logging.DEBUG):  # the hot path: no formatting for a record nobody takes
            log.debug("Check sent %s", self._pair_fields(pair, state=pair.state))
        self._transmits.append(PathTransmit(pair.local, pair.remote.addr, payload))

    def _pair_fields(self, pair: Pair, **extra: object) -> Fields:
        return kv(
            peer=self.peer_id, local=format_address(pair.local.addr), remote=format_address(pair.remote.addr), **extra
        )

    def handle_stun(self, message: Message, local: LocalCandidate, from_: Address, now: float) -> bool:
        """A STUN message that arrived on ``local`` from ``from_``. False if not for us."""
        if message.method != Method.BINDING:
            return False
        if message.cls == Class.REQUEST:
            return self._handle_check(message, local, from_, now)
        if message.cls in (Class.SUCCESS, Class.ERROR):
            return self._handle_response(message, now)
        return False

    def owns_request(self, message: Message) -> bool:
        username = message.get("USERNAME") or ""
        return username.startswith(f"{self.local_ufrag}:")

    def _handle_check(self, message: Message, local: LocalCandidate, from_: Address, now: float) -> bool:
        if not self.owns_request(message):
            return False
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Check received %s",
                kv(peer=self.peer_id, local=format_address(local.addr), remote=format_address(from_)),
            )
        if not message.verify_integrity(self.local_pwd.encode()):
            log.debug("Connectivity check with bad integrity %s", kv(peer=self.peer_id))
            return True
        if local not in self.local_candidates:
            # A check on a candidate this connection does not have (the relay of an earlier
            # connection to the same peer, whose candidates the peer still pairs): no answer, as
            # str0m's agent discards it ("unknown interface"). An answer would let the controlling
            # side nominate a pair we never take, each side then sure of a different path.
            log.debug("Check on an unknown local candidate %s", kv(peer=self.peer_id, local=format_address(local.addr)))
            return True
        response = Message(Method.BINDING, Class.SUCCESS, message.transaction_id)
        response.add("XOR-MAPPED-ADDRESS", from_)
        self._transmits.append(PathTransmit(local, from_, response.encode(self.local_pwd.encode(), fingerprint=True)))
        if self.failed:
            return True
        pair = next((p for p in self.pairs if p.key() == (local, from_)), None)
        if pair is None and local in self.local_candidates and self._room_for(from_):
            remote = RemoteCandidate("prflx", from_, message.get("PRIORITY") or candidate_priority("prflx"))
            self.remote_candidates.setdefault(from_, remote)
            pair = self._add_pair(local, remote, now)
        if pair is None:
            return True
        current = self.nominated
        quiet = current is not None and now - (current.last_response or current.next_check) > 2 * self.keepalive
        pair.last_response = now  # the peer reaches us on this pair: it is alive
        if pair.state == "waiting" and self._credentials_ready():
            self._send_check(pair, now)  # triggered check
        if not self.controlling and "USE-CANDIDATE" in message and current is not pair:
            # The controlling side puts USE-CANDIDATE on every check (aggressive nomination),
            # so switching at each one would flap between pairs. RFC 8445 §8.1.1: the highest-
            # priority nominated pair is used; we also move when ours has gone quiet.
            if current is None or pair.priority > current.priority or quiet:
                self._nominate(pair, now)
        return True

    def _handle_response(self, message: Message, now: float) -> bool:
        pair = next((p for p in self.pairs if p.tid == message.transaction_id), None)
        if pair is None:
            return False
        if self.remote_pwd is None or not message.verify_integrity(self.remote_pwd.encode()):
            log.debug("Check response with bad integrity %s", kv(peer=self.peer_id))
            return True
        pair.tid = None
        if message.cls == Class.ERROR:
            log.debug("Check failed %s", kv(peer=self.peer_id, code=message.error_code))
            return True
        pair.state = "succeeded"
        pair.last_response = now
        pair.rto = INITIAL_RTO
        if self.controlling and self.nominated is None and not self.failed:
            self._nominate(pair, now)
        return True

    def _nominate(self, pair: Pair, now: float) -> None:
        if self.nominated is not None:
            self.nominated.nominated = False
        pair.nominated = True
        self.nominated = pair
        self.ever_connected = True
        self.checking_since = None
        pair.next_check = now + self.keepalive
        log.info("Connection established %s", self._pair_fields(pair, relay=pair.local.rid or "-"))
        self._events.append(Connected(self.peer_id, pair.local, pair.remote.addr))

    def note_data_received(self, local: LocalCandidate, from_: Address, now: float) -> None:
        pair = self.nominated
        # pair.key() == (local, from_), without building the tuple: this runs per datagram.
        if pair is not None and pair.remote.addr == from_ and pair.local == local:
            pair.last_response = now

    # ------------------------------------------------------------------ time
    def handle_timeout(self, now: float) -> None:
        if self.failed or not self._credentials_ready():
            return
        nominated = self.nominated
        if nominated is not None:
            last = nominated.last_response or now
            if now - last >= self.path_lost_after:
                log.info("Nominated path lost %s", kv(peer=self.peer_id, relay=nominated.local.rid or "-"))
                self._lose_path(nominated, next_check=now, checking_since=now)
            elif now >= nominated.next_check:
                self._send_check(nominated, now)
                nominated.next_check = now + self.keepalive
                nominated.rto = INITIAL_RTO
            return
        if self.checking_since is None and (self.pairs or (self.local_candidates and self.remote_candidates)):
            self.checking_since = now
        if self.checking_since is not None and self.local_candidates and self.remote_candidates:
            if now - self.checking_since >= ICE_TIMEOUT:
                self.fail("ICE timeout", now)
                return
        for pair in self.pairs:
            if now >= pair.next_check:
                self._send_check(pair, now)

    def fail(self, reason: str, now: float) -> None:
        if self.failed:
            return
        self.failed = True
        self.nominated = None
        log.info("Connection failed %s", kv(peer=self.peer_id, reason=reason))
        self._events.append(Failed(self.peer_id, reason))

    def poll_timeout(self) -> float | None:
        if self.failed or not self._credentials_ready():
            return None
        if self.nominated is not None:
            last = self.nominated.last_response or self.nominated.next_check
            return min(self.nominated.next_check, last + self.path_lost_after)
        deadlines = [p.next_check for p in self.pairs]
        if self.checking_since is not None and self.local_candidates and self.remote_candidates:
            deadlines.append(self.checking_since + ICE_TIMEOUT)
        return min(deadlines) if deadlines else None

    def poll_transmit(self) -> PathTransmit | None:
        return self._transmits.popleft() if self._transmits else None

    def has_output(self) -> bool:
        """Whether ``poll_transmit`` or ``poll_event`` has something: lets the Tunnel skip the polls."""
        return bool(self._transmits or self._events)

    def poll_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None


def _token(rng: random.Random, length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    return "".join(rng.choice(alphabet) for _ in range(length))


def decode_check(packet: bytes) -> Message | None:
    """Decode a connectivity check or its response; None for anything else."""
    if not stun.is_stun(packet):
        return None
    try:
        message = stun.decode(packet)
    except stun.StunParseError:
        return None
    return message if message.method == Method.BINDING else None
