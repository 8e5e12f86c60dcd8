"""The hostile-input battery: frames and admin requests meant to break the portal, then a check that
it is not broken.

Ends with: 0 ERROR records (the in-process run is watched by ``tests/plugins/no_errors.py``; the
subprocess run's stderr must hold no ERROR line and no traceback), 0 HTTP 5xx from the admin API, a
second, well-behaved client that joins, gets ``init`` and a heartbeat reply, and admin views that
are strict JSON. The subprocess run sends 10,000 hostile frames and bounds the portal's RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from connlib.aio.portal_client import portal_url
from connlib.core.messages import MAX_FRAME_BYTES, loads_strict
from fake_portal import FakePortal, PortalConfig

TOKEN = "battery-token"
BOUND = 10.0
RSS_LIMIT_MIB = 150

# -- frames that keep the socket (the portal answers with a channel error) -------------------------


def _frame(topic: str, event: str, payload: Any, ref: Any) -> str:
    return json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})


def _nested(depth: int) -> Any:
    node: Any = {}
    for _ in range(depth):
        node = {"a": node}
    return node


BIG = "x" * (MAX_FRAME_BYTES - 1000)
KEEPERS = [
    lambda r: _frame("client", "no_relays", 7, r),
    lambda r: _frame("client", "no_relays", "payload", r),
    lambda r: _frame("client", "no_relays", [1, 2, 3], r),
    lambda r: json.dumps({"topic": "client", "event": "no_relays", "payload": {}, "ref": r, "join_ref": 1.5}),
    lambda r: _frame("client", "no_such_event", {"big": BIG}, r),  # 63 KB each: the 447 MiB case
    lambda r: _frame("room:lobby", "phx_join", {}, r),
    lambda r: _frame("phoenix", "shout", {}, r),
    lambda r: _frame("client", "no_such_event", _nested(30), r),
    lambda r: _frame("client", "stream_stats", {"sent": -1}, r),
    lambda r: _frame(
        "client",
        "stream_stats",
        {"sent": 1, "delivered": 5, "lost": 0, "in_flight": 0, "gaps": 0, "connected": True},
        r,
    ),
    lambda r: _frame("client", "stream_stats", {"sent": 9, "delivered": 1, "lost": 0, "in_flight": 0}, r),
    lambda r: _frame(
        "client", "request_connection", {"peer_id": "g\nlevel=ERROR forged=1", "ufrag": "u", "pwd": "p"}, r
    ),
    lambda r: _frame("client", "request_connection", {"peer_id": "g", "ufrag": "u:x", "pwd": "p" * 500}, r),
    lambda r: _frame("client", "new_ice_candidates", {"peer_id": "g", "candidates": ["candidate:1 x"] * 65}, r),
    lambda r: _frame("client", "new_ice_candidates", {"peer_id": "g", "candidates": [7]}, r),
    lambda r: _frame("client", "connection_accepted", {"peer_id": "g", "ufrag": "u", "pwd": "p"}, r),
    lambda r: _frame("client", "x" * 5000, {}, r),
]

# -- frames that cannot be decoded (the portal closes the socket with 1007) ------------------------

CLOSERS: list[str | bytes] = [
    "this is not json",
    "7",
    "[1,2,3]",
    '{"topic":"client"}',
    '{"topic":"client","event":"x","payload":{"n":NaN}}',
    '{"topic":"client","event":"x","payload":{"n":-Infinity}}',
    '{"topic":"client","event":"x","payload":{"n":1e999}}',
    '{"topic":"client","event":"stream_stats","payload":{"sent":' + "9" * 400 + "}}",
    '{"topic":"client","event":"request_connection","payload":{"peer_id":"g","ufrag":"u","pwd":"\\ud800"}}',
    '{"topic":"client","event":"x","payload":{"password":"\\udc00"}}',
    '{"topic":"relay","event":"phx_join","payload":{"stamp_secret":"\\ud800"}}',
    '{"topic":"client","event":"x","payload":' + "[" * 977 + "]" * 977 + "}",
    "[" * 30000,
    b"\xff\xfe\xfd",
    b'{"topic":"client","event":"x","payload":{"s":"\xc3\x28"}}',
]

HOSTILE_UPGRADES = [
    {"external_id": "a\nlevel=ERROR msg=forged"},
    {"external_id": "x" * 600},
    {"external_id": "\u202e" + "evil"},
    {"name": "<script>"},
    {"vsn": "9.9.9"},
]


@dataclass
class Target:
    url: str
    admin_url: str
    admin_port: int


@dataclass
class Tally:
    frames: int = 0
    closes: Counter[int] | None = None
    statuses: Counter[int] | None = None

    def __post_init__(self) -> None:
        self.closes = Counter()
        self.statuses = Counter()


async def _open(target: Target, peer: str, role: str = "client", **params: str) -> ClientConnection:
    if role == "relay":
        params = {"ipv4": "127.0.0.1", "name": peer, **params}
    else:
        params = {"external_id": peer, "public_key": f"pk-{peer}", **params}
    return await connect(
        portal_url(target.url, role, **params),
        additional_headers={"X-Authorization": f"Bearer {TOKEN}"},
        proxy=None,
        max_size=None,
        open_timeout=BOUND,
    )


async def _drain(ws: ClientConnection, got: list[Any]) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            got.append(json.loads(message))


async def _heartbeat_ok(ws: ClientConnection, got: list[Any], ref: str) -> bool:
    await ws.send(_frame("phoenix", "heartbeat", {}, ref))
    async with asyncio.timeout(BOUND):
        while True:
            for frame in got:
                if frame.get("ref") == ref:
                    return frame["payload"]["status"] == "ok"
            await asyncio.sleep(0.01)


async def keepers(target: Target, peer: str, count: int, tally: Tally) -> None:
    """``count`` channel-error frames on one joined socket; it must still answer a heartbeat."""
    ws = await _open(target, peer)
    got: list[Any] = []
    reader = asyncio.create_task(_drain(ws, got))
    await ws.send(_frame("client", "phx_join", {}, "join"))
    for i, make in zip(range(count), itertools.cycle(KEEPERS), strict=False):
        await ws.send(make(i))
        tally.frames += 1
        if i % 50 == 49:  # let the replies catch up, so that this socket is never a slow consumer
            async with asyncio.timeout(BOUND):
                while len(got) < i - 40:
                    await asyncio.sleep(0.005)
    assert await _heartbeat_ok(ws, got, "alive"), f"{peer} lost its socket to channel-error frames"
    errors = [f for f in got if f.get("event") == "phx_reply" and f["payload"]["status"] == "error"]
    assert len(errors) >= count - count // len(KEEPERS) - 1
    await ws.close()
    await reader


async def closers(target: Target, peer: str, count: int, tally: Tally) -> None:
    for i, frame in zip(range(count), itertools.cycle(CLOSERS), strict=False):
        ws = await _open(target, f"{peer}-{i % 7}", role="relay" if b"stamp_secret" in _bytes(frame) else "client")
        await ws.send(frame)
        tally.frames += 1
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(BOUND):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None, "closed without a close frame"
        tally.closes[info.value.rcvd.code] += 1  # type: ignore[index]


def _bytes(frame: str | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass")


async def upgrades(target: Target, tally: Tally) -> None:
    for params in HOSTILE_UPGRADES:
        with pytest.raises(InvalidStatus) as info:
            await _open(target, "u", **params)
        assert info.value.response.status_code == 400
        tally.statuses[info.value.response.status_code] += 1  # type: ignore[index]


# -- admin requests -------------------------------------------------------------------------------

ADMIN_REQUESTS: list[tuple[str, str, bytes | None, dict[str, str]]] = [
    ("GET", "/api/events?since=" + "1" + "0" * 30, None, {}),
    ("GET", "/api/events?since=-5&limit=" + "9" * 400, None, {}),
    ("GET", "/api/events?since=%ff%fe", None, {}),
    ("POST", "/api/partition", b'{"id": "c1", "seconds": NaN}', {}),
    ("POST", "/api/partition", b'{"id": "c1", "seconds": 1e308}', {}),
    ("POST", "/api/partition", b'{"id": "c1", "seconds": ' + b"9" * 400 + b"}", {}),
    ("POST", "/api/partition", b'{"id": "c1\\nlevel=ERROR", "seconds": 1}', {}),
    ("POST", "/api/partition", b'{"id": "\\ud800"}', {}),
    ("POST", "/api/partition", b"[" * 977 + b"]" * 977, {}),
    ("POST", "/api/partition", b'{"id": "c1", "seconds": 1, "x": ' + b"[" * 500 + b"]" * 500 + b"}", {}),
    ("POST", "/api/partition", b"\xff\xfe", {}),
    ("POST", "/api/heal", b'{"id": 7}', {}),
    ("POST", "/api/heal", b"{" + b" " * 70000 + b"}", {}),
    ("POST", "/api/relays/%0Aforged/disconnect", None, {}),
    ("POST", "/api/relays/" + "r" * 3000 + "/disconnect", None, {}),
    ("GET", "/api/relays", None, {"Host": "evil.example"}),
    ("POST", "/api/partition", b'{"id": "c1"}', {"Origin": "http://evil.example"}),
    ("POST", "/api/heal", b"{}", {"Sec-Fetch-Site": "cross-site"}),
    ("DELETE", "/api/relays", None, {}),
    ("GET", "/api/../../etc/passwd", None, {}),
    ("GET", "/" + "a" * 7000, None, {}),
    ("GET", "/api/overview", None, {"X-Junk": "y" * 9000}),
]

RAW_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /api/relays HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/heal HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    b"POST /api/heal HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /api/relays HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"GET /api/relays HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
]


_KEY = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
RAW_WEBSOCKET = [  # to the websocket port, not the admin port
    b"GARBAGE\r\n\r\n",
    b"GET /client/websocket HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    f"GET /client/websocket?token={TOKEN}&external_id=%ff HTTP/1.1\r\nHost: x\r\n{_KEY}\r\n\r\n".encode(),
    f"GET /client/websocket?token={TOKEN}&vsn=%00 HTTP/1.1\r\nHost: x\r\n{_KEY}\r\n\r\n".encode(),
    f"GET /nope/websocket?token={TOKEN} HTTP/1.1\r\nHost: x\r\n{_KEY}\r\n\r\n".encode(),
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
]


def _http(target: Target, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    head = {"Host": f"127.0.0.1:{target.admin_port}", "Connection": "close", **headers}
    if body is not None:
        head.setdefault("Content-Type", "application/json")
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    return _raw(target, ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))


def _raw(target: Target, data: bytes, port: int | None = None) -> int:
    """Send raw bytes; the status code of the answer, or 0 if the server just closed.

    To the websocket port the sender then half-closes, so that a server waiting for the rest of an
    incomplete request sees the end at once (aiohttp, on the admin port, answers without that)."""
    with socket.create_connection(("127.0.0.1", port or target.admin_port), timeout=BOUND) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            if port is not None:
                sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else 0


async def admin_battery(target: Target, tally: Tally) -> None:
    for method, path, body, headers in ADMIN_REQUESTS:
        status = await asyncio.to_thread(_http, target, method, path, body, headers)
        assert 400 <= status < 500, (method, path[:60], status)
        tally.statuses[status] += 1  # type: ignore[index]
    for data in RAW_HTTP:
        status = await asyncio.to_thread(_raw, target, data)
        assert status == 0 or 400 <= status < 500, (data[:40], status)
        tally.statuses[status] += 1  # type: ignore[index]
    ws_port = int(target.url.rsplit(":", 1)[1])
    for data in RAW_WEBSOCKET:
        status = await asyncio.to_thread(_raw, target, data, ws_port)
        assert status == 0 or 400 <= status < 500, (data[:40], status)
        tally.statuses[status] += 1  # type: ignore[index]


async def healthy(target: Target) -> None:
    """A second, well-behaved client after the battery: join, init, heartbeat, strict-JSON views."""
    ws = await _open(target, "healthy-client")
    got: list[Any] = []
    reader = asyncio.create_task(_drain(ws, got))
    await ws.send(_frame("client", "phx_join", {}, "1"))
    async with asyncio.timeout(BOUND):
        while not any(f.get("event") == "init" for f in got):
            await asyncio.sleep(0.01)
    assert await _heartbeat_ok(ws, got, "hb")
    for path in ("/api/overview", "/api/events?since=0", "/api/clients", "/"):
        status, body = await asyncio.to_thread(_get, target, path)
        assert status == 200, path
        if path != "/":
            loads_strict(body, max_depth=64)  # no NaN, no lone surrogate, bounded depth
    await ws.close()
    await reader


def _get(target: Target, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", target.admin_port), timeout=BOUND) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def battery(target: Target, keep: int, close: int, sockets: int = 4) -> Tally:
    tally = Tally()
    await upgrades(target, tally)
    await asyncio.gather(*(keepers(target, f"k{i}", keep // sockets, tally) for i in range(sockets)))
    await asyncio.gather(*(closers(target, f"c{i}", close // sockets, tally) for i in range(sockets)))
    await admin_battery(target, tally)
    await healthy(target)
    assert tally.statuses is not None and not any(s >= 500 for s in tally.statuses)
    assert tally.closes is not None and set(tally.closes) <= {1007, 1009}, tally.closes
    return tally


# -- the two runs ---------------------------------------------------------------------------------


@pytest.fixture
async def portal() -> AsyncIterator[FakePortal]:
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.05)) as p:
        yield p


async def test_the_hostile_battery_in_process_leaves_no_error_and_a_healthy_portal(portal):
    target = Target(portal.url, portal.admin_url, portal.admin_port)
    tally = await battery(target, keep=1200, close=300)
    assert tally.frames == 1500
    # The log holds summaries: its whole JSON stays small although 1/17 of the frames were 63 KB.
    assert len(json.dumps(portal.core.events.since(0))) < 40 * 1024 * 1024


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def portal_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Target, Path]]:
    stderr = tmp_path / "portal.stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fake_portal", "--token", TOKEN, "--log-level", "INFO"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            line = json.loads(proc.stdout.readline())
            admin_port = int(line["admin_url"].rsplit(":", 1)[1])
            yield proc, Target(line["url"], line["admin_url"], admin_port), stderr
        finally:
            proc.terminate()
            proc.wait(BOUND)


@pytest.mark.slow
async def test_ten_thousand_hostile_frames_leave_the_portal_process_bounded_and_error_free(tmp_path):
    with portal_process(tmp_path) as (proc, target, stderr):
        start = time.monotonic()
        before = _rss_kib(proc.pid)
        tally = await battery(target, keep=8000, close=2000)
        after = _rss_kib(proc.pid)
        took = time.monotonic() - start
    assert tally.frames == 10_000
    log = stderr.read_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
    print(
        f"\nportal RSS before {before / 1024:.1f} MiB, after 10,000 hostile frames {after / 1024:.1f} MiB "
        f"({took:.1f} s; closes {dict(tally.closes or {})}; admin statuses {dict(tally.statuses or {})})"
    )
    assert after < RSS_LIMIT_MIB * 1024
