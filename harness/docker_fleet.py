"""The Docker backend of the fleet: the stack ``docker-compose.yml`` defines, created with docker-py.

The topology (networks, services, addresses, ports, environment, commands, health checks) is read
from the compose file by ``harness.topology`` with this stack's values for its variables: subnets
from the session's pool (so that a stack clashes neither with a running ``make up`` stack nor with
another session), the stack's name and session labels, the image tag, a fresh token, the peer ids,
the options (debounce, heartbeat, rate, disabled fixes). Options the file has no variable for are
added on top: the portal's extra settings, the client's ``--count``, more relays than the file's.
The chaos control service is left out (``LEFT_OUT_ROLES``). Two parts of the file are compose's
own and not used here: ``depends_on`` (the start order below,
with stronger readiness gates, replaces it) and the services' health checks (compose's input to
``depends_on``), the relay image's own HEALTHCHECK too: the harness reads no container's health, and
each check is a ``docker exec`` of Python every 2 s per container (engine, runtime and probe CPU taken
from the system under test; with two stacks side by side on 2 cores, about a tenth of a core).

Everything is created through docker-py (never the docker CLI) and carries the session's labels
(``harness.docker_session``), so that a teardown, or the sweep at the start of the next run, can find
and remove it. The peers' output goes into the history (``harness.container_logs``). Start order:
the portal and the relays at once; the peers' containers meanwhile, each waiting at its start gate
(the peer image's ``PEER_START_GATE``: connlib starts when the harness knocks); the gateway's connlib
once the relays are online at the portal (else its init is empty until the next presence flush); the
client's once the gateway holds its relays.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network

from . import checks
from . import network_turns as nt
from .container_logs import LogPump
from .docker_faults import DockerFaults, Member
from .docker_session import DockerSession
from .fleet import CLIENT_ID, GATEWAY_ID, StackOptions
from .history import History
from .labels import STACK_LABEL
from .portal_admin import ADMIN_ERRORS
from .topology import COMPOSE_FILE, Service, Topology, load
from .waiting import NotYet, wait_for

log = logging.getLogger("harness.docker_fleet")

READY_TIMEOUT = 45.0
RUNNING_LOOK = 0.5
"""Seconds between two looks at the containers' state while waiting for the stack to be ready."""
PEER_ROLES = ("client", "gateway")
LEFT_OUT_ROLES = frozenset({"chaos"})
"""Services of the file the backend does not create: the chaos control service is for people (the
harness injects its faults itself, and needs no container holding the Docker socket)."""


class StackNotReady(RuntimeError):
    pass


def stack_variables(
    fleet_name: str, token: str, options: StackOptions, session: DockerSession, admin_token: str = ""
) -> dict[str, str]:
    """The compose file's variables for one harness stack (subnets come when the networks exist)."""
    prefix, _, tag = session.images.get("relay", "connlib-relays/relay:e2e").rpartition(":")
    return {
        **session.variables,
        "COMPOSE_PROJECT_NAME": fleet_name,
        "IMAGE_PREFIX": prefix.rpartition("/")[0],
        "IMAGE_TAG": tag,
        "PORTAL_TOKEN": token,
        "PORTAL_ADMIN_TOKEN": admin_token,
        "PORTAL_DEBOUNCE": str(options.debounce),
        "PORTAL_WS_PUBLISH": "127.0.0.1:",  # "127.0.0.1::4000": a free port on 127.0.0.1
        "PORTAL_ADMIN_PUBLISH": "127.0.0.1:",
        "RELAY_HEARTBEAT_S": str(options.relay_heartbeat),
        "CLIENT_ID": CLIENT_ID,
        "GATEWAY_ID": GATEWAY_ID,
        "CLIENT_RATE": str(options.rate),
        "CLIENT_DISABLE_FIXES": ",".join(sorted(options.client_disabled_fixes)),
        "GATEWAY_DISABLE_FIXES": ",".join(sorted(options.gateway_disabled_fixes)),
    }


RELAY_MIN_PORT = 49160  # the relay image's (images/agent.py)
PEER_START_GATE_PORT = 9
"""The peer image's start gate (images/peer-entrypoint.sh): a container started early waits for one
TCP connection to this port, from the harness on the host, before connlib starts."""


def plan(variables: dict[str, str], options: StackOptions, path: Path = COMPOSE_FILE) -> Topology:
    """What a stack with these variables and options is: the file's topology, scaled and extended."""
    topology = load(variables, path).with_relays(options.relays)
    services = {name: s for name, s in topology.services.items() if s.role not in LEFT_OUT_ROLES}
    for name, service in services.items():
        extra: list[str] = []
        if service.role == "portal":
            for key, value in sorted(options.portal.items()):
                extra += [f"--{key.replace('_', '-')}", str(value)]
        if service.role == "client" and options.count is not None:
            extra += ["--count", str(options.count)]
        if service.role == "client" and options.clients > 1:
            extra += ["--clients", str(options.clients)]
        if service.role in PEER_ROLES:
            extra += list(options.peer_args)
        if extra:
            service = services[name] = replace(service, command=[*(service.command or []), *extra])
        if service.role in PEER_ROLES:
            # the peer image's start gate: the harness starts the container early, connlib when due
            service = services[name] = replace(
                service, environment={**service.environment, "PEER_START_GATE": str(PEER_START_GATE_PORT)}
            )
        if service.role == "relay" and options.clients > 1:
            # The relay image's default range (49160-49200) holds 41 allocations: one per peer per relay here.
            ports = {"MIN_PORT": str(RELAY_MIN_PORT), "MAX_PORT": str(RELAY_MIN_PORT + 2 * (options.clients + 1) + 16)}
            service = services[name] = replace(service, environment={**service.environment, **ports})
        if service.role == "relay" and name in options.relay_env:
            services[name] = replace(service, environment={**service.environment, **options.relay_env[name]})
    unknown = set(options.relay_env) - {n for n, s in services.items() if s.role == "relay"}
    if unknown:
        raise ValueError(f"relay_env names relays the stack does not have: {sorted(unknown)}")
    return Topology(topology.networks, services, topology.source)


NO_HEALTHCHECK = {"test": ["NONE"]}
"""docker-py's ``healthcheck`` that turns the image's HEALTHCHECK off too."""


def create_kwargs(service: Service, network: str, *, healthcheck: bool = True) -> dict[str, Any]:
    """docker-py ``containers.create`` arguments for a service (its first network attached); without
    ``healthcheck``, no health check runs in the container: neither the service's compose one nor the
    image's (the relay image's STUN probe, a ``docker exec`` of Python every 2 s per relay)."""
    ports = {
        f"{p.container_port}/{p.protocol}": (p.host_ip, p.host_port) if p.host_ip else p.host_port
        for p in service.ports
    }
    kwargs: dict[str, Any] = {
        "image": service.image,
        "hostname": service.hostname,
        "labels": service.labels,
        "environment": service.environment,
        "cap_add": service.cap_add or None,
        "ports": ports or None,
        "healthcheck": service.healthcheck if healthcheck else NO_HEALTHCHECK,
        "network": network,
        "detach": True,
    }
    if service.command is not None:
        kwargs["command"] = service.command
    if service.entrypoint is not None:
        kwargs["entrypoint"] = service.entrypoint
    return kwargs


class DockerFleet(DockerFaults):
    backend = "docker"

    def __init__(self, history: History | None, options: StackOptions | None, *, session: DockerSession) -> None:
        super().__init__(history, options)
        self.session = session
        self.client = session.client
        self.name = session.new_stack_name()
        self.token = "e2e-" + uuid.uuid4().hex[:16]
        self.admin_token = "e2e-admin-" + uuid.uuid4().hex[:16]
        self.variables = stack_variables(self.name, self.token, self.options, session, self.admin_token)
        self.topology = plan(self.variables, self.options)  # the subnets are the file's until _create_networks
        self.networks: dict[str, Network] = {}
        self.subnets: dict[str, ipaddress.IPv4Network] = {}
        self.members: dict[str, Member] = {}
        self.logs = LogPump(self.history, self.name)
        self._admin_url: str | None = None
        self._init_faults()

    # ------------------------------------------------------------------ interface
    @property
    def admin_url(self) -> str:
        if self._admin_url is None:
            raise RuntimeError("the portal is not started")
        return self._admin_url

    @property
    def relay_names(self) -> list[str]:
        return [s.name for s in self.topology.relays]

    def member(self, target: str) -> Member:
        """A container by service name (``relay-1``, ``portal``) or by peer id (``client-1``)."""
        if target in self.members:
            return self.members[target]
        for member in self.members.values():
            if member.role in PEER_ROLES and member.service.option("--id") == target:
                return member
        raise KeyError(f"no container {target!r} in stack {self.name} (have {sorted(self.members)})")

    def _peers(self) -> list[Member]:
        return [member for member in self.members.values() if member.role in PEER_ROLES]

    def ip(self, network: str, host: int) -> str:
        return str(self.subnets[network].network_address + host)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.logs.loop = asyncio.get_running_loop()
        started = time.monotonic()
        phases: dict[str, float] = {}

        def reached(phase: str) -> None:  # seconds since the start, for the stack_ready record and the log
            phases[phase] = round(time.monotonic() - started, 2)

        await asyncio.to_thread(self._create_networks)
        reached("networks_s")
        first = [s for s in self.topology.services.values() if s.role not in PEER_ROLES]
        await self._create_members(first)
        reached("created_s")
        # The peers' containers are created and started (each waits at its start gate) while the
        # portal and the relays start: an engine round of half a second or more each under load, off
        # the critical path (connlib starts only once the relays are online anyway). Awaited before
        # the gateway's gate opens, and on any failure, so that the teardown knows every container.
        peers = asyncio.ensure_future(self._create_and_start_peers())
        try:
            await asyncio.gather(*(asyncio.to_thread(self._start_member, s.name) for s in first))
            reached("started_s")
            await self._ready("the portal's admin API", self._portal_answers)
            reached("portal_s")
            self.start_portal_events()
            await self._ready("relays online at the portal", self._relays_online)
            reached("relays_s")
            await peers
        finally:
            await asyncio.gather(peers, return_exceptions=True)
        await self._open_gate(self.member(GATEWAY_ID))
        await self._ready("the gateway's relays", self._gateway_has_relays)
        reached("gateway_s")
        await self._open_gate(self.member(CLIENT_ID))
        await self._ready("the client's stream (10 echoes)", self._streaming)
        reached("total_s")
        self.history.observe("stack_ready", self.name, backend=self.backend, **phases)
        log.info("Stack ready stack=%s %s", self.name, " ".join(f"{k}={v:.2f}" for k, v in phases.items()))

    def _create_networks(self) -> None:
        for key, spec in self.topology.networks.items():
            network, subnet = self.session.create_network(
                f"{self.name}-{key}", internal=spec.internal, labels={**spec.labels, STACK_LABEL: self.name}
            )
            self.networks[key], self.subnets[key] = network, subnet
            if spec.subnet_variable is None or subnet.prefixlen != 24:
                raise StackNotReady(f"network {key}: the file must take its /24 from a variable")
            self.variables[spec.subnet_variable] = str(subnet.network_address).rsplit(".", 1)[0]
        self.topology = plan(self.variables, self.options)
        for key, spec in self.topology.networks.items():
            if spec.subnet != self.subnets[key]:
                raise StackNotReady(f"network {key}: the file says {spec.subnet}, the harness made {self.subnets[key]}")
        unknown = {s.image for s in self.topology.services.values()} - set(self.session.images.values())
        if unknown:
            raise StackNotReady(f"the file names images the session did not build: {sorted(unknown)}")

    async def _create_and_start_peers(self) -> None:
        """The peers' containers, created and started while the portal and the relays start: each
        waits at its start gate (the peer image's ``PEER_START_GATE``) until :meth:`_open_gate`."""
        peers = [s for s in self.topology.services.values() if s.role in PEER_ROLES]
        await self._create_members(peers)
        await asyncio.gather(*(asyncio.to_thread(self._start_member, s.name) for s in peers))

    async def _open_gate(self, member: Member) -> None:
        """Let a gated peer's connlib start: one TCP connection to its gate, on its first network's
        address (the host reaches the peers' bridges; their replies stay on the connected subnet),
        retried until the entry point listens, bounded."""
        address = (next(iter(member.service.addresses.values())), PEER_START_GATE_PORT)

        def knock() -> bool:
            with socket.create_connection(address, timeout=1.0):
                return True

        await self._ready(f"the {member.role}'s start gate", lambda: asyncio.to_thread(knock))  # OSError: not yet

    async def _create_members(self, services: list[Service]) -> None:
        """The services' containers, created side by side (each in a thread: docker-py blocks) and
        recorded in the file's order; the first failure is raised once all have ended, so that every
        container made is a member the teardown knows."""
        made = await asyncio.gather(
            *(asyncio.to_thread(self._create_member, s) for s in services), return_exceptions=True
        )
        failures = [m for m in made if isinstance(m, BaseException)]
        for member in made:
            if isinstance(member, Member):
                self.members[member.name] = member
        if failures:
            raise failures[0]

    def _create_member(self, service: Service) -> Member:
        first, *others = service.addresses
        aliases = [service.name]
        endpoint = self.client.api.create_endpoint_config(ipv4_address=service.addresses[first], aliases=aliases)
        container = self.client.containers.create(
            name=f"{self.name}-{service.name}",
            networking_config={self.networks[first].name: endpoint},
            **create_kwargs(service, self.networks[first].name, healthcheck=False),
        )
        for key in others:
            self.networks[key].connect(container, ipv4_address=service.addresses[key], aliases=aliases)
        routes = [r.strip() for r in service.environment.get("PEER_ROUTES", "").split(",") if r.strip()]
        return Member(service, container, routes=routes)

    def _start_member(self, name: str) -> None:
        member = self.members[name]
        member.container.start()
        if member.role == "portal":
            admin = (member.service.option("--admin") or "").rpartition(":")[2]
            member.container.reload()
            binding = member.container.attrs["NetworkSettings"]["Ports"][f"{admin}/tcp"][0]
            self._admin_url = f"http://127.0.0.1:{binding['HostPort']}"
        if member.role in PEER_ROLES:
            self.logs.follow(name, member.container)

    async def stop(self) -> None:
        await self.stop_portal_events()
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        try:
            self._check_peers_alive()
            for member in self.members.values():
                if member.role in PEER_ROLES:
                    member.stopped_by_us = True
                    _quietly(nt.kill, member.container, round(member.service.stop_grace_s))
            self.logs.join()
            self.collect_errors()
        finally:
            self.session.remove_stack(self.name)

    def _check_peers_alive(self) -> None:
        for member in self.members.values():
            if member.role not in PEER_ROLES or member.stopped_by_us:
                continue
            try:
                member.container.reload()
            except docker.errors.NotFound:
                continue
            state = member.container.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                self.logs.error(
                    member.name, f"the {member.role} container exited on its own with status {state['ExitCode']}"
                )

    def container_logs(self) -> dict[str, str]:
        """Each container's whole output (stdout and stderr interleaved), for the results folder."""
        logs = {}
        for name, member in self.members.items():
            try:
                logs[name] = member.container.logs(stdout=True, stderr=True, timestamps=True).decode(errors="replace")
            except docker.errors.APIError as exc:
                logs[name] = f"(no logs: {exc})"
        return logs

    # ------------------------------------------------------------------ logs → history
    def follow(self, container: Container, name: str) -> None:
        """Stream another (started) container's output into this fleet's history, like a peer's."""
        self.logs.follow(name, container)

    def drain(self) -> None:
        self.logs.drain()

    def collect_errors(self) -> list[str]:
        self.logs.drain()
        for member in self.members.values():
            if member.role in PEER_ROLES:
                continue  # streamed live
            try:
                self.logs.scan_stderr(member.name, member.container)
            except docker.errors.APIError:
                continue
        return self.logs.fresh_errors()

    # ------------------------------------------------------------------ readiness
    async def _ready(self, what: str, check: Callable[[], Awaitable[bool] | bool]) -> None:
        """Until ``check`` holds (it raises :class:`NotYet` while it does not), bounded; a container that
        exited meanwhile ends the wait at once."""

        last_look = 0.0

        async def ready() -> bool:
            nonlocal last_look
            # The containers' state costs the engine an inspect each: every RUNNING_LOOK seconds, not
            # at every poll of the condition (stacks side by side start at once).
            if time.monotonic() - last_look >= RUNNING_LOOK:
                await asyncio.to_thread(self._check_running)
                last_look = time.monotonic()
            result = check()
            return await result if not isinstance(result, bool) else result

        try:
            await wait_for(ready, READY_TIMEOUT, what, 0.1, retry_on=ADMIN_ERRORS, error=StackNotReady)
        except StackNotReady as exc:
            raise StackNotReady(f"stack {self.name}: {exc}\n{self._tails()}") from None

    def _check_running(self) -> None:
        # One list request for the stack's containers (their state is in the list's rows), not an
        # inspect per container: the engine answers both stacks' looks side by side.
        rows = self.client.api.containers(all=True, filters={"label": f"{STACK_LABEL}={self.name}"})
        state = {name.lstrip("/"): row["State"] for row in rows for name in row["Names"]}
        for member in self.members.values():
            if member.stopped_by_us:
                continue
            if state.get(member.container.name) in ("exited", "dead"):
                raise StackNotReady(f"{member.name} exited during start-up")

    def _tails(self, lines: int = 12) -> str:
        out = []
        for name, member in self.members.items():
            try:
                text = member.container.logs(tail=lines).decode(errors="replace")
            except docker.errors.APIError:
                continue
            out.append(f"--- {name} ---\n{text.rstrip()}")
        return "\n".join(out)

    async def _portal_answers(self) -> bool:
        await self.admin("GET", "/api/relays")
        return True

    async def _relays_online(self) -> bool:
        relays = {r["name"]: r for r in await self.portal_relays()}
        missing = [n for n in self.relay_names if not relays.get(n, {}).get("online")]
        if missing:
            raise NotYet(f"offline: {missing}")
        return True

    def _gateway_has_relays(self) -> bool:
        self.drain()
        want = min(self.options.relays, int(self.options.portal.get("relays_per_client", 2)))
        held = checks.known_relays(self.history, GATEWAY_ID)
        if len(held) < want:
            raise NotYet(f"the gateway holds {len(held)} of {want} relays")
        return True

    def _streaming(self) -> bool:
        self.drain()
        reports = self.history.select("stream", target=self.client_ids[0])
        if reports and reports[-1].data.get("delivered", 0) >= 10:
            return True
        raise NotYet(f"last stream report: {reports[-1].data if reports else None}")


def _quietly(action: Callable[..., object], *args: object) -> None:
    try:
        action(*args)
    except docker.errors.APIError as exc:
        log.debug("Ignored error=%s", exc)
