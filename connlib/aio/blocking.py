"""A blocking driver for one-shot commands: the same sans-IO loop as ``driver.Driver``, no asyncio.

``python -m connlib allocate`` runs one core until a condition holds or a deadline passes; the
event loop, its tasks and the ``ssl`` module asyncio pulls in would be most of its start-up
time. This driver owns one UDP socket per address family and a ``selectors`` loop:
*wait for a datagram or the core's deadline → handle → drain transmits and events*.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable

from ..core.addr import Address, family
from ..core.logfmt import kv
from ..core.sansio import Transmit, drain

# ``typing`` only for the type checker: its import is ~4 % of ``python -m connlib allocate``'s start-up
# (mypy treats a module's own ``TYPE_CHECKING`` like ``typing.TYPE_CHECKING``).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..core.sansio import DatagramCore

log = logging.getLogger("connlib.driver")

MAX_DATAGRAM = 65536


class BlockingDriver:
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
        self._on_event = on_event
        self._selector = selectors.DefaultSelector()
        self._sockets: dict[int, socket.socket] = {}
        self._open(socket.AF_INET, 4, bind_v4)
        if bind_v6 is not None and socket.has_ipv6:
            try:
                self._open(socket.AF_INET6, 6, bind_v6)
            except OSError as exc:
                log.info("No IPv6 socket %s", kv(error=exc))

    def _open(self, af: int, number: int, bind: Address) -> None:
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(bind)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets[number] = sock
        self._selector.register(sock, selectors.EVENT_READ)

    def close(self) -> None:
        self._selector.close()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> BlockingDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, command: Callable[[float], Any]) -> Any:
        """Run ``command(now)`` on the core, then flush what it produced."""
        result = command(self.clock())
        self._flush()
        return result

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Drive the core until ``predicate()`` holds (True) or ``timeout`` seconds pass (False)."""
        end = self.clock() + timeout
        while not predicate():
            now = self.clock()
            if now >= end:
                return False
            deadline = self.core.poll_timeout()
            wake = end if deadline is None else min(end, deadline)
            for key, _ in self._selector.select(max(0.0, wake - now)):
                self._receive(key.fileobj)  # type: ignore[arg-type]
            now = self.clock()
            if deadline is not None and now >= deadline:
                self.core.handle_timeout(now)
                self._flush()
        return True

    def _receive(self, sock: socket.socket) -> None:
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
        except OSError as exc:  # ICMP unreachable from a dead relay: the backoff decides
            log.debug("UDP error %s", kv(error=exc))
            return
        local = sock.getsockname()[:2]
        self.core.handle_input(data, (addr[0], addr[1]), local, self.clock())
        self._flush()

    def _flush(self) -> None:
        drain(self.core, self._send, self._emit)

    def _emit(self, event: object) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _send(self, transmit: Transmit) -> None:
        sock = self._sockets.get(family(transmit.dst))
        if sock is None:
            log.debug("No socket for address family %s", kv(dst=transmit.dst))
            return
        try:
            sock.sendto(transmit.payload, transmit.dst)
        except OSError as exc:
            log.debug("Send failed %s", kv(dst=transmit.dst, error=exc))
