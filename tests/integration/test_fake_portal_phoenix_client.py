"""A third-party Phoenix Channels client from PyPI (``phoenix-channels-python-client``) at the portal.

It speaks v1 and v2 frames, joins ``client``, receives ``init`` and ``relays_presence``, and must
stay connected with its *own* heartbeat schedule. The slow test uses everything's defaults (the
client heartbeats every 30 s, first 30 s after it opens; the portal closes after 60 s of silence):
before issue 11 the portal dropped such a client with 4002 exactly 30 s after it opened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from phoenix_channels_python_client import PhoenixChannelsProtocolVersion, PHXChannelsClient

from connlib.aio.portal_client import PortalClient, portal_url
from fake_portal import FakePortal, PortalConfig
from tests.integration.test_fake_portal import Peer

TOKEN = "phx-token"
BOUND = 10.0


@dataclass
class Observed:
    events: list[tuple[float, str, Any]] = field(default_factory=list)
    acks: list[float] = field(default_factory=list)
    disconnects: list[Exception | None] = field(default_factory=list)

    def named(self, event: str) -> list[Any]:
        return [payload for _, name, payload in self.events if name == event]


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
    assert predicate(), what


def phoenix_client(
    portal: FakePortal, peer: str, version: PhoenixChannelsProtocolVersion, seen: Observed, **kwargs: Any
) -> PHXChannelsClient:
    async def on_disconnect(exc: Exception | None) -> None:
        seen.disconnects.append(exc)

    url = f"{portal.url}/client/websocket?token={TOKEN}&external_id={peer}&public_key=pk-{peer}"
    return PHXChannelsClient(
        url,
        "unused-api-key",
        protocol_version=version,
        auto_reconnect=False,
        on_disconnect=on_disconnect,
        on_heartbeat_ack=lambda: seen.acks.append(time.monotonic()),
        **kwargs,
    )


async def subscribe(client: PHXChannelsClient, seen: Observed) -> None:
    async def on_message(message: Any) -> None:
        seen.events.append((time.monotonic(), str(message.event), message.payload))

    await client.subscribe_to_topic("client", on_message)


@pytest.fixture
async def portal() -> AsyncIterator[FakePortal]:
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.2)) as p:
        yield p


async def run_clients(portal: FakePortal, interval: float | None, intervals: int) -> dict[str, Observed]:
    """Both serializer versions at once, through ``intervals`` of the client's heartbeat interval."""
    kwargs = {} if interval is None else {"heartbeat_interval_s": interval}
    period = 30.0 if interval is None else interval
    versions = {"v1": PhoenixChannelsProtocolVersion.V1, "v2": PhoenixChannelsProtocolVersion.V2}
    seen = {name: Observed() for name in versions}
    async with (
        phoenix_client(portal, "phx-v1", versions["v1"], seen["v1"], **kwargs) as v1,
        phoenix_client(portal, "phx-v2", versions["v2"], seen["v2"], **kwargs) as v2,
    ):
        opened = time.monotonic()
        for client, name in ((v1, "v1"), (v2, "v2")):
            await subscribe(client, seen[name])
        await wait_for(lambda: all(s.named("init") for s in seen.values()), BOUND, "init on both")
        url = portal_url(portal.url, "relay", ipv4="127.0.0.1", name="relay-phx")
        relay_heartbeat = min(10.0, portal.config.heartbeat_timeout / 3)
        relay = Peer(PortalClient(url, TOKEN, "relay", {"stamp_secret": "s3cret"}, heartbeat_interval=relay_heartbeat))
        await wait_for(lambda: all(s.named("relays_presence") for s in seen.values()), BOUND, "relays_presence")
        # Through `intervals` heartbeat intervals, plus a margin for the last ack.
        await wait_for(
            lambda: all(len(s.acks) >= intervals for s in seen.values()) or any(s.disconnects for s in seen.values()),
            period * intervals + BOUND,
            f"{intervals} heartbeat acks",
        )
        held = time.monotonic() - opened
        for client, name in ((v1, "v1"), (v2, "v2")):
            assert seen[name].disconnects == [], f"{name} was disconnected: {seen[name].disconnects}"
            assert client.is_topic_joined("client"), name
        await relay.stop()
    print(f"\nthird-party Phoenix client held {held:.1f} s, acks={[len(s.acks) for s in seen.values()]}")
    return seen


def check_payloads(seen: dict[str, Observed], portal: FakePortal) -> None:
    for name, observed in seen.items():
        (init,) = observed.named("init")
        assert set(init) == {"interface", "resources", "relays"} and init["relays"] == [], name
        presence = observed.named("relays_presence")[0]
        assert [r["id"] for r in presence["connected"]] == [portal.core.relays_view()[0]["id"]], name
        assert presence["connected"][0]["type"] == "turn" and presence["connected"][0]["password"], name
    vsns = {e["id"]: e["vsn"] for e in portal.core.events.since(0) if e["kind"] == "connect" and e["role"] == "client"}
    assert vsns == {"phx-v1": "1.0.0", "phx-v2": "2.0.0"}


async def test_a_third_party_phoenix_client_at_phoenix_s_ratio_quickly(portal):
    """Heartbeat every 0.5 s against a 1 s silence timeout: Phoenix's 30 s / 60 s, scaled down."""
    portal.config.heartbeat_timeout = 1.0
    portal.core.config.heartbeat_timeout = 1.0
    seen = await run_clients(portal, 0.5, intervals=6)
    check_payloads(seen, portal)


@pytest.mark.slow
async def test_a_third_party_phoenix_client_with_its_defaults_stays_through_three_heartbeats(portal):
    """Real defaults on both sides: ~95 s. Before issue 11 both clients got 4002 at 30.0 s."""
    seen = await run_clients(portal, None, intervals=3)
    check_payloads(seen, portal)
