"""The faults of the Docker backend: relay containers (restart, stop, start, kill, pause, UDP loss
with iptables inside the relay) and networks (cut a container off one, reconnect it).

A mixin of :class:`harness.docker_fleet.DockerFleet` over :class:`harness.fleet.Fleet`, whose fault
template records each fault in the history. It needs the fleet's ``member()``, ``networks`` and
``relay_names``. Waits for a relay to rejoin are bounded by ``REJOIN_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from docker.models.containers import Container
from docker.models.networks import Network

from .fleet import Fleet
from .topology import Service

REJOIN_TIMEOUT = 45.0
LOSS_RULE = "INPUT -p udp -m statistic --mode random --probability {probability:.4f} -j DROP"


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
    async def restart_relay(self, name: str, new_secret: bool = True) -> None:
        if not new_secret:
            raise ValueError("a relay container always starts with a new secret")
        await super().restart_relay(name)

    async def _restart_relay(self, name: str) -> None:
        old = (await self.secret_fingerprints()).get(name)
        await asyncio.to_thread(self._container(name).restart, timeout=self._stop_timeout(name))
        self._loss_rules.pop(name, None)  # a new network namespace: no rules
        await self.wait_relays_online([name], REJOIN_TIMEOUT, {name: old} if old else None)

    async def _stop_relay(self, name: str) -> None:
        await asyncio.to_thread(self._container(name).stop, timeout=self._stop_timeout(name))
        self._loss_rules.pop(name, None)

    async def _start_relay(self, name: str) -> None:
        old = (await self.secret_fingerprints()).get(name)
        await asyncio.to_thread(self._container(name).start)
        await self.wait_relays_online([name], REJOIN_TIMEOUT, {name: old} if old else None)

    async def _kill_relay(self, name: str) -> None:
        container = self._container(name)
        await asyncio.to_thread(container.kill)
        await asyncio.to_thread(container.wait, timeout=self._stop_timeout(name))
        self._loss_rules.pop(name, None)

    async def _pause_relay(self, name: str) -> None:
        await asyncio.to_thread(self._container(name).pause)

    async def _unpause_relay(self, name: str) -> None:
        await asyncio.to_thread(self._container(name).unpause)

    async def _udp_loss(self, name: str, probability: float) -> None:
        rule = LOSS_RULE.format(probability=probability)
        await asyncio.to_thread(self._exec, name, ["iptables", "-I", *rule.split()])
        self._loss_rules.setdefault(name, []).append(rule)

    async def _clear_udp_loss(self, name: str) -> None:
        for rule in self._loss_rules.pop(name, []):
            await asyncio.to_thread(self._exec, name, ["iptables", "-D", *rule.split()])

    async def dropped_datagrams(self, name: str) -> int:
        """Datagrams the loss rules of relay ``name`` dropped so far (iptables counters)."""
        output = await asyncio.to_thread(self._exec, name, ["iptables", "-L", "INPUT", "-v", "-n", "-x"])
        return sum(int(line.split()[0]) for line in output.splitlines() if "statistic" in line)

    def _exec(self, name: str, command: list[str]) -> str:
        result = self.member(name).container.exec_run(command)
        output = result.output.decode(errors="replace")
        if result.exit_code != 0:
            raise RuntimeError(f"{' '.join(command)} in {name} exited {result.exit_code}: {output.strip()}")
        return output

    # ------------------------------------------------------------------ network faults
    async def _cut(self, target: str, network: str) -> None:
        member = self.member(target)
        if network not in member.service.addresses:
            raise KeyError(f"{target} is not on {network}")
        await asyncio.to_thread(self.networks[network].disconnect, member.container)

    async def _reconnect(self, target: str, network: str) -> None:
        member = self.member(target)
        await asyncio.to_thread(
            self.networks[network].connect,
            member.container,
            ipv4_address=member.service.addresses[network],
            aliases=[member.name],
        )
        for route in member.routes:  # the host routes went with the interface
            await asyncio.to_thread(self._exec, member.name, ["ip", "route", "replace", *route.split()])
