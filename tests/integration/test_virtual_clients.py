"""Virtual clients (``StackOptions.clients``, ``connlib run --clients N``) on real parts: two coturn
processes, the fake portal over websockets, one gateway, and 20 clients in one event loop.

Each virtual client must be a client of its own: its own identity on the portal, its own Tunnel with
its own allocation on every relay (a relayed address no other client has), its own UDP socket, its
own connection at the gateway and its own stream of echoes. Clients that shared a Tunnel, a socket
or an id would fail the distinctness checks (and a shared Tunnel would mix up the streams).
"""

from __future__ import annotations

import pytest

from harness.process_fleet import GATEWAY_ID, ProcessFleet, StackOptions
from harness.waiting import wait_for

pytestmark = pytest.mark.coturn

CLIENTS = 20
ECHOES = 40  # per client, past the 10 the fleet waits for at start-up
STREAM_BOUND = 30.0


@pytest.fixture
async def fleet():
    stack = ProcessFleet(options=StackOptions(clients=CLIENTS, rate=20))
    try:
        await stack.start()  # returns once every client's stream flows
        yield stack
    finally:
        await stack.stop()


async def test_each_virtual_client_has_its_own_allocations_connection_and_stream(fleet):
    clients = fleet.clients
    ids = [f"client-1-{k}" for k in range(1, CLIENTS + 1)]
    assert [c.config.peer_id for c in clients] == fleet.client_ids == ids
    assert fleet.client is clients[0]

    # Own core and own socket.
    assert len({id(c.tunnel) for c in clients}) == CLIENTS, "every client needs its own Tunnel"
    ports = {c.driver.local_addresses()[4] for c in clients}
    assert len(ports) == CLIENTS, "every client needs its own UDP socket"

    # Own allocations: every client is allocated on both relays, at relayed addresses of its own.
    relay_ids = {r["id"] for r in await fleet.portal_relays()}
    assert len(relay_ids) == 2
    relayed = set()
    for client in clients:
        assert set(client.tunnel.usable_relays()) == relay_ids, f"{client.config.peer_id} lacks an allocation"
        for rid in relay_ids:
            relayed |= {c.addr for c in client.tunnel.node.relay_candidates(rid) if c.kind == "relay"}
    assert len(relayed) == 2 * CLIENTS, "each client must hold its own allocation on each relay"

    # The portal sees twenty clients; the gateway holds one connection per client, each carried by a relay.
    online = {p["external_id"] for p in await fleet.admin("GET", "/api/clients") if p["online"]}
    assert online == set(ids)
    assert fleet.gateway is not None
    assert sorted(fleet.gateway.tunnel.connected_peers()) == sorted(ids)
    for client in clients:
        assert client.tunnel.is_connected(GATEWAY_ID)
        assert fleet.carrying_relay(client) in relay_ids

    # Own stream: every client's numbered datagrams come back to it.
    await wait_for(
        lambda: all(c.stats.delivered >= ECHOES for c in clients), STREAM_BOUND, f"{ECHOES} echoes at every client"
    )
    lost = {c.config.peer_id: c.stats.lost for c in clients}
    sent = sum(c.stats.sent for c in clients)
    print(f"\n{CLIENTS} virtual clients: sent={sent} lost={sum(lost.values())} per client={lost}")
    for client in clients:
        # An echo counts only for a datagram this client sent and still waits for.
        assert client.stats.delivered <= client.stats.sent
        assert client.stats.lost <= 0.01 * client.stats.sent, f"{client.config.peer_id}: {client.stats}"
