"""Carrying out a schedule's faults in a ``World``: ``install(world, schedule)`` schedules each
fault's start at ``at`` and its heal at ``at + duration``. New secrets come from the world's rng,
so they are part of the replay. ``World.fault_log`` records what was done, for reports."""

from __future__ import annotations

from .schedule import Fault, Schedule
from .world import World


def install(world: World, schedule: Schedule) -> None:
    for index, fault in enumerate(schedule.faults):
        world.schedule(fault.at, _start, world, index, fault)


def _start(world: World, index: int, fault: Fault) -> None:
    now = world.now
    world.trace("fault", fault.kind, fault)
    world.active_faults[index] = fault
    world.last_disturbance = now
    kind, until = fault.kind, fault.heals_at
    if kind in ("relay_reboot", "relay_kill"):
        world.agent(fault.target).stop(now)
    elif kind == "relay_pause":
        agent = world.agent(fault.target)
        agent.frozen = True
        agent.deadline = None
        world.net.black_hole(agent.relay.ip, until)
    elif kind == "relay_portal_cut":
        if world.portal is not None:
            world.portal.partition(world.agent(fault.target).rid, fault.duration, now)
            world.drain_portal()
    elif kind == "peer_portal_cut":
        if world.portal is not None:
            world.portal.partition(fault.target, fault.duration, now)
            world.drain_portal()
    elif kind == "peer_relay_cut":
        world.net.partition(world.peer(fault.target).ip, world.agent(fault.other).relay.ip, until)
    elif kind == "relay_relay_cut":
        if fault.target != fault.other:
            world.net.partition(world.agent(fault.target).relay.ip, world.agent(fault.other).relay.ip, until)
    elif kind == "loss":
        host = world.peer(fault.target).ip if fault.target in ("client", "gateway") else None
        world.net.lossy(host or world.agent(fault.target).relay.ip, fault.rate, until)
    elif kind == "quota":
        relay = world.agent(fault.target).relay
        if fault.code == 486:
            relay.user_quota = 1
        else:
            relay.total_quota = max(1, len(relay.allocations))
    elif kind == "rotate_credentials":
        world.agent(fault.target).rotate(now, world.new_secret())
    elif kind == "address_change":
        world.agent(fault.target).move(now)
    elif kind == "portal_restart":
        world.stop_portal()
    elif kind == "peer_restart":
        world.peer(fault.target).restart(now)
    elif kind == "portal_blackhole":
        world.ws_black_holes[fault.target] = until
    elif kind == "stream_idle":
        world.peer(fault.target).go_idle(now, until)
    world.schedule(until, _heal, world, index, fault)


def _heal(world: World, index: int, fault: Fault) -> None:
    now = world.now
    world.trace("heal", fault.kind, fault)
    world.active_faults.pop(index, None)
    kind = fault.kind
    if kind in ("relay_reboot", "relay_kill"):
        world.agent(fault.target).start(now, world.new_secret() if fault.new_secret else None)
    elif kind == "relay_pause":
        agent = world.agent(fault.target)
        agent.frozen = False
        agent.timeout(now)
    elif kind == "quota":
        relay = world.agent(fault.target).relay
        relay.user_quota = relay.total_quota = 0
    elif kind == "portal_restart":
        world.start_portal()
    world.last_heal = world.last_disturbance = now
