"""The asyncio driver: where a long-running peer's sockets, clock and tasks live.

It drives any :class:`~connlib.core.sansio.DatagramCore` (a ``Node``, or a ``Tunnel`` that adds
connections): *receive or time out → handle → drain transmits and events → sleep until
``poll_timeout``*.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.addr import Address, family
from ..core.logfmt import kv
from ..core.sansio import Transmit, drain

if TYPE_CHECKING:
    from ..core.sansio import DatagramCore  # defined for the type checker only

log = logging.getLogger("connlib.driver")


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address | None = None  # the bound socket's address: read once, not per datagram

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1]) if sockname else None

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.driver._on_datagram(data, (addr[0], addr[1]), self.local)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from a dead relay lands here; the backoff decides what it means.
        log.debug("UDP error %s", kv(error=exc))


class Driver:
    def __init__(
        self,
        core: DatagramCore,
        *,
        bind_v4: Address = ("0.0.0.0", 0),
        bind_v6: Address | None = ("::", 0),
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Any], None] | None = None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.bind_v4 = bind_v4
        self.bind_v6 = bind_v6
        self._on_event = on_event
        self._transports: dict[int, asyncio.DatagramTransport] = {}
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # the core deadline the timer is armed for
        self._subscribers: list[asyncio.Queue] = []
        self._flushing = False  # a flush is handing out: a command run from an event handler joins it

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=self.bind_v4, family=socket.AF_INET
        )
        self._transports[4] = transport
        if self.bind_v6 is not None and socket.has_ipv6:
            sock: socket.socket | None = None
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(self.bind_v6)
                transport6, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
                self._transports[6] = transport6
            except OSError as exc:
                if sock is not None:
                    sock.close()  # the endpoint never took it over
                log.info("No IPv6 socket %s", kv(error=exc))
        self._loop = loop
        self._schedule()
        log.info("Driver started %s", kv(local=self.local_addresses()))

    async def stop(self) -> None:
        self._loop = None  # no timer is armed again
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    async def __aenter__(self) -> Driver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def local_addresses(self) -> dict[int, Address]:
        return {family: transport.get_extra_info("sockname")[:2] for family, transport in self._transports.items()}

    # ------------------------------------------------------------------ commands
    def call(self, command: Callable[[float], Any]) -> Any:
        """Run ``command(now)`` on the core, then flush what it produced.

        Called from an event handler during a flush (a gateway echoing what it received), the
        command's output is left to that flush, which polls the core again before the next event:
        the transmit still leaves at once, without a second drain, deadline and waiter pass.
        """
        result = command(self.clock())
        if not self._flushing:
            self._flush()
        return result

    def send_raw(self, payload: bytes, dst: Address) -> None:
        self._send(Transmit(dst, payload))

    def subscribe(self) -> asyncio.Queue:
        """A queue receiving every event of the core from now on."""
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait (bounded) until ``predicate()`` holds; re-checked after every state change."""
        if predicate():
            return True
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(timeout):
                await entry[1]
            return True
        except TimeoutError:
            return predicate()
        finally:
            self._waiters.remove(entry)

    # ------------------------------------------------------------------ the loop
    def _on_datagram(self, data: bytes, from_: Address, local: Address | None) -> None:
        try:
            self.core.handle_input(data, from_, local, self.clock())
        except Exception:  # a bug: log it loudly but keep the data plane alive
            log.exception("Core failed to handle a datagram %s", kv(src=from_))
            return
        self._flush()

    def _schedule(self) -> None:
        """Arm the one timer for the core's deadline.

        A datagram mostly pushes deadlines later (a keep-alive moves on) or leaves them alone, so
        the armed timer stays unless the deadline moved *earlier*: one that fires early finds
        nothing due, and re-arms. That keeps timer work off the data path.
        """
        if self._loop is None:
            return
        deadline = self.core.poll_timeout()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock()
        deadline = self.core.poll_timeout()
        if deadline is not None and now >= deadline:
            try:
                self.core.handle_timeout(now)
            except Exception:  # a bug: log it loudly but keep the timers alive
                log.exception("Core failed to handle a timeout")
        self._flush()

    def _flush(self) -> None:
        self._flushing = True
        try:
            drain(self.core, self._send, self._emit)
        finally:
            self._flushing = False
        self._schedule()  # the deadline may have moved
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    def _emit(self, event: Any) -> None:
        if self._on_event is not None:
            self._on_event(event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _send(self, transmit: Transmit) -> None:
        transport = self._transports.get(family(transmit.dst))
        if transport is None:
            log.debug("No socket for address family %s", kv(dst=transmit.dst))
            return
        transport.sendto(transmit.payload, transmit.dst)
