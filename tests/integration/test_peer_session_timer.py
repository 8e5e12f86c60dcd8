"""The peer's session timer (``connlib.app.peer``): the session runs at its deadlines, and at once
when what it waits for comes true (its ``needs_wakeup``: a usable relay, the connection up), not at
its next deadline. Real parts: the fake portal over websockets, one coturn process, a gateway and a
client ``Peer`` in this loop, relay-only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from connlib.app.peer import Peer, PeerConfig
from connlib.app.session import CONNECT_RETRY, RELAY_WAIT
from fake_portal.config import PortalConfig
from fake_portal.server import FakePortal
from harness.local_relay import LocalRelay
from harness.waiting import NotYet, wait_for

pytestmark = pytest.mark.coturn

TOKEN = "session-timer-token"
# Allocating on a local coturn and ICE over it take tens of milliseconds; a session that missed the
# wake-ups would sit out RELAY_WAIT (5 s) and then CONNECT_RETRY (1 s) before its first datagram.
FIRST_ECHO_BOUND = 2.5
assert FIRST_ECHO_BOUND < RELAY_WAIT + CONNECT_RETRY


@pytest.fixture
async def portal_and_relay() -> AsyncIterator[tuple[FakePortal, LocalRelay]]:
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.1)) as portal:
        relay = LocalRelay(portal.url, TOKEN, "relay-1")
        await relay.start()
        try:
            yield portal, relay
        finally:
            await relay.close()


def config(portal: FakePortal, role: str, peer_id: str, **extra) -> PeerConfig:
    # Reports once a minute: the only deadline before the stream would be the phase's own.
    return PeerConfig(role, portal.url, TOKEN, peer_id, bind="127.0.0.1", report_interval=60.0, **extra)


async def test_the_stream_starts_as_soon_as_the_relay_and_the_connection_are_up(portal_and_relay):
    portal, _ = portal_and_relay
    gateway = Peer(config(portal, "gateway", "gw-1"), emit=lambda line: None)
    client = Peer(config(portal, "client", "client-1", connect_to="gw-1", rate=20.0), emit=lambda line: None)
    await gateway.start()
    try:
        await wait_for(gateway.initialised.is_set, 10.0, "the gateway's init")
        started = time.monotonic()
        await client.start()
        try:

            def echoed() -> float:
                if client.stats.delivered == 0:
                    raise NotYet(f"phase {client.session.phase.value}, nothing echoed yet")
                return time.monotonic() - started

            took = await wait_for(echoed, RELAY_WAIT + 3 * CONNECT_RETRY, "the client's first echo", 0.005)
            assert took < FIRST_ECHO_BOUND, f"first echo {took:.2f} s after the start: a wake-up was missed"
        finally:
            await client.stop()
    finally:
        await gateway.stop()
