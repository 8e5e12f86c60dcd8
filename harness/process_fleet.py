"""The process backend of the fleet: portal, coturn relays, client and gateway on 127.0.0.1.

The portal runs in-process (``FakePortal``), each relay is a real ``turnserver`` process with its
presence on the portal (``LocalRelay``), and the client and gateway are connlib ``Peer`` objects
on real UDP sockets in this event loop, so their log records reach the test's ERROR rule directly.
Restart/stop/kill/pause map to signals on ``turnserver``; network cuts map to the portal's
partition control. Every fault and every peer JSON line goes into the ``History``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from connlib.run import Peer, PeerConfig
from fake_portal.config import PortalConfig
from fake_portal.server import FakePortal

from .history import History
from .local_relay import LocalRelay

log = logging.getLogger("harness.process_fleet")

CLIENT_ID = "client-1"
GATEWAY_ID = "gateway-1"


@dataclass
class StackOptions:
    relays: int = 2
    rate: float = 50.0
    count: int | None = None  # the client stops streaming after this many datagrams
    debounce: float = 1.0
    client_disabled_fixes: frozenset[str] = frozenset()
    gateway_disabled_fixes: frozenset[str] = frozenset()
    portal: dict[str, Any] = field(default_factory=dict)


class ProcessFleet:
    backend = "process"

    def __init__(self, history: History | None = None, options: StackOptions | None = None) -> None:
        self.history = history or History()
        self.options = options or StackOptions()
        self.portal = FakePortal(PortalConfig(debounce=self.options.debounce, **self.options.portal))
        self.relays: dict[str, LocalRelay] = {}
        self.client: Peer | None = None
        self.gateway: Peer | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.portal.start()
        for i in range(1, self.options.relays + 1):
            relay = LocalRelay(self.portal.url, self.portal.config.token, f"relay-{i}")
            self.relays[relay.name] = relay
            await relay.start()
        self.gateway = self._peer("gateway", GATEWAY_ID, self.options.gateway_disabled_fixes)
        self.client = self._peer("client", CLIENT_ID, self.options.client_disabled_fixes, connect_to=GATEWAY_ID)
        await self.gateway.start()
        await self.client.start()

    def _peer(self, role: str, peer_id: str, fixes: frozenset[str], connect_to: str | None = None) -> Peer:
        config = PeerConfig(role, self.portal.url, self.portal.config.token, peer_id, connect_to=connect_to,
                            rate=self.options.rate, count=self.options.count if role == "client" else None,
                            bind="127.0.0.1", disabled_fixes=fixes)  # fmt: skip
        return Peer(config, emit=self.history.observe_line)

    async def stop(self) -> None:
        for peer in (self.client, self.gateway):
            if peer is not None:
                await peer.stop()
        for relay in self.relays.values():
            await relay.close()
        await self.portal.stop()

    async def __aenter__(self) -> ProcessFleet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ lookups
    async def relay_id(self, name: str) -> str:
        """The portal's id for relay ``name``."""
        for relay in await self.admin("GET", "/api/relays"):
            if relay.get("name") == name:
                return relay["id"]
        raise KeyError(f"portal does not know relay {name!r}")

    async def relay_name(self, rid: str) -> str:
        for relay in await self.admin("GET", "/api/relays"):
            if relay["id"] == rid:
                return relay["name"]
        raise KeyError(rid)

    def carrying_relay(self, peer: Peer | None = None) -> str | None:
        """The relay id on the peer's side of the connection's nominated path."""
        peer = peer or self.client
        for connection in peer.tunnel.connections.values():
            if connection.nominated is not None:
                return connection.nominated.local.rid
        return None

    # ------------------------------------------------------------------ faults
    async def restart_relay(self, name: str, new_secret: bool = True) -> None:
        await self.relays[name].restart(new_secret=new_secret)
        self.history.fault("restart", name, new_secret=new_secret)

    async def stop_relay(self, name: str) -> None:
        await self.relays[name].stop()
        self.history.fault("stop", name)

    async def start_relay(self, name: str) -> None:
        relay = self.relays[name]
        await asyncio.to_thread(relay.coturn.start)
        await relay.join()
        self.history.fault("start", name)

    async def kill_relay(self, name: str) -> None:
        relay = self.relays[name]
        await asyncio.to_thread(relay.coturn.kill)
        await relay.leave()
        self.history.fault("kill", name)

    async def pause_relay(self, name: str) -> None:
        # A black hole: coturn stops answering but its presence on the portal stays.
        self.relays[name].coturn.pause()
        self.history.fault("pause", name)

    async def unpause_relay(self, name: str) -> None:
        self.relays[name].coturn.resume()
        self.history.fault("unpause", name)

    async def partition(self, peer_id: str, seconds: float | None = None) -> None:
        body = {"id": peer_id} | ({"seconds": seconds} if seconds else {})
        await self.admin("POST", "/api/partition", body)
        self.history.fault("partition", peer_id, seconds=seconds)

    async def heal(self, peer_id: str | None = None) -> None:
        await self.admin("POST", "/api/heal", {"id": peer_id} if peer_id else {})
        self.history.fault("heal", peer_id or "*")

    # ------------------------------------------------------------------ portal admin API
    async def admin(self, method: str, path: str, body: dict | None = None) -> Any:
        # The portal serves from this event loop: the blocking HTTP call goes to a thread.
        return await asyncio.to_thread(self._admin, method, path, body)

    def _admin(self, method: str, path: str, body: dict | None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.portal.admin_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own 127.0.0.1 API
            return json.loads(response.read() or b"null")
