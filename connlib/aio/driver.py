"""The asyncio driver: where a long-running peer's sockets, clock and tasks live.

It drives any :class:`~connlib.core.sansio.DatagramCore` (a ``Node``, or a ``Tunnel`` that adds
connections): *receive or time out → handle → drain transmits and events → sleep until
``poll_timeout``*.

The data path is the cost here, so the driver keeps per-datagram work off it: the datagrams one
readiness callback finds (up to ``READ_BATCH``) are handled each at its own ``now`` and flushed
once; a command given from an event handler joins the flush under way; the one loop timer moves
only when the deadline moves earlier.
"""

from __future__ import annotations

import array
import asyncio
import collections
import fcntl
import logging
import socket
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.addr import Address, family
from ..core.logfmt import kv
from ..core.sansio import Transmit, drain

if TYPE_CHECKING:
    from ..core.sansio import DatagramCore  # defined for the type checker only

log = logging.getLogger("connlib.driver")


# Datagrams read per readiness callback: a burst (a window of echoes) is handled in one wake and one
# flush, while the bound keeps one busy socket from starving the other and the timers.
READ_BATCH = 64
RECV_SIZE = 65535
# The kernel buffers asked for each socket, both ways: Firezone's connlib asks 10 MiB (firezone#8731).
# The default (~208 KiB) holds ~250 small datagrams: a gateway multiplexing hundreds of streams on one
# socket overflows it in any pause of its loop longer than a few tens of milliseconds (a garbage
# collection, a burst of control messages) and the kernel drops what arrives meanwhile. Linux caps the
# request at net.core.rmem_max / wmem_max without an error; the sizes granted are logged at start.
SOCKET_BUFFER = 10 * 1024 * 1024


class _Socket:
    """One non-blocking UDP socket on the loop: reads in batches, sends at once.

    What asyncio's datagram transport does, without its per-datagram costs (one loop callback and
    one ``sockname`` read per datagram received, the transport's checks per send). A send the
    kernel refuses for a full buffer is queued and sent when the socket is writable, in order.
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, driver: Driver) -> None:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError as exc:  # not on every platform: the default buffer still works
                log.info("Socket buffer not set %s", kv(option=option, error=exc))
        self.sock, self.loop, self.driver = sock, loop, driver
        name = sock.getsockname()
        self.local: Address = (name[0], name[1])
        self._backlog: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._fionread = array.array("i", [0])  # FIONREAD's answer, written in place
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        datagrams = []
        recvfrom = self.sock.recvfrom
        for _ in range(READ_BATCH):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP unreachable from a dead relay lands here; the backoff decides what it means.
                log.debug("UDP error %s", kv(error=exc))
                break
            datagrams.append((data, (addr[0], addr[1])))
            if len(datagrams) == 1 and not self._queued():
                break  # the usual lone datagram: no second read just to raise BlockingIOError
        if datagrams:
            self.driver._on_datagrams(datagrams, self.local)

    def _queued(self) -> bool:
        """Whether another datagram waits (FIONREAD: the next one's size; an empty datagram reads
        as none, and is read at the next readiness callback, the socket being still readable)."""
        try:
            fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, self._fionread, True)
        except OSError:
            return True  # cannot tell: read on until the socket says it is empty
        return self._fionread[0] > 0

    def sendto(self, payload: bytes, dst: Address) -> None:
        if not self._backlog:
            try:
                self.sock.sendto(payload, dst)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._writable)
            except OSError as exc:
                log.debug("UDP error %s", kv(error=exc, dst=dst))
                return
        self._backlog.append((payload, dst))

    def _writable(self) -> None:
        while self._backlog:
            payload, dst = self._backlog[0]
            try:
                self.sock.sendto(payload, dst)
            except (BlockingIOError, InterruptedError):
                return  # still full: the writer stays armed
            except OSError as exc:
                log.debug("UDP error %s", kv(error=exc, dst=dst))
            self._backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def buffers(self) -> tuple[int, int]:
        """The receive and send buffers the kernel granted, in bytes (Linux reports twice the size
        set: its bookkeeping overhead included)."""
        return (
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        )

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        if self._backlog:
            self.loop.remove_writer(self.sock.fileno())
            self._backlog.clear()
        self.sock.close()


class Driver:
    def __init__(
        self,
        core: DatagramCore,
        *,
        bind_v4: Address = ("0.0.0.0", 0),
        bind_v6: Address | None = ("::", 0),
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Any], None] | None = None,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.bind_v4 = bind_v4
        self.bind_v6 = bind_v6
        self._on_event = on_event
        self._on_flush = on_flush  # called after every flush: the app's check of what it waits for
        self._sockets: dict[int, _Socket] = {}
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # the core deadline the timer is armed for
        self._subscribers: list[asyncio.Queue] = []
        self._flushing = False  # a flush is handing out: a command run from an event handler joins it

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock4.bind(self.bind_v4)
            self._sockets[4] = _Socket(sock4, loop, self)
        except BaseException:
            sock4.close()
            raise
        if self.bind_v6 is not None and socket.has_ipv6:
            sock: socket.socket | None = None
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(self.bind_v6)
                self._sockets[6] = _Socket(sock, loop, self)
            except OSError as exc:
                if sock is not None:
                    sock.close()  # the loop never took it over
                log.info("No IPv6 socket %s", kv(error=exc))
        self._loop = loop
        self._schedule()
        log.info(
            "Driver started %s",
            kv(local=self.local_addresses(), buffers={f: sock.buffers() for f, sock in self._sockets.items()}),
        )

    async def stop(self) -> None:
        self._loop = None  # no timer is armed again
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    async def __aenter__(self) -> Driver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def local_addresses(self) -> dict[int, Address]:
        return {family: sock.local for family, sock in self._sockets.items()}

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
    def _on_datagrams(self, datagrams: list[tuple[bytes, Address]], local: Address) -> None:
        """A batch read from the socket bound to ``local``: each handled at its own ``now``, then
        one flush hands out what they produced (in order: transmits and events are queues)."""
        handle_input, clock = self.core.handle_input, self.clock
        for data, from_ in datagrams:
            try:
                handle_input(data, from_, local, clock())
            except Exception:  # a bug: log it loudly but keep the data plane alive
                log.exception("Core failed to handle a datagram %s", kv(src=from_))
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
        if self._on_flush is not None:
            self._on_flush()

    def _emit(self, event: Any) -> None:
        if self._on_event is not None:
            self._on_event(event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _send(self, transmit: Transmit) -> None:
        sock = self._sockets.get(family(transmit.dst))
        if sock is None:
            log.debug("No socket for address family %s", kv(dst=transmit.dst))
            return
        sock.sendto(transmit.payload, transmit.dst)
