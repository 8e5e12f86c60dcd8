"""The chaos scenarios of issue 6, written once against the fleet interface (both backends).

Each scenario drives faults, waits (bounded) for what connlib should do, fills ``figures`` with what
it measured and asserts the bounds. It raises ``AssertionError`` naming the bug when connlib
misbehaves (what the mutation twins expect), and :class:`Precondition` when the run did not set up
the situation it is about (a flake of the harness, never a verdict on connlib).

All times come from the history (``harness.checks``): faults at their ``invoke``, peer events at
the peer's own timestamp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from harness import checks
from harness.fleet import CLIENT_ID, GATEWAY_ID, Fleet
from harness.waiting import wait_for

log = logging.getLogger("tests.e2e.scenarios")
T = TypeVar("T")

DETECT_BOUND = 1.5  # a dead relay is removed this soon after the re-init
RESUME_BOUND = 3.0  # stream resumed this soon after the heal / the relays_presence
PAUSE_BOUND = 12.0  # ... and this soon after a relay went black (request backoff + migration)
REPLACE_BOUND = 0.5  # new credentials in init/relays_presence ⇒ allocation replaced at once
COALESCING_DEBOUNCE = 3.0
"""Portal debounce for the scenarios where a relay restart must reach the peers as ONE
relays_presence (same id, new credentials): longer than a relay container's restart (~1.9 s here),
shorter than the 4 s after which a peer notices the dead path by itself."""
LOG_LAG_BOUND = 2.0  # a peer's log line (stderr) reaches the history this soon after its event line (stdout)
LOSS_SECONDS = 10.0
LOSS_PROBABILITY = 0.5
PRECONDITION_ATTEMPTS = 3
"""How often :func:`attempts` plays a scenario whose set-up the run missed (see there)."""


class Precondition(Exception):
    """The run did not produce the situation the scenario is about (not a verdict on connlib)."""


SETTLE_BOUND = 10.0
RETRY_SETTLE_BOUND = 30.0
"""After a missed set-up: a twin's peer (a fix off) can take a while to get its stream back."""


async def stream_settled(fleet: Fleet, after: float, timeout: float = SETTLE_BOUND) -> None:
    """Until the client reports echoes on a nominated path again (between repetitions)."""
    await wait_for(
        lambda: [
            op for op in checks.peer_events(fleet.history, "stream", CLIENT_ID, after + 1.0) if op.data.get("connected")
        ],
        timeout,
        "the stream to settle",
    )


async def attempts(fleet: Fleet, figures: dict, play: Callable[[], Awaitable[T]]) -> T:
    """``play()`` (one scenario on ``fleet``), again on the same stack once its stream flows when it
    raised :class:`Precondition`, up to ``PRECONDITION_ATTEMPTS`` times in all. For the restart
    scenarios: on a loaded machine (stacks side by side, other work on the 2 cores) a relay container's
    restart can outlast the portal's debounce and reach the peers as a disconnect, which is not the
    situation they are about. A Precondition is never a verdict on connlib; every assertion and bound
    applies unchanged to the attempt that set up its situation. ``figures`` records the retries."""
    for attempt in range(1, PRECONDITION_ATTEMPTS + 1):
        try:
            return await play()
        except Precondition as exc:
            if attempt == PRECONDITION_ATTEMPTS:
                raise
            figures["precondition_retries"] = figures.get("precondition_retries", 0) + 1
            log.warning("Scenario set-up missed, playing it again attempt=%d reason=%s", attempt, exc)
            await stream_settled(fleet, fleet.history.clock(), RETRY_SETTLE_BOUND)
    raise AssertionError("unreachable")


async def on_a_new_stack_if_missed(
    fleet: Fleet, new_stack: Callable[[], Awaitable[Fleet]], figures: dict, play: Callable[[Fleet], Awaitable[T]]
) -> T:
    """``play(fleet)``, and once more on a new stack (harness fixture ``new_stack``) when it raised
    :class:`Precondition`: for a scenario its own stack cannot set up twice (9: the peer the full
    relay refused holds it off, so a second restart finds one peer asking, not two). Every assertion
    and bound applies unchanged to the attempt that set up its situation."""
    try:
        return await play(fleet)
    except Precondition as exc:
        figures["precondition_retries"] = 1
        log.warning("Scenario set-up missed, playing it on a new stack reason=%s", exc)
    return await play(await new_stack())


def fault_at(fleet: Fleet, what: str, target: str, after: float) -> float:
    """When the harness began fault ``what`` on ``target`` (after ``after``); it must be in the history."""
    t = checks.fault_time(fleet.history, what, target, after=after)
    if t is None:
        raise AssertionError(f"no {what} of {target} in the history after {after:.2f}")
    return t


def _role(peer: str) -> str:
    return "client" if peer == CLIENT_ID else "gateway"


async def wait_event(fleet: Fleet, what: str, peer: str, after: float, timeout: float, describe: str, **match: Any):
    return await wait_for(lambda: checks.first_event(fleet.history, what, peer, after, **match), timeout, describe)


async def wait_resumed(fleet: Fleet, after: float, timeout: float, describe: str) -> float:
    return await wait_for(lambda: checks.resumed_at(fleet.history, after), timeout, describe)


async def wait_flowing(fleet: Fleet, since: float, timeout: float, describe: str) -> float:
    """When the stream flows again after ``since``: the end of a gap that ends after it, or
    ``since`` itself when the reports show fresh echoes after it and no gap is open (a fault
    the stream rode through)."""
    h = fleet.history
    before = checks.delivered(h)

    def flowing() -> float | None:
        end = checks.resumed_at(h, since)
        if end is not None:
            return end
        fresh = [op for op in checks.peer_events(h, "stream", CLIENT_ID, since + 1.0) if op.data["delivered"] > before]
        return since if fresh and checks.outage_at(h, since) is None and fresh[-1].data.get("connected") else None

    return await wait_for(flowing, timeout, describe)


async def carrying(fleet: Fleet, peer: str) -> tuple[str, str]:
    rid = checks.carrying_relay(fleet.history, peer)
    if rid is None:
        raise Precondition(f"the {_role(peer)}'s connection runs through no relay")
    return rid, await fleet.relay_name(rid)


def early_removal(fleet: Fleet, peer: str, rid: str, since: float, before: float) -> None:
    """The peer must not have dropped the relay on its own (path lost, probe) before ``before``."""
    for op in checks.removals(fleet.history, peer, rid, after=since):
        if op.t < before:
            raise Precondition(
                f"the {_role(peer)} dropped relay {rid[:8]} by itself ({op.data.get('reason')}) "
                f"{op.t - since:.2f}s after the fault, before the portal told it anything: the fault took too long"
            )


# ---------------------------------------------------------------------------- 1 / 7a
async def rotation_while_partitioned(fleet: Fleet, figures: dict, peer: str = CLIENT_ID) -> dict:
    """#6648: the peer's carrying relay reboots (same id, new secret) while the peer is cut off the
    portal; after the heal its init carries the new credentials: replace, migrate, resume."""
    h = fleet.history
    rid, name = await carrying(fleet, peer)
    t0 = time.monotonic()
    async with fleet.partitioned(peer):
        await fleet.restart_relay(name)  # returns once the relay rejoined the portal with its new secret
    healed = fault_at(fleet, "heal", peer, t0)
    init = await wait_event(fleet, "init", peer, healed, 10, f"the {_role(peer)}'s re-init after the heal")
    early_removal(fleet, peer, rid, t0, init.t)
    try:
        await wait_for(
            lambda: checks.removals(h, peer, rid, after=init.t - 0.001, reason="replaced"),
            REPLACE_BOUND + 1,
            "the replacement",
        )
    except AssertionError:
        raise AssertionError(
            f"bug #6648: relay {name} came back in the {_role(peer)}'s init with the same id and new credentials, "
            f"but the {_role(peer)} kept its stale allocation (no 'replaced' within {REPLACE_BOUND + 1:.1f}s of the re-init)"
        ) from None
    replaced = checks.removals(h, peer, rid, after=init.t - 0.001, reason="replaced")[0]
    resumed = await wait_resumed(fleet, healed, RESUME_BOUND + 5, "the stream to resume after the heal")
    sample = {
        "init_after_heal_s": init.t - healed,
        "replaced_after_init_s": replaced.t - init.t,
        "resumed_after_heal_s": resumed - healed,
        "gap_s": checks.longest_gap(h, t0),
    }
    assert sample["replaced_after_init_s"] <= REPLACE_BOUND, (
        f"replaced {sample['replaced_after_init_s']:.2f}s after the re-init"
    )
    assert checks.first_event(h, "migrating", peer, init.t - 0.001), f"the {_role(peer)} did not migrate its connection"
    return sample


# ---------------------------------------------------------------------------- 2
async def silent_loss_while_partitioned(fleet: Fleet, figures: dict) -> None:
    """A relay the client holds but does not use dies while the client is cut off the portal; the
    re-init does not list it, the REFRESH probe fails, the relay is dropped; nothing else moves."""
    h = fleet.history
    used = {checks.carrying_relay(h, CLIENT_ID), checks.carrying_relay(h, GATEWAY_ID)}
    idle = sorted(checks.known_relays(h, CLIENT_ID) - used)
    if not idle:
        raise Precondition(f"the client holds no relay that neither peer uses (used: {used})")
    rid = idle[0]
    name = await fleet.relay_name(rid)
    t0 = time.monotonic()
    async with fleet.partitioned(CLIENT_ID):
        await fleet.stop_relay(name)
        # the gateway is not partitioned: it hears of the stop (and so must not be disturbed either)
        await wait_event(
            fleet, "relays_presence", GATEWAY_ID, t0, 5, "the gateway's relays_presence", disconnected_ids=rid
        )
    healed = fault_at(fleet, "heal", CLIENT_ID, t0)
    init = await wait_event(fleet, "init", CLIENT_ID, healed, 10, "the client's re-init after the heal")
    if rid in init.data.get("relays", []):
        raise Precondition(f"the re-init still lists the stopped relay {name}")
    try:
        removed = await wait_for(lambda: checks.removals(h, CLIENT_ID, rid, after=t0), DETECT_BOUND + 2, "the removal")
    except AssertionError:
        raise AssertionError(
            f"bug (no probe): relay {name} vanished while the client was partitioned; the re-init did not list it, "
            f"and {DETECT_BOUND + 2:.1f}s later it is still in the client's relay set (no REFRESH probe)"
        ) from None
    removed = removed[0]

    def warned_now() -> list:
        return [
            op
            for op in h.select("log", after=init.t)
            if op.data.get("message", "").startswith("Disconnecting from relay")
        ]

    try:  # the peer's stderr (its log) reaches the history after its stdout (the removal): 77 ms seen
        warned = await wait_for(warned_now, LOG_LAG_BOUND, "the WARN 'Disconnecting from relay'")
    except AssertionError:
        warned = []
    disturbed = [op for op in h.select(("migrating", "path_lost", "connection_failed"), kind="observe", after=t0)]
    figures.update(
        detect_s=removed.t - init.t,
        gap_s=checks.longest_gap(h, t0),
        init_after_heal_s=init.t - healed,
        reason=removed.data.get("reason"),
    )
    assert figures["detect_s"] <= DETECT_BOUND, f"dead relay removed {figures['detect_s']:.2f}s after the re-init"
    assert str(removed.data.get("reason", "")).startswith("no response"), f"removed for {removed.data.get('reason')!r}"
    assert warned, "no WARN 'Disconnecting from relay' for the dead relay"
    assert not disturbed, f"the connection was disturbed: {[(op.what, op.target) for op in disturbed]}"
    assert figures["gap_s"] < 0.5, f"stream gap {figures['gap_s']:.2f}s: the connection was disturbed"


# ---------------------------------------------------------------------------- 3 / 7b
async def restart_while_connected(fleet: Fleet, peer: str = CLIENT_ID) -> dict:
    """The relay carrying ``peer``'s side of the connection restarts; the portal's relays_presence
    re-lists it under the same id with new credentials (one push: the debounce covers the restart);
    the peer replaces the allocation and migrates."""
    h = fleet.history
    rid, name = await carrying(fleet, peer)
    await fleet.wait_presence_settled()  # else an earlier change's debounce timer cuts ours short
    t0 = time.monotonic()
    await fleet.restart_relay(name)
    presence = await wait_event(
        fleet,
        "relays_presence",
        peer,
        t0,
        fleet.options.debounce + 5,
        f"the {_role(peer)}'s relays_presence after the restart",
    )
    if rid in presence.data.get("disconnected_ids", []) or rid not in presence.data.get("connected", []):
        raise Precondition(
            f"the restart of {name} reached the {_role(peer)} as a disconnect, not as new credentials "
            f"(the restart took longer than the {fleet.options.debounce}s debounce): {presence.data}"
        )
    early_removal(fleet, peer, rid, t0, presence.t)
    try:
        await wait_for(
            lambda: checks.removals(h, peer, rid, after=presence.t - 0.001, reason="replaced"),
            REPLACE_BOUND + 1,
            "the replacement",
        )
    except AssertionError:
        raise AssertionError(
            f"bug #6648 (relays_presence): relay {name} restarted and the portal re-listed it with new credentials, "
            f"but the {_role(peer)} kept its stale allocation (no 'replaced' within {REPLACE_BOUND + 1:.1f}s)"
        ) from None
    replaced = checks.removals(h, peer, rid, after=presence.t - 0.001, reason="replaced")[0]
    resumed = await wait_resumed(fleet, presence.t, RESUME_BOUND + 5, "the stream to resume after the relays_presence")
    assert checks.first_event(h, "migrating", peer, presence.t - 0.001), f"the {_role(peer)} did not migrate"
    return {
        "presence_after_restart_s": presence.t - t0,
        "replaced_after_presence_s": replaced.t - presence.t,
        "resumed_after_presence_s": max(0.0, resumed - presence.t),
        "gap_s": checks.longest_gap(h, t0),
    }


# ---------------------------------------------------------------------------- 4
async def relay_paused(fleet: Fleet, figures: dict) -> None:
    """The carrying relay turns into a black hole (SIGSTOP/cgroup freeze); its portal socket stays
    open, so no presence change comes for a while: connlib must notice by itself, free the relay
    and migrate within the request backoff."""
    h = fleet.history
    rid, name = await carrying(fleet, CLIENT_ID)
    t0 = time.monotonic()
    await fleet.pause_relay(name)

    def left() -> float:  # every bound counts from the pause
        return max(0.0, t0 + PAUSE_BOUND - time.monotonic())

    try:
        lost = await wait_event(fleet, "path_lost", CLIENT_ID, t0, left(), "the client to notice the dead path")
        try:
            freed = await wait_for(lambda: checks.removals(h, CLIENT_ID, rid, after=t0), left(), "the relay freed")
        except AssertionError:
            raise AssertionError(
                f"bug (black hole kept): relay {name} stopped answering {PAUSE_BOUND:.0f}s ago and the client still "
                "holds its allocation (no probe on the lost path, or the request backoff does not give up)"
            ) from None
        freed = freed[0]
        resumed = await wait_resumed(fleet, t0, PAUSE_BOUND + 3, "the stream to resume after the pause")
        told = [
            op
            for op in checks.peer_events(h, "relays_presence", CLIENT_ID, t0)
            if op.t <= resumed and rid in op.data.get("disconnected_ids", [])
        ]
        if told:
            raise Precondition(f"the portal reported the paused relay gone before connlib recovered: {told[0].data}")
    finally:
        await fleet.unpause_relay(name)
    figures.update(
        detect_s=freed.t - t0,
        resumed_s=resumed - t0,
        gap_s=checks.longest_gap(h, t0),
        path_lost_s=lost.t - t0,
        reason=freed.data.get("reason"),
    )
    assert figures["resumed_s"] <= PAUSE_BOUND, (
        f"bug (black hole kept too long): stream back {figures['resumed_s']:.2f}s after the pause, "
        f"bound {PAUSE_BOUND:.0f}s"
    )


# ---------------------------------------------------------------------------- 5
async def all_relays_restarted(fleet: Fleet, figures: dict) -> None:
    """Every relay restarts at once; the portal re-lists them all with new credentials in one
    relays_presence; the client replaces every allocation and its stream comes back."""
    h = fleet.history
    known = sorted(checks.known_relays(h, CLIENT_ID))
    await fleet.wait_presence_settled()  # else an earlier change's debounce timer cuts ours short
    t0 = time.monotonic()
    await asyncio.gather(*(fleet.restart_relay(name) for name in fleet.relay_names))
    presence = await wait_event(
        fleet,
        "relays_presence",
        CLIENT_ID,
        t0,
        fleet.options.debounce + 6,
        "the client's relays_presence after the restarts",
    )
    gone = set(presence.data.get("disconnected_ids", [])) | (set(known) - set(presence.data.get("connected", [])))
    if gone:
        raise Precondition(
            f"the restarts reached the client as disconnects (slower than the debounce): {presence.data}"
        )
    for rid in known:
        early_removal(fleet, CLIENT_ID, rid, t0, presence.t)

    def replaced() -> list:
        return [rid for rid in known if checks.removals(h, CLIENT_ID, rid, after=presence.t - 0.001, reason="replaced")]

    try:
        await wait_for(lambda: len(replaced()) == len(known), REPLACE_BOUND + 1, "every relay replaced")
    except AssertionError:
        raise AssertionError(
            f"bug #6648 (all relays): every relay restarted and came back in relays_presence with new credentials, "
            f"but the client replaced only {len(replaced())} of {len(known)} allocations"
        ) from None
    resumed = await wait_resumed(fleet, presence.t, RESUME_BOUND + 5, "the stream to resume")
    figures.update(
        resumed_s=max(0.0, resumed - presence.t),
        gap_s=checks.longest_gap(h, t0),
        presence_after_restart_s=presence.t - t0,
        replaced=len(known),
        no_relays=bool(checks.peer_events(h, "no_relays", CLIENT_ID, t0)),
    )
    assert figures["resumed_s"] <= RESUME_BOUND, f"stream back {figures['resumed_s']:.2f}s after the relays_presence"


# ---------------------------------------------------------------------------- 6
async def udp_loss_on_carrying_relay(fleet: Fleet, figures: dict) -> None:
    """Half the UDP datagrams arriving at the carrying relay are dropped for 10 s: the connection
    survives on it or migrates away; either way the stream flows again right after."""
    h = fleet.history
    rid, name = await carrying(fleet, CLIENT_ID)
    t0 = time.monotonic()
    await fleet.udp_loss(name, LOSS_PROBABILITY)
    try:
        # the fault's duration, not a synchronisation: the stream is measured from the history afterwards
        await asyncio.sleep(LOSS_SECONDS)
        drops = await fleet.dropped_datagrams(name)
    finally:
        await fleet.clear_udp_loss(name)
    t1 = fault_at(fleet, "clear_udp_loss", name, t0)
    resumed = await wait_flowing(fleet, t1, RESUME_BOUND + 3, "the stream to flow again after the loss")
    delivered, lost = checks.lost_between(h, t0, t1)
    migrated = checks.first_event(h, "migrating", CLIENT_ID, t0) is not None
    failed = checks.peer_events(h, "connection_failed", CLIENT_ID, t0)
    figures.update(
        gap_s=checks.longest_gap(h, t0),
        resumed_s=max(0.0, resumed - t1),
        dropped=drops,
        echo_loss=round(lost / max(1, delivered + lost), 2),
        outcome="migrated" if migrated else "survived",
    )
    assert drops > 0, "the loss rule dropped nothing: the fault did not happen"
    assert not failed, f"the connection failed under loss: {failed[0].data}"
    assert figures["resumed_s"] <= RESUME_BOUND, f"stream back {figures['resumed_s']:.2f}s after the loss ended"
