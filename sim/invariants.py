"""What must hold in a ``World`` at all times; ``Checker(world).start()`` checks every second.

Each check compares the peers' state with the world's ground truth (which relay is up, what it
holds, what the network lets through) and calls ``world.violation(kind, detail)``:

- ``error-log``: a log record at ERROR or above (always a bug);
- ``traffic-gap``: the world has been *healthy* (portal up, both peers joined, a working relay for
  each side, reachable from each other) for ``GAP_BOUND`` s, with no fault starting or healing in
  that time, yet no echo came back in that time: "traffic back within a bound once the faults
  heal", checked between faults too;
- ``zombie-relay``: a relay a peer holds, with no allocation and nothing in flight (no retry), for
  ``ZOMBIE_BOUND`` s;
- ``stale-relay``: a relay a peer holds as allocated, reachable, that does not hold that
  allocation, for ``ZOMBIE_BOUND`` s while the peer is on the portal (it should be re-allocated or
  removed); ``unsupervised-relay`` when it was lost after the peer's last ``init`` on a relay the
  portal does not list for the peer (kept because a probe answered: nobody can tell the peer);
- ``stale-credentials``: an allocation made with credentials its relay no longer accepts, for
  ``ZOMBIE_BOUND`` s after the relay re-joined the portal with its secret;
- ``no-relays``: NoRelays announced while a relay was usable, or no usable relay for
  ``ZOMBIE_BOUND`` s with no NoRelays;
- ``request-storm``: more than ``MAX_REQUESTS_PER_S`` STUN requests from a peer to a relay in 1 s;
- ``channel-mismatch``: a channel a peer holds as bound is bound to another peer on the relay;
- ``channel-rebind``: a peer asks a relay to bind a peer address under a number other than the one
  the relay holds it under (RFC 8656 §12: a binding cannot be changed while it exists; coturn
  keeps it for the allocation's life and refuses, 400, so the flow is black-holed);
- ``unbounded``: a queue or candidate list past its bound.
"""

from __future__ import annotations

import logging

from connlib.app import lines
from connlib.core import stun
from connlib.core.allocation import Allocation

from .actors import RelayAgent, SimPeer
from .world import ErrorRecords, World

GAP_BOUND = 25.0
ZOMBIE_BOUND = 15.0
MAX_REQUESTS_PER_S = 10
BOUNDS = {"transmits": 2000, "events": 2000, "remote_candidates": 32, "local_candidates": 16, "channels": 64}


_CHANNEL_BIND_REQUEST = bytes([0, int(stun.Method.CHANNEL_BIND)])  # its message type (request class: no bits)


class Checker:
    def __init__(self, world: World, errors: ErrorRecords, ignore: frozenset[str] = frozenset()) -> None:
        self.world = world
        self.errors = errors
        self.ignore = ignore  # kinds of a known bug: noted in ``ignored``, the run goes on
        self.ignored: dict[str, str] = {}
        self.healthy_since: float | None = None
        self.handed_since: dict[str, dict[str, float]] = {}  # peer id → rid → listed for it since
        self.since: dict[tuple[str, str, str], float] = {}  # (check, peer, rid) → first seen
        self.last_usable: dict[str, float] = {}
        self.no_relays_at: dict[str, float] = {}
        self._bucket = -1
        self._requests: dict[tuple[str, str], int] = {}
        world.line_observers.append(self._on_line)
        world.udp_observers.append(self._on_udp)

    def start(self) -> None:
        self.world.schedule(1.0, self._tick)

    # ------------------------------------------------------------------ observers
    def _on_line(self, peer: SimPeer, line: lines.Line, now: float) -> None:
        if isinstance(line, lines.NoRelaysLine):
            self.no_relays_at[peer.peer_id] = now
            usable = peer.tunnel.usable_relays()
            if usable:
                self.world.violation("no-relays", f"{peer.peer_id} announced NoRelays holding usable {usable}")

    def _on_udp(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes, now: float) -> None:
        if dst[1] != 3478 or len(payload) < 20 or payload[0] & 0xC0 or payload[0] & 0x01 or payload[1] & 0x10:
            return  # not a STUN request to a relay (ChannelData, responses, indications)
        if payload[:2] == _CHANNEL_BIND_REQUEST:
            self._check_rebind(src, dst, payload, now)
        bucket = int(now)
        if bucket != self._bucket:
            self._bucket, self._requests = bucket, {}
        key = (src[0], dst[0])
        count = self._requests[key] = self._requests.get(key, 0) + 1
        if count > MAX_REQUESTS_PER_S:
            self.world.violation("request-storm", f"{count} requests from {src[0]} to {dst[0]} in second {bucket}")

    def _check_rebind(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes, now: float) -> None:
        agent = self.world.routes.get(dst[0])
        if not isinstance(agent, RelayAgent) or not agent.up:
            return
        truth = agent.relay.allocations.get(src)  # read only: live_allocation() would expire it
        if truth is None or truth.expires_at <= now:
            return
        try:
            request = stun.decode(payload)
        except stun.StunParseError:
            return
        number, peer = request.get("CHANNEL-NUMBER"), request.get("XOR-PEER-ADDRESS")
        held = truth.channel_for(peer) if peer is not None else None
        if held is not None and held != number:
            self.world.violation(
                "channel-rebind",
                f"{src[0]} to {agent.name}: {peer} under {hex(number)}, the relay has it under {hex(held)}",
            )

    # ------------------------------------------------------------------ the periodic check
    def _tick(self) -> None:
        world, now = self.world, self.world.now
        if self.errors.records:
            record = self.errors.records[0]
            world.violation("error-log", f"{record.name}: {record.getMessage()}")
            return
        for peer in world.peers:
            self._note_handed(peer, now)
        self._check_traffic(now)
        for peer in world.peers:
            self._check_peer(peer, now)
        world.schedule(now + 1.0, self._tick)

    def _working_relays(self) -> list[RelayAgent]:
        """Relays up, on the portal and taking allocations (whoever asks)."""
        world = self.world
        return [
            a
            for a in world.relays
            if a.up
            and not a.frozen
            and a.sid is not None
            and not world.ws_blocked(a)
            and not a.relay.user_quota
            and not a.relay.total_quota
        ]

    def _good_relays(self, peer: SimPeer, working: list[RelayAgent], now: float) -> list[RelayAgent]:
        """The working relays that ``peer`` reaches."""
        net = self.world.net
        return [a for a in working if net.reachable(peer.ip, a.relay.ip, now)]

    def _note_handed(self, peer: SimPeer, now: float) -> None:
        """Since when the portal lists each relay for ``peer`` (to this check's 1 s)."""
        handed, seen = self._handed_out(peer), self.handed_since.setdefault(peer.peer_id, {})
        for rid in [rid for rid in seen if rid not in handed]:
            del seen[rid]
        for rid in handed:
            seen.setdefault(rid, now)

    def healthy(self, now: float) -> float | None:
        """Since when the world can carry the stream (None: it cannot now): both peers joined,
        and a pair of working relays, one for each, that the portal lists for it and that reach
        each other. Listed: a peer holds only the relays the portal hands it (two, kept while
        they are online), and the portal learns of a paused relay at its heartbeat timeout
        (60 s); until it hands over a working one, no peer can do better (Firezone's too)."""
        world = self.world
        if now < 20.0 or world.portal is None:
            return None
        joined = [p.joined_since for p in world.peers]
        if None in joined or any([world.ws_blocked(p) for p in world.peers]):
            return None
        if world.client.idle(now):
            return None  # a stream_idle fault: nothing is sent, nothing is owed
        working = self._working_relays()
        calm = world.net.calm(now)
        sides = []
        for peer in world.peers:
            listed = self.handed_since.get(peer.peer_id, {})
            good = working if calm else self._good_relays(peer, working, now)
            sides.append([(a, max(a.joined_since or now, listed[a.rid])) for a in good if a.rid in listed])
        starts = [
            max(since_a, since_b)
            for a, since_a in sides[0]
            for b, since_b in sides[1]
            if a is b or calm or world.net.reachable(a.relay.ip, b.relay.ip, now)
        ]
        return max(min(starts), *joined) if starts else None  # type: ignore[type-var]

    def _check_traffic(self, now: float) -> None:
        since = self.healthy(now)
        if since is None:
            self.healthy_since = None
            return
        # Traffic is owed GAP_BOUND after the world became healthy, and after every fault that
        # started or healed since (a new fault may break the path in use: recovery starts again).
        previous = self.healthy_since if self.healthy_since is not None else since
        self.healthy_since = max(since, previous, self.world.last_disturbance)
        last = self.world.client.session.stats.last_delivery
        if now - self.healthy_since > GAP_BOUND and (last is None or now - last > GAP_BOUND):
            ago = "never" if last is None else f"{now - last:.1f}s ago"
            self.world.violation("traffic-gap", f"healthy since {self.healthy_since:.1f}s but the last echo came {ago}")

    def _held(self, check: str, peer: str, rid: str, bad: bool, now: float, detail: str) -> None:
        since = self.since
        if not bad:
            if since:  # mostly empty: nothing bad anywhere
                since.pop((check, peer, rid), None)
            return
        key = (check, peer, rid)
        first = since.setdefault(key, now)
        if now - first > ZOMBIE_BOUND:
            message = f"{peer} relay {rid[:8]}: {detail} for {now - first:.0f}s"
            if check in self.ignore:
                self.ignored.setdefault(check, message)
                self.since.pop(key, None)
            else:
                self.world.violation(check, message)

    def _check_peer(self, peer: SimPeer, now: float) -> None:
        world, node, pid = self.world, peer.tunnel.node, peer.peer_id
        joined = peer.joined_since is not None and not world.ws_blocked(peer)  # it can hear the portal
        usable = False
        handed_out = self.handed_since.get(pid, {})  # what the portal lists for the peer (_note_handed, this tick)
        addr, net, since = peer.addr, world.net, self.since
        # ``_held`` of a check that holds does nothing while nothing is pending (``since`` empty):
        # it is called only when a check is broken or something may have to be cleared.
        for rid, allocation in sorted(node.allocations.items()):
            agent = world.agent_by_rid(rid)
            local = allocation.has_allocation()
            usable |= local
            zombie = not local and not allocation.sent_requests
            if zombie or since:
                self._held("zombie-relay", pid, rid, zombie, now, "no allocation, no retry")
            if agent is None:
                continue
            truth = agent.relay.live_allocation(addr, now) if agent.up else None
            reachable = not agent.frozen and net.reachable(peer.ip, agent.relay.ip, now)
            held = truth is not None and truth.relayed in [c.addr for c in allocation.relay_candidates()]
            stale = joined and local and reachable and not held
            if local and not held:
                lost_since: float | None = since.setdefault(("lost", pid, rid), now)
            else:
                lost_since = since.pop(("lost", pid, rid), None) if since else None
            if stale or since:
                # Lost after the peer's last init, on a relay the portal does not list for the peer
                # (kept because a probe answered): nobody can tell the peer.
                unlisted = rid not in handed_out
                after_init = stale and peer.joined_since is not None and (lost_since or now) >= peer.joined_since
                kind = "unsupervised-relay" if unlisted and after_init else "stale-relay"
                self._held(kind, pid, rid, stale, now, "allocation lost on the relay")
            current = agent.relay.password_for(allocation.username) == allocation.password
            told = joined and agent.sid is not None and rid in handed_out
            if (told and not current) or since:
                self._held(
                    "stale-credentials", pid, rid, told and not current, now, "credentials the relay no longer takes"
                )
            if truth is not None and held:
                self._check_channels(pid, rid, allocation, truth.channels, now)
            if len(allocation.channels) > BOUNDS["channels"]:
                world.violation("unbounded", f"{pid} relay {rid[:8]}: {len(allocation.channels)} channels")
        if since:
            # A relay the peer no longer holds has no pending check: held again later (re-added
            # after a hold-off, say), its checks start afresh, not from when the old one went bad.
            for key in [k for k in since if k[1] == pid and k[2] != "-" and k[2] not in node.allocations]:
                del since[key]
        if usable:
            self.last_usable[pid] = now
        last = self.last_usable.get(pid)
        silent = last is not None and (self.no_relays_at.get(pid, -1.0) < last) and bool(node.allocations)
        if (joined and not usable and silent) or since:
            self._held("no-relays", pid, "-", joined and not usable and silent, now, "no usable relay and no NoRelays")
        for name, size in (("transmits", len(peer.tunnel._transmits)), ("events", len(peer.tunnel._events))):
            if size > BOUNDS[name]:
                world.violation("unbounded", f"{pid}: {size} {name} queued")
        for connection in peer.tunnel.connections.values():
            if len(connection.remote_candidates) > BOUNDS["remote_candidates"]:
                world.violation("unbounded", f"{pid}: {len(connection.remote_candidates)} remote candidates")
            if len(connection.local_candidates) > BOUNDS["local_candidates"]:
                world.violation("unbounded", f"{pid}: {len(connection.local_candidates)} local candidates")

    def _handed_out(self, peer: SimPeer) -> dict:
        """The relays the portal currently lists for ``peer`` (only those can it tell about)."""
        portal = self.world.portal
        session = portal._sessions.get(peer.sid) if portal is not None and peer.sid is not None else None
        return session.handed_out if session is not None else {}

    def _check_channels(self, pid: str, rid: str, allocation: Allocation, truth: dict, now: float) -> None:
        for number, channel in allocation.channels.items():
            if not channel.connected(now):
                continue
            bound = truth.get(number)
            if bound is not None and bound[0] != channel.peer:
                self.world.violation(
                    "channel-mismatch", f"{pid} relay {rid[:8]}: {hex(number)} is {channel.peer}, relay has {bound[0]}"
                )


def install_error_capture() -> ErrorRecords:
    handler = ErrorRecords()
    logging.getLogger().addHandler(handler)
    return handler
