"""The retransmission schedule (spec §1.2, the seed's 10 s), on ``Backoff`` and through ``Allocation``.

Defaults: sends at 0, 1, 2.5, 4.75 and 8.125 s, abandoned at exactly 10 s. The probe: one send,
given up at 1 s. Time is a plain float; nothing sleeps.
"""

from __future__ import annotations

import pytest

from connlib.core import backoff
from connlib.core.allocation import Allocation, FreeReason
from connlib.core.backoff import Backoff
from connlib.core.stun import Method, decode

from .turn_sim import Net, TurnSim

DEFAULT_SENDS = [0.0, 1.0, 2.5, 4.75, 8.125]


def schedule(b: Backoff) -> tuple[list[float], float]:
    """Drive ``b`` at its own ``poll_timeout`` instants: (send times, the instant it expired)."""
    sends, now = [b.start], b.start
    while now < b.start + 100:
        now = b.poll_timeout()
        if b.is_expired(now):
            return sends, now
        assert b.is_due(now)
        b.advance()
        sends.append(now)
    raise AssertionError("never expired")


def test_constants_are_the_seeds():
    assert (backoff.INITIAL_INTERVAL, backoff.MULTIPLIER, backoff.MAX_ELAPSED) == (1.0, 1.5, 10.0)
    assert backoff.PROBE_TIMEOUT == 1.0


def test_default_schedule_exact():
    assert schedule(Backoff(0.0)) == (DEFAULT_SENDS, 10.0)


def test_schedule_is_relative_to_start():
    sends, gave_up = schedule(Backoff(1000.0))
    assert sends == [1000.0 + t for t in DEFAULT_SENDS]
    assert gave_up == 1010.0


def test_seed_fix_versus_firezone_today_and_before():
    # 8 s (Firezone since #7942): the trigger at 8.125 finds the request abandoned, 4 sends.
    assert schedule(Backoff(0.0, max_elapsed=8.0)) == ([0.0, 1.0, 2.5, 4.75], 8.0)
    # 60 s (before #6666): 8 retries after the first send.
    sends, gave_up = schedule(Backoff(0.0, max_elapsed=60.0))
    assert len(sends) == 9 and gave_up == 60.0


@pytest.mark.parametrize(
    ("max_elapsed", "sends"),
    [(0.5, [0.0]), (1.0, [0.0]), (1.01, [0.0, 1.0]), (2.5, [0.0, 1.0]), (2.6, [0.0, 1.0, 2.5])],
)
def test_configurable_max_elapsed(max_elapsed, sends):
    assert schedule(Backoff(0.0, max_elapsed=max_elapsed)) == (sends, max_elapsed)


def test_not_due_before_trigger_and_never_after_expiry():
    b = Backoff(0.0)
    assert not b.is_due(0.999) and b.is_due(1.0)
    assert not b.is_expired(9.999) and b.is_expired(10.0)
    late = Backoff(0.0)
    assert not late.is_due(10.0)  # a late timer never retransmits an abandoned request


def test_late_timer_catches_up_one_step_at_a_time():
    b = Backoff(0.0)
    assert b.is_due(3.0)
    b.advance()
    assert b.next_trigger == 2.5 and b.is_due(3.0)
    b.advance()
    assert b.next_trigger == 4.75 and not b.is_due(3.0)


def test_probe_is_single_shot():
    p = backoff.probe(50.0)
    assert p.poll_timeout() == 51.0
    assert not p.is_due(51.0) and p.is_expired(51.0) and not p.is_expired(50.999)
    assert schedule(backoff.probe(50.0)) == ([50.0], 51.0)


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"max_elapsed": 0}, {"multiplier": 0.5}])
def test_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Backoff(0.0, **kwargs)


# --------------------------------------------------------------------------- through Allocation
CLIENT = ("10.0.0.2", 40000)


def run_against_black_hole(alloc: Allocation, sim: TurnSim, net: Net, until: float):
    """Step to each ``poll_timeout``; return the send times per method and when it became free."""
    sends: dict[Method | int, list[float]] = {}
    freed_at = None
    now = net.now
    while now <= until:
        while (t := alloc.poll_transmit()) is not None:
            sends.setdefault(decode(t.payload).method, []).append(now)
        while alloc.poll_event() is not None:  # a driver drains events before asking can_be_freed
            pass
        if freed_at is None and alloc.can_be_freed() is FreeReason.NO_RESPONSE:
            freed_at = now
        deadline = alloc.poll_timeout()
        if deadline is None:
            break
        assert deadline >= now, "a deadline in the past would busy-loop a driver"
        now = deadline
        alloc.handle_timeout(now)
    return sends, freed_at


def test_allocation_binding_schedule_against_black_hole():
    sim = TurnSim(v4=("192.0.2.10", 3478))
    sim.black_hole = True
    alloc = Allocation(sim.socket, *sim.credentials(), "firezone", 0.0)
    sends, freed_at = run_against_black_hole(alloc, sim, Net(sim), until=100.0)
    assert sends == {Method.BINDING: DEFAULT_SENDS}
    assert freed_at == 10.0
    assert alloc.poll_timeout() is None and alloc.can_be_freed() is FreeReason.NO_RESPONSE


def roundtrip(alloc: Allocation, sim: TurnSim, now: float) -> None:
    """Hand what ``alloc`` queued to ``sim`` and feed the replies back, once (no recursion)."""
    out = []
    while (t := alloc.poll_transmit()) is not None:
        out.append(t)
    for t in out:
        for dst, data in sim.handle(t.payload, CLIENT, now):
            relay = sim.address_for(dst)
            assert relay is not None
            alloc.handle_input(data, relay, CLIENT, now)


def test_allocation_allocate_schedule_after_relay_goes_silent():
    """The relay answers BINDING and the 401, then vanishes: the signed ALLOCATE follows the
    same 0..8.125 s / 10 s schedule, and the allocation is freed with NO_RESPONSE at 15 s."""
    sim = TurnSim(v4=("192.0.2.11", 3478))
    alloc = Allocation(sim.socket, *sim.credentials(), "firezone", 5.0)
    roundtrip(alloc, sim, 5.0)  # BINDING -> success; unauthenticated ALLOCATE queued
    roundtrip(alloc, sim, 5.0)  # ALLOCATE -> 401; signed ALLOCATE queued
    sim.black_hole = True
    sends, freed_at = run_against_black_hole(alloc, sim, Net(sim, now=5.0), until=100.0)
    assert sends == {Method.ALLOCATE: [5.0 + t for t in DEFAULT_SENDS]}
    assert freed_at == 15.0


def test_allocation_respects_configured_max_elapsed():
    sim = TurnSim(v4=("192.0.2.12", 3478))
    sim.black_hole = True
    alloc = Allocation(sim.socket, *sim.credentials(), "firezone", 0.0, max_elapsed=8.0)
    sends, freed_at = run_against_black_hole(alloc, sim, Net(sim), until=100.0)
    assert sends == {Method.BINDING: [0.0, 1.0, 2.5, 4.75]} and freed_at == 8.0


def test_allocation_probe_one_send_given_up_at_one_second():
    sim = TurnSim(v4=("192.0.2.13", 3478))
    net = Net(sim)
    alloc = net.attach(Allocation(sim.socket, *sim.credentials(), "firezone", 0.0), CLIENT)
    net.run(1.0)
    assert alloc.has_allocation()
    sim.black_hole = True
    net.now = 20.0
    alloc.refresh(20.0)
    sends, freed_at = run_against_black_hole(alloc, sim, net, until=100.0)
    assert sends == {Method.REFRESH: [20.0]}
    assert freed_at == 21.0
    assert not alloc.has_allocation()


def test_signed_retransmits_carry_fresh_transaction_ids_binding_does_not():
    sim = TurnSim(v4=("192.0.2.14", 3478))
    sim.black_hole = True
    alloc = Allocation(sim.socket, *sim.credentials(), "firezone", 0.0)
    binding_tids = set()
    for now in DEFAULT_SENDS:
        alloc.handle_timeout(now)
        while (t := alloc.poll_transmit()) is not None:
            binding_tids.add(decode(t.payload).transaction_id)
    assert len(binding_tids) == 1  # five BINDING sends, one transaction id

    sim.black_hole = False
    alloc = Allocation(sim.socket, *sim.credentials(), "firezone", 0.0)
    roundtrip(alloc, sim, 0.0)
    roundtrip(alloc, sim, 0.0)
    sim.black_hole = True
    tids = []
    for now in DEFAULT_SENDS:
        alloc.handle_timeout(now)
        while (t := alloc.poll_transmit()) is not None:
            msg = decode(t.payload)
            assert msg.method == Method.ALLOCATE and "MESSAGE-INTEGRITY" in msg
            tids.append(msg.transaction_id)
    assert len(tids) == 5 and len(set(tids)) == 5
    assert set(tids[-1:]) <= set(alloc.sent_requests)  # only the latest id is still awaited
    assert len(alloc.sent_requests) == 1
