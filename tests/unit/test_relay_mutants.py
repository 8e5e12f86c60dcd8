"""Behaviour of connlib's relay handling that mutation testing (``make mutation``) showed no other
test pinned down: each test drives an ``Allocation`` on a fake clock against the simulated relay
(``turn_sim``) and asserts what the relay receives, what the peer can send, or the WARN records an
operator reads (their text and key fields, which ``kv`` renders)."""

from __future__ import annotations

import logging

import pytest

from connlib.core import stun
from connlib.core.allocation import REFUSAL_RETRY_DELAYS, Channel, ChannelTimes, FreeReason
from connlib.core.stun import Method

from .test_allocation import PEER, PEER2, PEER3, RELAY4, allocated, setup, take
from .test_relay_hardening import allocation, forge, node_with
from .turn_sim import TurnSim

LIFETIME = 100.0  # a short channel lifetime (coturn --channel-lifetime): expiry at 100 s, re-use at 150 s


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def bound(alloc, net, peer, now: float) -> int:
    """Bind ``peer`` at ``now`` and let the relay confirm it; its channel number."""
    alloc.bind_channel(peer, now)
    net.now = now
    net.run(now)
    (number,) = [n for n, c in alloc.channels.items() if c.peer == peer]
    assert alloc.channels[number].bound
    return number


# ------------------------------------------------------------------ channel lifetimes
@pytest.mark.parametrize("lifetime", [0.0, -1.0])
def test_a_channel_lifetime_must_be_positive(lifetime):
    with pytest.raises(ValueError, match="a channel lifetime must be positive"):
        ChannelTimes(lifetime)


def test_a_sub_second_channel_lifetime_is_allowed():
    assert ChannelTimes(0.5).refresh_age == 0.25


def test_a_channel_ends_exactly_at_its_lifetime():
    alloc, sim, net = allocated(channel_times=ChannelTimes(LIFETIME))
    number = bound(alloc, net, PEER, 1.0)
    assert alloc.has_channel_to(PEER, 100.999)
    assert alloc.encapsulate(PEER, b"x", 100.999) is not None
    assert not alloc.has_channel_to(PEER, 101.0)
    assert alloc.encapsulate(PEER, b"x", 101.0) is None  # lapsed: nothing sent on it, a re-bind instead
    (rebind,) = [m for _, m in take(alloc) if m.method == Method.CHANNEL_BIND]
    assert rebind.get("CHANNEL-NUMBER") == number


def test_an_expired_number_is_handed_out_again_only_half_a_lifetime_after_it_lapsed():
    alloc, sim, net = allocated(channel_times=ChannelTimes(LIFETIME))
    first = bound(alloc, net, PEER, 10.0)  # idle from its bind: lapses at 110, re-usable from 160
    alloc._next_channel = first  # where the round robin stands after wrapping around
    alloc.bind_channel(PEER2, 159.9)
    assert alloc.channels[first].peer == PEER  # still reserved for PEER (the relay may hold it)
    alloc._next_channel = first
    alloc.bind_channel(PEER3, 160.0)
    assert alloc.channels[first].peer == PEER3


def test_a_lapsed_channel_carries_nothing_until_the_relay_confirms_its_rebind():
    alloc, sim, net = allocated(channel_times=ChannelTimes(LIFETIME))
    number = bound(alloc, net, PEER, 1.0)
    alloc.bind_channel(PEER, 150.0)  # lapsed at 101: re-bound under its number
    assert not alloc.has_channel_to(PEER, 150.0)
    net.now = 150.0
    net.run(150.0)
    assert alloc.has_channel_to(PEER, 150.0) and alloc.channels[number].bound


# ------------------------------------------------------------------ channel numbers
def test_channel_numbers_wrap_around_after_0x7fff_past_the_ones_in_use():
    alloc, sim, net = allocated()
    alloc.bind_channel(PEER, 1.0)  # 0x4000, in use
    alloc._next_channel = stun.CHANNEL_MAX - 1  # where 16,382 binds later the round robin stands
    peers = [("203.0.113.9", 10000 + i) for i in range(3)]
    for peer in peers:
        alloc.bind_channel(peer, 2.0)
    numbers = [n for peer in peers for n, c in alloc.channels.items() if c.peer == peer]
    assert numbers == [stun.CHANNEL_MAX - 1, stun.CHANNEL_MAX, stun.CHANNEL_MIN + 1]


def test_an_allocation_holding_every_number_binds_no_more_and_warns(caplog):
    alloc, sim, net = allocated()
    span = range(stun.CHANNEL_MIN, stun.CHANNEL_MAX + 1)
    alloc.channels = {n: Channel(n, ("203.0.113.9", n), bound_at=1.0, bound=True) for n in span}
    caplog.set_level(logging.WARNING, "connlib")
    alloc.bind_channel(PEER, 2.0)
    assert warnings(caplog) == ["No free channel number rid=r1"]
    assert take(alloc) == [] and len(alloc.channels) == len(span)


# ------------------------------------------------------------------ credentials and refusals
def test_no_channel_binds_under_credentials_the_relay_refused():
    alloc, sim, net = allocation()
    sim.secret = "rotated"  # coturn: unsigned 401 to every signed request from now on
    net.run(310.0)
    assert not alloc.credentials_valid and alloc.explicit_failure is None
    before = len(sim.requests)
    alloc.bind_channel(PEER, 311.0)
    net.run(311.0)
    assert not alloc.channels and not alloc.buffered_channel_bindings  # nor kept for a later allocation
    assert [m for t, m, _ in sim.requests[before:]] == []


def test_an_unsigned_refusal_of_a_refresh_until_its_deadline_frees_the_relay_with_a_warning(caplog):
    alloc, sim, net = allocation()
    net.drop = lambda src, dst, p: stun.is_stun(p) and stun.decode(p).method == Method.REFRESH
    net.run(300.0)  # the REFRESH at lifetime/2 is in flight, none of its copies arrive
    forge(alloc, Method.REFRESH, 403)
    caplog.set_level(logging.WARNING, "connlib")
    net.run(320.0)
    assert alloc.explicit_failure is FreeReason.REFUSED and not alloc.has_allocation()
    assert alloc.credentials_valid  # a 403 says nothing about our credentials
    assert "Request rejected without a signature until its deadline rid=r1 method=REFRESH code=403" in warnings(caplog)


def test_an_unsigned_401_to_a_channel_bind_until_its_deadline_is_an_authentication_error():
    alloc, sim, net = allocation()
    alloc.bind_channel(PEER, 1.0)
    forge(alloc, Method.CHANNEL_BIND, 401)
    net.drop = lambda src, dst, p: True  # nothing authenticated ever comes
    alloc.handle_timeout(11.0)
    assert not alloc.credentials_valid and not alloc.has_allocation()


def test_a_refused_refresh_is_retried_after_one_then_two_seconds_then_given_up_with_a_warning(caplog):
    alloc, sim, net = allocation()
    sim.refuse[Method.REFRESH] = 508
    caplog.set_level(logging.WARNING, "connlib")
    net.run(400.0)
    refreshes = [t for t, m, _ in sim.requests if m == Method.REFRESH]
    gaps = [round(b - a, 3) for a, b in zip(refreshes, refreshes[1:], strict=False)]
    assert gaps[: len(REFUSAL_RETRY_DELAYS)] == list(REFUSAL_RETRY_DELAYS)
    assert alloc.explicit_failure is FreeReason.REFUSED
    assert "Relay keeps refusing; giving up rid=r1 attempts=4" in warnings(caplog)
    assert RELAY4 not in {c.addr for c in alloc.relay_candidates()}


def test_a_refresh_while_the_relay_socket_is_still_being_chosen_sends_nothing():
    alloc, sim, net = setup()  # the BINDINGs to the relay's addresses are in flight
    before = take(alloc)
    alloc.refresh(0.1)
    assert [m.method for _, m in before] == [Method.BINDING] and take(alloc) == []


def test_an_answer_to_a_retransmit_is_no_rtt_sample():
    """Karn's rule: which copy an answer is for is unknown, so it does not move the RTT (which
    picks the relays new connections use)."""
    alloc, sim, net = setup()
    sim.latency = 0.010  # a 20 ms round trip
    net.drop = lambda src, dst, p: net.now < 0.1  # the first BINDING is lost; its retransmit (0.5 s) arrives
    net.run(5.0)
    assert alloc.has_allocation()
    assert alloc.srtt == pytest.approx(0.020)  # the ALLOCATEs' samples only, not 0.52 s


# ------------------------------------------------------------------ relay selection (spec §2.3)
@pytest.mark.parametrize(
    ("rtts_ms", "eligible"),
    [
        ((10.0, 16.0), [0]),  # two: within 1.5× the fastest
        ((10.0, 15.0), [0, 1]),  # ... inclusive
        ((10.0, 16.0, 17.0), [0, 1, 2]),  # three or more: within median + 3 MAD (MAD at least 2 ms)
        ((10.0, 11.0, 12.0, 18.0), [0, 1, 2]),  # 11.5 + 3 × 2 = 17.5
        ((10.0, 11.0, 12.0, 60.0), [0, 1, 2]),  # an outlier does not widen the MAD
    ],
)
def test_relays_are_sampled_among_those_with_a_good_rtt(rtts_ms, eligible):
    sims = [TurnSim((f"198.18.0.{i + 1}", 3478)) for i in range(len(rtts_ms))]
    node, net = node_with(*sims)
    for i, rtt in enumerate(rtts_ms):
        node.allocations[f"r{i}"].srtt = rtt / 1000  # what the BINDING/ALLOCATE exchanges measured
    assert node.can_sample_relay()
    drawn = {node.sample_relay() for _ in range(200)}
    assert drawn == {f"r{i}" for i in eligible}
