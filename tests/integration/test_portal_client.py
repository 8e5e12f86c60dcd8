"""connlib.portal_client.PortalClient against a real fake_portal (and, for misbehaving-server
cases fake_portal cannot produce, a tiny purpose-built websockets server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from websockets.asyncio.server import ServerConnection, serve

from connlib.aio.portal_client import PortalAuthError, PortalClient, PortalLoginError, portal_url
from connlib.core import messages
from connlib.core.node import Node
from fake_portal import FakePortal, PortalConfig
from tests.integration.test_fake_portal import BOUND, TOKEN, eventually, start_peer


@pytest.fixture
async def portal():
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.1)) as p:
        yield p


def heartbeats_from(portal: FakePortal, peer_id: str) -> list[dict]:
    return [e for e in portal.core.events.since(0) if e.get("id") == peer_id and e.get("event") == "heartbeat"]


async def test_heartbeats_go_out_at_the_configured_interval(portal):
    peer = start_peer(portal, "client", "c1", heartbeat_interval=0.1)
    await peer.next("init")
    await eventually(lambda: len(heartbeats_from(portal, "c1")) >= 3, what="three heartbeats")
    beats = heartbeats_from(portal, "c1")
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(beats)]
    assert all(0.05 < gap < 1.0 for gap in gaps), gaps
    assert all(b["topic"] == "phoenix" for b in beats)
    await peer.stop()


async def test_messages_sent_before_the_join_are_delivered_after_it(portal):
    client = PortalClient(portal_url(portal.url, "client", external_id="c1"), TOKEN, "client")
    await client.send("no_relays", {})
    task = asyncio.create_task(client.run())
    await client.wait_joined(BOUND)
    await eventually(
        lambda: any(e.get("event") == "relays_presence" for e in portal.core.events.since(0)), what="answer"
    )
    frames = [e["event"] for e in portal.core.events.since(0) if e["kind"] == "frame" and e["dir"] == "in"]
    assert frames.index("phx_join") < frames.index("no_relays")
    await client.close()
    await task


async def test_reconnects_and_rejoins_after_the_portal_restarts(portal):
    peer = start_peer(portal, "client", "c1")
    await peer.next("init")
    port = portal.port
    await portal.stop()
    await eventually(lambda: not peer.client.joined.is_set(), what="client noticed")
    async with FakePortal(PortalConfig(token=TOKEN, listen_port=port)) as restarted:
        await peer.next("init", timeout=BOUND + 5)
        assert [c["id"] for c in restarted.core.peers_view(messages.Topic.CLIENT, 0.0) if c["online"]] == ["c1"]
        await peer.stop()
    assert peer.states[:3] == ["connecting", "connected", "joined"] and "disconnected" in peer.states


async def test_a_refused_join_is_fatal(portal):
    client = PortalClient(portal_url(portal.url, "client", external_id="c1"), TOKEN, "gateway")
    with pytest.raises(PortalLoginError, match="unmatched topic"):
        await asyncio.wait_for(client.run(), BOUND)


async def test_unanswered_join_times_out_and_reconnects():
    connections = []

    async def silent(ws: ServerConnection) -> None:
        connections.append(ws)
        async for _ in ws:
            pass  # never answers the join

    async with serve(silent, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/client/websocket"
        client = PortalClient(url, TOKEN, "client", join_timeout=0.2)
        task = asyncio.create_task(client.run())
        await eventually(lambda: len(connections) >= 2, what="a second connection")
        assert not client.joined.is_set()
        await client.close()
        await task


async def test_forced_disconnect_raises_portal_auth_error():
    async def logout(ws: ServerConnection) -> None:
        join = json.loads(await ws.recv())
        await ws.send(
            json.dumps(
                {
                    "event": "phx_reply",
                    "ref": join["ref"],
                    "topic": "client",
                    "payload": {"status": "ok", "response": {}},
                }
            )
        )
        await ws.send(json.dumps({"event": "disconnect", "topic": "client", "payload": {"reason": "token_expired"}}))
        await ws.wait_closed()

    async with serve(logout, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/client/websocket"
        with pytest.raises(PortalAuthError, match="token_expired"):
            await asyncio.wait_for(PortalClient(url, TOKEN, "client").run(), BOUND)


def _init_with(username_json: str) -> str:
    relay = (
        '{"id": "r1", "type": "turn", "addr": "127.0.0.1:3478", "username": ' + username_json + ', "password": "p",'
        ' "expires_at": 4102444800}'
    )
    return '{"event": "init", "topic": "client", "ref": null, "payload": {"relays": [' + relay + "]}}"


async def test_lone_surrogate_in_an_init_relay_username_does_not_kill_the_client(caplog):
    """Issue 9 item 10: ``"\\ud800"`` is valid JSON but no UTF-8. The message handler is the
    peer's (decode, merge, ``Node.update_relays``): the bad init is ignored, the client lives."""
    node = Node(0.0)
    inits: list = []

    def on_message(event: str, payload: dict) -> None:
        try:
            typed = messages.decode_payload(event, payload)
        except messages.MessageError:
            return
        if isinstance(typed, messages.Init):
            relays = messages.merge_relays(typed.relays)
            node.update_relays([], relays, 0.0)
            inits.append(relays)

    async def portal(ws: ServerConnection) -> None:
        join = json.loads(await ws.recv())
        ok = {"status": "ok", "response": {}}
        await ws.send(json.dumps({"event": "phx_reply", "ref": join["ref"], "topic": "client", "payload": ok}))
        await ws.send(_init_with('"\\ud800"'))
        await ws.send(_init_with('"4102444800:ok"'))
        await ws.wait_closed()

    async with serve(portal, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/client/websocket"
        client = PortalClient(url, TOKEN, "client", on_message=on_message)
        task = asyncio.create_task(client.run())
        await eventually(lambda: bool(inits) or task.done(), what="the good init")
        assert not task.done(), task.exception()
        assert [r.username for r in inits[0]] == ["4102444800:ok"] and node.relay_ids() == ["r1"]
        await client.close()
        await task
