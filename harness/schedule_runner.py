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
(``rate``) of what arrives at a relay, or, on a peer, of what arrives at it and of what it sends
(dropped on arrival at the relays); ``rotate_credentials`` the portal's credential rotation (new usernames under the
same secret: what a running coturn can be given; the model rotates the secret itself); ``stream_idle``
of the client: SIGUSR1 to its ``connlib run`` at ``at`` (the stream pauses and the connection is
dropped, as ``SimPeer.go_idle`` does), SIGUSR2 at ``heals_at`` (it streams again on a new connection);
overlapping idle periods are played as one, as the simulator's client stays idle until the later end.
``peer_restart`` the peer's container stopped and started (a new ``connlib run``: a new socket, port,
allocations and portal session); ``portal_restart`` the portal's container stopped for ``duration``,
then started (a new process, its state lost); the heal is done once every running relay is online
again, the peers re-join on their own. ``peer_relay_cut`` / ``relay_relay_cut`` iptables DROP rules in
both ends' containers for every address of the other end (all its networks), on arrival, so that
neither end is told; a relay cut from itself is nothing, as in the simulator. ``portal_blackhole`` the
target's (peer or relay) container drops what comes from the portal and what it sends there (the
portal's container cannot change its rules): its socket hangs and its dials time out, nothing is
refused. A cut's rules are put back when its container (re)starts or is unpaused under it, and a quota when
its relay does (the model's relay keeps its quotas through a reboot). Portal cuts and credential
rotations while a ``portal_restart`` has the portal down are not played (a WARN line; the
simulator skips a partition of a portal that is down; its rotation happens in the relay, Docker's
at the portal, which is not there). ``quota`` 486: ``cc user-quota 1`` on the relay's coturn telnet CLI (loopback only, a password per
start): a username that holds an allocation gets 486 for a new one while the allocations keep
working, as the model's ``user_quota = 1``; ``cc user-quota 0`` heals it. ``quota`` 508: coturn
answers its quotas (total too: ``cc total-quota N`` gets 486, checked by hand) with 486 and 508 only
when no relay port is left, so a process in the relay's container takes every free relay port with
an allocation and holds it (the model's ``total_quota = max(1, allocations)``: any new ALLOCATE gets
508, the allocations there keep working); the heal frees them (coturn frees a port ~1 s after the
deletion). Both return once the relay answers so (a second ALLOCATE under one username, probed from
inside its container). ``address_change`` the relay's container stopped (its
secret kept, as the model's relay keeps it), reconnected to relay-net under a new address, started:
state lost, and its agent joins announcing the new address; each peer gets a host route to the new
address through the relay's leg on its network (what the simulator's network does for any address;
the peers' ``unreachable default`` routes nothing else), put back after a restart of the peer.

Every kind the simulator draws is played. Exit 2 for what it does not draw: a quota code other than
486 or 508, an idle period of the gateway, a channel lifetime that is not whole seconds.

The schedule's settings: ``relays`` and ``channel_lifetime_s`` are the stack's (:func:`stack_settings`:
coturn's ``channel-lifetime`` on every relay and ``connlib run --channel-lifetime`` on both peers,
when not RFC 8656's 600 s; whole seconds, as coturn takes them). ``rate`` and ``keepalive_s`` are not
played, and the run says so on stderr (:func:`unplayed_settings`): the simulator's 0.25 datagram/s
saves CPU per simulated second, but on a real stack it would blind the checks (a gap is a silence of
five datagram intervals: 20 s at that rate, longer than ``RECOVERY_BOUND``; the readiness gate waits
for 10 echoes), so the stream keeps ``--rate`` (default 50/s); ``connlib run`` has no keep-alive
option (connlib's 1 s: the ICE timeout is 4 s, not the simulator's 8 s), so a finding that hangs on
the ICE timeout may need its faults re-timed to show on Docker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from connlib.core.ice import KEEPALIVE_INTERVAL
from sim.schedule import CHANNEL_LIFETIME, Fault, Schedule

from . import checks
from .fleet import CLIENT_ID, GATEWAY_ID, Fleet
from .report import Results
from .waiting import wait_for

log = logging.getLogger("harness.schedule_runner")

RECOVERY_BOUND = 15.0
PEERS = {"client": CLIENT_ID, "gateway": GATEWAY_ID}
PLAYED = frozenset(
    {
        "relay_reboot",
        "relay_kill",
        "relay_pause",
        "relay_portal_cut",
        "peer_portal_cut",
        "loss",
        "rotate_credentials",
        "stream_idle",
        "peer_restart",
        "portal_restart",
        "peer_relay_cut",
        "relay_relay_cut",
        "portal_blackhole",
        "quota",
        "address_change",
    }
)
QUOTA_CODES = frozenset({486, 508})
PORTAL_FAULTS = frozenset({"relay_portal_cut", "peer_portal_cut", "rotate_credentials"})
"""Faults the portal's admin API plays: nothing while a portal_restart has it down."""
KEEPALIVE = KEEPALIVE_INTERVAL  # connlib run's ICE keep-alive interval, what the stack's peers run with


class UnplayableSchedule(ValueError):
    """The schedule has faults this backend cannot play (the message names them)."""


def check_playable(schedule: Schedule) -> None:
    """Raise :class:`UnplayableSchedule` naming what of ``schedule`` the stack cannot play."""
    unplayable = sorted({f.kind for f in schedule.faults} - PLAYED)
    if unplayable:
        raise UnplayableSchedule(f"faults this stack cannot play: {unplayable} (played: {sorted(PLAYED)})")
    for fault in schedule.faults:
        if fault.kind == "stream_idle" and fault.target != "client":
            raise UnplayableSchedule(f"stream_idle of {fault.target!r}: only the client streams")
        if fault.kind == "quota" and fault.code not in QUOTA_CODES:
            raise UnplayableSchedule(f"quota {fault.code} on {fault.target}: played are {sorted(QUOTA_CODES)}")
    lifetime = schedule.channel_lifetime_s
    if lifetime != round(lifetime) or lifetime < 1:
        raise UnplayableSchedule(f"channel_lifetime_s {lifetime:g}: coturn takes whole seconds")


def stack_settings(schedule: Schedule) -> dict[str, Any]:
    """The ``StackOptions`` fields the schedule sets besides ``relays``: its channel lifetime on every
    relay (coturn's ``channel-lifetime``, through the relay image's ``TURN_EXTRA``) and on both peers
    (``--channel-lifetime``); nothing when it is the default 600 s."""
    if schedule.channel_lifetime_s == CHANNEL_LIFETIME:
        return {}
    seconds = str(round(schedule.channel_lifetime_s))
    relays = {f"relay-{i}": {"TURN_EXTRA": f"channel-lifetime={seconds}"} for i in range(1, schedule.relays + 1)}
    return {"relay_env": relays, "peer_args": ("--channel-lifetime", seconds)}


def unplayed_settings(schedule: Schedule, rate: float) -> str | None:
    """One line saying which of the schedule's ``rate`` and ``keepalive_s`` the stack (streaming at
    ``rate``) does not play, and what it plays instead (the module docstring says why); None if none."""
    unplayed = []
    if schedule.rate != rate:
        unplayed.append(f"rate {schedule.rate:g}/s (the stream runs at {rate:g}/s)")
    if schedule.keepalive_s != KEEPALIVE:
        unplayed.append(f"keepalive_s {schedule.keepalive_s:g} (connlib's {KEEPALIVE:g} s)")
    if not unplayed:
        return None
    return f"schedule settings not played on the real stack: {'; '.join(unplayed)}"


async def run_schedule(fleet: Fleet, schedule: Schedule, results: Results) -> int:
    check_playable(schedule)
    h = fleet.history
    row = results.row("schedule", f"schedule seed {schedule.seed} ({len(schedule.faults)} faults)", fleet.backend)
    start = time.monotonic()
    await asyncio.gather(*(_play(fleet, fault, start) for fault in merged_idle_periods(schedule.faults)))
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


def merged_idle_periods(faults: tuple[Fault, ...]) -> list[Fault]:
    """``faults`` with overlapping ``stream_idle`` periods as one, from the first start to the last
    end: the simulator's client stays idle until the later end (``SimPeer.go_idle``), while a real
    client's SIGUSR2 ends its idle whichever period it belongs to."""
    others = [f for f in faults if f.kind != "stream_idle"]
    merged: list[Fault] = []
    for idle in sorted((f for f in faults if f.kind == "stream_idle"), key=lambda f: f.at):
        last = merged[-1] if merged else None
        if last is not None and idle.at <= last.heals_at:
            merged[-1] = replace(last, duration=max(last.heals_at, idle.heals_at) - last.at)
        else:
            merged.append(idle)
    return sorted([*others, *merged], key=lambda f: f.at)


async def _play(fleet: Fleet, fault: Fault, start: float) -> None:
    # the schedule's own timing, not a synchronisation: each fault starts and heals when it says
    await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
    undo = await inject(fleet, fault)
    if undo is not None:
        await asyncio.sleep(max(0.0, start + fault.heals_at - time.monotonic()))
        await undo()


async def inject(fleet: Fleet, fault: Fault) -> Callable[[], Awaitable[None]] | None:
    """Start ``fault``; what undoes it after its duration (None: it undoes itself)."""
    name = fault.target
    if fault.kind in PORTAL_FAULTS and fleet.portal_down:
        # as the simulator's portal_restart: a partition or rotation of a portal that is down is nothing
        log.warning("Fault not played: the portal is down kind=%s target=%s", fault.kind, name)
        return None
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
            target = PEERS.get(name, name)
            await fleet.udp_loss(target, min(1.0, max(fault.rate, 0.01)))
            return lambda: fleet.clear_udp_loss(target)
        case "rotate_credentials":
            await fleet.rotate_credentials(name)
        case "stream_idle":
            await fleet.idle_stream(PEERS[name])
            return lambda: fleet.resume_stream(PEERS[name])
        case "address_change":
            await fleet.move_relay(name)
        case "peer_restart":
            await fleet.restart_peer(PEERS[name])
        case "portal_restart":
            await fleet.stop_portal()
            return fleet.start_portal
        case "peer_relay_cut" | "relay_relay_cut":
            target, relay = PEERS.get(name, name), fault.other
            await fleet.cut_datagrams(target, relay)
            return lambda: fleet.heal_datagrams(target, relay)
        case "portal_blackhole":
            target = PEERS.get(name, name)
            await fleet.blackhole_portal(target)
            return lambda: fleet.clear_portal_blackhole(target)
        case "quota":
            await fleet.refuse_allocations(name, fault.code)
            return lambda: fleet.allow_allocations(name)
    return None
