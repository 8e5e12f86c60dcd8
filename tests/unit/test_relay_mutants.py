"""Behaviour of connlib's relay handling that mutation testing (``make mutation``) showed no other
test pinned down: each test drives an ``Allocation`` or a ``Node`` on a fake clock against the
simulated relay (``turn_sim``) and asserts what the relay receives, what the peer can send, the
events and deadlines the caller sees, or the WARN records an operator reads (their text and key
fields, which ``kv`` renders). ``docs/mutation-report.md`` lists the survivors left and why."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from connlib.core import stun
from connlib.core.allocation import (
    MAX_BUFFERED_CHANNEL_BINDINGS,
    REFUSAL_RETRY_DELAYS,
    Allocation,
    Candidate,
    Channel,
    ChannelTimes,
    FreeReason,
    Invalid,
    New,
    Rejection,
    RelaySocket,
)
from connlib.core.credentials import REALM, long_term_key
from connlib.core.node import (
    MAX_PREVIOUS_RELAY_IPS,
    CandidateInvalid,
    ChannelData,
    Node,
    NoRelays,
    RelayRemoved,
    RelayState,
)
from connlib.core.stun import Class, Message, Method

from .test_allocation import CLIENT4, PEER, PEER2, PEER3, PUBLIC4, RELAY4, RELAY6, allocated, drain, sent, setup, take
from .test_relay_hardening import NO_ZOMBIE_BOUND, allocation, events, forge, in_flight, node_with
from .turn_sim import FAR_EXPIRY, Net, SimAllocation, TurnSim

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
    with pytest.raises(ValueError, match="^a channel lifetime must be positive$"):
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


# ------------------------------------------------------------------ predecessor (issue 9 item 4)
@pytest.mark.parametrize("predecessor", [None, ("old-user", "old-password")], ids=["alone", "replacing"])
def test_an_unsigned_441_to_a_refresh_that_deletes_nothing_stays_provisional(predecessor):
    """Only our delete (REFRESH with LIFETIME 0) is refused with 441 because of the allocation we
    replaced; an unsigned 441 to a plain REFRESH is not taken and deletes nothing."""
    alloc, sim, net = allocation(predecessor=predecessor)
    net.drop = lambda src, dst, p: src == CLIENT4 and stun.decode(p).method == Method.REFRESH
    net.run(300.0)  # the REFRESH at lifetime/2 is in flight (its first copy lost)
    forge(alloc, Method.REFRESH, 441)
    assert alloc.rejection == Rejection("REFRESH", 441, "forged", authenticated=False)
    net.drop = lambda src, dst, p: False
    net.run(305.0)
    assert alloc.has_allocation() and alloc.lifetime is not None and alloc.lifetime[0] > 300.0
    assert [m.get("USERNAME") for _, _, m in sent(net, Method.REFRESH) if m.get("LIFETIME") == 0] == []


# ------------------------------------------------------------------ refresh() as a probe
def test_a_probe_while_a_refused_allocate_waits_for_its_retry_keeps_the_relay_socket():
    alloc, sim, net = setup()
    sim.refuse[Method.ALLOCATE] = 508
    net.run(0.0)  # BINDING, ALLOCATE -> 401, signed ALLOCATE -> 508: asked again at 1 s
    assert not alloc.has_allocation() and alloc.poll_timeout() == REFUSAL_RETRY_DELAYS[0]
    alloc.refresh(0.5)  # e.g. the portal did not name it
    assert [(dst, m.method) for dst, m in take(alloc)] == [(RELAY4, Method.REFRESH)]  # no new BINDING search
    assert alloc.active_socket == RELAY4


# ------------------------------------------------------------------ the Node's data path
def dual_stack_node() -> tuple[Node, TurnSim, Net]:
    sim = TurnSim(RELAY4, RELAY6)
    net = Net(sim)
    node = net.attach(Node(0.0, seed=3, channel_times=ChannelTimes(LIFETIME)), CLIENT4)
    node.update_relays([], [sim.config("r0")], 0.0)
    net.run(0.0)
    assert node.usable_relays() == ["r0"]
    events(node)
    return node, sim, net


def dual_stack_node_with_a_channel() -> tuple[Node, TurnSim, Net, int]:
    """``dual_stack_node`` with a channel to PEER bound at 1 s; its number."""
    node, sim, net = dual_stack_node()
    node.bind_channel("r0", PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    (number,) = node.allocations["r0"].channels
    return node, sim, net, number


def test_a_node_unwraps_channel_data_from_a_dual_stack_relay_and_keeps_that_channel_bound():
    node, sim, net, number = dual_stack_node_with_a_channel()
    data = stun.encode_channel_data(number, b"in")
    assert node.decapsulate(RELAY4, data, 2.0) == ChannelData("r0", PEER, b"in")
    assert node.decapsulate(("198.51.100.1", 3478), data, 2.0) is None  # not from a relay of ours
    net.run(LIFETIME)  # the channel carried data: re-bound at half its lifetime, not left to lapse
    assert [t for t, m, _ in sim.requests if m == Method.CHANNEL_BIND] == [1.0, 1.0 + LIFETIME / 2]


def test_node_encapsulate_to_a_peer_without_a_channel_sends_nothing_and_queues_the_bind():
    node, sim, net = dual_stack_node()
    assert node.encapsulate("r0", PEER, b"x", 1.0) is None
    queued = [stun.decode(t.payload) for t in iter(node.poll_transmit, None)]
    assert [(m.method, m.get("XOR-PEER-ADDRESS")) for m in queued] == [(Method.CHANNEL_BIND, PEER)]


def test_an_unknown_relay_has_no_candidates():
    node, sim, net = dual_stack_node()
    assert node.relay_candidates("nope") == [] and node.relay_candidate("nope", 4) is None
    assert {c.family for c in node.relay_candidates("r0")} == {4, 6}
    assert node.relay_candidate("r0", 6) is not None


def test_events_of_a_command_given_to_an_allocation_directly_come_out_of_the_node_under_its_id():
    node, sim, net = dual_stack_node()
    relayed = node.relay_candidates("r0")
    node.allocations["r0"].invalidate_allocation()
    assert events(node) == [CandidateInvalid("r0", c) for c in relayed]


def test_queued_events_of_a_removed_relay_come_out_under_its_id():
    node, sim, net = dual_stack_node()
    relayed = node.relay_candidates("r0")
    node.allocations["r0"].invalidate_allocation()  # queued, not yet polled
    node.update_relays(["r0"], [], 0.0)
    assert events(node) == [
        *[CandidateInvalid("r0", c) for c in relayed],
        RelayRemoved("r0", "removed by the portal"),
        NoRelays(),
    ]


# ------------------------------------------------------------------ hold-off (REFUSED_HOLD_OFF)
def test_a_relay_held_off_for_refusing_is_not_allocated_on_before_its_hold_off_ends():
    sim, node, net, until = held_off_relay()  # named again at once: the answer to our no_relays
    node.handle_timeout(NO_ZOMBIE_BOUND + 1.0)  # a timer of something else fires
    assert "r0" not in node.allocations
    net.run(60.0)
    assert node.usable_relays() == ["r0"]


def test_channel_data_fed_to_node_handle_input_comes_out_as_an_event_and_keeps_its_channel_bound():
    node, sim, net, number = dual_stack_node_with_a_channel()
    assert node.handle_input(stun.encode_channel_data(number, b"in"), RELAY4, CLIENT4, 2.0) is True
    assert events(node) == [ChannelData("r0", PEER, b"in")]
    assert node.handle_input(stun.encode_channel_data(number + 1, b"?"), RELAY4, CLIENT4, 2.0) is True  # no channel
    assert events(node) == []
    net.run(LIFETIME)
    assert [t for t, m, _ in sim.requests if m == Method.CHANNEL_BIND] == [1.0, 1.0 + LIFETIME / 2]


# ------------------------------------------------------------------ the relay set (update_relays)
@pytest.mark.parametrize(
    "field, value",
    [
        ("username", ""),  # empty
        ("realm", ""),
        ("username", "lone-\udc80-surrogate"),  # not UTF-8
        ("realm", "lone-\udc80-surrogate"),
        ("password", "lone-\udc80-surrogate"),
    ],
)
def test_a_relay_with_empty_or_non_utf8_credentials_is_ignored(field, value):
    sim = TurnSim(RELAY4)
    node = Node(0.0)
    fields: dict[str, Any] = {field: value}
    node.update_relays([], [replace(sim.config("r0"), **fields)], 0.0)
    assert node.relay_ids() == [] and events(node) == []


def test_the_node_s_max_elapsed_bounds_the_requests_of_its_allocations():
    sim = TurnSim(RELAY4)
    sim.black_hole = True
    net = Net(sim)
    node = net.attach(Node(0.0, seed=3, max_elapsed=2.0), CLIENT4)
    node.update_relays([], [sim.config("r0")], 0.0)
    net.run(2.0)  # the BINDING is given up at 2 s, not at the default 10 s
    assert RelayRemoved("r0", str(FreeReason.NO_RESPONSE)) in events(node)


def test_a_relay_named_with_new_credentials_is_announced_as_replaced():
    node, sim, net = dual_stack_node()
    node.update_relays([], [sim.config("r0", salt="new")], 1.0)
    assert RelayRemoved("r0", "replaced (new credentials or address)") in events(node)


def held_off_relay() -> tuple[TurnSim, Node, Net, float]:
    """A relay freed for refusing ALLOCATE, then named again during its hold-off (deferred);
    the hold-off's end (what the Node's ``poll_timeout`` answers)."""
    sim = TurnSim(RELAY4)
    sim.refuse[Method.ALLOCATE] = 486
    node, net = node_with(sim)
    net.run(NO_ZOMBIE_BOUND)
    assert "r0" not in node.allocations
    sim.refuse.clear()
    node.update_relays([], [sim.config("r0")], NO_ZOMBIE_BOUND)
    until = node.poll_timeout()
    assert until is not None and until > NO_ZOMBIE_BOUND and "r0" not in node.allocations
    events(node)
    return sim, node, net, until


def test_a_relay_named_exactly_when_its_hold_off_ends_is_allocated_on():
    sim, node, net, until = held_off_relay()
    node.update_relays([], [sim.config("r0")], until)
    assert "r0" in node.allocations


def test_a_relay_named_after_its_hold_off_is_not_replaced_by_the_entry_deferred_before():
    sim, node, net, until = held_off_relay()
    node.update_relays([], [sim.config("r0", salt="later")], until + 1.0)  # before the Node's timer fired
    allocation = node.allocations["r0"]
    node.handle_timeout(until + 1.0)
    assert node.allocations["r0"] is allocation
    assert not [e for e in events(node) if isinstance(e, RelayRemoved)]


def test_a_relay_removed_by_the_portal_during_its_hold_off_is_not_allocated_on_when_it_ends():
    sim, node, net, until = held_off_relay()
    node.update_relays(["r0"], [], NO_ZOMBIE_BOUND + 1.0)
    node.handle_timeout(until + 1.0)
    assert node.relay_ids() == [] and node.poll_timeout() is None


def test_an_unknown_id_among_the_removed_ones_does_not_stop_the_others_going():
    sim = TurnSim(RELAY4)
    node, net = node_with(sim)
    node.update_relays(["a-relay-we-never-had", "r0"], [], 1.0)
    assert node.relay_ids() == []


def test_the_node_s_deadline_is_the_earliest_of_its_allocations_and_its_hold_offs():
    healthy, refusing = TurnSim(("198.18.0.1", 3478)), TurnSim(("198.18.0.2", 3478))
    refusing.refuse[Method.ALLOCATE] = 486
    node, net = node_with(healthy, refusing)
    net.run(NO_ZOMBIE_BOUND)
    assert node.relay_ids() == ["r0"]
    node.update_relays([], [healthy.config("r0"), refusing.config("r1")], NO_ZOMBIE_BOUND)  # r1: deferred
    first = node.allocations["r0"].poll_timeout()
    assert first is not None and node.poll_timeout() == first < NO_ZOMBIE_BOUND + 30.0


def test_transmits_of_a_command_given_to_an_allocation_directly_come_out_of_the_node():
    node, sim, net = dual_stack_node()
    node.allocations["r0"].bind_channel(PEER, 1.0)
    assert [stun.decode(t.payload).method for t in iter(node.poll_transmit, None)] == [Method.CHANNEL_BIND]


# ------------------------------------------------------------------ channel binds in flight
def test_a_lapsed_channel_whose_rebind_is_still_in_flight_is_not_bound_again():
    """With a relay's channel lifetime shorter than a request's 10 s, a re-bind can outlive the
    channel; asking for the peer again must not start a second bind of that number."""
    alloc, sim, net = allocated(channel_times=ChannelTimes(5.0))
    number = bound(alloc, net, PEER, 1.0)  # idle: lapses at 6 s
    net.drop = lambda src, dst, p: src == RELAY4  # the relay's answers are lost from now on
    alloc.bind_channel(PEER, 7.0)
    assert [(m.method, m.get("CHANNEL-NUMBER")) for _, m in take(alloc)] == [(Method.CHANNEL_BIND, number)]
    alloc.bind_channel(PEER, 12.5)  # lapsed again (5 s after the re-bind), the re-bind in flight until 17 s
    assert take(alloc) == []


# ------------------------------------------------------------------ ALLOCATE answers
def signed_success(alloc, method: Method, attrs: list, now: float) -> None:
    """A success signed with our key (a relay's own answer) to our request in flight."""
    key = long_term_key(alloc.username, REALM, alloc.password)
    reply = Message(method, Class.SUCCESS, in_flight(alloc, method), attrs)
    alloc.handle_input(reply.encode(key), RELAY4, CLIENT4, now)


def allocate_in_flight():
    alloc, sim, net = setup()
    net.drop = lambda src, dst, p: (
        src == RELAY4 and stun.decode(p).method == Method.ALLOCATE and stun.decode(p).cls == Class.SUCCESS
    )
    net.run(0.0)  # BINDING, ALLOCATE -> 401; the signed ALLOCATE's answer is lost
    drain(alloc)
    return alloc, sim, net


@pytest.mark.parametrize(
    "attrs",
    [[("XOR-RELAYED-ADDRESS", ("192.0.2.1", 50000))], [("LIFETIME", 600)]],
    ids=["without-LIFETIME", "without-relayed-address"],
)
def test_an_allocate_success_without_lifetime_or_relayed_address_is_a_protocol_failure(attrs):
    alloc, sim, net = allocate_in_flight()
    signed_success(alloc, Method.ALLOCATE, attrs, 0.1)
    assert not alloc.has_allocation() and drain(alloc) == []
    assert alloc.can_be_freed() is FreeReason.PROTOCOL_FAILURE


def test_relay_candidates_are_related_to_the_address_the_relay_saw_and_one_per_family():
    """A relay that repeats an address or grants two of one family: each family keeps one
    candidate, the one replaced is announced invalid, and every candidate carries the mapped
    address of the ALLOCATE answer as its related address."""
    alloc, sim, net = allocate_in_flight()
    a, b, v6 = ("192.0.2.1", 50000), ("192.0.2.1", 50001), ("2001:db8::1", 50002)
    relayed = [("XOR-RELAYED-ADDRESS", addr) for addr in (a, a, b, v6)]
    signed_success(alloc, Method.ALLOCATE, [*relayed, ("LIFETIME", 600), ("XOR-MAPPED-ADDRESS", PUBLIC4)], 0.1)
    ca, cb, c6 = (Candidate("relay", addr, PUBLIC4) for addr in (a, b, v6))
    assert drain(alloc) == [New(ca), Invalid(ca), New(cb), New(c6)]
    assert alloc.relay_candidates() == [cb, c6]


# ------------------------------------------------------------------ when an allocation may go
def test_an_allocation_left_without_address_request_or_timer_is_stalled_once_its_events_are_polled():
    alloc, sim, net = allocated()
    alloc.invalidate_allocation()  # e.g. a command: no relay address, nothing in flight, no timer
    assert alloc.can_be_freed() is None  # its Invalid event is still to be handed out
    assert [type(e) for e in drain(alloc)] == [Invalid]
    assert alloc.can_be_freed() is FreeReason.STALLED


# ------------------------------------------------------------------ the rejection ``allocate`` reports
def test_the_challenges_of_a_normal_allocation_and_a_stale_nonce_are_no_rejection():
    alloc, sim, net = allocated()  # ALLOCATE -> 401 with REALM and NONCE, signed ALLOCATE -> success
    assert alloc.rejection is None
    sim.expire_nonces()
    net.run(301.0)  # the REFRESH at 300 s -> 438, re-signed -> success
    assert alloc.lifetime is not None and alloc.lifetime[0] == 300.0
    assert alloc.rejection is None


def test_a_signed_refusal_is_reported_with_its_method_code_and_reason():
    alloc, sim, net = setup()
    sim.refuse[Method.ALLOCATE] = 486
    net.run(0.0)
    assert alloc.rejection == Rejection("ALLOCATE", 486, "Allocation Quota Reached", authenticated=True)


def unsigned_allocate_in_flight():
    alloc, sim, net = setup()
    net.drop = lambda src, dst, p: src == RELAY4 and stun.decode(p).method == Method.ALLOCATE
    net.run(0.0)  # the first (unsigned) ALLOCATE's answer is lost
    take(alloc)
    return alloc, sim, net


def test_an_error_to_an_unsigned_request_is_reported_as_the_relay_s_answer():
    alloc, sim, net = unsigned_allocate_in_flight()
    forge(alloc, Method.ALLOCATE, 500)
    assert alloc.rejection == Rejection("ALLOCATE", 500, "forged", authenticated=True)


@pytest.mark.parametrize(
    "extra", [[("REALM", "other-realm"), ("NONCE", "n")], [("REALM", REALM)]], ids=["other-realm", "no-nonce"]
)
@pytest.mark.parametrize("relay", ["answers-later", "silent"])
def test_a_challenge_we_cannot_answer_is_reported_and_decides_only_at_the_request_s_deadline(extra, relay):
    alloc, sim, net = unsigned_allocate_in_flight()
    forge(alloc, Method.ALLOCATE, 401, *extra)
    assert take(alloc) == []  # no signed ALLOCATE for a realm we were not given, or without a NONCE
    assert alloc.rejection == Rejection("ALLOCATE", 401, "forged", authenticated=True)
    if relay == "answers-later":
        net.drop = lambda src, dst, p: False
        net.run(5.0)  # a retransmit reaches the real relay
        assert alloc.has_allocation()
    else:
        net.run(20.0)
        drain(alloc)
        assert alloc.can_be_freed() is FreeReason.AUTHENTICATION_ERROR  # the challenge, at the deadline


# ------------------------------------------------------------------ channel refresh deadlines
def test_an_active_channel_is_refreshed_on_time_while_another_peer_s_bind_is_in_flight():
    alloc, sim, net = allocated()
    number = bound(alloc, net, PEER, 1.0)
    alloc.decapsulate(RELAY4, stun.encode_channel_data(number, b"in"), 2.0)  # in use: refresh due at 301 s
    net.drop = lambda src, dst, p: src == CLIENT4 and stun.decode(p).get("XOR-PEER-ADDRESS") == PEER2
    net.run(296.0)
    alloc.bind_channel(PEER2, 296.0)  # never answered: retransmitted at 297, 298.5, 300.75, 304.125 s
    net.run(302.0)
    assert [t for t, _, m in sent(net, Method.CHANNEL_BIND) if m.get("XOR-PEER-ADDRESS") == PEER] == [1.0, 301.0]


def test_a_channel_whose_refresh_is_in_flight_adds_no_deadline_of_its_own():
    alloc, sim, net = allocated(channel_times=ChannelTimes(4.0))  # in use: re-bound 2 s after each bind
    number = bound(alloc, net, PEER, 1.0)
    data = stun.encode_channel_data(number, b"in")
    alloc.decapsulate(RELAY4, data, 1.5)
    net.drop = lambda src, dst, p: src == RELAY4  # the relay's answers are lost from now on
    net.run(3.0)  # the refresh is sent at 3 s
    alloc.decapsulate(RELAY4, data, 3.5)  # still in use
    net.run(4.0)  # its first retransmit
    assert alloc.poll_timeout() == 5.5  # the next retransmit, not the channel's own 3 + 2 s


def test_a_channel_whose_bind_is_in_flight_keeps_its_number_however_short_the_lifetime():
    """A relay with short channels (coturn --channel-lifetime 2): a channel counts as re-usable
    1.5 lifetimes after its bind, sooner than a bind's 10 s in flight. If binding another peer
    then dropped the channel whose bind is still retransmitting, the relay would bind the first
    peer under that number when a retransmit gets through, and the next bind for it, under a new
    number, would be refused (400) for as long as the relay holds the first."""
    alloc, sim, net = allocated(channel_times=ChannelTimes(2.0))
    net.drop = lambda src, dst, p: src == RELAY4  # the relay's answers are lost for now
    alloc.bind_channel(PEER, 1.0)  # retransmitted at 2, 3.5, 5.75 s
    net.now = 1.0
    net.run(4.5)
    alloc.bind_channel(PEER2, 4.5)  # 3.5 s after PEER's bind: its number would count as re-usable
    net.drop = lambda src, dst, p: False
    net.run(6.0)  # the retransmit at 5.75 s is answered: the relay holds PEER under its number
    alloc.bind_channel(PEER, 6.0)  # lapsed (2 s lifetime): re-bound, under the number the relay holds
    net.run(6.0)
    assert alloc.has_channel_to(PEER, 6.0)


# ------------------------------------------------------------------ re-signed requests, lingering relays
def test_a_refresh_that_succeeds_after_a_refusal_restores_the_full_retry_budget():
    alloc, sim, net = allocation()
    sim.inject[Method.REFRESH] = 508  # the REFRESH at 300 s is refused once, asked again 1 s later
    net.run(400.0)
    assert alloc.lifetime == (301.0, 600.0)
    sim.refuse[Method.REFRESH] = 508  # from the REFRESH at 601 s on, every one is refused
    net.run(700.0)
    refreshes = [t for t, m, _ in sim.requests if m == Method.REFRESH and t > 400.0]
    assert [b - a for a, b in zip(refreshes, refreshes[1:], strict=False)] == list(REFUSAL_RETRY_DELAYS)
    assert alloc.explicit_failure is FreeReason.REFUSED


def test_an_unsigned_error_is_still_remembered_after_a_stale_nonce_re_signs_the_request():
    alloc, sim, net = allocation()
    net.drop = lambda src, dst, p: src == CLIENT4 and stun.decode(p).method == Method.REFRESH
    net.run(300.0)  # the REFRESH at lifetime/2 is in flight, none of its copies arrive
    forge(alloc, Method.REFRESH, 403)  # provisional
    forge(alloc, Method.REFRESH, 438, ("REALM", REALM), ("NONCE", "nonce-x"))  # re-signed under the new nonce
    net.run(320.0)
    assert alloc.explicit_failure is FreeReason.REFUSED  # the 403, at the re-signed request's deadline


def lingering_relay(linger: float) -> tuple[Allocation, TurnSim, Net]:
    """A new Allocation at t=10 on a 5-tuple the relay still holds (our earlier process's): 437,
    delete, then 437 again for ``linger`` s (coturn keeps a deleted allocation a moment)."""
    old, sim, net = allocated()
    sim.linger = linger
    net.agents.clear()
    alloc = net.attach(Allocation(sim.socket, *sim.credentials(), REALM, 10.0, relay_id="r1"), CLIENT4)
    net.now = 10.0
    return alloc, sim, net


def allocates(sim: TurnSim) -> list[float]:
    return [t for t, m, _ in sim.requests if t >= 10.0 and m == Method.ALLOCATE]


def test_a_lost_answer_while_the_relay_lingers_does_not_slow_the_quarter_second_retries():
    alloc, sim, net = lingering_relay(1.0)
    net.drop = lambda src, dst, p: src == RELAY4 and net.now == 10.25  # the answer to the 10.25 s retry
    net.run(10.9)
    assert allocates(sim) == [10.0, 10.0, 10.0, 10.25, 10.5, 10.75]


def test_a_relay_that_keeps_lingering_is_given_up_at_the_deadline_of_the_allocate_after_the_delete():
    alloc, sim, net = lingering_relay(1000.0)
    net.run(40.0)
    # The first 437 past LINGER_MAX (13.25 s) deletes once more (MAX_REDELETES); the relay lingers
    # on that one too: given up 10 s after the ALLOCATE that followed it
    assert 22.75 < max(allocates(sim)) < 23.25
    drain(alloc)
    assert not alloc.has_allocation() and alloc.can_be_freed() is FreeReason.NO_RESPONSE


def test_a_437_at_the_very_deadline_of_the_allocate_after_the_delete_ends_it():
    alloc, sim, net = lingering_relay(1000.0)
    net.drop = lambda src, dst, p: src == RELAY4 and net.now > 22.85  # the last answer comes late
    net.run(23.15)
    deadline = alloc.poll_timeout()
    assert deadline == 23.25  # the ALLOCATE after the second delete (see above)
    late = Message(Method.ALLOCATE, Class.ERROR, in_flight(alloc, Method.ALLOCATE), [("ERROR-CODE", (437, "late"))])
    alloc.handle_input(late.encode(), RELAY4, CLIENT4, deadline)
    alloc.handle_timeout(deadline)
    drain(alloc)
    assert alloc.can_be_freed() is FreeReason.NO_RESPONSE


def test_a_stale_nonce_on_the_allocate_after_a_delete_does_not_delete_again():
    alloc, sim, net = lingering_relay(1.0)

    def nonce_expires_with_the_delete(src, dst, payload):
        msg = stun.decode(payload) if stun.is_stun(payload) else None
        if src == RELAY4 and msg is not None and msg.method == Method.REFRESH and msg.get("LIFETIME") == 0:
            sim.expire_nonces()  # the ALLOCATE that follows gets 438, is re-signed, then gets 437
        return False

    net.drop = nonce_expires_with_the_delete
    net.run(12.0)
    deletes = [m for _, _, m in sent(net, Method.REFRESH) if m.get("LIFETIME") == 0]
    assert len(deletes) == 1 and alloc.has_allocation()


def test_a_relay_holding_our_5_tuple_under_a_third_username_refuses_both_deletes_and_is_given_up():
    sim = TurnSim(RELAY4)
    third, _ = sim.credentials("third")
    sim.allocations[CLIENT4] = SimAllocation(CLIENT4, [("192.0.2.1", 49999)], FAR_EXPIRY, username=third)
    old_user, old_password = sim.credentials("old")
    net = Net(sim)
    alloc = Allocation(sim.socket, *sim.credentials(), REALM, 0.0, relay_id="r1", predecessor=(old_user, old_password))
    net.attach(alloc, CLIENT4)
    lost: list[bytes] = []

    def lose_the_first_old_credentials_delete(src, dst, payload):
        if src == CLIENT4 and not lost and stun.is_stun(payload) and stun.decode(payload).get("USERNAME") == old_user:
            lost.append(payload)
            return True
        return False

    net.drop = lose_the_first_old_credentials_delete
    net.run(30.0)
    old_deletes = [m for _, _, m in sent(net, Method.REFRESH) if m.get("USERNAME") == old_user]
    assert len(old_deletes) >= 2 and all(m.get("LIFETIME") == 0 for m in old_deletes)  # retransmitted
    assert alloc.explicit_failure is FreeReason.REFUSED  # 441 to it too, until its deadline


# ------------------------------------------------------------------ construction and BINDING
def test_a_relay_socket_needs_an_address():
    with pytest.raises(ValueError, match="^a relay needs at least one address$"):
        RelaySocket(None, None)


def test_an_allocation_without_an_rng_is_still_deterministic():
    def first_transmits() -> list[bytes]:
        alloc = Allocation(RelaySocket(RELAY4, RELAY6), "user", "password", REALM, 0.0)
        return [t.payload for t in iter(alloc.poll_transmit, None)]

    assert first_transmits() == first_transmits()


def test_a_binding_answer_with_only_a_plain_mapped_address_gives_the_srflx_candidate():
    """RFC 3489 servers answer with MAPPED-ADDRESS, not XOR-MAPPED-ADDRESS."""
    alloc, sim, net = setup()
    (binding,) = [stun.decode(t.payload) for t in iter(alloc.poll_transmit, None)]
    reply = Message(Method.BINDING, Class.SUCCESS, binding.transaction_id, [("MAPPED-ADDRESS", PUBLIC4)])
    alloc.handle_input(reply.encode(), RELAY4, CLIENT4, 0.0)
    assert Candidate("srflx", PUBLIC4, CLIENT4) in alloc.candidates()


def test_channel_binds_asked_for_before_the_allocation_are_bounded():
    alloc, sim, net = setup()
    peers = [("203.0.113.9", 10000 + i) for i in range(MAX_BUFFERED_CHANNEL_BINDINGS + 1)]
    for peer in peers:
        alloc.bind_channel(peer, 0.0)  # no allocation yet: buffered
    net.run(0.0)
    assert alloc.has_allocation()
    bound_for = [m.get("XOR-PEER-ADDRESS") for _, _, m in sent(net, Method.CHANNEL_BIND)]
    assert bound_for == peers[1:]  # the oldest one dropped


def test_late_traffic_is_recognised_from_the_sockets_of_the_last_64_relays_dropped_only():
    node = Node(0.0)
    sims = [TurnSim((f"198.18.1.{i + 1}", 3478)) for i in range(MAX_PREVIOUS_RELAY_IPS + 1)]
    for i, sim in enumerate(sims):
        node.update_relays([], [sim.config(f"r{i}")], 0.0)
        node.update_relays([f"r{i}"], [], 0.0)
    assert node.handle_input(b"late", sims[-1].socket.addresses()[0], CLIENT4, 1.0) is True  # consumed
    assert node.handle_input(b"late", sims[0].socket.addresses()[0], CLIENT4, 1.0) is False  # forgotten


def test_relay_state_free_reason_and_has_relay_describe_one_relay():
    node, sim, net = dual_stack_node()
    alloc = node.allocations["r0"]
    relayed = tuple(c.addr for c in alloc.relay_candidates())
    state = node.relay_state("r0")
    assert state == RelayState("r0", (CLIENT4,), relayed, 600.0, alloc.srtt, None)
    assert state is not None and state.allocated and len(relayed) == 2
    assert node.relay_state("nope") is None
    assert node.has_relay("r0") and not node.has_relay("nope")
    assert node.free_reason("r0") is None and node.free_reason("nope") is None
    alloc.invalidate_allocation()  # no relay address, nothing in flight, no timer
    events(node)
    assert node.free_reason("r0") is FreeReason.STALLED
    state = node.relay_state("r0")
    assert state == RelayState("r0", (CLIENT4,), (), None, alloc.srtt, None)
    assert state is not None and not state.allocated


def test_relay_state_reports_the_relay_s_last_rejection():
    node, sim, net = dual_stack_node()
    sim.inject[Method.REFRESH] = 508
    node.probe("r0", 1.0)
    net.now = 1.0
    net.run(1.0)
    state = node.relay_state("r0")
    assert state is not None and state.rejection == Rejection("REFRESH", 508, "Error", authenticated=True)
