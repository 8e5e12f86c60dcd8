"""``python -m harness chaos --schedule FILE``: a simulator schedule (``sim/schedule.py``'s JSON, as a
failing ``python -m sim`` run prints it) replayed against a real stack, so that a simulated finding can
be confirmed on real coturn.

Each fault starts at its ``at`` (seconds after the stack's traffic flows) and is undone after its
``duration``, concurrently with the others, as the simulator plays them. After the last one has healed
the run checks what the simulator's invariants check at that point: the stream is back within
``RECOVERY_BOUND`` and no peer holds a zombie relay (``checks.zombies``). Exit 0 when both hold, 1 if
not, 2 (before any stack starts) when the schedule uses a fault this backend cannot play.

Kinds and what they are here: ``relay_reboot`` a container restart (``new_secret`` false: the relay
image's keep-secret switch); ``relay_kill`` SIGKILL, started again after ``duration``; ``relay_pause``
cgroup freeze; ``relay_portal_cut`` / ``peer_portal_cut`` the portal's admin partition; ``loss`` UDP loss
(``rate``) on a relay; ``rotate_credentials`` the portal's credential rotation (new usernames under the
same secret: what a running coturn can be given; the model rotates the secret itself). The others
(cuts between peers and relays, quotas, address changes, portal or peer restarts, black holes) are
not played (exit 2, naming them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from sim.schedule import Fault, Schedule

from . import checks
from .fleet import CLIENT_ID, GATEWAY_ID, Fleet
from .report import Results
from .waiting import wait_for

RECOVERY_BOUND = 15.0
PEERS = {"client": CLIENT_ID, "gateway": GATEWAY_ID}
PLAYED = frozenset(
    {"relay_reboot", "relay_kill", "relay_pause", "relay_portal_cut", "peer_portal_cut", "loss", "rotate_credentials"}
)


class UnplayableSchedule(ValueError):
    """The schedule has faults this backend cannot play (the message names them)."""


def check_playable(schedule: Schedule) -> None:
    unplayable = sorted({f.kind for f in schedule.faults} - PLAYED)
    if unplayable:
        raise UnplayableSchedule(f"faults this stack cannot play: {unplayable} (played: {sorted(PLAYED)})")
    for fault in schedule.faults:
        if fault.kind == "loss" and not fault.target.startswith("relay-"):
            raise UnplayableSchedule(f"loss on {fault.target!r}: only loss on a relay is played here")


async def run_schedule(fleet: Fleet, schedule: Schedule, results: Results) -> int:
    check_playable(schedule)
    h = fleet.history
    row = results.row("schedule", f"schedule seed {schedule.seed} ({len(schedule.faults)} faults)", fleet.backend)
    start = time.monotonic()
    await asyncio.gather(*(_play(fleet, fault, start) for fault in schedule.faults))
    healed = start + max((f.heals_at for f in schedule.faults), default=0.0)
    failures = []
    try:
        resumed = await wait_for(
            lambda: checks.resumed_at(h, healed) or checks.flowing_since(h, healed), RECOVERY_BOUND, "the stream"
        )
    except AssertionError:
        failures.append(f"the stream is not back {RECOVERY_BOUND:.0f}s after the last fault healed")
        resumed = None
    zombies = [z for peer in PEERS.values() for z in checks.zombies(h, peer, start)]
    if zombies:
        failures.append("zombie relays: " + ", ".join(f"{z.peer} {z.relay[:8]} {z.duration:.1f}s" for z in zombies))
    row.figures.update(
        faults=len(schedule.faults),
        resumed_after_heal_s=None if resumed is None else round(max(0.0, resumed - healed), 2),
        gap_s=round(checks.longest_gap(h, start), 2),
        zombies=len(zombies),
    )
    row.verdict, row.reason = ("FAILED", "; ".join(failures)) if failures else ("passed", "")
    print(
        json.dumps({"event": "schedule_done", "verdict": row.verdict, "reason": row.reason, **row.figures}), flush=True
    )
    return 0 if row.verdict == "passed" else 1


async def _play(fleet: Fleet, fault: Fault, start: float) -> None:
    # the schedule's own timing, not a synchronisation: each fault starts and heals when it says
    await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
    undo = await _inject(fleet, fault)
    if undo is not None:
        await asyncio.sleep(max(0.0, start + fault.heals_at - time.monotonic()))
        await undo()


async def _inject(fleet: Fleet, fault: Fault) -> Callable[[], Awaitable[None]] | None:
    """Start ``fault``; what undoes it after its duration (None: it undoes itself)."""
    name = fault.target
    match fault.kind:
        case "relay_reboot":
            await fleet.restart_relay(name, new_secret=fault.new_secret)
        case "relay_kill":
            await fleet.kill_relay(name)
            return lambda: fleet.start_relay(name)
        case "relay_pause":
            await fleet.pause_relay(name)
            return lambda: fleet.unpause_relay(name)
        case "relay_portal_cut":
            await fleet.partition(await fleet.relay_id(name), seconds=max(fault.duration, 0.1))
        case "peer_portal_cut":
            await fleet.partition(PEERS[name], seconds=max(fault.duration, 0.1))
        case "loss":
            await fleet.udp_loss(name, min(1.0, max(fault.rate, 0.01)))
            return lambda: fleet.clear_udp_loss(name)
        case "rotate_credentials":
            await fleet.rotate_credentials(name)
    return None
