"""Issue 9's chaos scenarios: what real relays do beyond the two #6666 fixes.

Written like ``scenarios.py`` (bounded waits on the history, figures, ``AssertionError`` naming the
bug, :class:`Precondition` for a run that did not set up its situation), with the issue's three
bounds on every one of them:

- traffic back within ``RESUME_BOUND`` (3 s) of the relay being usable again;
- no zombie: every relay a peer holds is usable, or gone, within ``checks.ZOMBIE_BOUND`` (15 s),
  read from the peers' periodic ``relays`` reports;
- no storm: at most ``MAX_REQUEST_RATE`` STUN requests per second reach any relay, counted in
  the relay container (``harness.request_meter``), not taken from connlib's word.
"""

from __future__ import annotations

import asyncio
import time

from connlib.core.allocation import FreeReason
from harness import checks
from harness.fleet import CLIENT_ID, GATEWAY_ID, Fleet
from harness.request_meter import RequestMeter
from harness.waiting import wait_for

from .scenarios import (
    COALESCING_DEBOUNCE,
    REPLACE_BOUND,
    RESUME_BOUND,
    Precondition,
    _role,
    carrying,
    early_removal,
    fault_at,
    wait_event,
    wait_flowing,
)

MAX_REQUEST_RATE = 10.0
REALLOCATE_BOUND = 2.0  # replaced under new credentials ⇒ allocated again this soon
QUOTA_RELAY = "relay-1"
QUOTA = {"relay_env": {QUOTA_RELAY: {"TURN_EXTRA": "total-quota=1"}}, "debounce": COALESCING_DEBOUNCE}
"""coturn's ``total-quota``: one allocation on relay-1, so of the two peers the second is refused (486)."""
PEERS = (CLIENT_ID, GATEWAY_ID)
CHANNEL_LIFETIME = 10  # seconds, coturn's --channel-lifetime and connlib's alike
CHANNEL = {
    "relays": 1,  # the connection after the pause is on the relay that remembers the old binding
    "relay_env": {"relay-1": {"TURN_EXTRA": f"channel-lifetime={CHANNEL_LIFETIME}"}},
    "peer_args": ("--channel-lifetime", str(CHANNEL_LIFETIME)),
    "portal": {"relays_per_client": 1},
}
IDLE_S = CHANNEL_LIFETIME + 6.0
"""How long the gateway is frozen: past the channels' lifetime (our side lets an idle channel
lapse), and past the client's ICE timeout, so the connection is made anew afterwards."""


def check_bounds(fleet: Fleet, figures: dict, meter: RequestMeter, since: float) -> None:
    """The no-zombie and no-storm bounds, over everything since ``since``."""
    found = [z for peer in PEERS for z in checks.zombies(fleet.history, peer, since)]
    figures.update(peak_requests_per_s=meter.peak(), requests=meter.totals())
    assert not found, "bug (zombie relay): " + "; ".join(
        f"the {_role(z.peer)} held relay {z.relay[:8]} without an allocation for {z.duration:.1f}s" for z in found
    )
    storms = {name: rate for name, rate in meter.peak().items() if rate > MAX_REQUEST_RATE}
    assert not storms, f"bug (request storm): {storms} requests/s (bound {MAX_REQUEST_RATE:.0f})"


async def settle(fleet: Fleet, meter: RequestMeter, since: float, samples: int = 2) -> None:
    """Until the bounds can see past the recovery: ``samples`` more meter samples per relay, and a
    ``relays`` report of each peer after ``since``."""
    await meter.wait_samples(samples, timeout=samples * 3.0)
    await wait_for(
        lambda: all(checks.first_event(fleet.history, "relays", peer, since) for peer in PEERS),
        5,
        "a relays report of each peer",
    )


async def wait_usable(fleet: Fleet, peer: str, rid: str, after: float, timeout: float, describe: str) -> float:
    """When ``peer``'s periodic report first shows relay ``rid`` usable (allocated) after ``after``."""

    def usable() -> float | None:
        op = checks.first_event(fleet.history, "relays", peer, after, usable=rid)
        return op.t if op is not None else None

    return await wait_for(usable, timeout, describe)


# ---------------------------------------------------------------------------- 8
async def same_secret_restart_while_partitioned(fleet: Fleet, figures: dict, peer: str = CLIENT_ID) -> None:
    """Item 7: the carrying relay reboots with the SAME secret while the peer is cut off the
    portal: every allocation is gone, and the init after the heal lists the relay with exactly the
    credentials the peer holds. Only a probe of the listed relay (a REFRESH: 437, allocate again)
    tells the dead allocation from a live one."""
    h = fleet.history
    rid, name = await carrying(fleet, peer)
    t0 = time.monotonic()
    async with RequestMeter(fleet, fleet.relay_names) as meter:
        async with fleet.partitioned(peer):
            await fleet.restart_relay(name, new_secret=False)
        healed = fault_at(fleet, "heal", peer, t0)
        init = await wait_event(fleet, "init", peer, healed, 10, f"the {_role(peer)}'s re-init after the heal")
        early_removal(fleet, peer, rid, t0, init.t)
        try:
            resumed = await wait_flowing(fleet, init.t, RESUME_BOUND, "the stream after the re-init")
        except AssertionError:
            raise AssertionError(
                f"bug (same secret): relay {name} rebooted with the same secret while the {_role(peer)} was cut off; "
                f"the re-init listed it with the credentials the {_role(peer)} holds, and {RESUME_BOUND:.0f}s later "
                "the stream is still down (the dead allocation was not probed)"
            ) from None
        await settle(fleet, meter, resumed)
    figures.update(
        resumed_after_init_s=round(max(0.0, resumed - init.t), 2),
        init_after_heal_s=round(init.t - healed, 2),
        gap_s=round(checks.longest_gap(h, t0), 2),
    )
    check_bounds(fleet, figures, meter, t0)


# ---------------------------------------------------------------------------- 9
async def quota_exhausted(fleet: Fleet, figures: dict) -> None:
    """Item 5: relay-1 holds one allocation (coturn ``total-quota=1``). It restarts, the portal
    re-lists it to both peers with new credentials (one push), both replace their allocation:
    the second ALLOCATE is refused (486). That peer must give the relay up within the no-zombie
    bound, at a bounded request rate, and the stream must come back."""
    h = fleet.history
    rid = await fleet.relay_id(QUOTA_RELAY)
    await fleet.wait_presence_settled()
    t0 = time.monotonic()
    refused_reason = str(FreeReason.REFUSED)
    async with RequestMeter(fleet, fleet.relay_names) as meter:
        await fleet.restart_relay(QUOTA_RELAY)
        presence = await wait_event(
            fleet, "relays_presence", CLIENT_ID, t0, fleet.options.debounce + 5, "the client's relays_presence"
        )
        if rid not in presence.data.get("connected", []):
            raise Precondition(f"the restart reached the client as a disconnect: {presence.data}")

        def refused() -> list[str]:
            return [p for p in PEERS if checks.removals(h, p, rid, after=t0, reason=refused_reason)]

        try:
            losers = await wait_for(refused, checks.ZOMBIE_BOUND + 2, "a peer to give up the full relay")
        except AssertionError:
            check_bounds(fleet, figures, meter, presence.t)  # names the zombie, if that is what it is
            raise Precondition("no peer was refused by the full relay (coturn's quota did not bite)") from None
        removed = checks.removals(h, losers[0], rid, after=t0, reason=refused_reason)[0]
        resumed = await wait_flowing(fleet, presence.t, RESUME_BOUND + 5, "the stream after the relays_presence")
        await settle(fleet, meter, resumed, samples=3)  # the held-off relay stays quiet: show it
    figures.update(
        refused=[_role(p) for p in losers],
        freed_after_presence_s=round(removed.t - presence.t, 2),
        resumed_after_presence_s=round(max(0.0, resumed - presence.t), 2),
        no_relays=bool(checks.peer_events(h, "no_relays", losers[0], t0)),
    )
    check_bounds(fleet, figures, meter, t0)
    assert figures["resumed_after_presence_s"] <= RESUME_BOUND, (
        f"stream back {figures['resumed_after_presence_s']:.2f}s after the relays_presence"
    )
    assert not figures["no_relays"], "the refused peer asked for new relays though it still held one"


# ---------------------------------------------------------------------------- 11
async def rotation_without_reboot(fleet: Fleet, figures: dict, peer: str = CLIENT_ID) -> None:
    """Item 4: the portal hands out new credentials for the carrying relay, which did not reboot
    and still holds the peer's allocation on the same 5-tuple. The replacement must delete the old
    allocation (under the old credentials: coturn answers 437, then 441 to the new username) and
    allocate again at once; the stream comes back."""
    h = fleet.history
    rid, name = await carrying(fleet, peer)
    await fleet.wait_presence_settled()
    t0 = time.monotonic()
    async with RequestMeter(fleet, fleet.relay_names) as meter:
        await fleet.rotate_credentials(name)
        presence = await wait_event(
            fleet, "relays_presence", peer, t0, fleet.options.debounce + 5, f"the {_role(peer)}'s relays_presence"
        )
        replaced = await wait_for(
            lambda: checks.removals(h, peer, rid, after=presence.t - 0.001, reason="replaced"),
            REPLACE_BOUND + 1,
            "the replacement under the new credentials",
        )
        try:
            usable = await wait_usable(fleet, peer, rid, replaced[0].t, REALLOCATE_BOUND + 1.5, "allocated again")
        except AssertionError:
            raise AssertionError(
                f"bug (rotation without reboot): relay {name} got new credentials without a reboot; "
                f"{REALLOCATE_BOUND + 1.5:.1f}s after the replacement the {_role(peer)} has no allocation on it "
                "(the old allocation still holds our 5-tuple)"
            ) from None
        resumed = await wait_flowing(fleet, presence.t, RESUME_BOUND + 5, "the stream after the rotation")
        await settle(fleet, meter, resumed)
    figures.update(
        replaced_after_presence_s=round(replaced[0].t - presence.t, 2),
        usable_after_presence_s=round(usable - presence.t, 2),
        resumed_after_presence_s=round(max(0.0, resumed - presence.t), 2),
        gap_s=round(checks.longest_gap(h, t0), 2),
    )
    check_bounds(fleet, figures, meter, t0)
    assert figures["usable_after_presence_s"] <= REALLOCATE_BOUND, (
        f"allocated again {figures['usable_after_presence_s']:.2f}s after the new credentials"
    )
    assert figures["resumed_after_presence_s"] <= RESUME_BOUND, (
        f"stream back {figures['resumed_after_presence_s']:.2f}s after the new credentials"
    )


# ---------------------------------------------------------------------------- 10
async def channel_idle_past_its_lifetime(fleet: Fleet, figures: dict) -> None:
    """Item 3: the gateway freezes for longer than the channels' (shortened) lifetime: the
    client's channel to it carries nothing back and lapses on our side, while coturn keeps the
    binding (it still refuses another number for that peer). When the gateway thaws, traffic
    starts again in both directions: the re-binds must reuse the numbers, or coturn refuses them
    (400) and the flow is black-holed."""
    h = fleet.history
    if (await carrying(fleet, CLIENT_ID))[1] != "relay-1":
        raise Precondition("the connection is not on relay-1")
    t0 = time.monotonic()
    async with RequestMeter(fleet, fleet.relay_names) as meter:
        await fleet.pause_peer(GATEWAY_ID)
        try:
            await asyncio.sleep(IDLE_S)  # the fault's duration, not a synchronisation
        finally:
            await fleet.unpause_peer(GATEWAY_ID)
        thawed = fault_at(fleet, "unpause", GATEWAY_ID, t0)
        try:
            resumed = await wait_flowing(fleet, thawed, RESUME_BOUND + 4, "the stream after the gateway thawed")
        except AssertionError:
            raise AssertionError(
                f"bug (channel number): the gateway was frozen {IDLE_S:.0f}s, past the {CHANNEL_LIFETIME}s channel "
                f"lifetime; {RESUME_BOUND + 4:.0f}s after it thawed no echo has come back (the re-bound channels "
                "were refused: a new number for a peer coturn still binds to the old one)"
            ) from None
        await settle(fleet, meter, resumed)
    figures.update(
        resumed_after_thaw_s=round(max(0.0, resumed - thawed), 2),
        gap_s=round(checks.longest_gap(h, t0), 2),
        idle_s=IDLE_S,
        reconnected=checks.first_event(h, "connected", CLIENT_ID, thawed) is not None,
    )
    check_bounds(fleet, figures, meter, t0)
    assert figures["resumed_after_thaw_s"] <= RESUME_BOUND, (
        f"stream back {figures['resumed_after_thaw_s']:.2f}s after the gateway thawed"
    )
