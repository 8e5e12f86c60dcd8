"""One run's Docker resources: its labels, its stack names and the subnets its networks get.

Every network and container a session creates carries :func:`harness.labels.session_labels`, so
that a fixture's teardown, or the sweep at the start of the next run (``harness.sweep``), finds and
removes it even after ``kill -9`` of the runner. Subnets are /24s of ``SUBNET_POOL`` that overlap
neither a host route nor another Docker network (a developer's ``make up`` stack, another session).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import docker.types
from docker.models.networks import Network

from .labels import session_labels, session_variables
from .sweep import remove_session, remove_stack

log = logging.getLogger("harness.docker_session")

SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")


def host_routes() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The IPv4 destinations of the host's routing table (a subnet there is not free)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
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


def docker_subnets(client: docker.DockerClient) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for net in client.networks.list():
        for config in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                used.append(ipaddress.ip_network(config.get("Subnet", ""), strict=False))
            except ValueError:
                continue
    return used


RESERVATIONS = Path(tempfile.gettempdir()) / "connlib-relays-subnets.json"
RESERVATION_S = 300.0  # longer than a compose project takes to create its networks


@contextlib.contextmanager
def _reservations() -> Iterator[dict[str, float]]:
    """The host's subnet reservations (subnet → unix expiry), expired ones dropped, written back on exit."""
    with open(RESERVATIONS.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                reserved = {k: float(v) for k, v in json.loads(RESERVATIONS.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                reserved = {}  # none yet, or unreadable: nothing is reserved
            now = time.time()
            reserved = {k: v for k, v in reserved.items() if v > now}
            yield reserved
            RESERVATIONS.write_text(json.dumps(reserved))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class DockerSession:
    """One test session's (or CLI run's) Docker resources."""

    def __init__(
        self,
        client: docker.DockerClient,
        images: dict[str, str],
        session_id: str | None = None,
        *,
        deferred_removal: bool = False,
    ) -> None:
        self.client = client
        self._removals = ThreadPoolExecutor(1, thread_name_prefix="stack-removal") if deferred_removal else None
        self._pending: list[Future[int]] = []
        self.images = images
        """Image tag per image name (``relay``, ``portal``, ``peer``): what ``harness.images`` built."""
        self.id = session_id or uuid.uuid4().hex
        self.labels = session_labels(self.id)
        self._stacks = 0
        self._subnet_cursor = int(self.id[:4], 16) % (2 ** (24 - SUBNET_POOL.prefixlen))

    @property
    def variables(self) -> dict[str, str]:
        """The session's labels as ``docker-compose.yml`` variables (``CONNLIB_SESSION``, ...)."""
        return session_variables(self.labels)

    def new_stack_name(self) -> str:
        self._stacks += 1
        return f"clr-{self.id[:8]}-{self._stacks}"

    def _used_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [*host_routes(), *docker_subnets(self.client)]

    def _candidates(self) -> list[ipaddress.IPv4Network]:
        subnets = [ipaddress.IPv4Network(s) for s in SUBNET_POOL.subnets(new_prefix=24)]
        start = self._subnet_cursor % len(subnets)
        return subnets[start:] + subnets[:start]

    def free_subnets(self, count: int) -> list[ipaddress.IPv4Network]:
        """``count`` /24s that are free now, for a compose project that creates its own networks
        later. Reserved on this host for ``RESERVATION_S`` (``RESERVATIONS``, under an flock): two
        test workers of one session start from the same cursor, and the second ``up`` failed with
        "Pool overlaps" when both compose stacks were made at once."""
        with _reservations() as reserved:
            used = [*self._used_subnets(), *map(ipaddress.IPv4Network, reserved)]
            found = [s for s in self._candidates() if not any(s.overlaps(u) for u in used)][:count]
            if len(found) < count:
                raise RuntimeError(f"only {len(found)} free /24 left in {SUBNET_POOL}, want {count}")
            until = time.time() + RESERVATION_S
            reserved.update({str(s): until for s in found})
        self._subnet_cursor += count
        return found

    def create_network(
        self, name: str, *, internal: bool, labels: dict[str, str]
    ) -> tuple[Network, ipaddress.IPv4Network]:
        """A bridge network on the first free /24 of the pool, ``labels`` on top of the session's. The
        subnet comes from ``free_subnets``, so never one a compose stack of another worker has reserved
        for its ``up`` ("Pool overlaps" on that ``up``); its reservation ends once Docker holds the
        network. Another session may still race us outside the reservations: on an overlap error, the
        next one."""
        for _ in range(2 ** (24 - SUBNET_POOL.prefixlen)):
            (subnet,) = self.free_subnets(1)
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
                    log.info("Subnet taken meanwhile subnet=%s network=%s", subnet, name)
                    continue
                raise
            finally:
                with _reservations() as reserved:
                    reserved.pop(str(subnet), None)
            return network, subnet
        raise RuntimeError(f"no free /24 left in {SUBNET_POOL} for network {name}")

    def remove_stack(self, name: str) -> None:
        """Remove stack ``name``'s containers and networks: at once, or, in a session made with
        ``deferred_removal``, in the background (one at a time), so that the next test's stack starts
        meanwhile instead of after the engine's second or two of forced removals;
        :meth:`remove_all` waits for what is still queued."""
        if self._removals is None:
            self._remove_stack(name)
        else:
            self._pending.append(self._removals.submit(self._remove_stack, name))

    def _remove_stack(self, name: str) -> int:
        started = time.monotonic()
        removed = remove_stack(self.client, self.id, name)
        log.info("Stack removed stack=%s objects=%s took_s=%.2f", name, removed, time.monotonic() - started)
        return removed

    def remove_all(self) -> int:
        """Remove every container and network of this session (after the queued stack removals);
        returns how many."""
        if self._removals is not None:
            for future in self._pending:
                with contextlib.suppress(Exception):  # logged by the removal; the sweep below retries
                    future.result()
            self._removals.shutdown()
        return remove_session(self.client, self.id)
