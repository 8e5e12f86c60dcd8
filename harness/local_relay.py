"""A relay as a local process: a real coturn plus its presence on the portal.

The process-mode twin of a relay container: ``turnserver`` on 127.0.0.1 and a Phoenix channel to
the portal's ``relay`` topic carrying the coturn secret as ``stamp_secret``. ``restart()`` is a
reboot (new secret by default), ``stop()`` takes both down, ``go_dark()`` stops coturn but keeps
the presence (a relay that died without the portal noticing).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from connlib.aio.portal_client import PortalClient, portal_url
from connlib.core.logfmt import kv

from .coturn import Coturn

log = logging.getLogger("harness.local_relay")

JOIN_TIMEOUT = 5.0


class LocalRelay:
    def __init__(
        self,
        portal: str,
        token: str,
        name: str,
        *,
        host: str = "127.0.0.1",
        relay_port_count: int = 64,
    ) -> None:
        self.portal = portal
        self.token = token
        self.name = name
        # relay_port_count: coturn's allocation ports (one allocation each).
        self.coturn = Coturn(name=name, host=host, relay_port_count=relay_port_count)
        self._presence: PortalClient | None = None
        self._task: asyncio.Task | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return self.coturn.addr

    @property
    def secret(self) -> str:
        return self.coturn.secret

    async def start(self) -> None:
        await asyncio.to_thread(self.coturn.start)
        await self.join()

    async def join(self) -> None:
        """Announce this relay (with its current secret) to the portal."""
        host, port = self.coturn.addr
        url = portal_url(self.portal, "relay", ipv4=host, port=str(port), name=self.name)
        self._presence = PortalClient(url, self.token, "relay", {"stamp_secret": self.coturn.secret})
        self._task = asyncio.create_task(self._presence.run(), name=f"presence-{self.name}")
        await self._presence.wait_joined(timeout=JOIN_TIMEOUT)
        log.info("Relay joined the portal %s", kv(name=self.name, addr=f"{host}:{port}"))

    async def leave(self) -> None:
        if self._presence is not None:
            await self._presence.close()
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            self._presence = self._task = None

    async def stop(self) -> None:
        await self.leave()
        await asyncio.to_thread(self.coturn.stop)

    async def go_dark(self) -> None:
        await asyncio.to_thread(self.coturn.stop)

    async def restart(self, new_secret: bool = True) -> None:
        await self.leave()
        secret = secrets.token_hex(32) if new_secret else None
        await asyncio.to_thread(self.coturn.restart, secret)
        await self.join()

    async def close(self) -> None:
        await self.leave()
        await asyncio.to_thread(self.coturn.close)
