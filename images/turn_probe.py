#!/usr/bin/env python3
"""A tiny, standard-library-only STUN/TURN probe for the relay images and their tests.

It runs with the bare Debian ``python3`` inside any of the images (no venv, no project imports), so it
works as the relay's HEALTHCHECK and as a hand/test tool inside the client and gateway containers.

    turn_probe.py binding [HOST[:PORT]]                 # STUN Binding; exit 0 on a valid answer
    turn_probe.py allocate --server H:P --secret S      # TURN Allocate with REST credentials
    turn_probe.py echo --server H:P --secret S --permit IP [--wait 20] [--out FILE]
        # allocate, permit IP, print the relayed address, echo every Data indication back
    turn_probe.py send --server H:P --secret S --peer IP:PORT [--count 5] [--wait 5]
        # allocate, permit the peer, send datagrams to it through the relay, wait for echoes

Every command prints one JSON object per line on stdout and exits 0 only on success.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time

MAGIC = 0x2112A442
REALM_DEFAULT = "firezone"

# methods and classes
BINDING, ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION = 0x001, 0x003, 0x004, 0x006, 0x007, 0x008
REQUEST, INDICATION, SUCCESS, ERROR = 0x000, 0x010, 0x100, 0x110

# attributes
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
LIFETIME, XOR_PEER_ADDRESS, DATA_ATTR = 0x000D, 0x0012, 0x0013
REALM, NONCE, XOR_RELAYED_ADDRESS = 0x0014, 0x0015, 0x0016
REQUESTED_TRANSPORT, XOR_MAPPED_ADDRESS, FINGERPRINT = 0x0019, 0x0020, 0x8028


class ProbeError(Exception):
    pass


def msg_type(method: int, cls: int) -> int:
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((cls & 0x100) << 0)
        | ((cls & 0x010) << 0)
    )


def split_type(t: int) -> tuple[int, int]:
    method = ((t & 0x3E00) >> 2) | ((t & 0x00E0) >> 1) | (t & 0x000F)
    return method, t & 0x0110


def xor_addr(ip: str, port: int, txid: bytes) -> bytes:
    packed = socket.inet_aton(ip)
    xport = port ^ (MAGIC >> 16)
    xip = bytes(a ^ b for a, b in zip(packed, struct.pack("!I", MAGIC), strict=True))
    return struct.pack("!BBH", 0, 1, xport) + xip


def parse_xor_addr(value: bytes, txid: bytes) -> tuple[str, int]:
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    if family != 1:
        raise ProbeError("only IPv4 is supported by this probe")
    ip = bytes(a ^ b for a, b in zip(value[4:8], struct.pack("!I", MAGIC), strict=False))
    return socket.inet_ntoa(ip), xport ^ (MAGIC >> 16)


def encode(method: int, cls: int, txid: bytes, attrs: list[tuple[int, bytes]], key: bytes | None = None) -> bytes:
    body = b""
    for atype, value in attrs:
        pad = (4 - len(value) % 4) % 4
        body += struct.pack("!HH", atype, len(value)) + value + b"\0" * pad
    t = msg_type(method, cls)
    if key is not None:
        header = struct.pack("!HHI", t, len(body) + 24, MAGIC) + txid
        mac = hmac.new(key, header + body, hashlib.sha1).digest()
        body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    header = struct.pack("!HHI", t, len(body) + 8, MAGIC) + txid
    crc = (binascii.crc32(header + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return struct.pack("!HHI", t, len(body), MAGIC) + txid + body


def decode(data: bytes) -> tuple[int, int, bytes, dict[int, bytes]]:
    if len(data) < 20:
        raise ProbeError("short STUN message")
    t, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or t & 0xC000:
        raise ProbeError("not a STUN message")
    txid, pos = data[8:20], 20
    attrs: dict[int, bytes] = {}
    end = 20 + length
    while pos + 4 <= end:
        atype, alen = struct.unpack("!HH", data[pos : pos + 4])
        attrs.setdefault(atype, data[pos + 4 : pos + 4 + alen])
        pos += 4 + alen + (4 - alen % 4) % 4
    method, cls = split_type(t)
    return method, cls, txid, attrs


def parse_hostport(text: str, default_port: int = 3478) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    ip = socket.gethostbyname(host)
    return ip, int(port) if port else default_port


def rest_credentials(secret: str, ttl: int = 3600) -> tuple[str, str]:
    username = f"{int(time.time()) + ttl}:probe{os.getpid()}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


class TurnClient:
    def __init__(self, server: tuple[str, int], username: str = "", password: str = "", timeout: float = 1.0):
        self.server = server
        self.username, self.password = username, password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.timeout = timeout
        self.realm = REALM_DEFAULT
        self.nonce = b""
        self.pending_data: list[tuple[tuple[str, int], bytes]] = []

    @property
    def key(self) -> bytes:
        return hashlib.md5(f"{self.username}:{self.realm}:{self.password}".encode()).digest()

    def transact(self, method: int, attrs: list[tuple[int, bytes]], auth: bool, retries: int = 3):
        for _ in range(2):  # at most one 401/438 round with a fresh nonce
            txid = os.urandom(12)
            full = list(attrs)
            key = None
            if auth and self.nonce:
                full += [(USERNAME, self.username.encode()), (REALM, self.realm.encode()), (NONCE, self.nonce)]
                key = self.key
            packet = encode(method, REQUEST, txid, full, key)
            answer = self._exchange(packet, txid, retries)
            _, cls, _, got = answer
            if cls == ERROR:
                code = got.get(ERROR_CODE, b"\0\0\0\0")
                number = code[2] * 100 + code[3]
                if auth and number in (401, 438) and NONCE in got:
                    self.nonce = got[NONCE]
                    self.realm = got.get(REALM, self.realm.encode()).decode()
                    continue
                raise ProbeError(f"error {number} {code[4:].decode(errors='replace')}".strip())
            return got
        raise ProbeError("authentication failed")

    def _exchange(self, packet: bytes, txid: bytes, retries: int):
        for attempt in range(retries):
            self.sock.sendto(packet, self.server)
            deadline = time.monotonic() + self.timeout * (attempt + 1)
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    data, _ = self.sock.recvfrom(65535)
                except TimeoutError:
                    break
                try:
                    method, cls, rtx, attrs = decode(data)
                except ProbeError:
                    continue
                if rtx == txid:
                    return method, cls, rtx, attrs
                if cls == INDICATION and method == DATA:
                    self.pending_data.append(self._data(attrs, rtx))
        raise ProbeError(f"no answer from {self.server[0]}:{self.server[1]}")

    def _data(self, attrs: dict[int, bytes], txid: bytes) -> tuple[tuple[str, int], bytes]:
        return parse_xor_addr(attrs[XOR_PEER_ADDRESS], txid), attrs.get(DATA_ATTR, b"")

    def binding(self) -> tuple[str, int]:
        got = self.transact(BINDING, [], auth=False)
        if XOR_MAPPED_ADDRESS not in got:
            raise ProbeError("binding answer without XOR-MAPPED-ADDRESS")
        return parse_xor_addr(got[XOR_MAPPED_ADDRESS], b"")

    def allocate(self) -> dict:
        got = self.transact(ALLOCATE, [(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))], auth=True)
        relayed = parse_xor_addr(got[XOR_RELAYED_ADDRESS], b"")
        mapped = parse_xor_addr(got[XOR_MAPPED_ADDRESS], b"") if XOR_MAPPED_ADDRESS in got else None
        lifetime = struct.unpack("!I", got[LIFETIME])[0] if LIFETIME in got else None
        return {
            "relayed": f"{relayed[0]}:{relayed[1]}",
            "mapped": mapped and f"{mapped[0]}:{mapped[1]}",
            "lifetime": lifetime,
        }

    def permit(self, ip: str) -> None:
        self.transact(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, xor_addr(ip, 0, b""))], auth=True)

    def send(self, peer: tuple[str, int], payload: bytes) -> None:
        attrs = [(XOR_PEER_ADDRESS, xor_addr(peer[0], peer[1], b"")), (DATA_ATTR, payload)]
        self.sock.sendto(encode(SEND, INDICATION, os.urandom(12), attrs), self.server)

    def receive(self, until: float) -> tuple[tuple[str, int], bytes] | None:
        if self.pending_data:
            return self.pending_data.pop(0)
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            try:
                method, cls, txid, attrs = decode(data)
            except ProbeError:
                continue
            if cls == INDICATION and method == DATA:
                return self._data(attrs, txid)
        return None

    def close(self) -> None:
        try:  # Refresh with lifetime 0 frees the allocation right away
            self.transact(REFRESH, [(LIFETIME, struct.pack("!I", 0))], auth=True, retries=1)
        except ProbeError:
            pass
        self.sock.close()


def emit(obj: dict, out=None) -> None:
    line = json.dumps(obj)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("binding")
    b.add_argument("server", nargs="?", default="127.0.0.1:3478")
    b.add_argument("--timeout", type=float, default=0.5)
    for name in ("allocate", "echo", "send"):
        p = sub.add_parser(name)
        p.add_argument("--server", required=True)
        p.add_argument("--secret", required=True)
        p.add_argument("--timeout", type=float, default=1.0)
        p.add_argument("--out")
        if name == "echo":
            p.add_argument("--permit", action="append", required=True)
            p.add_argument("--wait", type=float, default=20.0)
        if name == "send":
            p.add_argument("--peer", required=True)
            p.add_argument("--count", type=int, default=5)
            p.add_argument("--wait", type=float, default=5.0)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "binding":
            client = TurnClient(parse_hostport(args.server), timeout=args.timeout)
            ip, port = client.binding()
            emit({"event": "binding", "server": args.server, "mapped": f"{ip}:{port}"})
            return 0
        user, password = rest_credentials(args.secret)
        client = TurnClient(parse_hostport(args.server), user, password, timeout=args.timeout)
        alloc = client.allocate()
        emit({"event": "allocated", "server": args.server, "username": user, **alloc}, args.out)
        try:
            if args.cmd == "echo":
                for ip in args.permit:
                    client.permit(socket.gethostbyname(ip))
                emit({"event": "permitted", "peers": args.permit}, args.out)
                until, echoed = time.monotonic() + args.wait, 0
                while (got := client.receive(until)) is not None:
                    peer, payload = got
                    client.send(peer, payload)
                    echoed += 1
                    emit({"event": "echoed", "from": f"{peer[0]}:{peer[1]}", "bytes": len(payload)}, args.out)
                emit({"event": "done", "echoed": echoed}, args.out)
                return 0
            if args.cmd == "send":
                peer = parse_hostport(args.peer, 0)
                client.permit(peer[0])
                received, senders = 0, set()
                for i in range(args.count):
                    payload = f"probe {i} {time.time()}".encode()
                    client.send(peer, payload)
                    until = time.monotonic() + args.wait / args.count
                    while (got := client.receive(until)) is not None:
                        if got[1] == payload:
                            received += 1
                            senders.add(f"{got[0][0]}:{got[0][1]}")
                            break
                emit(
                    {
                        "event": "sent",
                        "peer": args.peer,
                        "sent": args.count,
                        "echoed": received,
                        "from": sorted(senders),
                    },
                    args.out,
                )
                return 0 if received else 1
            return 0
        finally:
            client.close()
    except (ProbeError, OSError, KeyError) as exc:
        emit({"event": "failed", "cmd": args.cmd, "error": f"{type(exc).__name__}: {exc}"}, getattr(args, "out", None))
        return 1


if __name__ == "__main__":
    sys.exit(main())
