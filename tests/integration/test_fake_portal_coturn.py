"""The portal's credentials work on a real coturn started with the relay's secret, and stop
working when that coturn reboots with a new one (until the portal hands out fresh ones)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from connlib.core.messages import Init, Relay
from fake_portal import FakePortal, PortalConfig
from tests.integration.test_fake_portal import BOUND, DEBOUNCE, TOKEN, start_peer, start_relay

REPO = Path(__file__).resolve().parents[2]
EXIT_OK, EXIT_AUTH = 0, 2


async def allocate(relay: Relay) -> tuple[int, str, str]:
    """``python -m connlib allocate`` with the credentials of one portal relay entry."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connlib",
        "allocate",
        "--relay",
        relay.addr,
        "--username",
        relay.username,
        "--password",
        relay.password,
        "--timeout",
        "3",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None  # communicate() waited for the exit
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
async def portal():
    async with FakePortal(PortalConfig(token=TOKEN, debounce=DEBOUNCE)) as p:
        yield p


@pytest.mark.coturn
async def test_portal_credentials_allocate_on_coturn_and_follow_a_reboot(portal, coturn_factory):
    coturn = coturn_factory(name="relay-a")
    relay = start_relay(portal, "relay-a", coturn.secret, port=coturn.port)
    await relay.client.wait_joined(BOUND)
    client = start_peer(portal, "client", "c1")
    (entry,) = Init.from_json(await client.next("init")).relays
    code, out, err = await allocate(entry)
    assert code == EXIT_OK, err
    assert json.loads(out)["relayed"][0].startswith("127.0.0.1:")

    # Reboot with a new secret while the client is away, then the presence agent re-joins.
    await client.stop()
    await relay.stop()
    await asyncio.to_thread(coturn.restart, "a-brand-new-secret")
    rebooted = start_relay(portal, "relay-a", coturn.secret, port=coturn.port)
    await rebooted.client.wait_joined(BOUND)
    code, _, err = await allocate(entry)
    assert code == EXIT_AUTH, err  # the old credentials are dead

    back = start_peer(portal, "client", "c1")
    (fresh,) = Init.from_json(await back.next("init")).relays
    assert fresh.id == entry.id and fresh.password != entry.password
    code, out, err = await allocate(fresh)
    assert code == EXIT_OK, err
    await back.stop()
    await rebooted.stop()
