"""The Docker backend of the fleet: the compose topology, created with docker-py for one stack.

Topology (the same as ``docker-compose.yml``; subnets are picked per stack so that they clash
neither with a running ``make up`` stack nor with another session):

    client-net   portal .10   relay-i .(10+i)                client .20
    gateway-net  portal .10   relay-i .(10+i)                gateway .20
    relay-net    (internal)   relay-i .(10+i)

The relays announce their relay-net address; each peer routes it through that relay's leg on its
own network (``PEER_ROUTES``, set by the peer image's entry point). The portal's admin API is
published on 127.0.0.1 (a free port) and is how the harness partitions and heals.

Everything is created through docker-py (never the docker CLI) and carries the session's labels
(:class:`DockerSession`), so that a fixture's teardown, or the sweep at the start of the next run
(``harness.sweep``), can find and remove it even after ``kill -9`` of the runner.

The peers' stdout JSON lines are streamed by one thread per container into the history; ERROR
lines on the stderr of any of our processes (peers, portal, relay agents) are logged again at
ERROR here, which fails the test (``tests/plugins/no_errors.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import queue
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_delay, wait_fixed

from . import checks
from .fleet import CLIENT_ID, GATEWAY_ID, Fleet, StackOptions, observe_at
from .history import History

log = logging.getLogger("harness.docker_fleet")
container_log = logging.getLogger("harness.container")

PROJECT_LABEL = "org.connlib-relays.project"
PROJECT = "connlib-relays"
SESSION_LABEL = "org.connlib-relays.session"
OWNER_LABEL = "org.connlib-relays.session-owner"  # "<host>:<pid>:<process start ticks>"
CREATED_LABEL = "org.connlib-relays.session-created"  # unix seconds
STACK_LABEL = "org.connlib-relays.session-stack"
ROLE_LABEL = "org.connlib-relays.role"

NETWORKS = ("client-net", "gateway-net", "relay-net")
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")
PORTAL_HOST = 10
PEER_HOST = 20
PORTAL_WS_PORT = 4000
PORTAL_ADMIN_PORT = 8080
STOP_TIMEOUT = 5  # seconds docker waits after SIGTERM
READY_TIMEOUT = 45.0
LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")
ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (ERROR|CRITICAL) |^Traceback \(most recent call last\)")


class DockerUnavailable(RuntimeError):
    """No Docker engine answers."""


class StackNotReady(RuntimeError):
    pass


def connect(timeout: float = 60) -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:
        raise DockerUnavailable(f"no Docker engine: {type(exc).__name__}: {exc}") from exc
    return client


def process_start_ticks(pid: int) -> str:
    """The process's start time (clock ticks since boot): with the pid, it names a process uniquely."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid)}"


def _host_routes() -> list[ipaddress.IPv4Network]:
    nets = []
    try:
        with open("/proc/net/route") as routes:
            next(routes)
            for line in routes:
                fields = line.split()
                dest, mask = (int(fields[1], 16), int(fields[7], 16))
                if mask:
                    addr = ipaddress.IPv4Address(socket.ntohl(dest))
                    nets.append(ipaddress.ip_network(f"{addr}/{bin(mask).count('1')}", strict=False))
    except (OSError, StopIteration, ValueError):
        pass
    return nets


class DockerSession:
    """One test session's Docker resources: every network and container carries its labels."""

    def __init__(self, client: docker.DockerClient, images: dict[str, str], session_id: str | None = None) -> None:
        self.client = client
        self.images = images
        self.id = session_id or uuid.uuid4().hex
        self.labels = {
            PROJECT_LABEL: PROJECT,
            SESSION_LABEL: self.id,
            OWNER_LABEL: owner_token(),
            CREATED_LABEL: str(int(time.time())),
        }
        self._stacks = 0
        self._subnet_cursor = int(self.id[:4], 16) % (2 ** (24 - SUBNET_POOL.prefixlen))

    def new_stack_name(self) -> str:
        self._stacks += 1
        return f"clr-{self.id[:8]}-{self._stacks}"

    def _used_subnets(self) -> list[ipaddress.IPv4Network]:
        used = _host_routes()
        for net in self.client.networks.list():
            for config in (net.attrs.get("IPAM") or {}).get("Config") or []:
                try:
                    used.append(ipaddress.ip_network(config.get("Subnet", ""), strict=False))
                except ValueError:
                    continue
        return used

    def create_network(
        self, name: str, *, internal: bool, labels: dict[str, str]
    ) -> tuple[Network, ipaddress.IPv4Network]:
        """A bridge network on the first free /24 of the pool (another session may race us: on an
        overlap error, try the next one)."""
        subnets = list(SUBNET_POOL.subnets(new_prefix=24))
        used = self._used_subnets()
        for _ in range(len(subnets)):
            subnet = subnets[self._subnet_cursor % len(subnets)]
            self._subnet_cursor += 1
            if any(subnet.overlaps(u) for u in used):
                continue
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                network = self.client.networks.create(
                    name,
                    driver="bridge",
                    internal=internal,
                    ipam=ipam,
                    labels={**self.labels, **labels},
                    check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if "overlap" in str(exc).lower():
                    continue
                raise
            return network, subnet
        raise RuntimeError(f"no free /24 left in {SUBNET_POOL} for network {name}")

    def remove_all(self) -> int:
        """Remove every container and network of this session; returns how many."""
        from .sweep import remove_session  # one removal path for teardown and sweep

        return remove_session(self.client, self.id)


@dataclass
class _Member:
    """One container of the stack and where it sits on the networks."""

    name: str
    role: str
    container: Container
    addresses: dict[str, str] = field(default_factory=dict)  # network key → IPv4
    aliases: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    stderr_checked: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    stopped_by_us: bool = False


class DockerFleet(Fleet):
    backend = "docker"

    def __init__(self, history: History | None, options: StackOptions | None, *, session: DockerSession) -> None:
        super().__init__(history, options)
        self.session = session
        self.client = session.client
        self.name = session.new_stack_name()
        self.token = "e2e-" + uuid.uuid4().hex[:16]
        self.networks: dict[str, Network] = {}
        self.subnets: dict[str, ipaddress.IPv4Network] = {}
        self.members: dict[str, _Member] = {}
        self._admin_url: str | None = None
        self._lines: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors: list[str] = []
        self._reported_errors = 0
        self._loss_rules: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ interface
    @property
    def admin_url(self) -> str:
        if self._admin_url is None:
            raise RuntimeError("the portal is not started")
        return self._admin_url

    @property
    def relay_names(self) -> list[str]:
        return [f"relay-{i}" for i in range(1, self.options.relays + 1)]

    def labels(self, role: str) -> dict[str, str]:
        return {**self.session.labels, STACK_LABEL: self.name, ROLE_LABEL: role}

    def ip(self, network: str, host: int) -> str:
        return str(self.subnets[network].network_address + host)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        started = time.monotonic()
        await asyncio.to_thread(self._create)
        created = time.monotonic()
        # The portal and the relays at once (the relay agents retry until the portal listens); the
        # gateway once the relays are online (else its init is empty and its relays come only with
        # the next presence flush); the client once the gateway holds its relays.
        first = ["portal", *self.relay_names]
        await asyncio.gather(*(asyncio.to_thread(self._start_member, name) for name in first))
        await self._ready("the portal's admin API", self._portal_answers)
        self.start_portal_events()
        await self._ready("relays online at the portal", self._relays_online)
        await asyncio.to_thread(self._start_member, GATEWAY_ID)
        await self._ready("the gateway's relays", self._gateway_has_relays)
        await asyncio.to_thread(self._start_member, CLIENT_ID)
        await self._ready("the client's stream (10 echoes)", self._streaming)
        self.history.observe(
            "stack_ready",
            self.name,
            backend=self.backend,
            create_s=round(created - started, 2),
            total_s=round(time.monotonic() - started, 2),
        )
        log.info("Stack ready %s in %.1fs", self.name, time.monotonic() - started)

    def _create(self) -> None:
        for key in NETWORKS:
            network, subnet = self.session.create_network(
                f"{self.name}-{key}", internal=(key == "relay-net"), labels={STACK_LABEL: self.name}
            )
            self.networks[key], self.subnets[key] = network, subnet
        self._create_portal()
        for i, name in enumerate(self.relay_names, start=1):
            self._create_relay(name, PORTAL_HOST + i)
        self._create_peer(GATEWAY_ID, "gateway", "gateway-net", self.options.gateway_disabled_fixes)
        self._create_peer(CLIENT_ID, "client", "client-net", self.options.client_disabled_fixes)

    def _create_member(
        self, name: str, role: str, image: str, placement: dict[str, int], aliases: list[str], **kwargs: Any
    ) -> _Member:
        addresses = {key: self.ip(key, host) for key, host in placement.items()}
        first, *others = placement
        endpoint = self.client.api.create_endpoint_config(ipv4_address=addresses[first], aliases=aliases or None)
        container = self.client.containers.create(
            image,
            name=f"{self.name}-{name}",
            hostname=name,
            labels=self.labels(role),
            detach=True,
            network=self.networks[first].name,
            networking_config={self.networks[first].name: endpoint},
            **kwargs,
        )
        for key in others:
            self.networks[key].connect(container, ipv4_address=addresses[key], aliases=aliases or None)
        member = _Member(name, role, container, addresses, aliases)
        self.members[name] = member
        return member

    def _create_portal(self) -> None:
        extra = []
        for key, value in sorted(self.options.portal.items()):
            extra += [f"--{key.replace('_', '-')}", str(value)]
        command = [
            "--listen",
            f"0.0.0.0:{PORTAL_WS_PORT}",
            "--admin",
            f"0.0.0.0:{PORTAL_ADMIN_PORT}",
            "--token",
            self.token,
            "--debounce",
            str(self.options.debounce),
            *extra,
        ]
        self._create_member(
            "portal",
            "portal",
            self.session.images["portal"],
            {"client-net": PORTAL_HOST, "gateway-net": PORTAL_HOST},
            ["portal"],
            command=command,
            ports={f"{PORTAL_ADMIN_PORT}/tcp": ("127.0.0.1", None)},
        )

    def _create_relay(self, name: str, host: int) -> None:
        env = {
            "RELAY_NAME": name,
            "PORTAL_URL": f"ws://portal:{PORTAL_WS_PORT}",
            "PORTAL_TOKEN": self.token,
            "RELAY_SUBNET": str(self.subnets["relay-net"]),
            "PORTAL_HEARTBEAT_S": str(self.options.relay_heartbeat),
        }
        self._create_member(
            name,
            "relay",
            self.session.images["relay"],
            {key: host for key in NETWORKS},
            [name],
            environment=env,
            cap_add=["NET_ADMIN"],  # NET_ADMIN: iptables rules for the loss fault
        )

    def _create_peer(self, peer_id: str, role: str, network: str, fixes: frozenset[str]) -> None:
        routes = [
            f"{self.ip('relay-net', PORTAL_HOST + i)}/32 via {self.ip(network, PORTAL_HOST + i)}"
            for i in range(1, self.options.relays + 1)
        ]
        command = [
            "connlib",
            "run",
            "--role",
            role,
            "--portal",
            f"ws://portal:{PORTAL_WS_PORT}",
            "--token",
            self.token,
            "--id",
            peer_id,
            "--name",
            peer_id,
        ]
        if role == "client":
            command += ["--connect", GATEWAY_ID, "--rate", str(self.options.rate)]
            if self.options.count is not None:
                command += ["--count", str(self.options.count)]
        env = {"PEER_ROUTES": ",".join(routes)}
        if fixes:
            env["CONNLIB_TEST_DISABLE_FIXES"] = ",".join(sorted(fixes))
        member = self._create_member(
            peer_id,
            role,
            self.session.images["peer"],
            {network: PEER_HOST},
            [peer_id],
            command=command,
            environment=env,
            cap_add=["NET_ADMIN"],
        )
        member.routes = routes

    def _start_member(self, name: str) -> None:
        member = self.members[name]
        member.container.start()
        if member.role == "portal":
            member.container.reload()
            binding = member.container.attrs["NetworkSettings"]["Ports"][f"{PORTAL_ADMIN_PORT}/tcp"][0]
            self._admin_url = f"http://127.0.0.1:{binding['HostPort']}"
        if member.role in ("client", "gateway"):
            self._pump(member, "stdout")
            self._pump(member, "stderr")

    async def stop(self) -> None:
        await self.stop_portal_events()
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        try:
            self._check_peers_alive()
            for member in self.members.values():
                if member.role in ("client", "gateway"):
                    member.stopped_by_us = True
                    _quietly(member.container.kill)
            for member in self.members.values():
                for thread in member.threads:
                    thread.join(timeout=5)
            self.collect_errors()
        finally:
            removed = self._remove()
            log.info("Stack %s removed (%s objects)", self.name, removed)

    def _remove(self) -> int:
        from .sweep import remove_stack

        return remove_stack(self.client, self.session.id, self.name)

    def _check_peers_alive(self) -> None:
        for member in self.members.values():
            if member.role not in ("client", "gateway") or member.stopped_by_us:
                continue
            try:
                member.container.reload()
            except docker.errors.NotFound:
                continue
            state = member.container.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                self._error(
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

    # ------------------------------------------------------------------ readiness
    async def _ready(self, what: str, check) -> None:
        last = ["not checked yet"]
        started = time.monotonic()

        async def attempt() -> None:
            await asyncio.to_thread(self._check_running)
            reason = await check() if asyncio.iscoroutinefunction(check) else check()
            if reason is not True:
                last[0] = str(reason or "not yet")
                raise _NotYet(last[0])

        try:
            async for retry in AsyncRetrying(
                stop=stop_after_delay(READY_TIMEOUT),
                wait=wait_fixed(0.1),
                retry=retry_if_exception_type(_NotYet),
                reraise=False,
            ):
                with retry:
                    await attempt()
        except RetryError:
            raise StackNotReady(
                f"stack {self.name}: {what} not ready after {time.monotonic() - started:.0f}s ({last[0]})\n{self._tails()}"
            ) from None

    def _check_running(self) -> None:
        for member in self.members.values():
            if member.stopped_by_us:
                continue
            member.container.reload()
            if member.container.attrs["State"]["Status"] in ("exited", "dead"):
                raise StackNotReady(f"{member.name} exited during start-up\n{self._tails()}")

    def _tails(self, lines: int = 12) -> str:
        out = []
        for name, member in self.members.items():
            try:
                text = member.container.logs(tail=lines).decode(errors="replace")
            except docker.errors.APIError:
                continue
            out.append(f"--- {name} ---\n{text.rstrip()}")
        return "\n".join(out)

    async def _portal_answers(self) -> bool | str:
        try:
            await self.admin("GET", "/api/relays")
            return True
        except OSError as exc:
            return f"admin API: {exc}"

    async def _relays_online(self) -> bool | str:
        try:
            relays = {r["name"]: r for r in await self.portal_relays()}
        except OSError as exc:
            return f"admin API: {exc}"
        missing = [n for n in self.relay_names if not relays.get(n, {}).get("online")]
        return True if not missing else f"offline: {missing}"

    def _gateway_has_relays(self) -> bool | str:
        self.drain()
        want = min(self.options.relays, int(self.options.portal.get("relays_per_client", 2)))
        held = checks.known_relays(self.history, GATEWAY_ID)
        return True if len(held) >= want else f"the gateway holds {len(held)} of {want} relays"

    def _streaming(self) -> bool | str:
        self.drain()
        reports = self.history.select("stream", target=CLIENT_ID)
        if reports and reports[-1].data.get("delivered", 0) >= 10:
            return True
        return f"last stream report: {reports[-1].data if reports else None}"

    # ------------------------------------------------------------------ logs → history
    def follow(self, container: Container, name: str, role: str = "extra") -> None:
        """Stream another (started) container's output into this fleet's history, like a peer's."""
        member = self.members[name] = _Member(name, role, container)
        self._pump(member, "stdout")
        self._pump(member, "stderr")

    def _pump(self, member: _Member, stream: str) -> None:
        container = member.container
        kwargs = {"stdout": stream == "stdout", "stderr": stream == "stderr"}

        def run() -> None:
            buffer = b""
            try:
                for chunk in container.logs(stream=True, follow=True, **kwargs):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        self._lines.put((member.name, stream, line.decode(errors="replace")))
                    if lines and self._loop is not None and not self._loop.is_closed():
                        self._loop.call_soon_threadsafe(self.drain)
            except Exception as exc:
                log.debug("log stream of %s ended: %s", member.name, exc)
            if buffer:
                self._lines.put((member.name, stream, buffer.decode(errors="replace")))

        thread = threading.Thread(target=run, name=f"logs-{member.name}-{stream}", daemon=True)
        thread.start()
        member.threads.append(thread)

    def drain(self) -> None:
        """Move the lines the pump threads read into the history (call from one thread at a time)."""
        while True:
            try:
                name, stream, text = self._lines.get_nowait()
            except queue.Empty:
                return
            if stream == "stderr":
                if ERROR_LINE.search(text):
                    self._error(name, text)
                elif match := LOG_LINE.match(text):
                    if match["level"] == "WARNING":
                        self.history.observe(
                            "log", name, level=match["level"], logger=match["logger"], message=match["message"]
                        )
                continue
            if not text.startswith("{"):
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict):
                observe_at(self.history, line)

    def _error(self, name: str, text: str) -> None:
        self._errors.append(f"{name}: {text}")
        self.history.observe("error_log", name, line=text[:500])
        container_log.error("%s %s: %s", self.name, name, text)

    def collect_errors(self) -> list[str]:
        self.drain()
        for member in self.members.values():
            if member.role not in ("portal", "relay"):
                continue  # peers are streamed live
            try:
                text = member.container.logs(stdout=False, stderr=True).decode(errors="replace")
            except docker.errors.APIError:
                continue
            lines = text.splitlines()
            for line in lines[member.stderr_checked :]:
                if ERROR_LINE.search(line):
                    self._error(member.name, line)
            member.stderr_checked = len(lines)
        fresh = self._errors[self._reported_errors :]
        self._reported_errors = len(self._errors)
        return fresh

    # ------------------------------------------------------------------ relay faults
    def _relay(self, name: str) -> Container:
        member = self.members.get(name)
        if member is None or member.role != "relay":
            raise KeyError(f"no relay {name!r} in stack {self.name} (relays: {self.relay_names})")
        return member.container

    async def restart_relay(self, name: str, new_secret: bool = True) -> None:
        if not new_secret:
            raise ValueError("a relay container always starts with a new secret")
        await super().restart_relay(name)

    async def _restart_relay(self, name: str) -> None:
        old = (await self.secret_fingerprints()).get(name)
        await asyncio.to_thread(self._relay(name).restart, timeout=STOP_TIMEOUT)
        self._loss_rules.pop(name, None)  # a new network namespace: no rules
        await self.wait_relays_online([name], READY_TIMEOUT, {name: old} if old else None)

    async def _stop_relay(self, name: str) -> None:
        await asyncio.to_thread(self._relay(name).stop, timeout=STOP_TIMEOUT)
        self._loss_rules.pop(name, None)

    async def _start_relay(self, name: str) -> None:
        old = (await self.secret_fingerprints()).get(name)
        await asyncio.to_thread(self._relay(name).start)
        await self.wait_relays_online([name], READY_TIMEOUT, {name: old} if old else None)

    async def _kill_relay(self, name: str) -> None:
        container = self._relay(name)
        await asyncio.to_thread(container.kill)
        await asyncio.to_thread(container.wait, timeout=STOP_TIMEOUT)
        self._loss_rules.pop(name, None)

    async def _pause_relay(self, name: str) -> None:
        await asyncio.to_thread(self._relay(name).pause)

    async def _unpause_relay(self, name: str) -> None:
        await asyncio.to_thread(self._relay(name).unpause)

    async def _udp_loss(self, name: str, probability: float) -> None:
        rule = [
            "INPUT",
            "-p",
            "udp",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            f"{probability:.4f}",
            "-j",
            "DROP",
        ]
        await asyncio.to_thread(self._exec, name, ["iptables", "-I", *rule])
        self._loss_rules.setdefault(name, []).append(" ".join(rule))

    async def _clear_udp_loss(self, name: str) -> None:
        for rule in self._loss_rules.pop(name, []):
            await asyncio.to_thread(self._exec, name, ["iptables", "-D", *rule.split()])

    async def dropped_datagrams(self, name: str) -> int:
        """Datagrams the loss rules of relay ``name`` dropped so far (iptables counters)."""
        output = await asyncio.to_thread(self._exec, name, ["iptables", "-L", "INPUT", "-v", "-n", "-x"])
        return sum(int(line.split()[0]) for line in output.splitlines() if "statistic" in line)

    def _exec(self, name: str, command: list[str]) -> str:
        result = self.members[name].container.exec_run(command)
        output = result.output.decode(errors="replace")
        if result.exit_code != 0:
            raise RuntimeError(f"{' '.join(command)} in {name} exited {result.exit_code}: {output.strip()}")
        return output

    # ------------------------------------------------------------------ network faults
    async def _cut(self, target: str, network: str) -> None:
        member = self.members[target]
        if network not in member.addresses:
            raise KeyError(f"{target} is not on {network}")
        await asyncio.to_thread(self.networks[network].disconnect, member.container)

    async def _reconnect(self, target: str, network: str) -> None:
        member = self.members[target]
        await asyncio.to_thread(
            self.networks[network].connect,
            member.container,
            ipv4_address=member.addresses[network],
            aliases=member.aliases or None,
        )
        for route in member.routes:  # the host routes went with the interface
            await asyncio.to_thread(self._exec, target, ["ip", "route", "replace", *route.split()])


class _NotYet(Exception):
    pass


def _quietly(action) -> None:
    try:
        action()
    except docker.errors.APIError as exc:
        log.debug("ignored: %s", exc)
