"""The stack's topology, read from its one definition: ``docker-compose.yml``.

``docker compose up`` reads the file itself; the harness's Docker backend reads it through
:func:`load`, which does what compose does with it that the backend needs: YAML anchors and merge
keys, ``${VAR}``/``${VAR:-default}``/``${VAR-default}``/``$$`` interpolation from the variables it is
given (the harness's per-stack values: subnets from its pool, stack and session labels, image tag,
token, ids, disabled fixes, rate, ...), and the service fields turned into plain values
(:class:`Service`, :class:`NetworkSpec`). Nothing here talks to Docker.

Two rules extend the file instead of repeating it (both documented in the file's header):

- :meth:`Topology.with_relays` scales the relays: relay-N+1 repeats the last relay service with the
  next name and the next host number on every network;
- :func:`peer_routes` derives a peer's ``PEER_ROUTES`` from the relays' addresses (each relay's
  relay-net address via that relay's leg on the peer's network); :meth:`Topology.with_relays` writes
  it, and a test checks the file's own ``PEER_ROUTES`` agree.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .labels import ROLE_LABEL

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
RELAY_NET = "relay-net"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<sep>:?-)(?P<default>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


class TopologyError(ValueError):
    """The definition cannot be read as a stack (a missing field, a bad value)."""


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's variable interpolation of one string."""

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        value = variables.get(name)
        if match["sep"] == ":-" and not value:
            return match["default"]
        if match["sep"] == "-" and value is None:
            return match["default"]
        return value or ""

    return _VARIABLE.sub(one, text)


def _interpolate_all(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_all(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_all(value, variables) for key, value in node.items()}
    return node


def duration_s(text: str | int | float) -> float:
    """A compose duration (``2s``, ``1m30s``, ``500ms``) in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise TopologyError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Port:
    """A published port: ``[host_ip:][host_port:]container_port[/protocol]``."""

    container_port: int
    protocol: str
    host_ip: str
    host_port: int | None  # None: the engine picks a free one

    @classmethod
    def parse(cls, spec: str) -> Port:
        spec, _, protocol = str(spec).partition("/")
        parts = spec.rsplit(":", 2)
        host_ip, host_port = (
            ("", "") if len(parts) == 1 else (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])
        )
        return cls(int(parts[-1]), protocol or "tcp", host_ip, int(host_port) if host_port else None)


@dataclass(frozen=True)
class Build:
    context: Path
    dockerfile: str
    args: dict[str, str]
    target: str | None = None


@dataclass(frozen=True)
class NetworkSpec:
    key: str
    subnet: ipaddress.IPv4Network
    internal: bool
    labels: dict[str, str]
    subnet_variable: str | None
    """The variable that holds the subnet's first three octets (``CONNLIB_NET_CLIENT``), if any."""


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    build: Build | None
    command: list[str] | None
    entrypoint: list[str] | None
    environment: dict[str, str]
    labels: dict[str, str]
    hostname: str
    addresses: dict[str, str]
    """Network key → IPv4 address, in the file's order (the first is the one a container is created on)."""
    cap_add: list[str]
    ports: list[Port]
    healthcheck: dict[str, Any] | None
    """In the engine's form (``test``; ``interval``, ``timeout``, ``start_period`` in ns; ``retries``)."""
    stop_grace_s: float
    depends_on: list[str]

    @property
    def role(self) -> str:
        return self.labels.get(ROLE_LABEL, "")

    def option(self, flag: str) -> str | None:
        """The value of ``--flag=value`` (or ``--flag value``) in the command."""
        command = self.command or []
        for i, arg in enumerate(command):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and i + 1 < len(command):
                return command[i + 1]
        return None


@dataclass(frozen=True)
class Topology:
    networks: dict[str, NetworkSpec]
    services: dict[str, Service]
    source: Path = field(default=COMPOSE_FILE, compare=False)

    def by_role(self, role: str) -> list[Service]:
        return [s for s in self.services.values() if s.role == role]

    @property
    def relays(self) -> list[Service]:
        return self.by_role("relay")

    def with_relays(self, count: int) -> Topology:
        """The same stack with ``count`` relays: the file's first ``count``, then copies of the last one
        (relay-N+1 one host number up on every network); the peers' PEER_ROUTES follow."""
        relays = self.relays
        if count < 1 or not relays:
            raise TopologyError(f"a stack needs at least one relay (want {count}, the file has {len(relays)})")
        kept = relays[:count]
        for step in range(1, count - len(relays) + 1):
            kept.append(_next_relay(relays[-1], step))
        names = [r.name for r in kept]
        ordered: dict[str, Service] = {}
        for name, service in self.services.items():
            if service.role == "relay":
                if name == relays[0].name:
                    ordered.update((r.name, r) for r in kept)
                continue
            depends = [d for d in service.depends_on if d not in self.services or self.services[d].role != "relay"]
            if len(depends) != len(service.depends_on):
                depends = [*depends[:1], *names, *depends[1:]] if depends else names
            ordered[name] = replace(service, depends_on=depends)
        scaled = Topology(self.networks, ordered, self.source)
        for name, service in ordered.items():
            if "PEER_ROUTES" in service.environment:
                env = {**service.environment, "PEER_ROUTES": ", ".join(peer_routes(scaled, service))}
                ordered[name] = replace(service, environment=env)
        return Topology(self.networks, ordered, self.source)


def _next_relay(last: Service, steps: int) -> Service:
    match = re.fullmatch(r"(.*?)(\d+)", last.name)
    if match is None:
        raise TopologyError(f"relay service {last.name!r} has no number to count on from")
    name = f"{match[1]}{int(match[2]) + steps}"

    def renamed(value: str) -> str:
        return name if value == last.name else value

    addresses = {key: str(ipaddress.ip_address(addr) + steps) for key, addr in last.addresses.items()}
    return replace(
        last,
        name=name,
        hostname=renamed(last.hostname),
        environment={k: renamed(v) for k, v in last.environment.items()},
        addresses=addresses,
    )


# The last of every peer's routes: no default route, so a peer reaches nothing but its own network and
# the relays' relay-net addresses. Docker's bridge isolation alone does not hold: its iptables rules
# are rebuilt, and briefly absent, whenever any network on the host is created or removed (measured:
# 15 of 400 datagrams client → gateway got through while another network was churned).
NO_DEFAULT_ROUTE = "unreachable default"


def peer_routes(topology: Topology, peer: Service) -> list[str]:
    """``<relay's relay-net address>/32 via <that relay's address on the peer's network>`` per relay,
    then :data:`NO_DEFAULT_ROUTE`."""
    (network, *_) = peer.addresses
    return [
        *(
            f"{relay.addresses[RELAY_NET]}/32 via {relay.addresses[network]}"
            for relay in topology.relays
            if RELAY_NET in relay.addresses and network in relay.addresses
        ),
        NO_DEFAULT_ROUTE,
    ]


def read(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as YAML (anchors and merge keys resolved), not interpolated."""
    with open(path) as file:
        document = yaml.safe_load(file)
    if not isinstance(document, dict) or "services" not in document:
        raise TopologyError(f"{path}: no services")
    return document


def load(variables: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE) -> Topology:
    """The stack ``path`` describes, with ``variables`` (compose semantics: unset ones take defaults)."""
    raw = read(path)
    document = _interpolate_all(raw, variables or {})
    base = path.parent
    networks = {
        key: _network(key, spec or {}, (raw["networks"][key] or {}))
        for key, spec in document.get("networks", {}).items()
    }
    services = {name: _service(name, spec, base) for name, spec in document["services"].items()}
    for service in services.values():
        unknown = set(service.addresses) - set(networks)
        if unknown:
            raise TopologyError(f"service {service.name} is on undeclared networks {sorted(unknown)}")
    return Topology(networks, services, path)


def _network(key: str, spec: dict[str, Any], raw: dict[str, Any]) -> NetworkSpec:
    try:
        (config,) = spec["ipam"]["config"]
        (raw_config,) = raw["ipam"]["config"]
    except (KeyError, ValueError, TypeError):
        raise TopologyError(f"network {key}: want exactly one ipam.config subnet") from None
    variable = re.search(r"\$\{(\w+)", str(raw_config.get("subnet", "")))
    return NetworkSpec(
        key=key,
        subnet=ipaddress.IPv4Network(config["subnet"]),
        internal=bool(spec.get("internal", False)),
        labels={k: str(v) for k, v in (spec.get("labels") or {}).items()},
        subnet_variable=variable[1] if variable else None,
    )


def _words(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def _service(name: str, spec: dict[str, Any], base: Path) -> Service:
    if "image" not in spec:
        raise TopologyError(f"service {name}: no image")
    build = spec.get("build")
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    networks = spec.get("networks") or {}
    addresses = {}
    for key, net in networks.items() if isinstance(networks, dict) else ((n, None) for n in networks):
        if not net or "ipv4_address" not in net:
            raise TopologyError(f"service {name}: network {key} without ipv4_address")
        addresses[key] = str(ipaddress.IPv4Address(net["ipv4_address"]))
    depends = spec.get("depends_on") or []
    return Service(
        name=name,
        image=str(spec["image"]),
        build=None
        if build is None
        else Build(
            context=(base / build["context"]).resolve(),
            dockerfile=build.get("dockerfile", "Dockerfile"),
            args={k: str(v) for k, v in (build.get("args") or {}).items()},
            target=build.get("target"),
        ),
        command=_words(spec.get("command")),
        entrypoint=_words(spec.get("entrypoint")),
        environment={k: "" if v is None else str(v) for k, v in environment.items()},
        labels={k: str(v) for k, v in (spec.get("labels") or {}).items()},
        hostname=str(spec.get("hostname") or name),
        addresses=addresses,
        cap_add=list(spec.get("cap_add") or []),
        ports=[Port.parse(p) for p in spec.get("ports") or []],
        healthcheck=_healthcheck(spec.get("healthcheck")),
        stop_grace_s=duration_s(spec.get("stop_grace_period", "10s")),
        depends_on=list(depends) if isinstance(depends, list) else list(depends),
    )


def _healthcheck(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    if not spec:
        return None
    check: dict[str, Any] = {"test": _words(spec["test"])}
    for key in ("interval", "timeout", "start_period"):
        if key in spec:
            check[key] = int(duration_s(spec[key]) * 1e9)
    if "retries" in spec:
        check["retries"] = int(spec["retries"])
    return check
