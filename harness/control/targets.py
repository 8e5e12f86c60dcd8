"""The containers the chaos service may act on, and how a request names them.

A container is this stack's when it carries ``org.connlib-relays.project=connlib-relays`` and
``org.connlib-relays.stack=<the stack the service was started for>`` (``docker-compose.yml``'s
``x-labels``; the keys are :mod:`harness.labels`). A request names a target by its compose service
name (``relay-1``), its container name or id, or, for a peer, its portal id (``--id=``). Anything
else is refused: :class:`Refused` (403) for a container that exists but is not this stack's,
:class:`Unknown` (404) for no container at all, :class:`BadTarget` (400) for a malformed name or a
container of the wrong role (the portal is not a relay). Blocking docker-py calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import docker
import docker.errors
from docker.models.containers import Container

from harness.labels import PROJECT, PROJECT_LABEL, ROLE_LABEL, STACK_LABEL

COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RELAY_ROLES = frozenset({"relay"})
PEER_ROLES = frozenset({"client", "gateway"})


class TargetError(Exception):
    status = 400


class BadTarget(TargetError):
    status = 400


class Refused(TargetError):
    status = 403


class Unknown(TargetError):
    status = 404


@dataclass(frozen=True)
class Target:
    container: Container
    name: str
    """Its compose service name (else its hostname): what the history and the dashboard show."""
    role: str
    peer_id: str | None

    @property
    def addresses(self) -> list[str]:
        """Its IPv4 addresses on every network it is attached to."""
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"] or {}
        return sorted(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "peer_id": self.peer_id,
            "container": self.container.name,
            "status": self.container.status,
        }


def _option(command: list[str] | None, flag: str) -> str | None:
    for i, arg in enumerate(command or []):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(command or []):
            return (command or [])[i + 1]
    return None


def target_of(container: Container) -> Target:
    labels = container.labels
    config = container.attrs.get("Config") or {}
    name = labels.get(COMPOSE_SERVICE_LABEL) or config.get("Hostname") or container.name
    role = labels.get(ROLE_LABEL, "")
    return Target(container, name, role, _option(config.get("Cmd"), "--id") if role in PEER_ROLES else None)


class Stack:
    """This stack's containers, through one docker-py client."""

    def __init__(self, client: docker.DockerClient, stack: str) -> None:
        self.client = client
        self.stack = stack

    def ours(self, container: Container) -> bool:
        labels = container.labels
        return labels.get(PROJECT_LABEL) == PROJECT and labels.get(STACK_LABEL) == self.stack

    def members(self) -> list[Target]:
        """Its relays and peers, by name."""
        found = self.client.containers.list(
            all=True, filters={"label": [f"{PROJECT_LABEL}={PROJECT}", f"{STACK_LABEL}={self.stack}"]}
        )
        targets = [target_of(c) for c in found if self.ours(c)]
        return sorted((t for t in targets if t.role in RELAY_ROLES | PEER_ROLES), key=lambda t: (t.role, t.name))

    def find(self, ref: object, roles: frozenset[str]) -> Target:
        """The container ``ref`` names, if it is this stack's and has one of ``roles``."""
        what = "/".join(sorted(roles))
        if not isinstance(ref, str) or not NAME.fullmatch(ref):
            raise BadTarget(f"a {what} is named by a string matching {NAME.pattern}")
        stack = self.client.containers.list(
            all=True, filters={"label": [f"{PROJECT_LABEL}={PROJECT}", f"{STACK_LABEL}={self.stack}"]}
        )
        for container in stack:
            target = target_of(container)
            if ref in (target.name, container.name, target.peer_id) or container.id.startswith(ref.lower()):
                return self._with_role(target, roles, ref)
        try:
            container = self.client.containers.get(ref)
        except docker.errors.NotFound:
            raise Unknown(f"no container {ref!r} (this stack's {what}s: {self._names(roles)})") from None
        if not self.ours(container):
            raise Refused(
                f"container {container.name!r} does not carry this stack's labels "
                f"({PROJECT_LABEL}={PROJECT}, {STACK_LABEL}={self.stack}): refused"
            )
        return self._with_role(target_of(container), roles, ref)

    def _with_role(self, target: Target, roles: frozenset[str], ref: str) -> Target:
        if target.role not in roles:
            raise BadTarget(
                f"{ref!r} is this stack's {target.role or 'unlabelled-role'} container, not a {'/'.join(sorted(roles))}"
            )
        return target

    def _names(self, roles: frozenset[str]) -> str:
        return ", ".join(t.name for t in self.members() if t.role in roles) or "none"
