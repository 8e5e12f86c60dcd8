"""``Tunnel``: a client's or gateway's relays and connections, sans-IO (spec §2.3–2.4, §3.4).

It owns a ``Node`` (the relay set) and one ``Connection`` per peer. Each connection gathers its
candidates from **one sampled relay** (plus host/srflx unless the policy is ``relay-only``) and
signals them through the portal. When that relay is removed, replaced or freed, the connection
migrates: it samples another relay, signals the new candidates, invalidates the old ones and
re-checks, while the peer does the same. With no relay left it waits for the next relay set.

Application datagrams on a connection are framed with one tag byte so that they can never be
mistaken for STUN (first byte 0–3) on the same path.
"""

from __future__ import annotations

import collections
import heapq
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from . import fixes, messages, stun
from .addr import Address, family
from .allocation import DEFAULT_CHANNEL_TIMES, Candidate, ChannelTimes
from .candidate import parse_candidate
from .fixes import FIX_FAIL_UNCONNECTED, FIX_PATH_PROBE
from .ice import (
    KEEPALIVE_INTERVAL,
    Connected,
    Connection,
    ConnectionEvent,
    Failed,
    LocalCandidate,
    PathLost,
    decode_check,
)
from .logfmt import kv
from .node import CandidateInvalid, CandidateNew, ChannelData, Node, NodeEvent, NoRelays, RelayRemoved
from .sansio import Transmit

log = logging.getLogger("connlib.tunnel")

DATA_TAG = 0xDA
_DATA_PREFIX = bytes([DATA_TAG])
_BINDING_REQUEST = b"\x00\x01"  # a STUN message type's two bytes: Binding, request
POLICY_RELAY_ONLY = "relay-only"
POLICY_ALL = "all"


@dataclass(frozen=True)
class Signal:
    """A message for the portal: ``event`` with a JSON-able ``payload``."""

    event: str
    payload: dict


@dataclass(frozen=True)
class Received:
    peer_id: str
    payload: bytes


@dataclass(frozen=True)
class Migrating:
    peer_id: str
    from_relay: str | None
    to_relay: str | None


@dataclass(frozen=True)
class ConnectionState:
    """A read-only view of one connection, for the application and reports."""

    peer_id: str
    answered: bool  # the peer's ICE credentials arrived
    connected: bool
    relay_id: str | None  # the relay its local candidates were gathered from
    carrying_relay: str | None  # the relay on our side of the nominated path, None if not nominated


TunnelEvent = Signal | Received | Migrating | ConnectionEvent | NodeEvent


class Tunnel:
    def __init__(
        self,
        role: str,
        now: float,
        *,
        seed: int = 0,
        policy: str = POLICY_RELAY_ONLY,
        node: Node | None = None,
        disabled_fixes: Iterable[str] = (),
        channel_times: ChannelTimes = DEFAULT_CHANNEL_TIMES,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        if role not in ("client", "gateway"):
            raise ValueError(f"role must be client or gateway, not {role!r}")
        if policy not in (POLICY_RELAY_ONLY, POLICY_ALL):
            raise ValueError(f"unknown candidate policy {policy!r}")
        self.role = role
        self.policy = policy
        self._disabled_fixes = fixes.checked(disabled_fixes)
        self.node = node or Node(now, seed=seed, disabled_fixes=self._disabled_fixes, channel_times=channel_times)
        self.connections: dict[str, Connection] = {}
        self._rng = random.Random(seed + 1)
        self._events: collections.deque[TunnelEvent] = collections.deque()
        self._transmits: collections.deque[Transmit] = collections.deque()
        self._host_candidates: list[LocalCandidate] = []
        self._keepalive = keepalive  # each connection's keep-alive interval (the path is lost after 4)
        # (rid, family) -> (the relay's Candidate, our LocalCandidate for it): built once per
        # relay address, not per relayed datagram; an entry is used only while its Candidate is
        # the one the relay holds.
        self._relay_locals: dict[tuple[str, int], tuple[Candidate, LocalCandidate]] = {}
        # Per-datagram lookups a gateway with thousands of connections must not do by a pass over
        # them all. Each is a hint checked on use (a stale or missing entry falls back to the pass):
        # the connection whose nominated pair a datagram came in on; the owner of a local ufrag
        # (its checks' USERNAME); the connection that sent a check, by transaction id.
        self._by_path: dict[tuple[LocalCandidate, Address], Connection] = {}
        self._by_ufrag: dict[str, Connection] = {}
        self._by_check: dict[bytes, Connection] = {}
        # Whether a connection may hold output that no drain has taken yet (an entry point that
        # changed connections without draining them): the next datagram then drains them all.
        self._undrained = False
        # Each connection's poll_timeout, kept while nothing but the datagram and timer paths
        # (which update the connections they touch) changed connections: a heap of (deadline,
        # seq, connection), an entry current while it matches ``_deadlines``; the connections
        # with no deadline; the order connections were made in (the dict's: outputs keep it).
        self._deadlines_known = False
        self._deadlines: dict[str, tuple[Connection, float | None]] = {}
        self._heap: list[tuple[float, int, Connection]] = []
        self._undated: dict[str, Connection] = {}
        self._made: dict[str, int] = {}
        self._seq = 0

    # ------------------------------------------------------------------ exit
    def release(self, now: float) -> None:
        """The peer exits: its allocations are deleted on their relays (:meth:`Node.release`)."""
        self.node.release(now)

    def releasing(self) -> bool:
        return self.node.releasing()

    # ------------------------------------------------------------------ portal inputs
    def update_relays(self, disconnected_ids: Iterable[str], connected: Iterable, now: float) -> None:
        self.node.update_relays(disconnected_ids, connected, now)
        self._process_node_events(now)
        self._place_waiting_connections(now)
        self._touched_all()  # a migration may have queued a PathLost

    def connect(self, peer_id: str, now: float) -> None:
        """Client side: open (or restart) a connection to gateway ``peer_id``."""
        connection = self._new_connection(peer_id, controlling=True, now=now)
        self._touched_all()
        self._signal(
            messages.Event.REQUEST_CONNECTION,
            messages.ConnectionSignal(peer_id, connection.local_ufrag, connection.local_pwd, connection.relay_id),
        )
        self._signal_local_candidates(connection, connection.local_candidates)

    def handle_signal(self, event: str, payload: object, now: float) -> None:
        """A typed payload from the portal (see ``connlib.core.messages``)."""
        connection: Connection | None
        if event == messages.Event.CONNECTION_REQUEST and self.role == "gateway":
            assert isinstance(payload, messages.ConnectionSignal)
            connection = self._new_connection(payload.peer_id, controlling=False, now=now)
            connection.set_remote_credentials(payload.ufrag, payload.pwd, now)
            self._signal(
                messages.Event.CONNECTION_ACCEPTED,
                messages.ConnectionSignal(
                    payload.peer_id, connection.local_ufrag, connection.local_pwd, connection.relay_id
                ),
            )
            self._signal_local_candidates(connection, connection.local_candidates)
        elif event == messages.Event.CONNECTION_ACCEPTED and self.role == "client":
            assert isinstance(payload, messages.ConnectionSignal)
            connection = self.connections.get(payload.peer_id)
            if connection is None:
                log.debug("Answer for unknown connection %s", kv(peer=payload.peer_id))
                return
            connection.set_remote_credentials(payload.ufrag, payload.pwd, now)
        elif event in (messages.Event.NEW_ICE_CANDIDATES, messages.Event.INVALIDATE_ICE_CANDIDATES):
            assert isinstance(payload, messages.CandidateSignal)
            connection = self.connections.get(payload.peer_id)
            if connection is None:
                log.debug("Candidates for unknown connection %s", kv(peer=payload.peer_id))
                return
            log.debug(
                "Remote candidates %s",
                kv(peer=payload.peer_id, event_name=event, candidates="|".join(payload.candidates)),
            )
            learnt = False
            for line in payload.candidates:
                try:
                    candidate = parse_candidate(line)
                except ValueError as exc:
                    log.warning("Ignoring bad remote candidate %s", kv(peer=payload.peer_id, error=exc))
                    continue
                if event == messages.Event.NEW_ICE_CANDIDATES:
                    if self.policy == POLICY_RELAY_ONLY and candidate.kind != "relay":
                        continue
                    learnt |= connection.add_remote_candidate(candidate, now)
                    self._bind_channels(connection, now)
                else:
                    connection.remove_remote_candidate(candidate.addr)
            if learnt and not connection.connected:
                # The peer moved while we are not connected: it may have missed our candidates
                # too (signals to a peer cut off from the portal are lost). Answering only news
                # ends the exchange after one round.
                self._announce(connection)
        else:
            log.debug("Ignoring signal %s", kv(event=event, role=self.role))
        self._drain_connections(now)

    def portal_reconnected(self, now: float) -> None:
        """Signals sent while we were cut off from the portal are lost: announce ours again."""
        for connection in self.connections.values():
            self._announce(connection)
        self._drain_connections(now)

    def _announce(self, connection: Connection) -> None:
        log.debug("Announcing our candidates again %s", kv(peer=connection.peer_id))
        self._signal_local_candidates(connection, connection.local_candidates)

    def set_host_candidates(self, addresses: Iterable[Address]) -> None:
        """The driver's socket addresses, used as host candidates unless the policy is relay-only."""
        self._host_candidates = [LocalCandidate("host", a) for a in addresses]

    # ------------------------------------------------------------------ connections
    def drop_connection(self, peer_id: str) -> None:
        """Forget the connection to ``peer_id`` (nothing is sent: the peer's side fails by ICE
        timeout); the next ``connect`` or offer makes a new one."""
        self._forget(peer_id)

    def _forget(self, peer_id: str) -> Connection | None:
        connection = self.connections.pop(peer_id, None)
        if connection is not None and self._by_ufrag.get(connection.local_ufrag) is connection:
            del self._by_ufrag[connection.local_ufrag]
        self._made.pop(peer_id, None)
        self._deadlines_known = False
        return connection

    def _touched_all(self) -> None:
        """Connections changed outside the datagram and timer paths: drain and date them all next."""
        self._undrained = True
        self._deadlines_known = False

    def _new_connection(self, peer_id: str, controlling: bool, now: float) -> Connection:
        old = self._forget(peer_id)
        if old is not None:
            log.info("Replacing connection %s", kv(peer=peer_id))
        connection = Connection.new(peer_id, controlling, now, self._rng, self._keepalive)
        self.connections[peer_id] = connection
        self._by_ufrag[connection.local_ufrag] = connection
        self._seq += 1
        self._made[peer_id] = self._seq
        if self.policy == POLICY_ALL:
            for candidate in self._host_candidates:
                connection.add_local_candidate(candidate, now)
        self._assign_relay(connection, now)
        if connection.relay_id is None:
            log.warning("No TURN servers connected; connection may fail to establish %s", kv(peer=peer_id))
        log.info("Created connection %s", kv(peer=peer_id, relay=connection.relay_id or "-"))
        return connection

    def _assign_relay(self, connection: Connection, now: float) -> list[LocalCandidate]:
        """Sample a relay for ``connection`` and add its relay candidates; returns those added."""
        rid = self.node.sample_relay()
        connection.relay_id = rid
        if rid is None:
            return []
        added = []
        for candidate in self.node.relay_candidates(rid):
            local = LocalCandidate("relay", candidate.addr, rid, candidate.related)
            if connection.add_local_candidate(local, now):
                added.append(local)
        self._bind_channels(connection, now)
        return added

    def _bind_channels(self, connection: Connection, now: float) -> None:
        # A channel to every remote candidate installs the permission the peer's traffic needs.
        if connection.relay_id is None:
            return
        for addr in connection.remote_candidates:
            self.node.bind_channel(connection.relay_id, addr, now)

    def _fail_unconnected(self, connection: Connection) -> bool:
        """Whether a connection that lost its relay fails rather than migrates: the client's (the
        side that asks for connections), when it never connected."""
        return (
            self.role == "client" and not connection.ever_connected and FIX_FAIL_UNCONNECTED not in self._disabled_fixes
        )

    def _migrate(self, connection: Connection, now: float) -> None:
        old = connection.relay_id
        removed = connection.remove_local_candidates(lambda c: c.rid is not None and not self.node.has_relay(c.rid))
        added = self._assign_relay(connection, now)
        log.info(
            "Attempting to migrate connection to new relay %s",
            kv(peer=connection.peer_id, from_relay=old or "-", to_relay=connection.relay_id or "-"),
        )
        self._events.append(Migrating(connection.peer_id, old, connection.relay_id))
        self._signal_invalidated(connection, removed)
        self._signal_local_candidates(connection, added)

    def _place_waiting_connections(self, now: float) -> None:
        """Connections without a usable relay get one as soon as one can be sampled."""
        for connection in self.connections.values():
            if connection.failed:
                continue
            has_relay = any(c.rid is not None for c in connection.local_candidates)
            if connection.relay_id is None or not has_relay:
                if self.node.can_sample_relay():
                    self._migrate(connection, now)

    def _signal_local_candidates(self, connection: Connection, candidates: list[LocalCandidate]) -> None:
        if candidates:
            self._signal(
                messages.Event.NEW_ICE_CANDIDATES,
                messages.CandidateSignal(
                    connection.peer_id, tuple(c.to_line() for c in candidates), connection.relay_id
                ),
            )

    def _signal_invalidated(self, connection: Connection, candidates: list[LocalCandidate]) -> None:
        if candidates:
            self._signal(
                messages.Event.INVALIDATE_ICE_CANDIDATES,
                messages.CandidateSignal(connection.peer_id, tuple(c.to_line() for c in candidates)),
            )

    def _signal(self, event: str, payload) -> None:
        self._events.append(Signal(str(event), payload.to_json()))

    def _process_node_events(self, now: float) -> bool:
        """Take the Node's events; whether there were any (they may have touched any connection)."""
        removed: list[str] = []
        any_event = False
        while (event := self.node.poll_event()) is not None:
            any_event = True
            if isinstance(event, ChannelData):  # relayed data that reached the Node as input
                self._handle_relayed(event.rid, event.peer, event.payload, now)
                continue
            self._events.append(event)
            if isinstance(event, RelayRemoved):
                removed.append(event.rid)
            elif isinstance(event, CandidateInvalid):
                self._drop_relay_candidate(event.rid, event.candidate)
            elif isinstance(event, CandidateNew) and event.candidate.kind == "relay":
                self._relay_candidate_ready(event.rid, event.candidate, now)
            elif isinstance(event, NoRelays):
                self._signal_no_relays()
        for connection in self.connections.values() if removed else ():
            # A relay replaced under the same id counts as removed too: its fresh allocation has
            # no RTT yet, so another relay is sampled if there is one.
            if connection.relay_id in removed and not connection.failed:
                if self._fail_unconnected(connection):
                    # The gateway's end has only pairs through the lost relay and fails by ICE
                    # timeout meanwhile: migrated, ours would wait out a second one (seed 31025:
                    # 20 s). Failed, the session asks for a new connection at once.
                    connection.fail("relay lost before connecting", now)
                    continue
                self._migrate(connection, now)
        return any_event

    def _signal_no_relays(self) -> None:
        self._events.append(Signal(str(messages.Event.NO_RELAYS), {}))

    def _drop_relay_candidate(self, rid: str, candidate: Candidate) -> None:
        for connection in self.connections.values():
            dropped = connection.remove_local_candidates(lambda c: c.rid == rid and c.addr == candidate.addr)
            self._signal_invalidated(connection, dropped)

    def _relay_candidate_ready(self, rid: str, candidate: Candidate, now: float) -> None:
        for connection in self.connections.values():
            if connection.failed:
                continue
            if connection.relay_id == rid:
                local = LocalCandidate("relay", candidate.addr, rid, candidate.related)
                if connection.add_local_candidate(local, now):
                    self._bind_channels(connection, now)
                    self._signal_local_candidates(connection, [local])
        self._place_waiting_connections(now)

    # ------------------------------------------------------------------ data path
    def send(self, peer_id: str, payload: bytes, now: float) -> bool:
        """Send an application datagram on the connection's nominated path; False if none."""
        connection = self.connections.get(peer_id)
        if connection is None or connection.nominated is None:
            return False
        pair = connection.nominated
        return self._send_from(pair.local, pair.remote.addr, _DATA_PREFIX + payload, now)

    def _send_from(self, local: LocalCandidate, dst: Address, payload: bytes, now: float) -> bool:
        """Send ``payload`` to ``dst`` from ``local`` (through its relay if it is a relay candidate)."""
        if local.rid is None:
            self._transmits.append(Transmit(dst, payload))
            return True
        wrapped = self.node.encapsulate(local.rid, dst, payload, now)
        if wrapped is None:
            return False  # no channel yet: the bind has been started, the checks will retry
        self._transmits.append(wrapped)
        return True

    def handle_input(self, packet: bytes, from_: Address, local: Address | None, now: float) -> bool:
        """A datagram from the socket bound to ``local``; application data comes out as ``Received``."""
        reached: Connection | None = None  # the one connection this datagram can have given output
        if stun.is_channel_data(packet) and (data := self.node.unwrap(from_, packet, now)) is not None:
            reached = self._handle_relayed(*data, now)
            consumed = True  # relay traffic, whatever it carried
        elif self.node.handle_input(packet, from_, local, now):
            consumed = True
        else:
            host = LocalCandidate("host", local) if local is not None else None
            reached = self._handle_path_packet(packet, host, from_, now) if host else None
            consumed = reached is not None
        if self._process_node_events(now) or self._undrained:
            self._drain_connections(now)
        elif reached is not None:
            # Every other connection was drained before this datagram and nothing touched it since.
            if self._drain(reached, now) and self._process_node_events(now):
                self._touched_all()  # what the drain asked of the Node may have touched any connection
            self._date(reached)
        return consumed

    def _handle_relayed(self, rid: str, peer: Address, payload: bytes, now: float) -> Connection | None:
        return self._handle_path_packet(payload, self._relay_local(rid, peer), peer, now)

    def _relay_local(self, rid: str, peer: Address) -> LocalCandidate | None:
        """Our relay candidate on ``rid`` that a datagram from ``peer`` arrived at (same family)."""
        key = (rid, family(peer))
        candidate = self.node.relay_candidate(*key)
        if candidate is None:
            return None
        cached = self._relay_locals.get(key)
        if cached is not None and cached[0] is candidate:
            return cached[1]
        local = LocalCandidate("relay", candidate.addr, rid, candidate.related)
        if len(self._relay_locals) >= 64:  # relays come and go: old entries are never asked again
            self._relay_locals.clear()
        self._relay_locals[key] = (candidate, local)
        return local

    def _handle_path_packet(
        self, payload: bytes, local: LocalCandidate | None, from_: Address, now: float
    ) -> Connection | None:
        """The connection a datagram on a path was for (None: nobody's)."""
        if local is None or not payload:
            return None
        if payload[0] == DATA_TAG:
            connection = self._connection_by_remote(local, from_)
            if connection is None:
                return None
            connection.note_data_received(local, from_, now)
            self._events.append(Received(connection.peer_id, payload[1:]))
            return connection
        message = decode_check(payload)
        if message is None:
            return None
        hint = self._stun_owner(message)
        if hint is not None and hint.handle_stun(message, local, from_, now):
            return hint
        # The pass asks every connection; the ones that are not the message's refuse it untouched.
        for connection in self.connections.values():
            if message.cls == stun.Class.REQUEST and not connection.owns_request(message):
                continue
            if connection is not hint and connection.handle_stun(message, local, from_, now):
                return connection
        return None

    def _stun_owner(self, message: stun.Message) -> Connection | None:
        """The connection a check (by its USERNAME) or a check's answer (by its transaction id) is for."""
        if message.cls == stun.Class.REQUEST:
            connection = self._by_ufrag.get((message.get("USERNAME") or "").partition(":")[0])
            if connection is None or not connection.owns_request(message):
                return None
        else:
            connection = self._by_check.pop(message.transaction_id, None)
        return connection if connection is not None and self._live(connection) else None

    def _live(self, connection: Connection) -> bool:
        """Whether ``connection`` (a hint's) is still the one we hold for its peer."""
        return self.connections.get(connection.peer_id) is connection

    def _connection_by_remote(self, local: LocalCandidate, from_: Address) -> Connection | None:
        key = (local, from_)
        connection = self._by_path.get(key)
        if connection is not None and self._live(connection):
            pair = connection.nominated
            if pair is not None and pair.remote.addr == from_ and pair.local == local:
                return connection
        for connection in self.connections.values():
            pair = connection.nominated
            if pair is not None and pair.remote.addr == from_ and pair.local == local:
                if len(self._by_path) >= 2 * len(self.connections) + 64:  # paths come and go
                    self._by_path.clear()
                self._by_path[key] = connection
                return connection
        for connection in self.connections.values():
            if from_ in connection.remote_candidates:
                return connection
        return None

    # ------------------------------------------------------------------ time and polling
    def handle_timeout(self, now: float) -> None:
        self.node.handle_timeout(now)
        if self._process_node_events(now) or self._undrained or not self._deadlines_known:
            for connection in self.connections.values():
                connection.handle_timeout(now)
            self._drain_connections(now)
            return
        # Only the connections that are due (and the undated ones): for the others a timeout is a
        # no-op (ice.Connection.handle_timeout acts only at its poll_timeout). Their outputs go in
        # the order a pass over every connection would take them.
        due = self._due(now)
        for connection in due:
            connection.handle_timeout(now)
        drained = False
        for connection in due:
            drained |= self._drain(connection, now)
        if drained and self._process_node_events(now):
            self._touched_all()
        for connection in due:
            if self._live(connection):
                self._date(connection)

    def _drain_connections(self, now: float) -> None:
        for connection in list(self.connections.values()):
            if connection.has_output():  # the data path queues nothing: skip the two polls
                self._drain(connection, now)
        self._deadlines_known = False
        # What the drains asked of the Node (a probe, a bind) may touch any connection again.
        self._undrained = self._process_node_events(now)

    def _drain(self, connection: Connection, now: float) -> bool:
        """Send what ``connection`` queued and take its events; whether it had any output."""
        had = False
        while (transmit := connection.poll_transmit()) is not None:
            had = True
            payload = transmit.payload
            if payload[:2] == _BINDING_REQUEST:  # a check: its answer is looked up by transaction id
                if len(self._by_check) >= 8 * len(self.connections) + 64:  # unanswered ones pile up
                    self._by_check.clear()
                self._by_check[payload[8:20]] = connection
            self._send_from(transmit.local, transmit.dst, payload, now)
        while (event := connection.poll_event()) is not None:
            had = True
            self._events.append(event)
            if isinstance(event, PathLost):
                # The relay may be dead without anyone having told us: probe it (1 s). The
                # peer may have moved while its signals could not reach us: ask again.
                if event.rid is not None and FIX_PATH_PROBE not in self._disabled_fixes:
                    self.node.probe(event.rid, now)
                self._announce(connection)
            elif isinstance(event, Failed):
                self._forget(connection.peer_id)
        return had

    def poll_transmit(self) -> Transmit | None:
        if self._transmits:
            return self._transmits.popleft()
        return self.node.poll_transmit()

    def poll_event(self) -> TunnelEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        # Asked after every datagram: the connections' soonest deadline is kept, not recomputed.
        best = self.node.poll_timeout()
        if not self._deadlines_known:
            self._date_all()
        heap = self._heap
        while heap:
            deadline, _, connection = heap[0]
            if self._current(connection, deadline):
                if best is None or deadline < best:
                    best = deadline
                break
            heapq.heappop(heap)  # an older deadline of a connection, or a connection gone
        return best

    # ------------------------------------------------------------------ connection deadlines
    def _date_all(self) -> None:
        self._deadlines.clear()
        self._undated.clear()
        self._heap = []
        for connection in self.connections.values():
            deadline = connection.poll_timeout()
            self._deadlines[connection.peer_id] = (connection, deadline)
            if deadline is None:
                self._undated[connection.peer_id] = connection
            else:
                self._seq += 1
                self._heap.append((deadline, self._seq, connection))
        heapq.heapify(self._heap)
        self._deadlines_known = True

    def _date(self, connection: Connection) -> None:
        """``connection`` was touched: its deadline again (a no-op while they are all unknown)."""
        if not self._deadlines_known:
            return
        deadline = connection.poll_timeout()
        if self._current(connection, deadline):
            return
        peer_id = connection.peer_id
        self._deadlines[peer_id] = (connection, deadline)
        if deadline is None:
            self._undated[peer_id] = connection
            return
        self._undated.pop(peer_id, None)
        if len(self._heap) > 4 * len(self.connections) + 64:  # old entries pile up: start afresh
            self._date_all()
            return
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, connection))

    def _current(self, connection: Connection, deadline: float | None) -> bool:
        """Whether ``deadline`` is what ``connection`` is kept at (a heap entry not superseded)."""
        entry = self._deadlines.get(connection.peer_id)
        return entry is not None and entry[0] is connection and entry[1] == deadline

    def _due(self, now: float) -> list[Connection]:
        """The connections whose deadline has come and the undated ones, in the order they were made."""
        heap = self._heap
        due = {id(c): c for c in self._undated.values() if self._live(c)}
        while heap and heap[0][0] <= now:
            deadline, _, connection = heapq.heappop(heap)
            if self._current(connection, deadline):
                del self._deadlines[connection.peer_id]  # off the heap: _date puts it back
                due[id(connection)] = connection
        return sorted(due.values(), key=lambda c: self._made[c.peer_id])

    # ------------------------------------------------------------------ read-only views
    def connected_peers(self) -> list[str]:
        return [peer for peer, c in self.connections.items() if c.connected]

    def is_connected(self, peer_id: str) -> bool:
        connection = self.connections.get(peer_id)
        return connection is not None and connection.connected

    def connection_state(self, peer_id: str) -> ConnectionState | None:
        connection = self.connections.get(peer_id)
        if connection is None:
            return None
        nominated = connection.nominated
        return ConnectionState(
            peer_id=peer_id,
            answered=connection.remote_ufrag is not None,
            connected=connection.connected,
            relay_id=connection.relay_id,
            carrying_relay=nominated.local.rid if nominated is not None else None,
        )

    def carrying_relays(self) -> dict[str, str | None]:
        """Per connected peer, the relay on our side of the nominated path (None: direct)."""
        return {peer: c.nominated.local.rid for peer, c in sorted(self.connections.items()) if c.nominated is not None}

    def has_usable_relay(self) -> bool:
        """A relay that a new connection can be placed on (allocated, RTT measured)."""
        return self.node.can_sample_relay()

    def held_relays(self) -> list[str]:
        """Every relay the node holds, usable or not (allocating, retrying, refused)."""
        return self.node.relay_ids()

    def usable_relays(self) -> list[str]:
        return self.node.usable_relays()


__all__ = ["Tunnel", "Signal", "Received", "Migrating", "Connected", "Failed", "PathLost", "POLICY_RELAY_ONLY"]
