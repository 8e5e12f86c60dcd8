"""A socket that stops reading is dropped as a slow consumer (4005); the others are not held up.

The portal writes a frame at once while a socket's buffer has room and queues it otherwise
(``fake_portal.server``); a queue of ``outbox_size`` frames means the peer is not reading.
The reader's kernel buffer is made small so that the backlog builds after a few thousand replies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from connlib.aio.portal_client import portal_url
from fake_portal import FakePortal, PortalConfig

TOKEN = "test-token"
HEARTBEATS = 200_000  # ~17 MB of replies: more than the kernel's send and receive buffers hold
BOUND = 20.0


def _heartbeat(ref: int) -> str:
    return json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": ref})


async def _open(portal: FakePortal, peer_id: str, **kwargs):
    url = portal_url(portal.url, "client", external_id=peer_id, public_key=f"pk-{peer_id}")
    headers = {"X-Authorization": f"Bearer {TOKEN}"}
    return await connect(url, additional_headers=headers, proxy=None, **kwargs)


@pytest.mark.slow
async def test_a_socket_that_stops_reading_is_dropped_and_the_others_are_answered(caplog):
    # websockets logs every frame at DEBUG: hundreds of thousands of records would be the test's cost.
    caplog.set_level(logging.INFO, logger="websockets")
    async with FakePortal(PortalConfig(token=TOKEN, outbox_size=16)) as portal:
        small = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        small.connect(("127.0.0.1", portal.port))
        small.setblocking(False)
        # max_queue=1: the client library stops reading from its socket after one unread frame.
        stalled = await _open(portal, "stalled", sock=small, max_queue=1)
        healthy = await _open(portal, "healthy")

        seen: list[dict] = []

        def dropped() -> bool:  # reads the log as its readers do: only what is new
            seen.extend(portal.core.events.since(seen[-1]["seq"] if seen else 0))
            return any(e["kind"] == "disconnect" and e["id"] == "stalled" for e in seen)

        deadline = time.monotonic() + BOUND
        try:
            for ref in range(HEARTBEATS):
                await stalled.send(_heartbeat(ref))
                if ref % 5000 == 4999 and dropped():
                    break
            while not dropped():
                assert time.monotonic() < deadline, "the stalled socket was never dropped"
                await asyncio.sleep(0.05)
        except ConnectionClosed:
            pass  # the portal may close it while we are still sending
        dropped()  # the log up to now, if the close cut the sending short
        (gone,) = [e for e in seen if e["kind"] == "disconnect"]
        assert gone["id"] == "stalled" and gone["reason"] == "slow consumer"
        await healthy.send(_heartbeat(1))
        async with asyncio.timeout(BOUND):
            reply = json.loads(await healthy.recv())
        assert reply["event"] == "phx_reply" and reply["payload"]["status"] == "ok"
        # Drained at last, the stalled socket ends with the slow-consumer close after its backlog.
        async with asyncio.timeout(BOUND):
            try:
                async for _ in stalled:
                    pass
            except ConnectionClosed:
                pass
        assert stalled.close_code == 4005
        await healthy.close()
