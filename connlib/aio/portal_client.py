"""The asyncio/websockets transport that drives :class:`connlib.core.phoenix.PhoenixChannel`.

Used by connlib's client and gateway, by the relay containers' presence agent and by tests::

    client = PortalClient(portal_url(base, "client", external_id="c1", public_key=pk), token, "client",
                          on_message=handle)        # handle(event, payload), sync or async
    task = asyncio.create_task(client.run())        # connects, joins, reconnects with backoff
    await client.wait_joined(timeout=5)
    await client.send("no_relays", {})
    await client.close()                            # run() then returns

``run()`` returns after ``close()`` and raises :class:`PortalError` subclasses on fatal errors:
:class:`PortalAuthError` (HTTP 401 on the upgrade or a forced ``disconnect``),
:class:`PortalLoginError` (join refused), :class:`PortalGaveUp` (backoff ``max_elapsed`` exhausted).
Everything else (refused connections, 503s, closed sockets, missed heartbeats) is retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from connlib.core.logfmt import kv
from connlib.core.messages import MAX_FRAME_BYTES, Reply, ReplyStatus, Vsn
from connlib.core.phoenix import (
    Connect,
    ForcedLogout,
    GaveUp,
    Hiccup,
    Joined,
    LoginFailed,
    PhoenixChannel,
    Push,
    Reconnect,
    ReconnectBackoff,
    ReplyReceived,
)

log = logging.getLogger("connlib.portal")

CONNECT_TIMEOUT = 15.0

OnMessage = Callable[[str, dict[str, Any]], Awaitable[None] | None]
OnReply = Callable[[int, str, Reply], Awaitable[None] | None]
OnState = Callable[[str], Awaitable[None] | None]


class PortalError(Exception):
    """A fatal portal error: ``run()`` stops and does not retry."""


class PortalAuthError(PortalError):
    """The portal rejected our token (HTTP 401 on the upgrade, or ``disconnect`` from the portal)."""


class PortalLoginError(PortalError):
    """The portal answered our ``phx_join`` with an error."""


class PortalGaveUp(PortalError):
    """Reconnecting took longer than the backoff's ``max_elapsed``."""


def portal_url(base: str, role: str, **params: str) -> str:
    """``portal_url("ws://127.0.0.1:8080", "client", external_id="c1")`` → the websocket URL."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{base.rstrip('/')}/{role}/websocket" + (f"?{query}" if query else "")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# A Retry-After beyond this is taken as this: a portal (or a proxy in front of it) that says
# 99999999 must not park the client for three years.
MAX_RETRY_AFTER = 300.0


def _retry_after(exc: InvalidStatus) -> float | None:
    value = exc.response.headers.get("Retry-After", "")
    return min(float(value), MAX_RETRY_AFTER) if value.isdigit() else None


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is not None:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result


class PortalClient:
    """One Phoenix channel to the portal, kept joined across disconnects.

    ``on_message(event, payload)`` receives every push (``init``, ``relays_presence``…);
    ``on_reply(request_id, event, reply)`` the replies to ``send`` (error replies are also logged);
    ``on_state(state)`` hears ``"connecting"``, ``"connected"``, ``"joined"``, ``"disconnected"`` and
    ``"closed"``. Callbacks may be plain functions or coroutines; they run on the client's task, in
    order, so a slow callback delays the next frame, not other tasks.
    """

    def __init__(
        self,
        url: str,
        token: str,
        topic: str,
        join_payload: dict[str, Any] | None = None,
        *,
        heartbeat_interval: float = 10.0,
        join_timeout: float = 5.0,
        backoff: ReconnectBackoff | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        on_message: OnMessage | None = None,
        on_reply: OnReply | None = None,
        on_state: OnState | None = None,
    ) -> None:
        self.url = url
        self.topic = topic
        self.connect_timeout = connect_timeout
        self.on_message = on_message
        self.on_reply = on_reply
        self.on_state = on_state
        self.joined = asyncio.Event()
        """Set while the channel is joined; cleared when the socket goes away."""
        vsn = Vsn((parse_qs(urlsplit(url).query).get("vsn") or [Vsn.V1])[-1])
        self.channel = PhoenixChannel(
            topic,
            join_payload,
            heartbeat_interval=heartbeat_interval,
            join_timeout=join_timeout,
            # the reconnect jitter: the I/O layer seeds the core's rng from the OS
            backoff=backoff or ReconnectBackoff(rng=random.Random(secrets.randbits(64))),
            vsn=vsn,
        )
        self._headers = {"X-Authorization": f"Bearer {token}"}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False

    async def wait_joined(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.joined.wait()

    async def send(self, event: str, payload: dict[str, Any]) -> int:
        """Queue a message (sent once joined); returns the request id ``on_reply`` will carry."""
        request_id = self.channel.send(event, payload)
        self._wake.set()
        return request_id

    async def close(self) -> None:
        self._closing = True
        self.channel.close()
        self._wake.set()
        if self._ws is not None:
            await self._ws.close()

    async def run(self) -> None:
        try:
            if not self._closing:
                await self._dial()
            while not self._closing:
                self._wake.clear()
                await self._drain()
                if self._closing:
                    break
                deadline = self.channel.poll_timeout()
                delay = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self.channel.handle_timeout(time.monotonic())
        finally:
            self._closing = True
            self.joined.clear()
            if self._ws is not None:
                await self._ws.close()
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)
            await _call(self.on_state, "closed")

    async def _drain(self) -> None:
        while True:
            while (text := self.channel.poll_transmit()) is not None:
                if self._ws is not None:
                    try:
                        await self._ws.send(text)
                    except ConnectionClosed:
                        pass  # the reader reports the loss
            event = self.channel.poll_event()
            if event is None:
                return
            await self._on_event(event)

    async def _on_event(self, event: object) -> None:
        match event:
            case Push(event=name, payload=payload):
                await _call(self.on_message, name, payload)
            case ReplyReceived(request_id=rid, event=name, reply=reply):
                if reply.status is ReplyStatus.ERROR:
                    log.warning("Portal refused a request %s", kv(event_name=name, reason=reply.reason))
                await _call(self.on_reply, rid, name, reply)
            case Joined():
                log.info("Joined portal channel %s", kv(topic=self.topic, url=_redact(self.url)))
                self.joined.set()
                await _call(self.on_state, "joined")
            case Hiccup(delay=delay, reason=reason):
                log.info("Portal connection lost; retrying %s", kv(delay_s=f"{delay:.2f}", reason=reason))
                self.joined.clear()
                await _call(self.on_state, "disconnected")
            case Connect():
                await self._dial()
            case Reconnect():
                if self._ws is not None:
                    await self._ws.close()
            case LoginFailed(reason=reason):
                raise PortalLoginError(f"portal refused to join topic {self.topic!r}: {reason}")
            case ForcedLogout(reason=reason):
                raise PortalAuthError(f"portal disconnected us: {reason}")
            case GaveUp(reason=reason):
                raise PortalGaveUp(reason)

    async def _dial(self) -> None:
        await _call(self.on_state, "connecting")
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await connect(
                    self.url,
                    additional_headers=self._headers,
                    proxy=None,
                    compression=None,
                    ping_interval=None,
                    open_timeout=None,
                    max_size=MAX_FRAME_BYTES,
                )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise PortalAuthError(f"portal at {_redact(self.url)} rejected the token (HTTP 401)") from None
            self.channel.disconnected(time.monotonic(), reason=f"HTTP {status}", retry_after=_retry_after(exc))
            return
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.channel.disconnected(time.monotonic(), reason=f"connect failed: {str(exc) or type(exc).__name__}")
            return
        self._ws = ws
        self.channel.connected(time.monotonic())
        self._reader = asyncio.create_task(self._read(ws), name=f"portal-reader-{self.topic}")
        await _call(self.on_state, "connected")

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                self.channel.handle_input(message, time.monotonic())
                self._wake.set()
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
                close = ws.close_reason or ""
                self.channel.disconnected(time.monotonic(), reason=f"socket closed ({ws.close_code} {close})".strip())
                self._wake.set()
