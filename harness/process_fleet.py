"""The process backend of the fleet: portal, coturn relays, client and gateway on 127.0.0.1.

The portal runs in-process (``FakePortal``), each relay is a real ``turnserver`` process with its
presence on the portal (``LocalRelay``), and the client and gateway are connlib ``Peer`` objects
on real UDP sockets in this event loop, so their log records reach the test's ERROR rule directly.
Restart/stop/kill/pause map to signals on ``turnserver``; network cuts map to the portal's
partition control; a client's idle and resume call its ``Peer`` (what its SIGUSR1/SIGUSR2 handlers
do); packet loss and network cuts are not modelled (``FaultNotSupported``).
Every fault and every peer JSON line goes into the ``History`` (see ``harness.fleet``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from connlib.app.peer import Peer, PeerConfig
from connlib.app.virtual import client_configs
from fake_portal.config import PortalConfig
from fake_portal.server import FakePortal

from .fleet import CLIENT_ID, GATEWAY_ID, Fleet, StackOptions
from .history import History
from .local_relay import LocalRelay
from .waiting import wait_for

log = logging.getLogger("harness.process_fleet")

__all__ = ["CLIENT_ID", "GATEWAY_ID", "ProcessFleet", "StackOptions"]

READY_TIMEOUT = 15.0
CLIENT_READY_SLOPE = 0.05  # seconds more per virtual client for every stream to flow


class ProcessFleet(Fleet):
    backend = "process"

    def __init__(self, history: History | None = None, options: StackOptions | None = None) -> None:
        super().__init__(history, options)
        self.portal = FakePortal(PortalConfig(debounce=self.options.debounce, **self.options.portal))
        self.relays: dict[str, LocalRelay] = {}
        self.client: Peer | None = None
        self.clients: list[Peer] = []  # the virtual clients (StackOptions.clients); client is the first
        self.gateway: Peer | None = None
        self._log_handler: logging.Handler | None = None

    @property
    def admin_url(self) -> str:
        return self.portal.admin_url

    @property
    def relay_names(self) -> list[str]:
        return list(self.relays)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._log_handler = self._record_warnings()
        await self.portal.start()
        self.start_portal_events()
        clients = self.options.clients
        # One allocation per peer on each relay, and room for the ones a restart leaves lingering.
        ports = max(64, 2 * (clients + 1) + 16)
        for i in range(1, self.options.relays + 1):
            relay = LocalRelay(self.portal.url, self.portal.config.token, f"relay-{i}", relay_port_count=ports)
            self.relays[relay.name] = relay
            await relay.start()
        self.gateway = gateway = self._peer(self._config("gateway", GATEWAY_ID, self.options.gateway_disabled_fixes))
        base = self._config("client", CLIENT_ID, self.options.client_disabled_fixes, connect_to=GATEWAY_ID)
        self.clients = [self._peer(config) for config in client_configs(base, clients)]
        self.client = self.clients[0]
        await gateway.start()
        # The client asks for its connection once; the gateway must be on the portal by then.
        await wait_for(lambda: self.history.first("init", target=GATEWAY_ID), READY_TIMEOUT, "the gateway's init")
        for client in self.clients:
            await client.start()
        await wait_for(
            lambda: all(c.stats.delivered >= 10 for c in self.clients),
            READY_TIMEOUT + clients * CLIENT_READY_SLOPE,
            "every client's stream (10 echoes each)",
        )
        self.history.observe("stack_ready", "processes", backend=self.backend, clients=clients)

    def _config(self, role: str, peer_id: str, fixes: frozenset[str], connect_to: str | None = None) -> PeerConfig:
        return PeerConfig(
            role,
            self.portal.url,
            self.portal.config.token,
            peer_id,
            connect_to=connect_to,
            rate=self.options.rate,
            count=self.options.count if role == "client" else None,
            bind="127.0.0.1",
            disabled_fixes=fixes,
        )

    def _peer(self, config: PeerConfig) -> Peer:
        history = self.history

        def emit(line: dict[str, Any]) -> None:
            history.observe_line(line)

        return Peer(config, emit=emit)

    async def stop(self) -> None:
        for peer in (*self.clients, self.gateway):
            if peer is not None:
                await peer.stop()
        for relay in self.relays.values():
            await relay.close()
        await self.stop_portal_events()
        await self.portal.stop()
        if self._log_handler is not None:
            logging.getLogger("connlib").removeHandler(self._log_handler)
            self._log_handler = None

    def _record_warnings(self) -> logging.Handler:
        """connlib's WARNING records as ``log`` ops (the Docker backend reads them from stderr)."""
        history = self.history

        class ToHistory(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno == logging.WARNING:
                    history.observe(
                        "log", "in-process", level=record.levelname, logger=record.name, message=record.getMessage()
                    )

        handler = ToHistory(level=logging.WARNING)
        logging.getLogger("connlib").addHandler(handler)
        return handler

    # ------------------------------------------------------------------ lookups
    def carrying_relay(self, peer: Peer | None = None) -> str | None:
        """The relay id on the peer's side of the connection's nominated path."""
        peer = peer or self.client
        if peer is None:
            return None
        return next(iter(peer.tunnel.carrying_relays().values()), None)

    # ------------------------------------------------------------------ faults
    async def _restart_relay(self, name: str, new_secret: bool) -> None:
        await self.relays[name].restart(new_secret=new_secret)

    async def _stop_relay(self, name: str) -> None:
        await self.relays[name].stop()

    async def _start_relay(self, name: str) -> None:
        relay = self.relays[name]
        await asyncio.to_thread(relay.coturn.start)
        await relay.join()

    async def _kill_relay(self, name: str) -> None:
        relay = self.relays[name]
        await asyncio.to_thread(relay.coturn.kill)
        await relay.leave()  # in a container the socket dies with the process

    async def _idle_stream(self, peer_id: str) -> None:
        self._peer_by_id(peer_id).go_idle()  # what its SIGUSR1 handler calls

    async def _resume_stream(self, peer_id: str) -> None:
        self._peer_by_id(peer_id).resume()

    def _peer_by_id(self, peer_id: str) -> Peer:
        for peer in (*self.clients, self.gateway):
            if peer is not None and peer.config.peer_id == peer_id:
                return peer
        raise KeyError(f"no peer {peer_id!r}")

    async def _pause_relay(self, name: str) -> None:
        # A black hole: coturn stops answering but its presence on the portal stays.
        self.relays[name].coturn.pause()

    async def _unpause_relay(self, name: str) -> None:
        self.relays[name].coturn.resume()
