"""The schedule kinds the Docker runner plays beyond the first eight (``harness.schedule_runner``):
each one injected on a real stack through the runner's own ``inject`` and undone with what it returns,
and its effect seen from outside the code that injected it, so that a fault not applied fails here:

- ``quota`` 486: a second ALLOCATE under one username gets 486 from coturn while the peers'
  allocations on that relay keep carrying the stream; after the heal both ALLOCATEs succeed;
  ``quota`` 508: any new ALLOCATE gets 508 (no relay port left), the stream flows on, and after
  the heal ALLOCATEs succeed again;
- ``peer_relay_cut`` / ``relay_relay_cut``: a STUN Binding across the cut goes unanswered (between
  relays both ways), answered before the cut and after the heal; the rules' counters, which
  ``cut_dropped`` reports at the heal, saw packets;
- ``loss`` on a peer: the loss rules in the client's container and in the relays' (for what it
  sends) drop datagrams; on a relay: its rule drops datagrams after the relay restarted, too;
- ``portal_blackhole`` of a relay: the portal stops hearing the relay's heartbeats and lists it
  offline (the refusal of an admin partition is not used: the agent is not told), online again after;
- ``address_change`` of a relay: the portal lists it at its new address, where the client reaches
  it (a Binding answered), and the stream flows on;
- ``peer_restart`` of the client: a new process (its ``portal`` line says it joined again) on a new
  connection from a new candidate address, streaming again;
- ``portal_restart``: the client sees the portal go and re-joins the new one, whose relays joined anew.

One stack for all (a stack costs ~12 s to start); heartbeats of 1 s and a portal heartbeat timeout
of 3 s make a black hole visible at the portal within seconds instead of a minute.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import checks
from harness.fleet import CLIENT_ID, GATEWAY_ID
from harness.schedule_runner import inject
from harness.waiting import NotYet, wait_for
from sim.schedule import Fault

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BOUND = 10.0
PROBE = "/opt/connlib-relays/turn_probe.py"  # in every image


async def answers_binding(stack, frm: str, to: str, addr: str | None = None) -> bool:
    """Whether relay ``to`` answers a STUN Binding from container ``frm`` (bounded: 3 tries of 0.3 s),
    sent to ``addr`` or to its address on a network they share."""
    mine, theirs = stack.member(frm).service.addresses, stack.member(to).service.addresses
    network = "relay-net" if "relay-net" in mine.keys() & theirs.keys() else sorted(mine.keys() & theirs.keys())[0]
    command = ["/usr/bin/python3", PROBE, "binding", f"{addr or theirs[network]}:3478", "--timeout", "0.3"]
    result = await asyncio.to_thread(stack.member(frm).container.exec_run, command)
    return result.exit_code == 0


async def delivered_grows(stack, what: str) -> None:
    before = checks.delivered(stack.history)
    await wait_for(lambda: stack.drain() or checks.delivered(stack.history) > before, BOUND, what)


@pytest.mark.stack(
    relays=2, relay_heartbeat=1.0, portal={"heartbeat_timeout": 3.0}, peer_args=("--heartbeat-interval", "1")
)
async def test_the_new_schedule_kinds_take_effect_on_the_docker_stack(stack, figures):
    took: dict[str, float] = {}

    async def play(fault: Fault, effect, healed=None) -> None:
        started = time.monotonic()
        undo = await inject(stack, fault)
        await effect()
        if undo is not None:
            await undo()
        if healed is not None:
            await healed()
        took[f"{fault.kind}{fault.code or ''}" + (f"-{fault.target}" if fault.kind == "loss" else "")] = round(
            time.monotonic() - started, 1
        )

    # quota 486: new ALLOCATEs refused, the existing allocations carry on.
    async def refused() -> None:
        first, second = await stack.allocate_twice("relay-1")
        assert first == "allocated" and "486" in second, (first, second)
        await delivered_grows(stack, "the stream through the relays under the quota")
        removed = [
            op for peer in (CLIENT_ID, GATEWAY_ID) for op in checks.peer_events(stack.history, "relay_removed", peer)
        ]
        assert not removed, f"an allocation was lost under the quota: {removed}"

    async def allowed() -> None:
        assert await stack.allocate_twice("relay-1") == ["allocated", "allocated"]

    await play(Fault(0.0, "quota", "relay-1", 1.0, code=486), refused, allowed)

    # quota 508: no relay port left for any new ALLOCATE, the existing allocations carry on
    async def full() -> None:
        first, _ = await stack.allocate_twice("relay-1")
        assert "508" in first, first
        await delivered_grows(stack, "the stream through the relays with relay-1 full")
        removed = [
            op for peer in (CLIENT_ID, GATEWAY_ID) for op in checks.peer_events(stack.history, "relay_removed", peer)
        ]
        assert not removed, f"an allocation was lost with the relay full: {removed}"

    await play(Fault(0.0, "quota", "relay-1", 1.0, code=508), full, allowed)

    # cuts: a STUN Binding across the cut goes unanswered (both ways between relays), answered before and after
    for fault, probes in (
        (Fault(0.0, "peer_relay_cut", "client", 1.0, other="relay-1"), [(CLIENT_ID, "relay-1")]),
        (
            Fault(0.0, "relay_relay_cut", "relay-1", 1.0, other="relay-2"),
            [("relay-1", "relay-2"), ("relay-2", "relay-1")],
        ),
    ):
        target = CLIENT_ID if fault.target == "client" else fault.target
        for frm, to in probes:
            assert await answers_binding(stack, frm, to), f"{to} does not answer {frm} before the cut"

        async def unanswered(probes=probes) -> None:
            for frm, to in probes:
                assert not await answers_binding(stack, frm, to), f"{to} answers {frm} across the cut"

        async def answered(probes=probes) -> None:
            for frm, to in probes:
                assert await answers_binding(stack, frm, to), f"{to} does not answer {frm} after the heal"

        await play(fault, unanswered, answered)
        (dropped,) = stack.history.select("cut_dropped", target=target)
        assert dropped.data["packets"] > 0, dropped

    # loss on the client: what arrives at it and what it sends (dropped at the relays) both lose datagrams
    async def lossy() -> None:
        async def both_ways() -> bool:
            arriving = await stack.dropped_datagrams(CLIENT_ID)
            sent = sum([await stack.dropped_datagrams(relay) for relay in stack.relay_names])
            if not (arriving and sent):
                raise NotYet(f"dropped arriving {arriving}, sent {sent}")
            return True

        await wait_for(both_ways, BOUND, "the client's datagrams lost both ways", 0.2)

    async def lossless() -> None:
        assert await stack.dropped_datagrams(CLIENT_ID) == 0  # the rule is gone with its counter

    await play(Fault(0.0, "loss", "client", 1.0, rate=0.5), lossy, lossless)

    # loss on relay-2 outlives its restart, as the simulator's loss stays on a host that reboots
    async def relay_drops() -> bool:
        # Traffic of its own: the peers stream through relay-1, and the few requests they send the
        # restarted relay-2 (two ALLOCATEs each) all passed its 50 % loss in one run of fourteen.
        await answers_binding(stack, CLIENT_ID, "relay-2")
        if not await stack.dropped_datagrams("relay-2"):
            raise NotYet("nothing dropped at relay-2")
        return True

    async def lossy_across_a_restart() -> None:
        await inject(stack, Fault(0.0, "relay_reboot", "relay-2", 1.0))  # the restart zeroes the counters
        await wait_for(relay_drops, BOUND, "relay-2's loss after its restart", 0.2)

    async def relay_lossless() -> None:
        assert await stack.dropped_datagrams("relay-2") == 0  # the rule is gone with its counter

    await play(Fault(0.0, "loss", "relay-2", 1.0, rate=0.5), lossy_across_a_restart, relay_lossless)

    # portal_blackhole of a relay: the portal loses it without being told, then has it back
    async def relay_online(online: bool) -> None:
        async def listed() -> bool:
            relays = {r["name"]: r["online"] for r in await stack.portal_relays()}
            if relays.get("relay-2") is not online:
                raise NotYet(f"relay-2 online={relays.get('relay-2')}")
            return True

        await wait_for(listed, 3 * BOUND, f"relay-2 {'online' if online else 'offline'} at the portal", 0.2)

    async def lost() -> None:
        await relay_online(False)
        assert await stack.cut_packets("relay-2", "portal") > 0

    await play(Fault(0.0, "portal_blackhole", "relay-2", 1.0), lost, lambda: relay_online(True))

    # address_change of relay-2: the portal has it at a new address, where the client reaches it
    (old,) = [r["addr"] for r in await stack.portal_relays() if r["name"] == "relay-2"]

    async def moved() -> None:
        (relay,) = [r for r in await stack.portal_relays() if r["name"] == "relay-2"]
        new = stack.member("relay-2").service.addresses["relay-net"]
        assert relay["online"] and relay["addr"] != old and relay["addr"].startswith(new + ":"), (old, relay)
        assert await answers_binding(stack, CLIENT_ID, "relay-2", new), "the client does not reach the moved relay"
        await delivered_grows(stack, "the stream after relay-2 moved")

    await play(Fault(0.0, "address_change", "relay-2"), moved)

    # peer_restart of the client: a new process, a new connection from a new address
    stack.drain()
    (before,) = checks.peer_events(stack.history, "connected", CLIENT_ID)[-1:]

    async def restarted() -> None:
        def reconnected():
            stack.drain()
            new = checks.peer_events(stack.history, "connected", CLIENT_ID, after=before.t)
            return next((op for op in new if op.data["ts"] > before.data["ts"]), None)

        after = await wait_for(reconnected, 2 * BOUND, "the restarted client's connection")
        assert after.data["local"] != before.data["local"], (before.data, after.data)

        def streaming():
            stack.drain()
            reports = checks.peer_events(stack.history, "stream", CLIENT_ID, after=after.t)
            return any(op.data["delivered"] > 0 for op in reports)

        await wait_for(streaming, BOUND, "the restarted client's stream")

    await play(Fault(0.0, "peer_restart", "client"), restarted)

    # portal_restart: the client sees the portal go and joins the new one
    async def portal_down() -> None:
        def left():
            stack.drain()
            return [
                op
                for op in checks.peer_events(stack.history, "portal", CLIENT_ID, after=down)
                if op.data["state"] != "joined"
            ]

        await wait_for(left, BOUND, "the client losing the portal")

    down = time.monotonic()

    async def rejoined() -> None:
        def joined():
            stack.drain()
            return [
                op
                for op in checks.peer_events(stack.history, "portal", CLIENT_ID, after=down)
                if op.data["state"] == "joined"
            ]

        await wait_for(joined, 2 * BOUND, "the client joined to the new portal")
        assert all(r["online"] for r in await stack.portal_relays())

    await play(Fault(0.0, "portal_restart", "portal", 1.0), portal_down, rejoined)
    figures.update(took)
    print(f"\nkinds played (s): {took}")
