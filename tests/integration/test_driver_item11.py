"""Issue 9 item 11, the driver's parts: a transmit queued by an event callback leaves at once;
a failed IPv6 bind does not leak its socket. Real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import collections
import socket

from connlib.aio import driver as driver_mod
from connlib.aio.driver import Driver
from connlib.core.sansio import Transmit

BOUND = 2.0


class EchoCore:
    """A minimal DatagramCore: every datagram becomes an event; the app answers from its callback."""

    def __init__(self) -> None:
        self.transmits: collections.deque[Transmit] = collections.deque()
        self.events: collections.deque = collections.deque()

    def handle_input(self, packet, from_, local, now) -> bool:
        self.events.append((packet, from_))
        return True

    def handle_timeout(self, now) -> None:
        pass

    def poll_transmit(self):
        return self.transmits.popleft() if self.transmits else None

    def poll_event(self):
        return self.events.popleft() if self.events else None

    def poll_timeout(self):
        return None  # no timer: nothing else would flush a late transmit


async def test_a_transmit_queued_by_an_event_callback_leaves_at_once():
    core = EchoCore()

    def echo(event) -> None:  # what the gateway does: Received -> tunnel.send
        packet, from_ = event
        core.transmits.append(Transmit(from_, b"echo:" + packet))

    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        async with Driver(core, bind_v4=("127.0.0.1", 0), bind_v6=None, on_event=echo) as driver:
            peer.sendto(b"ping", driver.local_addresses()[4])
            data = await asyncio.wait_for(loop.sock_recv(peer, 64), BOUND)
            assert data == b"echo:ping"
    finally:
        peer.close()


async def test_a_failed_ipv6_bind_closes_its_socket(monkeypatch):
    created: list[socket.socket] = []
    real_socket = socket.socket

    def tracking_socket(*args, **kwargs):
        sock = real_socket(*args, **kwargs)
        created.append(sock)
        return sock

    monkeypatch.setattr(driver_mod.socket, "socket", tracking_socket)
    # 192.0.2.0/24's IPv6 cousin: an address no interface here has -> EADDRNOTAVAIL
    async with Driver(EchoCore(), bind_v4=("127.0.0.1", 0), bind_v6=("2001:db8::dead", 0)) as driver:
        assert 6 not in driver.local_addresses()
    v6 = [s for s in created if s.family == socket.AF_INET6]
    assert v6, "no IPv6 socket was created (IPv6 disabled?)"
    assert all(s.fileno() == -1 for s in v6), "the IPv6 socket leaked"
