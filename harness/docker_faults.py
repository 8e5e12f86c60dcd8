"""The faults of the Docker backend: relay containers (restart, stop, start, kill, pause, UDP loss
with iptables inside the relay: the calls of :mod:`harness.container_faults`), networks (cut a
container off one, reconnect it) and a client's idle and resume (SIGUSR1 / SIGUSR2 to its container).

A mixin of :class:`harness.docker_fleet.DockerFleet` over :class:`harness.fleet.Fleet`, whose fault
template records each fault in the history. It needs the fleet's ``member()``, ``networks`` and
``relay_names``. Waits for a relay to rejoin are bounded by ``REJOIN_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network

from . import container_faults as cf
from .fleet import Fleet
from .topology import NO_DEFAULT_ROUTE, Service

REJOIN_TIMEOUT = 45.0
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

    def member(self, target: str) -> Member:
        raise NotImplementedError

    def _init_faults(self) -> None:
        self._loss_rules: dict[str, list[str]] = {}

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
        if not new_secret:  # the relay image's one-shot switch: its next start reuses the secret
            await asyncio.to_thread(cf.exec_checked, self._container(name), [*AGENT, "keep-secret"], name)
        await asyncio.to_thread(cf.restart, self._container(name), self._stop_timeout(name))
        self._loss_rules.pop(name, None)  # iptables rules do not survive the restart
        await self.wait_relays_rejoined([name], REJOIN_TIMEOUT, before, new_secret=new_secret)

    async def _stop_relay(self, name: str) -> None:
        await asyncio.to_thread(cf.stop, self._container(name), self._stop_timeout(name))
        self._loss_rules.pop(name, None)

    async def _start_relay(self, name: str) -> None:
        before = await self.relay_joins()
        await asyncio.to_thread(cf.start, self._container(name))
        await self.wait_relays_rejoined([name], REJOIN_TIMEOUT, before)

    async def _kill_relay(self, name: str) -> None:
        await asyncio.to_thread(cf.kill, self._container(name), self._stop_timeout(name))
        self._loss_rules.pop(name, None)

    async def _pause_relay(self, name: str) -> None:
        await asyncio.to_thread(cf.pause, self._container(name))

    async def _unpause_relay(self, name: str) -> None:
        await asyncio.to_thread(cf.unpause, self._container(name))

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
        rule = cf.loss_rule(probability)
        await asyncio.to_thread(cf.add_rule, self._container(name), rule, name)
        self._loss_rules.setdefault(name, []).append(rule)

    async def _clear_udp_loss(self, name: str) -> None:
        for rule in self._loss_rules.pop(name, []):
            await asyncio.to_thread(cf.delete_rule, self._container(name), rule, name)

    async def dropped_datagrams(self, name: str) -> int:
        """Datagrams the loss rules of relay ``name`` dropped so far (iptables counters)."""
        return await asyncio.to_thread(cf.dropped_by_loss, self._container(name), name)

    async def stun_requests(self, name: str) -> int:
        """STUN messages that reached relay ``name``'s TURN port since counting began there (an
        iptables counter, put in place by the first call and again after a restart: then 0)."""
        member = self._relay(name)
        port = int(member.service.environment.get("LISTENING_PORT", "3478"))
        try:
            return await asyncio.to_thread(cf.stun_requests, member.container, port, name)
        except docker.errors.APIError as exc:  # not running (restarting, stopped)
            raise RuntimeError(f"cannot count {name}'s requests: {exc}") from None

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
        for route in member.routes:  # the host routes went with the interface
            await asyncio.to_thread(
                cf.exec_checked, member.container, ["ip", "route", "replace", *route.split()], member.name
            )
