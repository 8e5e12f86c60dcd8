"""Hand-built ChannelData through a real coturn on loopback, next to a raw UDP echo: coturn's figure.

This is not connlib's data path (no Tunnel, no Driver): it is the floor a Python client can reach
through coturn, to read connlib's relayed figures against.

Two allocations A and B on one coturn (127.0.0.1), built by hand with ``connlib.core.stun``:
unauthenticated ALLOCATE -> 401 (REALM, NONCE) -> signed ALLOCATE (REQUESTED-TRANSPORT=17,
key MD5(user:"firezone":pass)); CHANNEL-BIND A -> B's relayed address and B -> A's. Then A sends
ChannelData to the relay with at most ``--window`` packets in flight and B counts what arrives
(coturn forwards A-relay -> B-relay -> B as ChannelData on B's channel).

Baseline, same run, same payload size and window: a client socket sending to a trivial UDP echo
on 127.0.0.1 (``recvfrom`` -> ``sendto`` back; its own Python process by default, as coturn is
its own process, or ``--echo thread``) and counting the echoes.

Each measurement is bounded by a packet count and a duration; the median of several repeats is
reported, with losses (payloads carry sequence numbers; loopback does not reorder, so a gap is a
loss, and a receive timeout writes off what is still in flight). All traffic is on
127.0.0.1.

    python -m bench.coturn_channeldata [--payload 1200] [--window 64] [--count 100000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from connlib.core import stun
from connlib.core.credentials import long_term_key
from harness.coturn import Coturn, turnserver_path

HOST = "127.0.0.1"
RECV_TIMEOUT = 0.05  # with nothing arriving this long, what is in flight is written off as lost
SOCKET_BUFFER = 4 * 1024 * 1024


class BenchError(RuntimeError):
    pass


# --- the TURN exchange, by hand ---------------------------------------------------------------


def _transact(sock: socket.socket, server: tuple[str, int], request: stun.Message, key: bytes | None) -> stun.Message:
    """Send ``request`` (signed with ``key`` if given) and return the matching response."""
    data = request.encode(key, fingerprint=True)
    for _attempt in range(5):
        sock.sendto(data, server)
        deadline = time.monotonic() + 0.5
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                packet, _ = sock.recvfrom(65536)
            except TimeoutError:
                break
            if not stun.is_stun(packet):
                continue
            try:
                response = stun.decode(packet)
            except stun.StunParseError:
                continue
            if response.transaction_id == request.transaction_id:
                return response
    raise BenchError(f"no response to {request.method_name} from {server}")


@dataclass
class Allocation:
    sock: socket.socket
    server: tuple[str, int]
    username: str
    realm: str
    nonce: str
    key: bytes
    relayed: tuple[str, int]

    def signed(self, method: stun.Method, *attrs: tuple[str, object]) -> stun.Message:
        message = stun.Message(method, stun.Class.REQUEST, os.urandom(12), list(attrs))
        return message.add("USERNAME", self.username).add("REALM", self.realm).add("NONCE", self.nonce)

    def request(self, message: stun.Message) -> stun.Message:
        response = _transact(self.sock, self.server, message, self.key)
        if not response.verify_integrity(self.key):
            raise BenchError(f"{message.method_name} response failed MESSAGE-INTEGRITY")
        if response.cls is not stun.Class.SUCCESS:
            raise BenchError(f"{message.method_name} failed: {response.get('ERROR-CODE')}")
        return response

    def channel_bind(self, channel: int, peer: tuple[str, int]) -> None:
        self.request(self.signed(stun.Method.CHANNEL_BIND, ("CHANNEL-NUMBER", channel), ("XOR-PEER-ADDRESS", peer)))


def allocate(sock: socket.socket, server: tuple[str, int], username: str, password: str) -> Allocation:
    first = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, os.urandom(12)).add(
        "REQUESTED-TRANSPORT", stun.TRANSPORT_UDP
    )
    challenge = _transact(sock, server, first, None)
    if challenge.error_code != 401 or "REALM" not in challenge or "NONCE" not in challenge:
        raise BenchError(f"expected 401 with REALM and NONCE, got {challenge}")
    realm, nonce = challenge.get("REALM"), challenge.get("NONCE")
    key = long_term_key(username, realm, password)
    alloc = Allocation(sock, server, username, realm, nonce, key, ("0.0.0.0", 0))
    response = alloc.request(alloc.signed(stun.Method.ALLOCATE, ("REQUESTED-TRANSPORT", stun.TRANSPORT_UDP)))
    alloc.relayed = response.get("XOR-RELAYED-ADDRESS")
    if alloc.relayed is None:
        raise BenchError("ALLOCATE success without XOR-RELAYED-ADDRESS")
    return alloc


# --- the windowed pump ------------------------------------------------------------------------


@dataclass
class Run:
    sent: int
    received: int
    lost: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.received / self.seconds


SEQ = struct.Struct("!Q")  # every payload starts with its sequence number


def pump(
    send: Callable[[int], object],
    rx: socket.socket,
    parse: Callable[[bytes], int | None],
    window: int,
    count: int,
    seconds: float,
) -> Run:
    """Keep at most ``window`` packets in flight until ``count`` are sent or ``seconds`` pass; then
    wait for the stragglers (so none leaks into the next run). The time runs to the last arrival.

    ``send(seq)`` sends packet ``seq``; ``parse(packet)`` returns its ``seq`` or None if it is not
    ours. One path on loopback does not reorder, so an arrival of ``seq`` means every earlier
    packet still missing is lost, which frees its window slot at once.
    """
    rx.setblocking(False)
    recv = rx.recv
    sent = received = lost = expected = 0
    start = last = time.perf_counter()
    deadline = start + seconds
    while True:
        sending = sent < count and time.perf_counter() < deadline
        in_flight = sent - received - lost
        if not sending and in_flight <= 0:
            break
        while sending and in_flight < window and sent < count:
            send(sent)
            sent += 1
            in_flight += 1
        # Drain whatever has arrived; wait (bounded) only when nothing has.
        got = False
        while True:
            try:
                packet = recv(65536)
            except BlockingIOError:
                break
            seq = parse(packet)
            if seq is None or seq >= sent:
                continue  # not ours (or from an earlier run)
            got = True
            received += 1
            if seq >= expected:
                lost += seq - expected
                expected = seq + 1
            else:
                lost -= 1  # late, after all: it had been counted lost
        if got:
            last = time.perf_counter()
            continue
        readable, _, _ = select.select([rx], [], [], RECV_TIMEOUT)
        if not readable:
            lost += sent - received - lost  # nothing for RECV_TIMEOUT: what was in flight is gone
            expected = sent
    return Run(sent, received, lost, last - start)


def _big_buffers(sock: socket.socket) -> socket.socket:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    return sock


def _udp() -> socket.socket:
    sock = _big_buffers(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind((HOST, 0))
    return sock


# --- the two measurements ---------------------------------------------------------------------


class Relayed:
    """A -> coturn -> B over channels 0x4000 (A's) and 0x4001 (B's)."""

    CHANNEL_A, CHANNEL_B = 0x4000, 0x4001

    def __init__(self, coturn: Coturn, payload: bytes) -> None:
        self.sock_a, self.sock_b = _udp(), _udp()
        user_a, pass_a = coturn.credentials(salt="bench-a")
        user_b, pass_b = coturn.credentials(salt="bench-b")
        self.a = allocate(self.sock_a, coturn.addr, user_a, pass_a)
        self.b = allocate(self.sock_b, coturn.addr, user_b, pass_b)
        self.a.channel_bind(self.CHANNEL_A, self.b.relayed)
        self.b.channel_bind(self.CHANNEL_B, self.a.relayed)
        self.frame = stun.encode_channel_data(self.CHANNEL_A, payload)
        self.payload = payload
        self.server = coturn.addr
        self._check_one_packet()

    def _check_one_packet(self) -> None:
        """One full decode of what B receives: B's channel, A's payload."""
        self.sock_a.sendto(self.frame, self.server)
        self.sock_b.settimeout(2.0)
        for _ in range(10):
            try:
                packet = self.sock_b.recv(65536)
            except TimeoutError:
                break
            if stun.is_channel_data(packet):
                if stun.decode_channel_data(packet) != (self.CHANNEL_B, self.payload):
                    raise BenchError("relayed packet arrived on the wrong channel or altered")
                return
        raise BenchError("no ChannelData arrived at B through the relay")

    def run(self, window: int, count: int, seconds: float) -> Run:
        frame, server, send_a, pack_into = bytearray(self.frame), self.server, self.sock_a.sendto, SEQ.pack_into
        # coturn may pad ChannelData to 4 bytes; accept both lengths, and only B's channel.
        lengths = {len(frame), len(frame) + (-len(self.payload) % 4)}
        head = self.CHANNEL_B.to_bytes(2, "big")
        unpack_from = SEQ.unpack_from

        def send(seq: int) -> None:
            pack_into(frame, 4, seq)
            send_a(frame, server)

        def parse(packet: bytes) -> int | None:
            if len(packet) in lengths and packet[:2] == head:
                return unpack_from(packet, 4)[0]
            return None

        return pump(send, self.sock_b, parse, window, count, seconds)

    def close(self) -> None:
        self.sock_a.close()
        self.sock_b.close()


ECHO_PROGRAM = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
    sock.setsockopt(socket.SOL_SOCKET, option, int(sys.argv[1]))
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
recvfrom, sendto = sock.recvfrom, sock.sendto
while True:
    data, addr = recvfrom(65536)
    if data == b"stop":
        break
    sendto(data, addr)
"""


class Echo:
    """client -> trivial UDP echo (recvfrom, sendto back) -> client, on 127.0.0.1.

    ``mode="process"`` (default) runs the echo loop in its own Python process, as coturn runs in
    its own; ``mode="thread"`` runs it in a thread of this process (sharing the GIL with the pump).
    """

    def __init__(self, payload: bytes, mode: str = "process") -> None:
        self.client = _udp()
        self.packet = payload
        self.mode = mode
        self.process: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None
        if mode == "process":
            self.process = subprocess.Popen(
                [sys.executable, "-c", ECHO_PROGRAM, str(SOCKET_BUFFER)],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            assert self.process.stdout is not None  # stdout=PIPE
            self.target = (HOST, int(self.process.stdout.readline()))
        else:
            self.echo = _udp()
            self.target = self.echo.getsockname()
            self.thread = threading.Thread(target=self._serve, name="udp-echo", daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        recvfrom, sendto = self.echo.recvfrom, self.echo.sendto
        while True:
            data, addr = recvfrom(65536)
            if data == b"stop":
                return
            sendto(data, addr)

    def run(self, window: int, count: int, seconds: float) -> Run:
        packet, target, send_c, pack_into = bytearray(self.packet), self.target, self.client.sendto, SEQ.pack_into
        size = len(packet)
        unpack_from = SEQ.unpack_from

        def send(seq: int) -> None:
            pack_into(packet, 0, seq)
            send_c(packet, target)

        def parse(data: bytes) -> int | None:
            return unpack_from(data)[0] if len(data) == size else None

        return pump(send, self.client, parse, window, count, seconds)

    def close(self) -> None:
        self.client.sendto(b"stop", self.target)
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
        if self.thread is not None:
            self.thread.join(timeout=2)
            self.echo.close()
        self.client.close()


def _median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coturn_channeldata", description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=int, default=1200, help="payload bytes per packet (default 1200)")
    parser.add_argument("--window", type=int, default=64, help="packets in flight (default 64)")
    parser.add_argument("--count", type=int, default=100_000, help="max packets per measurement")
    parser.add_argument("--seconds", type=float, default=2.0, help="max seconds per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per path (median reported)")
    parser.add_argument("--echo", choices=["process", "thread"], default="process", help="where the echo loop runs")
    args = parser.parse_args(argv)
    if not SEQ.size <= args.payload <= 8192:
        parser.error(f"--payload must be {SEQ.size}..8192 bytes (it starts with a sequence number)")
    if args.window < 1 or args.count < 1 or args.seconds <= 0 or args.repeats < 1:
        parser.error("--window, --count, --repeats must be >= 1 and --seconds > 0")
    if turnserver_path() is None:
        print("coturn_channeldata: turnserver not installed (Debian package 'coturn'); skipped", file=sys.stderr)
        return 0 if argv == [] else 69  # run-all keeps going; a direct run says it could not measure

    payload = bytes(i % 251 for i in range(args.payload))
    print(
        f"ChannelData through coturn vs raw UDP echo, 127.0.0.1, payload {args.payload} B, window {args.window}, "
        f"<= {args.count} pkts / {args.seconds} s per run, median of {args.repeats}, echo in a {args.echo}"
    )
    with Coturn(name="bench-relay") as coturn:
        relayed = Relayed(coturn, payload)
        echo = Echo(payload, args.echo)
        try:
            relayed.run(args.window, min(args.count, 2000), 1.0)  # warm-up
            echo.run(args.window, min(args.count, 2000), 1.0)
            relay_runs, echo_runs = [], []
            for _ in range(args.repeats):  # interleaved, so that drift hits both
                relay_runs.append(relayed.run(args.window, args.count, args.seconds))
                echo_runs.append(echo.run(args.window, args.count, args.seconds))
        finally:
            relayed.close()
            echo.close()
    for name, runs in (("coturn relay (A->relay->B)", relay_runs), ("raw UDP echo", echo_runs)):
        best = _median(runs)
        rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
        print(
            f"{name:<27} {best.rate:>10,.0f} pkts/s  {best.rate * args.payload * 8 / 1e6:>8,.1f} Mbit/s payload  "
            f"(sent {best.sent}, received {best.received}, lost {best.lost}; runs: {rates})"
        )
    ratio = _median(relay_runs).rate / _median(echo_runs).rate
    print(f"ratio relay/echo: {ratio:.2f}")
    print(
        f"median loss: relay {statistics.median(r.lost / max(r.sent, 1) for r in relay_runs):.2%}, "
        f"echo {statistics.median(r.lost / max(r.sent, 1) for r in echo_runs):.2%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
