"""Remove what dead test sessions left behind, so that ``kill -9`` of the runner costs nothing.

Every container and network a session creates carries ``org.connlib-relays.session=<id>`` and
``org.connlib-relays.session-owner=<host>:<pid>:<start ticks>`` (``harness.labels``; a harness stack
and a test's ``make up`` stack alike, through ``docker-compose.yml``'s ``x-labels``). At the
start of every run the sweep removes the resources of every session whose owner is gone:

- owner on this host: gone when no process with that pid and that start time exists;
- owner on another host (a shared engine): gone when the session is older than ``max_age``.

Resources without a session id (a developer's ``make up`` stack, whose session label is empty;
images) are never touched.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.models.containers import Container

from . import network_turns as nt
from .labels import (
    CREATED_LABEL,
    OWNER_LABEL,
    PROJECT,
    PROJECT_LABEL,
    SESSION_LABEL,
    STACK_LABEL,
    process_start_ticks,
)

log = logging.getLogger("harness.sweep")

FOREIGN_MAX_AGE = 6 * 3600.0


@dataclass
class SweepReport:
    dead_sessions: list[str] = field(default_factory=list)
    live_sessions: list[str] = field(default_factory=list)
    removed: int = 0
    removed_by_session: dict[str, int] = field(default_factory=dict)
    """Of ``removed``, each dead session's objects."""

    def __str__(self) -> str:
        return (
            f"swept {len(self.dead_sessions)} dead session(s), {self.removed} object(s); "
            f"{len(self.live_sessions)} live session(s) left alone"
        )


def owner_alive(
    owner: str, created: float | None, *, now: float | None = None, max_age: float = FOREIGN_MAX_AGE
) -> bool:
    """Is the process named by an owner label ``<host>:<pid>:<start ticks>`` still running?"""
    host, _, rest = owner.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname():
        now = time.time() if now is None else now
        return created is not None and now - created < max_age
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    return process_start_ticks(pid) == ticks  # a reused pid is another process


def _session_filter(session: str | None = None) -> dict[str, list[str]]:
    label = f"{SESSION_LABEL}={session}" if session else SESSION_LABEL
    return {"label": [f"{PROJECT_LABEL}={PROJECT}", label]}


def _remove_container(container: Container) -> int:
    try:
        nt.remove(container)
        return 1
    except docker.errors.NotFound:
        return 0
    except docker.errors.APIError as exc:
        log.warning("Could not remove container %s: %s", container.name, exc)
        return 0


def _remove_containers(containers: list[Container]) -> int:
    return sum(_remove_container(container) for container in containers)


def _remove(client: docker.DockerClient, filters: dict[str, list[str]]) -> int:
    # ignore_removed: another sweeper (the other worker, meeting the same dead session) may remove
    # a container between docker-py's listing and its look at each one (404 otherwise).
    containers = client.containers.list(all=True, filters=filters, ignore_removed=True)
    stacks: dict[str, list[Container]] = {}
    for container in containers:
        stacks.setdefault(nt.stack_of(container), []).append(container)
    # Stacks at once, a stack's containers one after another (harness.network_turns: two leaving one
    # network at once can deadlock the engine); the networks go after their last container.
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(stacks)))) as pool:
        removed = sum(pool.map(_remove_containers, stacks.values()))
    for network in client.networks.list(filters=filters):
        try:
            network.remove()
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("Could not remove network %s: %s", network.name, exc)
    return removed


def remove_session(client: docker.DockerClient, session: str) -> int:
    """Remove every container and network of ``session``; returns how many."""
    return _remove(client, _session_filter(session))


def remove_stack(client: docker.DockerClient, session: str, stack: str) -> int:
    """Remove the containers and networks of one stack of ``session``; returns how many."""
    filters = _session_filter(session)
    filters["label"].append(f"{STACK_LABEL}={stack}")
    return _remove(client, filters)


def sweep(client: docker.DockerClient, *, keep: str | None = None) -> SweepReport:
    """Remove the resources of every dead session (never ``keep``, the caller's own)."""
    sessions: dict[str, tuple[str, float | None]] = {}
    objects = [
        *client.containers.list(all=True, filters=_session_filter(), ignore_removed=True),
        *client.networks.list(filters=_session_filter()),
    ]
    for obj in objects:
        labels = obj.attrs.get("Labels") or obj.attrs.get("Config", {}).get("Labels") or {}
        session = labels.get(SESSION_LABEL)
        if not session or session in sessions:
            continue
        created = labels.get(CREATED_LABEL, "")
        sessions[session] = (labels.get(OWNER_LABEL, ""), float(created) if created.isdigit() else None)
    report = SweepReport()
    for session, (owner, created) in sorted(sessions.items()):
        if session == keep or owner_alive(owner, created):
            report.live_sessions.append(session)
            continue
        report.dead_sessions.append(session)
        removed = report.removed_by_session[session] = remove_session(client, session)
        report.removed += removed
    if report.dead_sessions:
        log.info("Sweep: %s", report)
    return report
