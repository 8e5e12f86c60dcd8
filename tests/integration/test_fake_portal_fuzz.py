"""Hypothesis throws malformed and half-valid frames at a running fake_portal.

After every example the fuzzed socket either still answers a heartbeat or was closed with a
reason, a long-lived bystander socket still answers, and the portal logged no ERROR (the test
plugin fails the test otherwise). The portal runs on its own event loop thread so hypothesis can
drive it with the synchronous websockets client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from connlib.aio.portal_client import portal_url
from connlib.core.messages import Event, Topic
from fake_portal import FakePortal, PortalConfig

TOKEN = "fuzz-token"
EXPECTED_CLOSE_CODES = {1007, 4003}  # malformed frame; replaced by a newer socket of the same peer

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=15,
)
names = st.sampled_from([*Topic, *Event, "room:lobby", ""]) | st.text(max_size=12)
refs = st.none() | st.integers() | st.text(max_size=5) | st.booleans() | st.floats(allow_nan=False)
v1_frames = st.fixed_dictionaries(
    {"topic": names, "event": names},
    optional={
        "payload": st.dictionaries(
            st.sampled_from(["stamp_secret", "peer_id", "ufrag", "pwd", "candidates", "relay_id"]), json_values
        )
        | json_values,
        "ref": refs,
        "join_ref": refs,
    },
).map(json.dumps)
v2_frames = st.lists(json_values, min_size=5, max_size=5).map(json.dumps)
frames = st.one_of(st.text(max_size=300), json_values.map(json.dumps), v1_frames, v2_frames, st.binary(max_size=100))


@pytest.fixture(scope="module")
def threaded_portal() -> Iterator[FakePortal]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-portal", daemon=True)
    thread.start()
    portal = FakePortal(PortalConfig(token=TOKEN, debounce=0.05))
    asyncio.run_coroutine_threadsafe(portal.start(), loop).result(10)
    yield portal
    asyncio.run_coroutine_threadsafe(portal.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def open_socket(portal: FakePortal, role: str, peer: str) -> ClientConnection:
    params = {"ipv4": "127.0.0.1", "name": peer} if role == "relay" else {"external_id": peer, "public_key": peer}
    return connect(
        portal_url(portal.url, role, **params), additional_headers={"X-Authorization": f"Bearer {TOKEN}"}, proxy=None
    )


def answers_heartbeat(ws: ClientConnection, ref: str) -> bool:
    ws.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": ref}))
    while True:
        frame = json.loads(ws.recv(timeout=5))
        if frame.get("ref") == ref and frame.get("event") == "phx_reply":
            return frame["payload"]["status"] == "ok"


@pytest.fixture(scope="module")
def bystander(threaded_portal: FakePortal) -> Iterator[ClientConnection]:
    with open_socket(threaded_portal, "client", "bystander") as ws:
        ws.send(json.dumps({"topic": "client", "event": "phx_join", "payload": {}, "ref": 0}))
        yield ws


@settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    role=st.sampled_from(["client", "gateway", "relay"]),
    peer=st.sampled_from(["p1", "p2"]),
    join_first=st.booleans(),
    sent=st.lists(frames, min_size=1, max_size=5),
)
def test_fuzzed_frames_never_break_the_portal(threaded_portal, bystander, role, peer, join_first, sent):
    with open_socket(threaded_portal, role, peer) as ws:
        if join_first:
            ws.send(json.dumps({"topic": role, "event": "phx_join", "payload": {"stamp_secret": "s"}, "ref": 0}))
        try:
            for data in sent:
                ws.send(data)
            assert answers_heartbeat(ws, "probe")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code in EXPECTED_CLOSE_CODES, closed
            assert closed.rcvd.reason
    assert answers_heartbeat(bystander, f"bystander-{len(sent)}")
