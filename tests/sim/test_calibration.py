"""Calibration: the same request sequences to ``sim.relay.SimRelay`` and to a real ``turnserver``
must get the same answers (method, class, error code) with the same signed-ness.

A step is ``(socket, method, auth, extra attributes)``; ``auth`` is ``None`` (no credentials),
``"good"``, ``"other-user"`` (valid credentials of another username), ``"bad-password"`` or
``"stale-nonce"``. Sockets are numbered: each is its own 5-tuple on both targets.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from connlib.core import stun
from connlib.core.credentials import REALM, long_term_key, rest_credentials
from connlib.core.stun import Class, Message, Method
from harness.coturn import Coturn
from sim.relay import SimRelay

PEER_A, PEER_B = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
Step = tuple  # (socket, Method, auth, attributes) or ("wait", seconds)


def _bind(sock: int, number: int, peer: tuple[str, int]) -> Step:
    return (sock, Method.CHANNEL_BIND, "good", [("CHANNEL-NUMBER", number), ("XOR-PEER-ADDRESS", peer)])


def _after_lifetime(sock: int, *then: Step) -> list[Step]:
    """An allocation on ``sock``, PEER_A bound under 0x4000, 7 s idle (past coturn's 3 s channel
    lifetime, its 5 s permission and a client's lifetime + rebind timeout, 4.5 s), then ``then``."""
    return [
        (sock, Method.ALLOCATE, None, []),
        (sock, Method.ALLOCATE, "good", []),
        _bind(sock, 0x4000, PEER_A),
        ("wait", 7.0),
        *then,
    ]


SEQUENCES: dict[str, list[Step]] = {
    "allocate": [
        (0, Method.ALLOCATE, None, []),
        (0, Method.ALLOCATE, "good", []),
        (0, Method.ALLOCATE, "good", []),  # a second allocation on the 5-tuple
        (0, Method.REFRESH, "good", []),
        (0, Method.REFRESH, "stale-nonce", []),
        (0, Method.REFRESH, "bad-password", []),
        (0, Method.REFRESH, "other-user", []),
        (0, Method.REFRESH, "good", [("LIFETIME", 0)]),
        (0, Method.ALLOCATE, "good", []),  # the deleted allocation lingers
        (0, Method.REFRESH, "good", []),  # ... and a REFRESH revives it
        (0, Method.REFRESH, "good", [("LIFETIME", 0)]),
        ("wait", 1.6),
        (0, Method.ALLOCATE, "good", []),  # gone, and the session's nonce with it
        (0, Method.ALLOCATE, "good", []),
    ],
    "no-allocation": [
        (1, Method.REFRESH, None, []),
        (1, Method.REFRESH, "good", []),
        (1, Method.CHANNEL_BIND, "good", [("CHANNEL-NUMBER", 0x4000), ("XOR-PEER-ADDRESS", PEER_A)]),
    ],
    "channels": [
        (2, Method.ALLOCATE, None, []),
        (2, Method.ALLOCATE, "good", []),
        (2, Method.CHANNEL_BIND, "good", [("CHANNEL-NUMBER", 0x4000), ("XOR-PEER-ADDRESS", PEER_A)]),
        (2, Method.CHANNEL_BIND, "good", [("CHANNEL-NUMBER", 0x4000), ("XOR-PEER-ADDRESS", PEER_A)]),  # refresh
        (2, Method.CHANNEL_BIND, "good", [("CHANNEL-NUMBER", 0x4001), ("XOR-PEER-ADDRESS", PEER_A)]),
        (2, Method.CHANNEL_BIND, "good", [("CHANNEL-NUMBER", 0x4000), ("XOR-PEER-ADDRESS", PEER_B)]),
        (2, Method.CHANNEL_BIND, "other-user", [("CHANNEL-NUMBER", 0x4002), ("XOR-PEER-ADDRESS", PEER_B)]),
    ],
    # coturn keeps a binding past its lifetime: run against a coturn with 3 s channels and 5 s
    # permissions (LIFETIMES), the model (which never ends a binding) must answer alike.
    "channels-after-lifetime": _after_lifetime(
        3,
        _bind(3, 0x4001, PEER_A),
        _bind(3, 0x4000, PEER_B),
        _bind(3, 0x4000, PEER_A),
    ),
    # What connlib sent in the simulator's seed 67 (channel lifetime 30 s): a peer idle past
    # lifetime + rebind timeout (here 3 + 1.5 s), a new peer bound first, then the idle one under a
    # new number: coturn refuses it (binding the new peer swept nothing), takes the old number.
    "channels-after-lifetime-new-peer-first": _after_lifetime(
        4,
        _bind(4, 0x4001, PEER_B),
        _bind(4, 0x4002, PEER_A),
        _bind(4, 0x4000, PEER_A),
    ),
}
LIFETIMES = {name: 3.0 for name in SEQUENCES if name.startswith("channels-after-lifetime")}  # --channel-lifetime


class Target:
    """One relay to calibrate against: real (UDP) or the model (in-process)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        expiry = int(time.time()) + 3600
        self.creds = {"good": rest_credentials(secret, expiry, "calib"), "other": rest_credentials(secret, expiry, "x")}
        self.nonce: dict[int, str] = {}

    def exchange(self, sock: int, data: bytes) -> bytes:
        raise NotImplementedError

    def wait(self, seconds: float) -> None:
        raise NotImplementedError

    def step(self, sock: int, method: Method, auth: str | None, extra: list) -> tuple[str, int | None, bool]:
        message = Message(method, Class.REQUEST, stun.new_transaction_id(_RNG), list(extra))
        if method == Method.ALLOCATE:
            message.add("REQUESTED-TRANSPORT", stun.TRANSPORT_UDP)
        key = None
        if auth is not None:
            user, password = self.creds["other" if auth == "other-user" else "good"]
            nonce = "bogus-nonce" if auth == "stale-nonce" else self.nonce.get(sock, "none")
            key = long_term_key(user, REALM, "wrong" if auth == "bad-password" else password)
            message.add("USERNAME", user).add("REALM", REALM).add("NONCE", nonce)
        reply = stun.decode(self.exchange(sock, message.encode(key)))
        if (nonce := reply.get("NONCE")) is not None:
            self.nonce[sock] = nonce
        return reply.cls.name, reply.error_code, "MESSAGE-INTEGRITY" in reply


class Real(Target):
    def __init__(self, server: Coturn) -> None:
        super().__init__(server.secret)
        self.addr = server.addr
        self.sockets: dict[int, socket.socket] = {}

    def exchange(self, sock: int, data: bytes) -> bytes:
        if sock not in self.sockets:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.settimeout(2.0)
            self.sockets[sock] = s
        self.sockets[sock].sendto(data, self.addr)
        return self.sockets[sock].recv(2048)

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        for s in self.sockets.values():
            s.close()


class Model(Target):
    def __init__(self, secret: str, channel_lifetime: float = 600.0) -> None:
        super().__init__(secret)
        self.relay = SimRelay("calib", "127.0.0.1", secret, channel_lifetime=channel_lifetime)
        self.now = 1.0

    def wait(self, seconds: float) -> None:
        self.now += seconds

    def exchange(self, sock: int, data: bytes) -> bytes:
        out = self.relay.handle(data, ("127.0.0.1", 50000 + sock), self.relay.addr, self.now, time.time())
        assert len(out) == 1
        return out[0][2]


_RNG = random.Random(0)  # transaction ids only need to be unique here


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_the_relay_model_answers_like_coturn(coturn_factory, name):
    lifetime = LIFETIMES.get(name)
    args = ("--channel-lifetime", f"{lifetime:.0f}", "--permission-lifetime", "5") if lifetime else ()
    coturn = coturn_factory(name="relay-a", extra_args=args)
    real, model = Real(coturn), Model(coturn.secret, lifetime or 600.0)
    try:
        observed = []
        for step in SEQUENCES[name]:
            if step[0] == "wait":
                real.wait(step[1])
                model.wait(step[1])
                continue
            observed.append((step[1].name, step[2], real.step(*step), model.step(*step)))
    finally:
        real.close()
    differences = [o for o in observed if o[2] != o[3]]
    assert not differences, f"{name}: (method, auth, coturn, model): {differences}"
