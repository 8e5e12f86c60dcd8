"""Who is connecting: endpoint and query parsing, deterministic ids, salts and fingerprints."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import sys
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from connlib.core.addr import format_address
from connlib.core.messages import ID_PATTERN, Topic, Vsn, is_safe_id

NAMESPACE = uuid.UUID("5f1b7c52-3d8e-4c31-9a57-0e8f7f3c2a10")
"""Namespace of fake_portal's name-derived UUIDs; any fixed value works, it just must not change."""

ROLES = (Topic.CLIENT, Topic.GATEWAY, Topic.RELAY)
_PATH = re.compile(r"^/(client|gateway|relay)(?:/[A-Za-z0-9._-]+)?/websocket$")
MAX_PARAM_CHARS = 512
DEFAULT_RELAY_PORT = 3478


class EndpointError(Exception):
    """The upgrade request is refused with HTTP ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed websocket URL plus the presented token.

    ``peer_id`` is known up front for clients, gateways and name-identified relays; for relays
    identified by their secret it is ``None`` until the join.
    """

    role: Topic
    vsn: Vsn
    token: str | None
    peer_id: str | None
    name: str
    external_id: str = ""
    public_key: str = ""
    relay_addrs: tuple[str, ...] = ()


def relay_id_from_name(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"relay:{name}"))


def relay_id_from_secret(secret: str) -> str:
    """A UUIDv4 built from ``sha256(secret)``, as Firezone does since #11587."""
    return str(uuid.UUID(bytes=hashlib.sha256(secret.encode()).digest()[:16], version=4))


def salt_for(public_key: str) -> str:
    """base64-nopad(sha256(public key)): stable per device, so credentials survive reconnects."""
    return base64.b64encode(hashlib.sha256(public_key.encode()).digest()).decode().rstrip("=")


def secret_fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def tunnel_interface(peer_id: str) -> dict[str, str]:
    """A deterministic tunnel address pair in Firezone's ranges, for the ``init`` interface."""
    n = int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:2], "big")
    return {"ipv4": f"100.64.{n >> 8}.{n & 0xFF}", "ipv6": f"fd00:2021:1111::{n:x}"}


def _single(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key)
    if not values:
        return ""
    if len(values[-1]) > MAX_PARAM_CHARS:
        raise EndpointError(400, f"query parameter {key} is too long")
    return values[-1]


def _safe(query: dict[str, list[str]], key: str) -> str:
    """A parameter that becomes an id, a name or a log field: empty or :data:`ID_PATTERN`."""
    value = _single(query, key)
    if value and not is_safe_id(value):
        raise EndpointError(400, f"query parameter {key} must match {ID_PATTERN}")
    return value


def _token(headers: object, query: dict[str, list[str]]) -> str | None:
    header = headers.get("X-Authorization")  # type: ignore[attr-defined]
    if header:
        scheme, _, value = header.partition(" ")
        # Interned: every peer presents the same token, and each session keeps its endpoint. (An
        # interned string is freed with its last holder, so a stranger's token does not linger.)
        return sys.intern(value.strip()) if scheme.lower() == "bearer" else None
    return _single(query, "token") or None


def _ip(text: str, version: int, key: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(400, f"query parameter {key} is not an IP address") from None
    if ip.version != version:
        raise EndpointError(400, f"query parameter {key} must be an IPv{version} address")
    return str(ip)


def parse_endpoint(target: str, headers: object, *, relay_id_from: str) -> Endpoint:
    """Parse ``/<role>[/<api version>]/websocket?query``; raise :class:`EndpointError` if bad."""
    url = urlsplit(target)
    match = _PATH.match(url.path)
    if match is None:
        raise EndpointError(404, f"no websocket endpoint at {url.path[:100]}")
    role = Topic(match.group(1))
    query = parse_qs(url.query, keep_blank_values=True)
    vsn_text = _single(query, "vsn") or Vsn.V1
    try:
        vsn = Vsn(vsn_text)
    except ValueError:
        raise EndpointError(400, f"unsupported serializer vsn={vsn_text[:20]}; use 1.0.0 or 2.0.0") from None
    token = _token(headers, query)
    name = _safe(query, "name")
    if role is not Topic.RELAY:
        external_id = _safe(query, "external_id")
        public_key = _safe(query, "public_key")
        peer_id = external_id or (
            str(uuid.uuid5(NAMESPACE, f"{role}:{public_key}")) if public_key else str(uuid.uuid4())
        )
        return Endpoint(role, vsn, token, peer_id, name or peer_id, external_id, public_key)
    ipv4, ipv6 = _single(query, "ipv4"), _single(query, "ipv6")
    if not ipv4 and not ipv6:
        raise EndpointError(400, "a relay must give ipv4 and/or ipv6")
    port_text = _single(query, "port") or str(DEFAULT_RELAY_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EndpointError(400, "query parameter port must be 1-65535")
    port = int(port_text)
    addrs = tuple(
        format_address((_ip(ip, v, key), port)) for ip, v, key in ((ipv4, 4, "ipv4"), (ipv6, 6, "ipv6")) if ip
    )
    name = name or addrs[0]
    relay_id = relay_id_from_name(name) if relay_id_from == "name" else None
    return Endpoint(role, vsn, token, relay_id, name, relay_addrs=addrs)
