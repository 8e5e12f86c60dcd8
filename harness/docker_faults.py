"""The faults of the Docker backend: relay containers (restart, stop, start, kill, pause, UDP loss
with iptables inside the relay: the calls of :mod:`harness.container_faults`), networks (cut a
container off one, reconnect it), a client's idle and resume (SIGUSR1 / SIGUSR2 to its container),
a peer's restart and the portal's (stop, start: the container, so the process and its state), cuts
between a peer or relay and a relay and the portal's black holes (iptables DROP rules inside the
containers), and a relay's quota (coturn's telnet CLI: ``cc user-quota 1``).

Cuts and black holes drop on arrival at both ends (an ``INPUT`` rule in each end's container), so that
no end is told (a DROP in ``OUTPUT`` fails the sender's ``sendto`` with EPERM: a refusal, not a loss);
the portal's container may not change its rules (no NET_ADMIN), so a black hole drops the portal's
packets on arrival at the target and the target's packets on their way out of it (``OUTPUT``: TCP
retransmits silently there). Rules die with the container's network namespace: after a restart or a
start of a container under a cut or a loss the harness puts their rules back, as the simulator's
network holds a partition or a host's loss whatever its hosts do.

A mixin of :class:`harness.docker_fleet.DockerFleet` over :class:`harness.fleet.Fleet`, whose fault
template records each fault in the history. It needs the fleet's ``member()``, ``networks`` and
``relay_names``. Waits for a relay to rejoin are bounded by ``REJOIN_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field, replace

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network

from . import container_faults as cf
from . import network_turns as nt
from .container_logs import LogPump
from .fleet import Fleet
from .topology import NO_DEFAULT_ROUTE, RELAY_NET, Service
from .waiting import NotYet, wait_for

log = logging.getLogger("harness.docker_faults")

REJOIN_TIMEOUT = 45.0
MOVED_HOSTS = 100
"""A relay that changes its address gets relay-net host MOVED_HOSTS + 1, + 2, ... (the file's are below)."""
QUOTA_TIMEOUT = 15.0
QUOTA_POLL = 0.5
AGENT = ["/opt/venv/bin/python", "/opt/connlib-relays/agent.py"]


@dataclass
class Member:
    """One container of the stack: the service it was made from and the container itself."""

    service: Service
    container: Container
    stopped_by_us: bool = False
    routes: list[str] = field(default_factory=list)
    """Its PEER_ROUTES, put back after a reconnect (the host routes go with the interface)."""

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def role(self) -> str:
        return self.service.role


class DockerFaults(Fleet):
    networks: dict[str, Network]
    subnets: dict[str, ipaddress.IPv4Network]
    logs: LogPump

    def member(self, target: str) -> Member:
        raise NotImplementedError

    def _init_faults(self) -> None:
        self._losses = 0  # loss faults so far: each one's cut key
        self._moves = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._quotas: dict[str, int] = {}
        """Per relay, the quota code in force (the fault), and what its running coturn has."""
        self._quota_applied: dict[str, int] = {}
        self._held_ports: dict[str, int] = {}
        """Per relay under a 508 quota, the ports the holder took first: after a restart it takes as many."""
        self._stale_rules: dict[str, list[str]] = {}
        """Per container, rules of healed cuts it could not drop while paused (dropped at its unpause)."""
        self._cuts: dict[tuple[str, str, str], list[tuple[str, list[str]]]] = {}
        """Per cut, black hole or loss (kind, target, other: a loss's number), the rules it put into
        which container."""

    def _relay(self, name: str) -> Member:
        member = self.member(name) if name in self.relay_names else None
        if member is None or member.role != "relay":
            raise KeyError(f"no relay {name!r} (relays: {self.relay_names})")
        return member

    def _container(self, name: str) -> Container:
        return self._relay(name).container

    def _stop_timeout(self, name: str) -> int:
        return round(self._relay(name).service.stop_grace_s)

    # ------------------------------------------------------------------ relay faults
    async def _restart_relay(self, name: str, new_secret: bool) -> None:
        before = await self.relay_joins()
        async with self._lock(name):
            if not new_secret:  # the relay image's one-shot switch: its next start reuses the secret
                await asyncio.to_thread(cf.exec_checked, self._container(name), [*AGENT, "keep-secret"], name)
            await asyncio.to_thread(nt.restart, self._container(name), self._stop_timeout(name))
            self._runtime_state_lost(name)
            await self._reapply_cuts(name)
        await self.wait_relays_rejoined([name], REJOIN_TIMEOUT, before, new_secret=new_secret)
        await self._relay_came_back(name)

    async def _stop_relay(self, name: str) -> None:
        async with self._lock(name):
            await asyncio.to_thread(nt.stop, self._container(name), self._stop_timeout(name))
            self._runtime_state_lost(name)

    async def _start_relay(self, name: str) -> None:
        before = await self.relay_joins()
        async with self._lock(name):
            await asyncio.to_thread(cf.start, self._container(name))
            await self._reapply_cuts(name)
        await self.wait_relays_rejoined([name], REJOIN_TIMEOUT, before)
        await self._relay_came_back(name)

    async def _kill_relay(self, name: str) -> None:
        async with self._lock(name):
            await asyncio.to_thread(nt.kill, self._container(name), self._stop_timeout(name))
            self._runtime_state_lost(name)

    async def _pause_relay(self, name: str) -> None:
        async with self._lock(name):
            await asyncio.to_thread(cf.pause, self._container(name))

    async def _unpause_relay(self, name: str) -> None:
        async with self._lock(name):
            await asyncio.to_thread(cf.unpause, self._container(name))
            await self._reapply_cuts(name)  # cuts begun or healed while it was frozen
        await self._sync_quota(name)

    def _runtime_state_lost(self, name: str) -> None:
        """Relay ``name``'s container stopped: coturn's runtime quota and the port holder died with
        it (the quota in force, ``_quotas``, is applied again when it runs: ``_relay_came_back``; its
        iptables rules, the cuts' and losses', at its start: ``_reapply_cuts``)."""
        self._quota_applied.pop(name, None)

    def _lock(self, name: str) -> asyncio.Lock:
        """One container's lock: faults that stop, start or freeze it and execs into it take turns
        (a schedule's faults overlap: an exec into a container another fault is restarting fails)."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def _pause_peer(self, peer_id: str) -> None:
        await asyncio.to_thread(self.member(peer_id).container.pause)

    async def _unpause_peer(self, peer_id: str) -> None:
        await asyncio.to_thread(self.member(peer_id).container.unpause)

    async def _idle_stream(self, peer_id: str) -> None:
        await asyncio.to_thread(self._signal_peer, peer_id, "SIGUSR1")

    async def _resume_stream(self, peer_id: str) -> None:
        await asyncio.to_thread(self._signal_peer, peer_id, "SIGUSR2")

    def _signal_peer(self, peer_id: str, signal: str) -> None:
        """Docker sends it to the container's tini, which forwards it to ``connlib run`` (the
        peer entrypoint ``exec``s it: one process, no shell in between)."""
        member = self.member(peer_id)
        if member.role not in ("client", "gateway"):
            raise KeyError(f"{peer_id!r} is not a peer")
        member.container.kill(signal=signal)

    async def _udp_loss(self, name: str, probability: float) -> None:
        """On a relay: that share of what arrives at it. On a peer (a peer id): that share of what
        arrives at it, and of what it sends, dropped on arrival at each relay (no EPERM for its sends),
        as the simulator's loss on a host both ways. The rules are a cut's (``_cuts``): they come back
        when a container (re)starts, as the simulator's loss stays on a host that reboots. Losses on
        one target stack (one rule each) until ``_clear_udp_loss``."""
        loss = cf.loss_rule(probability)
        target = self.member(name)
        plan = [(target.name, [loss])]
        if name not in self.relay_names:
            for relay in self.relay_names:
                plan.append(
                    (relay, [loss.replace("INPUT ", f"INPUT -s {a} ", 1) for a in self._addresses(target.name)])
                )
        self._losses += 1
        await self._add_cut(("loss", target.name, str(self._losses)), plan)

    async def _clear_udp_loss(self, name: str) -> None:
        target = self.member(name).name
        for key in [k for k in self._cuts if k[0] == "loss" and k[1] == target]:
            await self._remove_cut(key)

    async def dropped_datagrams(self, name: str) -> int:
        """Datagrams the loss rules in relay ``name``'s container (or a peer's, by its id) dropped so
        far (iptables counters)."""
        member = self._relay(name) if name in self.relay_names else self.member(name)
        return await asyncio.to_thread(cf.dropped_by_loss, member.container, name)

    async def stun_requests(self, name: str) -> int:
        """STUN messages that reached relay ``name``'s TURN port since counting began there (an
        iptables counter, put in place by the first call and again after a restart: then 0)."""
        member = self._relay(name)
        port = int(member.service.environment.get("LISTENING_PORT", "3478"))
        try:
            return await asyncio.to_thread(cf.stun_requests, member.container, port, name)
        except docker.errors.APIError as exc:  # not running (restarting, stopped)
            raise RuntimeError(f"cannot count {name}'s requests: {exc}") from None

    async def _move_relay(self, name: str) -> None:
        """The relay comes up on a new relay-net address with its secret (as the simulator's
        ``address_change``: state lost, the same secret, a fresh join announcing the new address).
        Stopped, reconnected to relay-net under a new address, started; each peer gets a host route
        to the new address through the relay's leg on its own network, as it has to the old one (the
        peers' ``unreachable default`` routes nothing else; the simulator's network routes every
        address): the network routing the new address, nothing a peer is told. Done once the relay
        is online at the portal again."""
        member = self._relay(name)
        before = await self.relay_joins()
        self._moves += 1
        new = str(self.subnets[RELAY_NET].network_address + MOVED_HOSTS + self._moves)
        async with self._lock(name):
            await asyncio.to_thread(cf.exec_checked, member.container, [*AGENT, "keep-secret"], name)
            await asyncio.to_thread(nt.stop, member.container, self._stop_timeout(name))
            self._runtime_state_lost(name)
            network = self.networks[RELAY_NET]
            await asyncio.to_thread(network.disconnect, member.container)
            await asyncio.to_thread(network.connect, member.container, ipv4_address=new, aliases=[name])
            member.service = replace(member.service, addresses={**member.service.addresses, RELAY_NET: new})
            for peer in self._peers():
                (own, *_) = peer.service.addresses
                route = f"{new}/32 via {member.service.addresses[own]}"
                peer.routes.insert(0, route)  # before ``unreachable default``, as PEER_ROUTES has it
                async with self._lock(peer.name):  # a peer that is down gets it at its start
                    if await asyncio.to_thread(self._running, peer.name):
                        await asyncio.to_thread(cf.set_routes, peer.container, [route], peer.name)
            await asyncio.to_thread(cf.start, member.container)
            await self._reapply_cuts(name)
        await self.wait_relays_rejoined([name], REJOIN_TIMEOUT, before, new_secret=False)
        await self._relay_came_back(name)

    def _peers(self) -> list[Member]:
        raise NotImplementedError

    # ------------------------------------------------------------------ restarts of a peer, of the portal
    async def _restart_peer(self, peer_id: str) -> None:
        """Stop the peer's container (SIGTERM to ``connlib run``), then start it again: a new process,
        its routes set again by the entry point. Its output is followed again from the start on (not
        from its first line: the old process's lines are in the history already)."""
        member = self.member(peer_id)
        if member.role not in ("client", "gateway"):
            raise KeyError(f"{peer_id!r} is not a peer")
        async with self._lock(member.name):
            member.stopped_by_us = True  # not "exited on its own" while it is down
            await asyncio.to_thread(nt.stop, member.container, round(member.service.stop_grace_s))
            since = time.time()
            await asyncio.to_thread(member.container.start)
            member.stopped_by_us = False
            self.logs.follow(member.name, member.container, since=since)
            # the entry point sets PEER_ROUTES; a moved relay's route is not in it
            await asyncio.to_thread(cf.set_routes, member.container, member.routes, member.name)
            await self._reapply_cuts(member.name)

    async def _stop_portal(self) -> None:
        member = self.member("portal")
        member.stopped_by_us = self.portal_down = True
        await asyncio.to_thread(nt.stop, member.container, round(member.service.stop_grace_s))

    async def _start_portal(self) -> None:
        """Start the portal container (a new process: nothing of the old state) and wait, bounded,
        for every running relay to join it; its admin port on the host may be another one now."""
        member = self.member("portal")
        await asyncio.to_thread(self._start_member, member.name)
        member.stopped_by_us = self.portal_down = False
        async with self._events_lock:
            self._events_seq = 0  # a new event log: its numbers start again
        await self._reapply_cuts(member.name)
        running = [name for name in self.relay_names if await asyncio.to_thread(self._running, name)]
        await self.wait_relays_online(running, REJOIN_TIMEOUT)

    def _running(self, name: str) -> bool:
        container = self.member(name).container
        container.reload()
        return bool(container.attrs["State"]["Running"]) and not container.attrs["State"]["Paused"]

    def _start_member(self, name: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ cuts, black holes, quotas
    def _addresses(self, name: str) -> list[str]:
        return sorted(self.member(name).service.addresses.values())

    async def _cut_datagrams(self, target: str, relay: str) -> None:
        one, other = self.member(target).name, self._relay(relay).name
        if one == other:
            return  # a relay cut from itself: nothing (as the simulator)
        plan = [(one, cf.arrival_rules(self._addresses(other))), (other, cf.arrival_rules(self._addresses(one)))]
        await self._add_cut(("datagrams", one, other), plan)

    async def _heal_datagrams(self, target: str, relay: str) -> None:
        one, other = self.member(target).name, self._relay(relay).name
        dropped = 0 if one == other else await self._remove_cut(("datagrams", one, other))
        self.history.observe("cut_dropped", target, other=relay, packets=dropped)

    async def _blackhole_portal(self, target: str) -> None:
        name = self.member(target).name
        portal = self._addresses("portal")
        rules = cf.arrival_rules(portal) + [f"OUTPUT -d {addr} -j DROP" for addr in portal]
        await self._add_cut(("portal", name, "portal"), [(name, rules)])

    async def _clear_portal_blackhole(self, target: str) -> None:
        dropped = await self._remove_cut(("portal", self.member(target).name, "portal"))
        self.history.observe("cut_dropped", target, other="portal", packets=dropped)

    async def _add_cut(self, key: tuple[str, str, str], plan: list[tuple[str, list[str]]]) -> None:
        if key in self._cuts:
            raise RuntimeError(f"{key} is in force already")
        self._cuts[key] = []
        for name, rules in plan:
            self._cuts[key].append((name, rules))
            async with self._lock(name):
                if await asyncio.to_thread(self._running, name):  # else its (re)start or unpause puts them in
                    await asyncio.to_thread(cf.add_rules, self.member(name).container, rules, name)

    async def _remove_cut(self, key: tuple[str, str, str]) -> int:
        """Take the cut's rules out; how many packets they dropped."""
        dropped = 0
        for name, rules in self._cuts.pop(key, []):
            container = self.member(name).container
            async with self._lock(name):
                if not await asyncio.to_thread(self._running, name):
                    if container.attrs["State"]["Paused"]:  # they outlive the freeze: dropped at the unpause
                        self._stale_rules.setdefault(name, []).extend(rules)
                    continue  # stopped: they died with it
                dropped += await asyncio.to_thread(cf.rule_packets, container, rules, name)
                await asyncio.to_thread(cf.delete_rules_if_present, container, rules, name)
        return dropped

    async def cut_packets(self, target: str, other: str) -> int:
        """Packets the cut between ``target`` and relay ``other`` (or ``"portal"``: the black hole) dropped so far."""
        one, two = self.member(target).name, other if other == "portal" else self._relay(other).name
        key = ("portal" if two == "portal" else "datagrams", one, two)
        total = 0
        for name, rules in self._cuts.get(key, []):
            total += await asyncio.to_thread(cf.rule_packets, self.member(name).container, rules, name)
        return total

    async def _reapply_cuts(self, name: str) -> None:
        """The rules of the cuts in force that live in container ``name``, put back after its (re)start
        or unpause (and those of cuts healed while it was frozen taken out)."""
        stale = self._stale_rules.pop(name, [])
        if stale:
            await asyncio.to_thread(cf.delete_rules_if_present, self.member(name).container, stale, name)
        for cut in self._cuts.values():
            for where, rules in cut:
                if where == name:
                    await asyncio.to_thread(cf.add_rules, self.member(name).container, rules, name)

    async def _refuse_allocations(self, name: str, code: int) -> None:
        """486: ``cc user-quota 1`` on the relay's coturn CLI: a username that holds an allocation
        there gets 486 (Allocation Quota Reached) for a new one; the allocations it holds keep
        working. coturn copies the setting into its realm a few seconds later (3.7-5.0 s measured
        on 4.6.1). 508: coturn answers its quotas with 486, and 508 (Cannot create socket) when no
        relay port is left; a process in the relay's container takes every free relay port with
        an allocation of its own (``container_faults.HOLD_CAPACITY``): the model's total quota at the
        count of allocations. Either way this returns once the relay refuses (:meth:`allocate_twice`),
        bounded by ``QUOTA_TIMEOUT``. A relay that is not running takes it when it runs again, and a
        restarted one takes it again, as the model's relay keeps its quotas through a reboot (508:
        as many ports left free as it had allocations when the quota began)."""
        if code not in (486, 508):
            raise ValueError(f"quota code {code}: coturn answers 486 (quota) or 508 (no relay port)")
        self._quotas[name] = code
        if await self._sync_quota(name):
            await self._wait_quota(name, refused=True)

    async def _allow_allocations(self, name: str) -> None:
        self._quotas.pop(name, None)
        if self._quota_applied.get(name) != 508:
            self._held_ports.pop(name, None)
        if await self._sync_quota(name):
            await self._wait_quota(name, refused=False)

    async def _sync_quota(self, name: str) -> bool:
        """Make the running relay's quota the one in force (``_quotas``); False if it is not running."""
        async with self._lock(name):
            return await self._sync_quota_locked(name)

    async def _sync_quota_locked(self, name: str) -> bool:
        if not await asyncio.to_thread(self._running, name):
            log.info(
                "Relay not running: its quota follows when it runs relay=%s quota=%s", name, self._quotas.get(name)
            )
            return False
        want, have = self._quotas.get(name), self._quota_applied.get(name)
        if want == have:
            return True
        container = self._container(name)
        if have == 486:
            await asyncio.to_thread(cf.turn_cli, container, ["cc user-quota 0"], name)
        elif have == 508:
            await asyncio.to_thread(cf.release_capacity, container, name)
            await wait_for(  # until the holder has freed every allocation and gone
                lambda: asyncio.to_thread(lambda: cf.held_capacity(container) is None),
                QUOTA_TIMEOUT,
                f"{name}'s ports freed",
            )
        if want == 486:
            await asyncio.to_thread(cf.turn_cli, container, ["cc user-quota 1"], name)
        elif want == 508:
            ports = self._port_range(name)
            limit = self._held_ports.get(name, ports)
            await asyncio.to_thread(cf.hold_capacity, container, self._turn_port(name), limit)
            held = await wait_for(
                lambda: asyncio.to_thread(cf.held_capacity, container), QUOTA_TIMEOUT, f"{name}'s ports held"
            )
            self._held_ports.setdefault(name, held)
            log.info("Relay ports held relay=%s allocations=%s of=%s", name, held, ports)
        if want is None:
            self._quota_applied.pop(name, None)
            self._held_ports.pop(name, None)
        else:
            self._quota_applied[name] = want
        return True

    async def _relay_came_back(self, name: str) -> None:
        """After a (re)start of relay ``name`` (its cuts' rules are back): its quota again."""
        await self._sync_quota(name)  # its cuts went back in at the start, under the lock

    def _port_range(self, name: str) -> int:
        env = self._relay(name).service.environment
        return int(env.get("MAX_PORT", "49200")) - int(env.get("MIN_PORT", "49160")) + 1

    def _turn_port(self, name: str) -> int:
        return int(self._relay(name).service.environment.get("LISTENING_PORT", "3478"))

    async def allocate_twice(self, name: str) -> list[str]:
        """Relay ``name``'s answers to two ALLOCATEs under one username (then freed): the second is
        ``error 486 ...`` under the 486 quota fault, both ``error 508 ...`` under the 508 one,
        ``allocated`` otherwise."""
        return await asyncio.to_thread(cf.allocate_twice, self._container(name), self._turn_port(name), name)

    async def _wait_quota(self, name: str, *, refused: bool) -> None:
        """Until the relay refuses a second allocation under one username (486) or any (508), or
        (``refused`` false) allows both."""

        async def in_force() -> bool:
            answers = await self.allocate_twice(name)
            log.debug("Quota probe relay=%s refused=%s answers=%s", name, refused, answers)
            if refused and not ("486" in answers[1] or "508" in answers[0]):
                raise NotYet(f"answers {answers}")
            if not refused and answers != ["allocated", "allocated"]:
                raise NotYet(f"answers {answers}")
            return True

        what = f"{name} {'refusing' if refused else 'allowing'} a second allocation"
        await wait_for(in_force, QUOTA_TIMEOUT, what, QUOTA_POLL)

    # ------------------------------------------------------------------ network faults
    async def _cut(self, target: str, network: str) -> None:
        member = self.member(target)
        if network not in member.service.addresses:
            raise KeyError(f"{target} is not on {network}")
        await asyncio.to_thread(self.networks[network].disconnect, member.container)

    async def _reconnect(self, target: str, network: str) -> None:
        member = self.member(target)
        if NO_DEFAULT_ROUTE in member.routes:
            # An unreachable route has no interface, so it outlived the cut; Docker refuses to set its
            # gateway over it ("file exists"). The routes below put it back.
            await asyncio.to_thread(
                cf.exec_checked, member.container, ["ip", "route", "del", *NO_DEFAULT_ROUTE.split()], member.name
            )
        await asyncio.to_thread(
            self.networks[network].connect,
            member.container,
            ipv4_address=member.service.addresses[network],
            aliases=[member.name],
        )
        # the host routes went with the interface
        await asyncio.to_thread(cf.set_routes, member.container, member.routes, member.name)
