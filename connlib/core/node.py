"""``Node``: the set of relays a client or gateway keeps allocations on (spec §2).

Sans-IO like ``Allocation``. ``update_relays`` implements the two fixes of Firezone #6666:

1. a known relay id that comes back with different credentials or a different address is dropped
   and allocated again (a relay that rebooted while we were partitioned from the portal);
2. every known relay *not* named in the update is probed with a single-shot REFRESH and dropped
   when the probe fails (a relay that vanished while we were partitioned).

Beyond #6666 (issue 9), relays the update names and we keep as known are probed too, with a short
retransmitting REFRESH (a relay restarted with the same secret), and a relay that keeps refusing us
is freed and held off for ``REFUSED_HOLD_OFF``.

Dropped relays are announced with ``RelayRemoved`` so that connections can migrate; when the last
one goes, ``NoRelays`` asks the portal for a new set.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from . import backoff as backoff_mod
from . import fixes, stun
from .addr import Address, format_address
from .allocation import (
    DEFAULT_CHANNEL_TIMES,
    Allocation,
    Candidate,
    ChannelTimes,
    FreeReason,
    Invalid,
    New,
    Rejection,
    RelaySocket,
)
from .credentials import long_term_key
from .fixes import (
    FIX_CREDENTIALS_COMPARE,
    FIX_PATH_PROBE_RETRANSMIT,
    FIX_PROBE,
    FIX_PROBE_LISTED,
)
from .logfmt import kv
from .relay import RelayConfig
from .sansio import Transmit

log = logging.getLogger("connlib.node")

MAX_PREVIOUS_RELAY_IPS = 64
MAX_FORGOTTEN = 64  # relays forgotten while they may hold our allocation (_forgotten), oldest dropped
# A relay freed because it kept refusing us (486 quota, 508, 5xx, ...) is not allocated on again
# for this long, even if the portal names it at once (it will, answering our ``no_relays``):
# without it, refuse → free → no_relays → relays_presence → allocate would loop at portal speed.
REFUSED_HOLD_OFF = 30.0


@dataclass(frozen=True)
class CandidateNew:
    rid: str
    candidate: Candidate


@dataclass(frozen=True)
class CandidateInvalid:
    rid: str
    candidate: Candidate


@dataclass(frozen=True)
class RelayAdded:
    rid: str


@dataclass(frozen=True)
class RelayRemoved:
    """A relay is gone (removed by the portal, replaced, or freed): migrate what used it."""

    rid: str
    reason: str


@dataclass(frozen=True)
class NoRelays:
    """The last relay is gone; the portal should be asked for new ones (``no_relays``)."""


@dataclass(frozen=True)
class RelayState:
    rid: str
    srflx: tuple[Address, ...]
    relayed: tuple[Address, ...]
    lifetime: float | None
    srtt: float | None
    rejection: Rejection | None = None  # the last error the relay answered (maybe unsigned)

    @property
    def allocated(self) -> bool:
        return bool(self.relayed)


@dataclass(frozen=True)
class ChannelData:
    """Application data that arrived through a relay from ``peer``."""

    rid: str
    peer: Address
    payload: bytes


NodeEvent = CandidateNew | CandidateInvalid | RelayAdded | RelayRemoved | NoRelays | ChannelData


def _median(values: list[float]) -> float:
    """``statistics.median``, which is not imported for this: ``statistics`` (with ``fractions`` and
    ``decimal``) is ~5 % of ``python -m connlib allocate``'s start-up."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True, slots=True)
class _Forgotten:
    """A forgotten relay's allocation as far as we know: where, under which credentials, until when."""

    server: RelaySocket
    username: str
    password: str
    until: float


class Node:
    def __init__(
        self,
        now: float,
        *,
        seed: int = 0,
        max_elapsed: float = backoff_mod.MAX_ELAPSED,
        disabled_fixes: Iterable[str] = (),
        channel_times: ChannelTimes = DEFAULT_CHANNEL_TIMES,
    ) -> None:
        self.allocations: dict[str, Allocation] = {}
        self.channel_times = channel_times
        # The relay *sockets* behind those IPs: only traffic from a relay's port is relay traffic
        # (spec §1.8); a peer may well send from another port of the same IP (its relayed address).
        self._previous_relay_addrs: collections.deque[Address] = collections.deque(maxlen=MAX_PREVIOUS_RELAY_IPS)
        self.max_elapsed = max_elapsed
        self.disabled_fixes = fixes.checked(disabled_fixes)
        self._rng = random.Random(seed)
        self._events: collections.deque[NodeEvent] = collections.deque()
        self._transmits: collections.deque[Transmit] = collections.deque()
        # NoRelays is owed once the last relay is gone, not before the first one ever came.
        self._no_relays_sent = True
        self._held_off: dict[str, float] = {}  # rid -> until: freed for refusing (REFUSED_HOLD_OFF)
        self._deferred: dict[str, RelayConfig] = {}  # listed while held off: added when it ends
        # A relay we stopped using while it may still hold our allocation (no delete answered):
        # handed back under other credentials, it refuses a new one (437) and the delete under
        # them (441) until then, up to its lifetime (600 s), so the new allocation deletes it
        # under the old ones (the 441 path of a replaced allocation).
        self._forgotten: dict[str, _Forgotten] = {}
        self._now = now
        self._released = False

    # ------------------------------------------------------------------ relay set
    def release(self, now: float) -> None:
        """The peer exits: every allocation is deleted on its relay (:meth:`Allocation.release`)
        and the relay set no longer changes."""
        self._now = now
        self._released = True
        self._deferred.clear()
        for allocation in self.allocations.values():
            allocation.release(now)
        self._drain_allocations()

    def releasing(self) -> bool:
        """A delete is still unanswered (an exiting peer waits for it, bounded)."""
        return any(allocation.releasing() for allocation in self.allocations.values())

    def update_relays(self, disconnected_ids: Iterable[str], connected: Iterable[RelayConfig], now: float) -> None:
        if self._released:
            return
        self._now = now
        for rid in sorted(set(disconnected_ids)):
            self._deferred.pop(rid, None)
            allocation = self.allocations.pop(rid, None)
            if allocation is None:
                log.debug("Cannot delete unknown allocation %s", kv(rid=rid))
                continue
            log.info("Removed TURN server %s", kv(rid=rid))
            self._forget(rid, allocation, "removed by the portal")

        listed: set[str] = set()
        skipped: list[str] = []
        for relay in connected:
            outcome = self._upsert(relay, now)
            if outcome is not None:
                listed.add(relay.id)
            if outcome == "skipped":
                skipped.append(relay.id)

        self._probe_unlisted(listed, now)
        self._probe_skipped(skipped, now)
        self._drain_allocations()
        self._check_no_relays()

    def _upsert(self, relay: RelayConfig, now: float) -> str | None:
        """Add, skip, replace or defer one relay: "added", "skipped", "replaced", "deferred";
        None if the entry is unusable (and was ignored)."""
        try:
            server = RelaySocket(relay.v4, relay.v6)
        except ValueError:
            log.debug("Skipping relay without address %s", kv(rid=relay.id))
            return None
        if not relay.username or not relay.realm:
            log.debug("Skipping relay with empty username or realm %s", kv(rid=relay.id))
            return None
        try:
            long_term_key(relay.username, relay.realm, relay.password)
        except UnicodeEncodeError:  # a lone surrogate from JSON: it cannot key an HMAC
            log.warning("Skipping relay with credentials that are not UTF-8 %s", kv(rid=relay.id))
            return None
        until = self._held_off.get(relay.id)
        if until is not None and now < until and relay.id not in self.allocations:
            log.info("Holding off a relay that refused us %s", kv(rid=relay.id, until_s=round(until - now, 1)))
            self._deferred[relay.id] = relay
            return "deferred"
        self._held_off.pop(relay.id, None)
        self._deferred.pop(relay.id, None)
        existing = self.allocations.get(relay.id)
        if existing is not None and self._is_same_relay(existing, relay, server):
            log.info("Skipping known TURN server %s", kv(rid=relay.id, addr=_fmt_server(server)))
            return "skipped"
        if existing is not None:
            log.info("Replaced TURN server %s", kv(rid=relay.id, addr=_fmt_server(server)))
            del self.allocations[relay.id]
            self._forget(relay.id, existing, "replaced (new credentials or address)")
        else:
            log.info("Added new TURN server %s", kv(rid=relay.id, addr=_fmt_server(server)))
        forgotten = self._forgotten.pop(relay.id, None)
        if existing is not None and existing.server == server and existing.credentials_valid:
            # Same address: the relay may still hold the old allocation on our 5-tuple (it did not
            # reboot); the new allocation then deletes it under the old credentials (441 path).
            predecessor: tuple[str, str] | None = (existing.username, existing.password)
        elif forgotten is not None and forgotten.server == server and forgotten.until > now:
            old = (forgotten.username, forgotten.password)
            predecessor = old if old != (relay.username, relay.password) else None
        else:
            predecessor = None
        self.allocations[relay.id] = Allocation(
            server,
            relay.username,
            relay.password,
            relay.realm,
            now,
            relay_id=relay.id,
            max_elapsed=self.max_elapsed,
            rng=self._rng,
            disabled_fixes=self.disabled_fixes,
            channel_times=self.channel_times,
            predecessor=predecessor,
        )
        self._no_relays_sent = False
        self._events.append(RelayAdded(relay.id))
        return "replaced" if existing is not None else "added"

    def _is_same_relay(self, existing: Allocation, relay: RelayConfig, server: RelaySocket) -> bool:
        if FIX_CREDENTIALS_COMPARE in self.disabled_fixes:
            return True  # the pre-#6666 bug: a known id is trusted whatever it now carries
        return existing.matches_credentials(relay.username, relay.password) and existing.matches_socket(server)

    def _probe_unlisted(self, listed: set[str], now: float) -> None:
        if FIX_PROBE in self.disabled_fixes:
            return
        for rid in sorted(self.allocations.keys() - listed):
            log.debug("Probing relay not named in the update %s", kv(rid=rid))
            self.allocations[rid].refresh(now)

    def _probe_skipped(self, skipped: list[str], now: float) -> None:
        """Relays listed with what we already hold may still have lost our allocation: one that
        restarted with the same secret while we were cut off from the portal looks the same.
        Firezone probes only the unlisted ones; we probe these too (a REFRESH: 438, 437 and a new
        ALLOCATE on a restarted relay), retransmitted, since the portal says they are alive."""
        if FIX_PROBE_LISTED in self.disabled_fixes:
            return
        for rid in sorted(set(skipped)):
            log.debug("Probing known relay named in the update %s", kv(rid=rid))
            self.allocations[rid].refresh(now, backoff_mod.path_probe(now))

    def _forget(self, rid: str, allocation: Allocation, reason: str) -> None:
        """Take a relay out of use: its candidates are invalid and its stray packets dropped."""
        self._drain_one(rid, allocation)
        held = allocation.held_until
        if held is not None and held > self._now and allocation.credentials_valid and not allocation.released:
            self._forgotten.pop(rid, None)
            if len(self._forgotten) >= MAX_FORGOTTEN:
                del self._forgotten[next(iter(self._forgotten))]
            self._forgotten[rid] = _Forgotten(allocation.server, allocation.username, allocation.password, held)
        for addr in allocation.server.addresses():
            if addr not in self._previous_relay_addrs:
                self._previous_relay_addrs.append(addr)
        for candidate in allocation.relay_candidates():
            self._events.append(CandidateInvalid(rid, candidate))
        self._events.append(RelayRemoved(rid, reason))

    def _check_no_relays(self) -> None:
        if not self.allocations and not self._no_relays_sent:
            log.info("Removed last relay; requesting a new set")
            self._no_relays_sent = True
            self._events.append(NoRelays())

    # ------------------------------------------------------------------ I/O-free plumbing
    def handle_input(self, packet: bytes, from_: Address, local: Address | None, now: float) -> bool:
        """Feed a datagram: True if it is relay traffic (consumed), False if not (e.g. a direct
        connectivity check). Relayed application data comes out as a ``ChannelData`` event;
        ``decapsulate`` hands it out directly instead."""
        found = self._allocation_at(from_)
        if found is None:
            return from_ in self._previous_relay_addrs  # late traffic from a relay we dropped
        rid, allocation = found
        if stun.is_channel_data(packet):
            unwrapped = allocation.decapsulate(from_, packet, now)
            if unwrapped is not None:
                self._events.append(ChannelData(rid, *unwrapped))
        else:
            allocation.handle_input(packet, from_, local, now)
        self._drain_allocations()
        self._gc()
        return True

    def decapsulate(self, from_: Address, packet: bytes, now: float) -> ChannelData | None:
        """Unwrap ChannelData from one of our relays; None if it is not (or not for a channel of ours)."""
        unwrapped = self.unwrap(from_, packet, now)
        return ChannelData(*unwrapped) if unwrapped is not None else None

    def unwrap(self, from_: Address, packet: bytes, now: float) -> tuple[str, Address, bytes] | None:
        """``decapsulate`` as a plain ``(rid, peer, payload)``: the Tunnel's data path, which hands
        the three on at once and has no use for a ``ChannelData`` built per datagram."""
        found = self._allocation_at(from_)
        if found is None:
            return None
        rid, allocation = found
        # Unwrapping queues nothing and frees nothing (it only notes when the channel last carried
        # data), so the data path skips the drain and GC that control input needs.
        unwrapped = allocation.decapsulate(from_, packet, now)
        return (rid, *unwrapped) if unwrapped is not None else None

    def _allocation_at(self, addr: Address) -> tuple[str, Allocation] | None:
        for rid, allocation in self.allocations.items():
            if addr in allocation.server:
                return rid, allocation
        return None

    def handle_timeout(self, now: float) -> None:
        self._now = now
        for allocation in self.allocations.values():
            allocation.handle_timeout(now)
        for rid, relay in sorted(self._deferred.items()):
            if now >= self._held_off.get(rid, now):
                log.info("Hold-off over; allocating again %s", kv(rid=rid))
                del self._deferred[rid]
                self._held_off.pop(rid, None)
                self._upsert(relay, now)
        self._drain_allocations()
        self._gc()

    def _gc(self) -> None:
        for rid in sorted(self.allocations):
            reason = self.allocations[rid].can_be_freed()
            if reason is None:
                continue
            allocation = self.allocations.pop(rid)
            log.warning("Disconnecting from relay; %s %s", reason, kv(rid=rid))
            if reason in (FreeReason.REFUSED, FreeReason.STALLED):
                self._held_off[rid] = self._now + REFUSED_HOLD_OFF
            self._forget(rid, allocation, str(reason))
        self._check_no_relays()

    def _drain_allocations(self) -> None:
        # Asked at every poll that finds the Node's queues empty (several per datagram): only an
        # allocation with output is polled.
        for rid, allocation in self.allocations.items():
            if allocation.has_output():
                self._drain_one(rid, allocation)

    def _drain_one(self, rid: str, allocation: Allocation) -> None:
        while (transmit := allocation.poll_transmit()) is not None:
            self._transmits.append(transmit)
        while (event := allocation.poll_event()) is not None:
            if isinstance(event, New):
                self._events.append(CandidateNew(rid, event.candidate))
            elif isinstance(event, Invalid):
                self._events.append(CandidateInvalid(rid, event.candidate))

    def poll_transmit(self) -> Transmit | None:
        if not self._transmits:
            self._drain_allocations()  # commands may have been given to an allocation directly
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> NodeEvent | None:
        if not self._events:
            self._drain_allocations()
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        # Asked after every datagram: one pass, no intermediate lists.
        best: float | None = None
        for allocation in self.allocations.values():
            deadline = allocation.poll_timeout()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        for rid in self._deferred:
            until = self._held_off.get(rid)
            if until is not None and (best is None or until < best):
                best = until
        return best

    # ------------------------------------------------------------------ data path
    def bind_channel(self, rid: str, peer: Address, now: float) -> None:
        allocation = self.allocations.get(rid)
        if allocation is not None:
            allocation.bind_channel(peer, now)
            self._drain_one(rid, allocation)

    def encapsulate(self, rid: str, peer: Address, payload: bytes, now: float) -> Transmit | None:
        allocation = self.allocations.get(rid)
        if allocation is None:
            return None
        transmit = allocation.encapsulate(peer, payload, now)
        if allocation.has_output():  # a channel bind it started (no channel yet)
            self._drain_one(rid, allocation)
        return transmit

    def probe(self, rid: str, now: float) -> None:
        """Probe one relay with a single-shot REFRESH (its path went quiet); no-op if unknown."""
        allocation = self.allocations.get(rid)
        if allocation is not None:
            if FIX_PATH_PROBE_RETRANSMIT in self.disabled_fixes:
                allocation.refresh(now)  # the single-shot 1 s probe: one lost packet frees the relay
            else:
                # Firezone's probe is one 1 s REFRESH; a path that went quiet may be congested,
                # so this one is retransmitted (0, 0.5, 1.25, 2.375 s; given up at 2.5 s).
                allocation.refresh(now, backoff_mod.path_probe(now))
            self._drain_one(rid, allocation)

    # ------------------------------------------------------------------ selection
    def has_relay(self, rid: str) -> bool:
        return rid in self.allocations

    def relay_ids(self) -> list[str]:
        return sorted(self.allocations)

    def relay_state(self, rid: str) -> RelayState | None:
        """A read-only snapshot of one relay's allocation, for reports and the CLI."""
        allocation = self.allocations.get(rid)
        if allocation is None:
            return None
        return RelayState(
            rid=rid,
            srflx=tuple(c.addr for c in allocation.srflx.values()),
            relayed=tuple(c.addr for c in allocation.relay_candidates()),
            lifetime=allocation.lifetime[1] if allocation.lifetime else None,
            srtt=allocation.srtt,
            rejection=allocation.rejection,
        )

    def usable_relays(self) -> list[str]:
        return [rid for rid, a in sorted(self.allocations.items()) if a.has_allocation()]

    def sample_relay(self) -> str | None:
        """Pick a relay for a new connection among the ones with a good RTT (spec §2.3)."""
        eligible = self._eligible_relays()
        return self._rng.choice(eligible) if eligible else None

    def can_sample_relay(self) -> bool:
        """Whether ``sample_relay`` would find one; draws nothing from the rng."""
        return bool(self._eligible_relays())

    def _eligible_relays(self) -> list[str]:
        measured = {
            rid: a.srtt for rid, a in sorted(self.allocations.items()) if a.has_allocation() and a.srtt is not None
        }
        if not measured:
            return []
        rtts = list(measured.values())
        if len(rtts) <= 2:
            threshold = 1.5 * min(rtts)
        else:
            median = _median(rtts)
            mad = max(_median([abs(r - median) for r in rtts]), 0.002)
            threshold = median + 3 * mad
        return [rid for rid, rtt in measured.items() if rtt <= threshold]

    def relay_candidates(self, rid: str) -> list[Candidate]:
        allocation = self.allocations.get(rid)
        return allocation.relay_candidates() if allocation else []

    def relay_candidate(self, rid: str, family: int) -> Candidate | None:
        """The relay candidate of ``rid`` in address family ``family``, if it has one."""
        allocation = self.allocations.get(rid)
        return allocation.relay_candidate(family) if allocation else None

    def free_reason(self, rid: str) -> FreeReason | None:
        allocation = self.allocations.get(rid)
        return allocation.can_be_freed() if allocation else None


def _fmt_server(server: RelaySocket) -> str:
    return ",".join(format_address(a) for a in server.addresses())
