"""Settings of a fake portal; the CLI in ``__main__`` maps one option to each field."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from connlib.core.messages import MAX_FRAME_BYTES

GATEWAY_EXPIRES_AT = 2145916800
"""2038-01-01T00:00:00Z: the fixed credential expiry Firezone gives gateways (spec §3.2)."""

RELAY_ID_SOURCES = ("name", "secret")


@dataclass
class PortalConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    admin_token: str | None = None
    """When set, every admin route but ``/api/health`` needs it (``Authorization: Bearer``, or the
    dashboard cookie that ``GET /?token=`` sets)."""
    admin_allowed_hosts: tuple[str, ...] = ()
    """Host names the admin API answers to besides 127.0.0.1, localhost, ::1 and its bind address."""
    chaos_url: str | None = None
    """The stack's chaos control service (``http://chaos:8081``): the dashboard's fault buttons reach
    it through the admin API's ``/api/chaos/`` (:mod:`fake_portal.chaos_proxy`)."""
    token: str = field(default_factory=lambda: "dev-" + secrets.token_urlsafe(16))
    """Accepted from every role unless a role-specific token below is set."""
    client_token: str | None = None
    gateway_token: str | None = None
    relay_token: str | None = None
    relay_id_from: str = "name"
    """``name``: a rebooted relay keeps its id and gets new credentials (the #6648 scenario);
    ``secret``: its id derives from the stamp secret, so a reboot means a new id (Firezone today)."""
    relays_per_client: int = 2
    debounce: float = 1.0
    heartbeat_timeout: float = 60.0
    """Close a socket after this long without any frame from it (a Phoenix server's 60 s)."""
    max_offline_peers: int = 1000
    """Offline clients, gateways and relays remembered per role; the oldest beyond are forgotten."""
    client_credentials_ttl: int = 86400
    """Client credentials expire this long after the portal first saw the client, and stay the
    same across its reconnects (like Firezone's token-bound expiry)."""
    gateway_expires_at: int = GATEWAY_EXPIRES_AT
    max_frame_bytes: int = MAX_FRAME_BYTES
    event_log_size: int = 20_000
    outbox_size: int = 1024
    """Frames queued for one socket before the portal drops it as a slow consumer."""

    def __post_init__(self) -> None:
        if self.relay_id_from not in RELAY_ID_SOURCES:
            raise ValueError(f"relay_id_from must be one of {RELAY_ID_SOURCES}")
        if self.relays_per_client < 1:
            raise ValueError("relays_per_client must be at least 1")
        if self.max_offline_peers < 0:
            raise ValueError("max_offline_peers must be >= 0")
        if self.debounce < 0 or self.heartbeat_timeout <= 0:
            raise ValueError("debounce must be >= 0 and heartbeat_timeout > 0")

    def token_for(self, role: str) -> str:
        specific = {"client": self.client_token, "gateway": self.gateway_token, "relay": self.relay_token}
        return specific.get(role) or self.token
