"""Relay records, per-peer relay selection and the credentials handed out for them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from connlib.core.credentials import rest_credentials
from connlib.core.messages import Relay


@dataclass
class RelayRecord:
    """A relay the portal has seen; it stays listed (``online=False``) after it leaves."""

    id: str
    name: str
    addrs: tuple[str, ...]
    secret: str
    online: bool
    since: float
    """Unix time of the last online/offline change."""
    sid: int | None = None
    rotation: int = 0
    """Credentials rotations without a reboot (admin ``rotate-credentials``): each one hands every
    peer a new username under the same secret, which coturn accepts as it stands."""

    @cached_property
    def wire_templates(self) -> tuple[dict[str, Any], ...]:
        """``Relay.to_json()`` of each address, credentials still to fill in (see :func:`relay_entries`).

        Built through :class:`Relay`, once per relay: its checks (the id, an ``ipaddress`` parse of
        the address) then run at the relay's join, not once per peer on a fan-out to thousands.
        """
        return tuple(Relay(self.id, "turn", addr, "-", "-", 0).to_json() for addr in self.addrs)

    _identity: tuple[str, tuple[str, ...], int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def identity(self) -> tuple[str, tuple[str, ...], int]:
        """What a peer's credentials and sockets depend on; a change means "replace the allocation".

        One tuple while it holds (every peer's ``handed_out`` keeps it: thousands of copies else).
        """
        cached = self._identity
        if cached is None or cached[0] is not self.secret or cached[1] is not self.addrs or cached[2] != self.rotation:
            cached = self._identity = (self.secret, self.addrs, self.rotation)
        return cached


def _rank(peer_id: str, relay_id: str) -> bytes:
    # Rendezvous hashing spreads peers over relays deterministically without a shared counter.
    return hashlib.sha256(f"{peer_id}|{relay_id}".encode()).digest()


def select_relays(
    peer_id: str, online: dict[str, RelayRecord], handed_out: Mapping[str, object], limit: int
) -> list[RelayRecord]:
    """Up to ``limit`` online relays for a peer, keeping the ones it already has.

    Stickiness matters: swapping a healthy relay for another would migrate connections for nothing.
    """
    kept = [online[rid] for rid in handed_out if rid in online]
    others = sorted((r for rid, r in online.items() if rid not in handed_out), key=lambda r: _rank(peer_id, r.id))
    return (kept + others)[:limit]


def relay_entries(relay: RelayRecord, expires_at: int, salt: str) -> list[dict[str, Any]]:
    """The wire entries (``Relay.to_json()``) for one relay: one per address family, same id (spec §3.1).

    What is filled in per peer needs none of :class:`Relay`'s checks: the username is the integer
    expiry and a base64 salt, the password base64, both non-empty ASCII.
    """
    # A rotation changes the salt part of the username ("<expiry>:<salt>"): new credentials that the
    # running relay accepts, since it checks only the HMAC of its secret.
    username, password = rest_credentials(
        relay.secret, expires_at, f"{salt}.r{relay.rotation}" if relay.rotation else salt
    )
    return [
        {**template, "username": username, "password": password, "expires_at": expires_at}
        for template in relay.wire_templates
    ]
