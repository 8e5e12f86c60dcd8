"""Relayed round trips through one real coturn: connlib's client↔gateway path next to its peers.

Four paths carry the same echo traffic through the same ``turnserver`` on 127.0.0.1, one repeat
of each in turn (interleaved, so that load and CPU-frequency drift hit all of them):

- ``connlib``: two real ``Tunnel``\\s (client and gateway, relay-only) on real ``Driver``\\s, ICE
  over the relay, the client's datagrams echoed by the gateway: the path ``connlib run`` uses
  (signalling is passed between the two in-process, as the portal would relay it);
- ``aioice``: two ``aioice.turn`` endpoints (its TURN channel path), one echoing the other;
- ``channeldata``: hand-built ChannelData on two allocations made with ``connlib.core.stun``
  (no state machine at all: the floor a Python client reaches through coturn);
- ``raw-udp``: a UDP socket and an echo socket, no relay.

Every path runs both ends in this one process and event loop, so each figure is the whole cost
of a round trip (both sides). The client keeps ``window`` datagrams in flight and sends the next
one when an echo comes back (or in place of one unanswered for ``LOST_AFTER``, counted lost); a
repeat counts the echoes within ``seconds``.

``--uvloop`` runs every path a second time in each repeat on a uvloop event loop (interleaved
with the standard loop's runs): the ``+uv`` columns. uvloop is optional (``pip install uvloop``);
connlib needs nothing from it, and the standard loop stays the default everywhere.

    python -m bench.relayed_roundtrip [--windows 1,32] [--payloads 100,1200] [--repeats 5] [--seconds 1] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Coroutine

from aioice import turn as aioice_turn

from bench.coturn_channeldata import allocate as allocate_by_hand
from connlib.aio.driver import Driver
from connlib.core import messages, stun
from connlib.core.messages import RelayConfig
from connlib.core.tunnel import Received, Signal, Tunnel
from harness.coturn import Coturn, turnserver_path

HOST = "127.0.0.1"
SEQ = struct.Struct("!Q")
PATHS = ("connlib", "aioice", "channeldata", "raw-udp")
CONNECT_TIMEOUT = 10.0


class BenchError(RuntimeError):
    pass


LOST_AFTER = 0.1  # s without its echo (round trips take ~0.1-1 ms): the datagram is lost and replaced
REFILL_EVERY = 0.02  # s between looks for lost datagrams


class Echoes:
    """The client side's window: one new datagram per echo, echoes counted while ``counting``.

    A datagram whose echo has not come within ``LOST_AFTER`` is counted lost and replaced, so the
    window stays ``window`` datagrams in flight: without that, each loss (a socket buffer that
    overflowed) would shrink a path's window for the rest of the repeat, and a path that lost more
    would run at a smaller window than its column names. The losses are printed per path."""

    def __init__(self, send: Callable[[bytes], None], payload: int, window: int) -> None:
        self.send, self.padding, self.window = send, b"\0" * max(0, payload - SEQ.size), window
        self.next_seq = 0
        self.in_flight: dict[int, float] = {}  # seq -> when sent; in send order
        self.counted = 0
        self.lost = 0
        self.counting = False
        self.clock = time.monotonic

    def packet(self) -> bytes:
        self.next_seq += 1
        self.in_flight[self.next_seq] = self.clock()
        return SEQ.pack(self.next_seq) + self.padding

    def start(self) -> None:
        for _ in range(self.window):
            self.send(self.packet())

    def on_echo(self, data: bytes) -> None:
        if len(data) < SEQ.size:
            return  # a path's set-up traffic, not one of ours
        if self.in_flight.pop(SEQ.unpack_from(data)[0], None) is None:
            return  # a late echo of a datagram already replaced
        if self.counting:
            self.counted += 1
        self.send(self.packet())

    def refill(self) -> None:
        """Replace every datagram in flight for longer than ``LOST_AFTER``."""
        expired = self.clock() - LOST_AFTER
        for seq, sent in list(self.in_flight.items()):
            if sent > expired:
                break  # the rest were sent later
            del self.in_flight[seq]
            if self.counting:
                self.lost += 1
            self.send(self.packet())


async def _measure(echoes: Echoes, seconds: float) -> tuple[float, int]:
    """(echoes per second, datagrams lost and replaced) over ``seconds`` after a warm-up."""
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def refill() -> None:
        nonlocal timer
        echoes.refill()
        timer = loop.call_later(REFILL_EVERY, refill)

    echoes.start()
    refill()
    try:
        await asyncio.sleep(min(0.2, seconds / 4))  # warm-up: windows fill, channels bind
        echoes.counting, start = True, loop.time()
        await asyncio.sleep(seconds)
        echoes.counting = False
        elapsed = loop.time() - start
    finally:
        if timer is not None:
            timer.cancel()
    return echoes.counted / elapsed, echoes.lost


# ---------------------------------------------------------------------------- connlib
_PORTAL_RENAMES = {messages.Event.REQUEST_CONNECTION: messages.Event.CONNECTION_REQUEST}


async def connlib_path(relay: Coturn, payload: int, window: int, seconds: float) -> tuple[float, int]:
    """Client and gateway Tunnels through the relay, ICE over it, signalling passed in-process."""
    loop = asyncio.get_running_loop()
    ids = {"client": "gateway", "gateway": "client"}  # each side's peer
    tunnels = {role: Tunnel(role, loop.time(), seed=i) for i, role in enumerate(("client", "gateway"))}
    drivers: dict[str, Driver] = {}
    echoes: Echoes | None = None

    def deliver(sender: str, signal: Signal) -> None:
        receiver = ids[sender]
        event = _PORTAL_RENAMES.get(messages.Event(signal.event), signal.event)
        typed = messages.decode_payload(event, signal.payload)
        typed = dataclasses.replace(typed, peer_id=sender)  # the portal names the sender
        drivers[receiver].call(lambda now: tunnels[receiver].handle_signal(event, typed, now))

    def on_event(role: str, event: object) -> None:
        match event:
            case Signal() if event.event != messages.Event.NO_RELAYS:
                loop.call_soon(deliver, role, event)
            case Received(peer_id=peer, payload=data) if role == "gateway":
                drivers[role].call(lambda now: tunnels[role].send(peer, data, now))
            case Received(payload=data) if echoes is not None:
                echoes.on_echo(data)

    for role, tunnel in tunnels.items():
        drivers[role] = Driver(
            tunnel, clock=loop.time, bind_v4=(HOST, 0), bind_v6=None, on_event=functools.partial(on_event, role)
        )
    try:
        for role, driver in drivers.items():
            await driver.start()
            username, password = relay.credentials(salt=role)
            config = RelayConfig("relay", relay.addr, None, username, password)
            driver.call(functools.partial(_add_relay, tunnels[role], config))
        for role, driver in drivers.items():
            if not await driver.wait_until(tunnels[role].has_usable_relay, CONNECT_TIMEOUT):
                raise BenchError(f"connlib {role}: no allocation")
        drivers["client"].call(lambda now: tunnels["client"].connect("gateway", now))
        if not await drivers["client"].wait_until(lambda: tunnels["client"].is_connected("gateway"), CONNECT_TIMEOUT):
            raise BenchError("connlib: the connection did not come up")
        client = drivers["client"]
        echoes = Echoes(lambda p: client.call(lambda now: tunnels["client"].send("gateway", p, now)), payload, window)
        return await _measure(echoes, seconds)
    finally:
        for driver in drivers.values():
            await driver.stop()


def _add_relay(tunnel: Tunnel, config: RelayConfig, now: float) -> None:
    tunnel.update_relays([], [config], now)


def _same(protocol: _Endpoint) -> _Endpoint:
    return protocol


# ---------------------------------------------------------------------------- aioice
class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)


async def aioice_path(relay: Coturn, payload: int, window: int, seconds: float) -> tuple[float, int]:
    """Two aioice TURN endpoints on the relay; B echoes what A sends to B's relayed address."""
    echoes: Echoes | None = None
    endpoints = []
    try:
        for salt in ("aioice-a", "aioice-b"):
            username, password = relay.credentials(salt=salt)
            protocol = _Endpoint(lambda data, addr: None)
            transport, _ = await aioice_turn.create_turn_endpoint(
                functools.partial(_same, protocol), relay.addr, username, password
            )
            endpoints.append((transport, protocol))
        (a, a_proto), (b, b_proto) = endpoints
        a_relayed, b_relayed = a.get_extra_info("sockname"), b.get_extra_info("sockname")
        # Each side needs a permission (aioice binds a channel on first send) for the other's
        # relayed address before the other's data reaches it: both send until both have heard.
        heard = {"a": asyncio.Event(), "b": asyncio.Event()}
        a_proto.on_datagram = lambda data, addr: heard["a"].set()
        b_proto.on_datagram = lambda data, addr: heard["b"].set()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while not (heard["a"].is_set() and heard["b"].is_set()):
                a.sendto(b"prime", b_relayed)
                b.sendto(b"prime", a_relayed)
                await asyncio.sleep(0.05)
        b_proto.on_datagram = lambda data, addr: b.sendto(data, addr)
        a_proto.on_datagram = lambda data, addr: echoes.on_echo(data) if echoes else None
        echoes = Echoes(lambda p: a.sendto(p, b_relayed), payload, window)
        return await _measure(echoes, seconds)
    finally:
        for transport, _ in endpoints:
            transport.close()


# ---------------------------------------------------------------------------- hand-built ChannelData
async def channeldata_path(relay: Coturn, payload: int, window: int, seconds: float) -> tuple[float, int]:
    """Two allocations made by hand, one channel each way; B re-wraps what it gets back to A."""
    loop = asyncio.get_running_loop()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    transports: list[asyncio.DatagramTransport] = []
    allocations = []
    try:
        for sock in socks:
            sock.bind((HOST, 0))
            sock.settimeout(2.0)
        for i, sock in enumerate(socks):
            allocations.append(allocate_by_hand(sock, relay.addr, *relay.credentials(salt=f"hand-{i}")))
        a, b = allocations
        channel = 0x4001
        a.channel_bind(channel, b.relayed)
        b.channel_bind(channel, a.relayed)
        frame = struct.Struct("!HH")
        echoes: Echoes | None = None

        def on_a(data: bytes, addr: tuple[str, int]) -> None:
            if echoes is not None and len(data) > 4:
                echoes.on_echo(data[4:])

        def on_b(data: bytes, addr: tuple[str, int]) -> None:
            if len(data) > 4:
                transports[1].sendto(frame.pack(channel, len(data) - 4) + data[4:], relay.addr)

        for sock, handler in zip(socks, (on_a, on_b), strict=True):
            sock.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(functools.partial(_Endpoint, handler), sock=sock)
            transports.append(transport)
        echoes = Echoes(
            lambda p: transports[0].sendto(stun.encode_channel_data(channel, p), relay.addr), payload, window
        )
        return await _measure(echoes, seconds)
    finally:
        # Delete the allocations (REFRESH, LIFETIME 0): a later repeat's socket may get the same
        # port, and coturn answers an ALLOCATE on a 5-tuple it still holds with 437.
        for allocation, transport in zip(allocations, transports, strict=False):
            delete = allocation.signed(stun.Method.REFRESH, ("LIFETIME", 0))
            transport.sendto(delete.encode(allocation.key, fingerprint=True), relay.addr)
        for transport in transports:
            transport.close()
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------------------- raw UDP
async def raw_udp_path(relay: Coturn, payload: int, window: int, seconds: float) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(
        lambda: _Endpoint(lambda d, a: echo.sendto(d, a)), local_addr=(HOST, 0)
    )
    echoes: Echoes | None = None
    client, _ = await loop.create_datagram_endpoint(
        lambda: _Endpoint(lambda d, a: echoes.on_echo(d) if echoes else None), local_addr=(HOST, 0)
    )
    target = echo.get_extra_info("sockname")[:2]
    try:
        echoes = Echoes(lambda p: client.sendto(p, target), payload, window)
        return await _measure(echoes, seconds)
    finally:
        client.close()
        echo.close()


MEASURE: dict[str, Callable[[Coturn, int, int, float], Coroutine[object, object, tuple[float, int]]]] = {
    "connlib": connlib_path,
    "aioice": aioice_path,
    "channeldata": channeldata_path,
    "raw-udp": raw_udp_path,
}


def _loop_factories(uvloop: bool) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loops to measure on, by column suffix: the standard one, and uvloop's if asked."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"": asyncio.new_event_loop}
    if uvloop:
        import uvloop as uvloop_mod  # optional: only this flag needs it

        factories["+uv"] = uvloop_mod.new_event_loop
    return factories


def run(
    windows: list[int], payloads: list[int], repeats: int, seconds: float, uvloop: bool = False
) -> tuple[dict, dict]:
    """Rates and datagrams lost (and replaced) per repeat, per (window, payload) and column (a path,
    with its loop's suffix), interleaved."""
    results: dict[tuple[int, int], dict[str, list[float]]] = {}
    losses: dict[tuple[int, int], dict[str, list[int]]] = {}
    factories = _loop_factories(uvloop)
    runners = {suffix: asyncio.Runner(loop_factory=factory) for suffix, factory in factories.items()}
    try:
        relay = Coturn(name="bench-roundtrip")
        # A stopped Tunnel leaves its allocations to expire (600 s), two per connlib run: the
        # default 64 relay ports run out at 32 runs (5 repeats x 4 sizes x 2 loops are 40).
        relay.relay_ports = (relay.relay_ports[0], relay.relay_ports[0] + 511)
        with relay:
            for window in windows:
                for payload in payloads:
                    rates: dict[str, list[float]] = {p + s: [] for s in runners for p in PATHS}
                    lost: dict[str, list[int]] = {p + s: [] for s in runners for p in PATHS}
                    for _ in range(repeats):
                        for suffix, runner in runners.items():
                            for path in PATHS:
                                rate, lost_n = runner.run(MEASURE[path](relay, payload, window, seconds))
                                rates[path + suffix].append(rate)
                                lost[path + suffix].append(lost_n)
                    results[(window, payload)] = rates
                    losses[(window, payload)] = lost
    finally:
        for runner in runners.values():
            runner.close()
    return results, losses


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:.2f} / {statistics.median(ordered):.2f} / {ordered[-1]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relayed_roundtrip", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--windows", default="1,32", help="datagrams in flight, comma-separated")
    parser.add_argument("--payloads", default="100,1200", help="payload bytes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one repeat")
    parser.add_argument("--uvloop", action="store_true", help="also run every path on uvloop (+uv columns)")
    args = parser.parse_args(argv)
    if turnserver_path() is None:
        print("relayed_roundtrip: turnserver not installed (Debian package 'coturn'); skipped", file=sys.stderr)
        return 0
    windows = [int(w) for w in args.windows.split(",")]
    payloads = [int(p) for p in args.payloads.split(",")]
    results, losses = run(windows, payloads, args.repeats, args.seconds, args.uvloop)
    suffixes = list(_loop_factories(args.uvloop))
    columns = [p + s for s in suffixes for p in PATHS]
    print(f"relayed round trips/s through one coturn, {args.repeats} interleaved repeats of {args.seconds:g} s")
    print("medians; connlib/aioice per repeat (same loop), min / median / max")
    ratio_names = "  ".join(f"{'connlib' + s + '/aioice' + s:>24}" for s in suffixes)
    print(f"{'window':>6} {'bytes':>6}  " + "  ".join(f"{c:>11}" for c in columns) + "  " + ratio_names)
    for (window, payload), rates in results.items():
        medians = "  ".join(f"{statistics.median(rates[c]):>11,.0f}" for c in columns)
        ratios = "  ".join(
            f"{_summary([c / a for c, a in zip(rates['connlib' + s], rates['aioice' + s], strict=True)]) + 'x':>24}"
            for s in suffixes
        )
        print(f"{window:>6} {payload:>6}  {medians}  {ratios}")
    print(f"datagrams lost and replaced per repeat (median; a datagram unanswered for {LOST_AFTER:g} s)")
    for (window, payload), lost in losses.items():
        print(f"{window:>6} {payload:>6}  " + "  ".join(f"{statistics.median(lost[c]):>11,.0f}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
