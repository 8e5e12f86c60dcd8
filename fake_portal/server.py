"""The asyncio shell around :class:`fake_portal.core.Portal`: websockets in, admin API beside.

A frame for a socket that can take it now is written at once, as websockets' own ``broadcast``
does: a fan-out of thousands of frames costs no task wake-up per socket, and the first client
hears its frame while the rest are being written. A socket whose write buffer is full (or that
already has frames waiting, or a close) gets a writer task fed by its own queue, so one slow peer
never delays a presence push to the others; a peer whose queue overflows is dropped as a slow
consumer. The writer ends when its queue is empty; there is none for an idle socket.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
import weakref
from collections import deque
from dataclasses import dataclass

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response

from connlib.core.logfmt import kv
from fake_portal.admin import AdminApi, format_host
from fake_portal.config import PortalConfig
from fake_portal.core import Close, CloseCode, Portal, Send
from fake_portal.identity import Endpoint, EndpointError, parse_endpoint

log = logging.getLogger("fake_portal.server")

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 §5.5: control frames carry at most 125 bytes


def _now() -> float:
    return time.monotonic()


@dataclass(slots=True)
class _Socket:
    ws: ServerConnection
    outbox: deque[str | Close] | None = None
    """Frames and a close waiting for the writer; made for a socket whose buffer filled (an
    empty deque is ~0.5 KiB, and a portal holds thousands of sockets)."""
    pending_sends: int = 0
    writer: asyncio.Task[None] | None = None
    """Set while the outbox is being worked off; ``None`` when the socket can be written at once."""
    closing: bool = False
    """A close went to the writer: nothing after it is sent, as nothing after a close is."""


class FakePortal:
    """A fake Firezone portal; ``async with FakePortal(config) as portal:`` or ``start()``/``stop()``.

    After ``start()``: ``port``/``url`` is the websocket listener, ``admin_port``/``admin_url`` the
    admin HTTP API, ``config.token`` the token peers must present, ``core`` the state machine
    (read-only use in tests: ``core.events``, ``core.relays_view()``…).
    """

    def __init__(self, config: PortalConfig | None = None) -> None:
        self.config = config or PortalConfig()
        self.core = Portal(self.config, unix_offset=time.time() - time.monotonic())
        self.admin = AdminApi(self.core, clock=_now, after_command=self._pump)
        self.port = 0
        self.admin_port = 0
        self._server: Server | None = None
        self._sockets: dict[int, _Socket] = {}
        self._endpoints: weakref.WeakKeyDictionary[ServerConnection, Endpoint] = weakref.WeakKeyDictionary()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.config.listen_host}:{self.port}"

    @property
    def admin_url(self) -> str:
        host = self.config.admin_host
        host = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
        return f"http://{format_host(host)}:{self.admin_port}"

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.listen_host,
            self.config.listen_port,
            process_request=self._process_request,
            max_size=self.config.max_frame_bytes,
            compression=None,
            # Phoenix heartbeats are the liveness check; websocket pings would be a second one.
            ping_interval=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.admin_port = await self.admin.serve(self.config.admin_host, self.config.admin_port)
        log.info("Fake portal listening %s", kv(url=self.url, admin=self.admin_url))

    async def stop(self) -> None:
        await self.admin.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Last, because closing the sockets above re-arms the timer.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_deadline = None
        log.info("Fake portal stopped %s", kv(url=self.url))

    async def __aenter__(self) -> FakePortal:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- websocket side -----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            endpoint = parse_endpoint(request.path, request.headers, relay_id_from=self.config.relay_id_from)
        except EndpointError as exc:
            log.info("Refused websocket upgrade %s", kv(status=exc.status, reason=exc.reason))
            return connection.respond(exc.status, exc.reason + "\n")
        rejection = self.core.admit(endpoint, _now())
        if rejection is not None:
            response = connection.respond(rejection.status, rejection.reason + "\n")
            if rejection.retry_after is not None:
                response.headers["Retry-After"] = str(math.ceil(rejection.retry_after))
            return response
        self._endpoints[connection] = endpoint
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        sid = self.core.open(self._endpoints.pop(ws), _now())
        sock = self._sockets[sid] = _Socket(ws)
        reason = "socket closed"
        try:
            # `recv()` in a loop, not `async for`: the iterator is an async generator, and each idle
            # socket's suspended generator (its frame, the event loop's weak reference to it) is
            # ~0.3 KiB, a tenth of what the portal holds per peer beside websockets' own.
            while True:
                message = await ws.recv()
                self.core.handle_input(sid, message, _now())
                self._pump()
        except ConnectionClosedOK:
            pass  # a normal close ends the loop, as it ends `async for`
        except ConnectionClosed as exc:
            reason = f"socket closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        finally:
            self.core.closed(sid, _now(), reason)
            del self._sockets[sid]
            self._pump()
            await self._finish_writer(sock)

    async def _finish_writer(self, sock: _Socket) -> None:
        # The connection is over, so whatever the writer still holds can no longer be sent.
        writer = sock.writer
        if writer is None:
            return
        if not writer.done():
            writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass

    def _deliver(self, sid: int, sock: _Socket, item: str | Close) -> None:
        if sock.closing:
            return
        # `paused`: the transport's buffer is above its high-water mark, where `ws.send` would
        # wait in `drain()`; only then, or behind queued frames, does a frame wait its turn.
        if isinstance(item, str) and sock.writer is None and not sock.ws.paused:
            broadcast((sock.ws,), item)  # what `ws.send` does before it drains
            return
        sock.closing = isinstance(item, Close)
        if isinstance(item, str):
            sock.pending_sends += 1
        if sock.outbox is None:
            sock.outbox = deque()
        sock.outbox.append(item)
        if sock.writer is None:
            sock.writer = asyncio.create_task(self._write(sock), name=f"portal-writer-{sid}")

    async def _write(self, sock: _Socket) -> None:
        try:
            while sock.outbox:  # not None: the writer starts after an append
                if sock.ws.paused:  # the last frame written filled the buffer: wait, as `send` does
                    await sock.ws.drain()
                item = sock.outbox.popleft()
                if isinstance(item, Close):
                    reason = item.reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
                    await sock.ws.close(item.code, reason)
                    return
                sock.pending_sends -= 1
                await sock.ws.send(item)
        except ConnectionClosed:
            return
        finally:
            sock.writer = None

    def _pump(self) -> None:
        """Carry out everything the core asked for, then re-arm its timer."""
        while (out := self.core.poll_transmit()) is not None:
            sock = self._sockets.get(out.sid)
            if sock is None:
                continue
            if isinstance(out, Send):
                if sock.pending_sends >= self.config.outbox_size:
                    log.warning("Dropping a slow consumer %s", kv(sid=out.sid, queued=sock.pending_sends))
                    self.core.closed(out.sid, _now(), "slow consumer")
                    self._deliver(out.sid, sock, Close(out.sid, CloseCode.SLOW_CONSUMER, "slow consumer"))
                    continue
            self._deliver(out.sid, sock, out.text if isinstance(out, Send) else out)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.core.poll_timeout()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - _now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_deadline = None
        # A presence flush builds and writes a frame per peer, and what it keeps (event-log entries,
        # the relays handed out) can tip the collector into a full pass over every object of every
        # peer: ~0.1 s at 3,000 peers, in front of every frame not yet written. It runs after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.core.handle_timeout(_now())
            self._pump()
        finally:
            if collecting:
                gc.enable()
