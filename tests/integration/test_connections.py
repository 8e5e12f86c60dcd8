"""Relayed client↔gateway connections and their migration (issue 4), on real parts:
coturn processes, the fake portal over websockets, connlib peers on UDP sockets, relay-only.

Each scenario is a function that raises AssertionError naming the bug it sees; the scenario test
runs it with the #6666 fixes, its mutation twin runs it with one fix disabled and expects it to
catch the bug. Figures are printed (``-s`` shows them) and recorded in the history.
"""

from __future__ import annotations

import time

import pytest

from connlib.core.fixes import FIX_CREDENTIALS_COMPARE, FIX_PROBE, FIX_PROBE_LISTED
from harness.process_fleet import CLIENT_ID, GATEWAY_ID, ProcessFleet, StackOptions
from harness.waiting import wait_for

pytestmark = pytest.mark.coturn

RESUME_BOUND = 3.0  # stream resumed this soon after the portal told us (heal / relays_presence)
PROBE_BOUND = 1.5  # a dead relay is removed this soon after the re-init


@pytest.fixture
async def fleet_factory():
    fleets: list[ProcessFleet] = []

    async def make(**options) -> ProcessFleet:
        fleet = ProcessFleet(options=StackOptions(**options))
        fleets.append(fleet)
        await fleet.start()  # returns once the client's stream flows
        return fleet

    yield make
    for fleet in fleets:
        await fleet.stop()


def delivered_after(fleet: ProcessFleet, t: float) -> float | None:
    """The time of the first echo after ``t``, once there is one (echoes after a gap end it)."""
    assert fleet.client is not None  # the fleet has started
    last = fleet.client.stats.last_delivery
    if last is None or last <= t:
        return None
    gap = fleet.history.first("gap", target=CLIENT_ID, after=t)
    return gap.t if gap is not None else last


def removals(fleet: ProcessFleet, peer_id: str, rid: str, after: float) -> list:
    return [
        op for op in fleet.history.select("relay_removed", target=peer_id, after=after) if op.data.get("relay") == rid
    ]


def gap_since(fleet: ProcessFleet, t: float) -> float:
    """The longest stream gap that ended after ``t`` (0 if none)."""
    gaps = [op.data["duration_s"] for op in fleet.history.select("gap", target=CLIENT_ID, after=t)]
    return max(gaps, default=0.0)


# ---------------------------------------------------------------------------- 1. the stream
async def test_thousand_datagrams_round_trip_without_loss(fleet_factory):
    fleet = await fleet_factory(rate=200, count=1000)
    await wait_for(fleet.client.done.is_set, 30, "1,000 echoes")
    stats = fleet.client.stats
    print(f"\nstream: sent={stats.sent} delivered={stats.delivered} lost={stats.lost} gaps={len(stats.gaps)}")
    assert stats.sent == 1000 and stats.delivered == 1000 and stats.lost == 0
    assert fleet.carrying_relay() is not None, "the path must run through a relay (relay-only)"


async def test_an_idle_client_streams_again_on_a_new_connection_after_its_resume(fleet_factory):
    """The process backend's ``stream_idle`` (what ``connlib run``'s SIGUSR1/SIGUSR2 call): both
    recorded as faults, the client's own lines say it went idle and came back, the stream flows."""
    fleet = await fleet_factory()
    await fleet.idle_stream(CLIENT_ID)
    await wait_for(lambda: fleet.history.first("stream_idle", target=CLIENT_ID), 5, "the client's stream_idle")
    assert fleet.client is not None and fleet.client.tunnel.connection_state(GATEWAY_ID) is None
    sent = fleet.client.stats.sent
    await fleet.resume_stream(CLIENT_ID)
    resumed = fleet.history.first("stream_resumed", target=CLIENT_ID)
    assert resumed is not None and fleet.client.stats.sent == sent  # idle until then
    await wait_for(lambda: delivered_after(fleet, resumed.t), RESUME_BOUND, "an echo after the resume")
    assert fleet.history.first("connected", target=CLIENT_ID, after=resumed.t) is not None
    played = [(op.what, op.outcome) for op in fleet.history.select(kind="fault")]
    assert played == [
        ("stream_idle", "invoke"),
        ("stream_idle", "ok"),
        ("stream_resume", "invoke"),
        ("stream_resume", "ok"),
    ]


# ---------------------------------------------------------------------------- 2. presence
async def test_stopped_carrying_relay_migrates_on_relays_presence(fleet_factory):
    fleet = await fleet_factory()
    rid = fleet.carrying_relay()
    name = await fleet.relay_name(rid)
    fault = time.monotonic()
    await fleet.stop_relay(name)
    presence = (
        await wait_for(
            lambda: [
                op
                for op in fleet.history.select("relays_presence", target=CLIENT_ID, after=fault)
                if rid in op.data.get("disconnected_ids", [])
            ],
            5,
            "relays_presence naming the stopped relay",
        )
    )[0].t
    resumed = await wait_for(lambda: delivered_after(fleet, presence), RESUME_BOUND + 2, "the stream to resume")
    gap = gap_since(fleet, fault)
    print(
        f"\nrelay stopped: presence after {presence - fault:.2f}s, resumed {resumed - presence:.2f}s later, gap {gap:.2f}s"
    )
    assert fleet.carrying_relay() not in (None, rid)
    assert fleet.history.select("migrating", target=CLIENT_ID, after=fault)
    assert gap < RESUME_BOUND, f"stream gap {gap:.2f}s"


# ---------------------------------------------------------------------------- 3. #6648
async def scenario_credential_rotation_while_partitioned(fleet: ProcessFleet) -> dict:
    rid = fleet.carrying_relay()
    assert rid is not None  # the fleet starts with the stream flowing through a relay
    name = await fleet.relay_name(rid)
    fault = time.monotonic()
    await fleet.partition(CLIENT_ID)
    await fleet.restart_relay(name, new_secret=True)  # same id (from the name), new credentials
    await fleet.heal(CLIENT_ID)
    healed = time.monotonic()
    init = (
        await wait_for(lambda: fleet.history.first("init", target=CLIENT_ID, after=healed), 10, "the client's re-init")
    ).t
    replaced = [
        op for op in removals(fleet, CLIENT_ID, rid, healed) if op.data.get("reason", "").startswith("replaced")
    ]
    assert replaced, (
        f"bug #6648: relay {name} came back in init with new credentials but the client kept its stale allocation"
    )
    resumed = await wait_for(
        lambda: delivered_after(fleet, init), RESUME_BOUND, "the stream to resume after the re-init"
    )
    figures = {
        "replaced_after_init_s": replaced[0].t - init,
        "resumed_after_heal_s": resumed - healed,
        "gap_s": gap_since(fleet, fault),
    }
    assert fleet.carrying_relay() is not None
    return figures


async def test_credential_rotation_while_partitioned_replaces_and_migrates(fleet_factory):
    fleet = await fleet_factory()
    figures = await scenario_credential_rotation_while_partitioned(fleet)
    print("\ncredential rotation:", {k: round(v, 3) for k, v in figures.items()})
    assert figures["replaced_after_init_s"] < 0.5


async def test_mutation_credential_rotation_catches_skipped_compare(fleet_factory):
    # without the compare, the probe of listed relays would catch the reboot too: both off
    fleet = await fleet_factory(client_disabled_fixes=frozenset({FIX_CREDENTIALS_COMPARE, FIX_PROBE_LISTED}))
    with pytest.raises(AssertionError, match="bug #6648"):
        await scenario_credential_rotation_while_partitioned(fleet)


# ---------------------------------------------------------------------------- 4. silent loss
async def scenario_silent_loss_while_partitioned(fleet: ProcessFleet) -> dict:
    assert fleet.client is not None  # the fleet has started
    used = {fleet.carrying_relay(fleet.client), fleet.carrying_relay(fleet.gateway)}
    idle_rid = next(rid for rid in fleet.client.tunnel.node.allocations if rid not in used)
    name = await fleet.relay_name(idle_rid)
    fault = time.monotonic()
    await fleet.partition(CLIENT_ID)
    await fleet.stop_relay(name)
    await wait_for(
        lambda: fleet.history.first("relays_presence", target=GATEWAY_ID, after=fault), 5, "presence at the gateway"
    )
    await fleet.heal(CLIENT_ID)
    healed = time.monotonic()
    init = (
        await wait_for(lambda: fleet.history.first("init", target=CLIENT_ID, after=healed), 10, "the client's re-init")
    ).t
    try:
        await wait_for(
            lambda: removals(fleet, CLIENT_ID, idle_rid, healed), PROBE_BOUND + 1, "the probe to drop the relay"
        )
    except AssertionError:
        raise AssertionError(
            f"bug (no probe): relay {name} vanished while the client was partitioned and is still in its relay set"
        ) from None
    removed = removals(fleet, CLIENT_ID, idle_rid, healed)[0]
    assert idle_rid not in fleet.client.tunnel.node.allocations
    return {
        "detected_after_init_s": removed.t - init,
        "gap_s": gap_since(fleet, fault),
        "reason": removed.data.get("reason"),
    }


async def test_silent_relay_loss_while_partitioned_is_probed_and_removed(fleet_factory, caplog):
    fleet = await fleet_factory(relays=3, portal={"relays_per_client": 3})
    figures = await scenario_silent_loss_while_partitioned(fleet)
    print("\nsilent loss:", figures)
    assert figures["detected_after_init_s"] <= PROBE_BOUND
    assert figures["reason"].startswith("no response")
    assert figures["gap_s"] == 0.0, "the connection must not be disturbed"
    assert any(
        r.levelname == "WARNING" and r.getMessage().startswith("Disconnecting from relay") for r in caplog.records
    )


async def test_mutation_silent_loss_catches_skipped_probe(fleet_factory):
    fleet = await fleet_factory(relays=3, portal={"relays_per_client": 3}, client_disabled_fixes=frozenset({FIX_PROBE}))
    with pytest.raises(AssertionError, match="bug \\(no probe\\)"):
        await scenario_silent_loss_while_partitioned(fleet)


# ---------------------------------------------------------------------------- 5. no relays
async def test_all_relays_gone_then_one_back_recovers(fleet_factory):
    fleet = await fleet_factory()
    fault = time.monotonic()
    for name in list(fleet.relays):
        await fleet.stop_relay(name)
    await wait_for(
        lambda: fleet.history.first("no_relays", target=CLIENT_ID, after=fault), 10, "the client's no_relays"
    )
    assert not fleet.client.tunnel.node.allocations
    back = time.monotonic()
    await fleet.start_relay("relay-1")
    resumed = await wait_for(lambda: delivered_after(fleet, back), 10, "the stream to resume on the returning relay")
    print(f"\nno relays: recovered {resumed - back:.2f}s after a relay came back, gap {gap_since(fleet, fault):.2f}s")
    assert fleet.carrying_relay() == await fleet.relay_id("relay-1")
