"""``Allocation`` against the simulated relay, with a fake clock (spec §1).

Every test drives time explicitly (``Net.run(until)`` jumps between deadlines); nothing sleeps.
"""

from __future__ import annotations

import logging
import random

import pytest

from connlib.core import stun
from connlib.core.allocation import (
    BINDING_INTERVAL,
    Allocation,
    Candidate,
    FreeReason,
    Invalid,
    New,
)
from connlib.core.credentials import REALM, long_term_key
from connlib.core.fixes import FIX_CHANNEL_NUMBER_REUSE, FIX_REFUSAL_RETRY
from connlib.core.stun import Class, Message, Method

from .turn_sim import Net, TurnSim

RELAY4, RELAY6 = ("192.0.2.1", 3478), ("2001:db8::1", 3478)
CLIENT4, CLIENT6 = ("10.0.0.2", 40000), ("2001:db8:c::2", 40000)
PUBLIC4 = ("198.51.100.7", 61000)
PEER = ("203.0.113.50", 7000)
PEER2 = ("203.0.113.51", 7000)
PEER3 = ("203.0.113.52", 7000)


def setup(*, v6: bool = False, client_v6: bool = False, now: float = 0.0, **kw) -> tuple[Allocation, TurnSim, Net]:
    sim = TurnSim(RELAY4, RELAY6 if v6 else None)
    net = Net(sim, now=now)
    alloc = Allocation(sim.socket, *sim.credentials(), REALM, now, relay_id="r1", **kw)
    net.attach(alloc, CLIENT4, *([CLIENT6] if client_v6 else []))
    return alloc, sim, net


def allocated(**kw) -> tuple[Allocation, TurnSim, Net]:
    alloc, sim, net = setup(**kw)
    net.run(net.now)
    assert alloc.has_allocation()
    drain(alloc)
    return alloc, sim, net


def drain(alloc: Allocation) -> list:
    events = []
    while (e := alloc.poll_event()) is not None:
        events.append(e)
    return events


def take(alloc: Allocation) -> list[tuple[tuple, Message]]:
    out = []
    while (t := alloc.poll_transmit()) is not None:
        out.append((t.dst, stun.decode(t.payload)))
    return out


def answer(alloc, sim, now, *, seen_as=CLIENT4, local=CLIENT4, only=None) -> list[Message]:
    """Hand ``alloc``'s queued requests (or those ``only`` accepts) to ``sim``; feed replies back."""
    replies = []
    for t in list(iter(alloc.poll_transmit, None)):  # what is queued now, not what replies queue
        if only is not None and not only(stun.decode(t.payload)):
            continue
        for dst, data in sim.handle(t.payload, seen_as, now):
            replies.append(stun.decode(data))
            alloc.handle_input(data, sim.address_for(dst), local, now)
    return replies


def methods(sim: TurnSim, since: float = 0.0, *, binding: bool = True) -> list[tuple[Method | int, bool]]:
    """What the relay received since ``since``: ``(method, signed)``; keep-alives optional."""
    return [(m, signed) for t, m, signed in sim.requests if t >= since and (binding or m != Method.BINDING)]


def sent(net: Net, method: Method | None = None) -> list[tuple[float, tuple, Message]]:
    out = []
    for t, _src, dst, payload in net.sent:
        if stun.is_stun(payload) and (method is None or stun.decode(payload).method == method):
            out.append((t, dst, stun.decode(payload)))
    return out


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --------------------------------------------------------------------------- BINDING, candidates
def test_binding_sent_to_every_relay_address_unauthenticated():
    alloc, sim, net = setup(v6=True, client_v6=True)
    out = take(alloc)
    assert [dst for dst, _ in out] == [RELAY4, RELAY6]
    for _, msg in out:
        assert (msg.method, msg.cls) == (Method.BINDING, Class.REQUEST)
        assert msg.attributes == [("SOFTWARE", "snownet")]


@pytest.mark.parametrize("first", [RELAY4, RELAY6])
def test_first_binding_response_wins(first):
    alloc, sim, net = setup(v6=True, client_v6=True)
    bindings = {t.dst: t for t in iter(alloc.poll_transmit, None)}
    local = {RELAY4: CLIENT4, RELAY6: CLIENT6}
    second = RELAY6 if first == RELAY4 else RELAY4
    for _dst, data in sim.handle(bindings[first].payload, local[first], 0.0):
        alloc.handle_input(data, first, local[first], 0.0)
    assert alloc.active_socket == first
    (allocate,) = take(alloc)
    assert allocate[0] == first and allocate[1].method == Method.ALLOCATE
    for _dst, data in sim.handle(bindings[second].payload, local[second], 0.0):
        alloc.handle_input(data, second, local[second], 0.0)
    assert alloc.active_socket == first
    assert take(alloc) == []  # the later answer only updates candidates
    assert set(alloc.srflx) == {4, 6}


def test_host_and_srflx_candidates_announced_once_and_roaming_does_not_invalidate():
    alloc, sim, _ = setup()
    for _ in range(3):  # BINDING, ALLOCATE -> 401, signed ALLOCATE; the relay sees us behind a NAT
        answer(alloc, sim, 0.0, seen_as=PUBLIC4)
    host = Candidate("host", CLIENT4)
    srflx = Candidate("srflx", PUBLIC4, CLIENT4)
    events = drain(alloc)
    assert events[:2] == [New(host), New(srflx)]
    assert [e.candidate.kind for e in events[2:]] == ["relay"]
    assert alloc.candidates()[:2] == [host, srflx]
    # A keep-alive that learns the same address announces nothing.
    alloc.handle_timeout(25.0)
    assert [m.method for m in answer(alloc, sim, 25.0, seen_as=PUBLIC4)] == [Method.BINDING]
    assert drain(alloc) == []
    # Silent roaming: the new srflx is announced, the old one is NOT invalidated.
    roamed = ("198.51.100.99", 62000)
    alloc.handle_timeout(50.0)
    answer(alloc, sim, 50.0, seen_as=roamed)
    assert drain(alloc) == [New(Candidate("srflx", roamed, CLIENT4))]
    assert alloc.has_allocation()


# --------------------------------------------------------------------------- ALLOCATE and auth
@pytest.mark.parametrize("relay_v6", [False, True])
def test_unauthenticated_allocate_then_401_then_signed_allocate(relay_v6):
    alloc, sim, net = setup(v6=relay_v6)
    net.run(0.0)
    allocates = [m for _, _, m in sent(net, Method.ALLOCATE)]
    assert len(allocates) == 2
    first, second = allocates
    for msg in allocates:
        assert msg.get("REQUESTED-TRANSPORT") == 17
        assert msg.get("SOFTWARE") == "snownet"
        assert ("ADDITIONAL-ADDRESS-FAMILY" in msg) == relay_v6
        if relay_v6:
            assert msg.get("ADDITIONAL-ADDRESS-FAMILY") == stun.ADDRESS_FAMILY_IPV6
    assert "MESSAGE-INTEGRITY" not in first and "USERNAME" not in first and "NONCE" not in first
    username, password = sim.credentials()
    assert second.get("USERNAME") == username and second.get("REALM") == REALM
    assert second.get("NONCE") == sim.nonces[CLIENT4] == alloc.nonce
    assert second.verify_integrity(long_term_key(username, REALM, password))
    assert second.transaction_id != first.transaction_id
    assert methods(sim, binding=False) == [(Method.ALLOCATE, False), (Method.ALLOCATE, True)]
    relays = [e.candidate for e in drain(alloc) if isinstance(e, New) and e.candidate.kind == "relay"]
    assert [c.family for c in relays] == ([4, 6] if relay_v6 else [4])
    assert alloc.lifetime == (0.0, 600.0)


def test_retransmits_signed_ones_with_fresh_transaction_ids_bindings_unchanged():
    alloc, sim, net = allocated()
    net.run(299.0)
    sim.black_hole = True
    net.run(309.0)  # the REFRESH at lifetime/2 and the keep-alive, both at 300, both unanswered
    by_method: dict[Method | int, list[tuple[float, Message]]] = {Method.REFRESH: [], Method.BINDING: []}
    for t, _, msg in sent(net):
        if t >= 300.0:
            by_method[msg.method].append((t, msg))
    schedule = [300.0, 301.0, 302.5, 304.75, 308.125]
    for method, sends in by_method.items():
        assert [t for t, _ in sends] == schedule, method
    refresh_tids = {m.transaction_id for _, m in by_method[Method.REFRESH]}
    assert len(refresh_tids) == 5  # re-signed under a new id every time ...
    assert all(m.verify_integrity(alloc._key) for _, m in by_method[Method.REFRESH])
    assert len({m.transaction_id for _, m in by_method[Method.BINDING]}) == 1  # ... a BINDING is not
    assert len({m.encode() for _, m in by_method[Method.BINDING]}) == 1


def test_stale_nonce_438_resigns_with_new_nonce_and_new_transaction_id():
    alloc, sim, net = allocated()
    old_nonce = alloc.nonce
    sim.expire_nonces()
    net.run(300.0)  # REFRESH at lifetime/2 -> 438 -> re-signed REFRESH -> success
    refreshes = [m for _, _, m in sent(net, Method.REFRESH)]
    assert len(refreshes) == 2
    assert refreshes[0].get("NONCE") == old_nonce
    assert refreshes[1].get("NONCE") == alloc.nonce == sim.nonces[CLIENT4] != old_nonce
    assert refreshes[1].transaction_id != refreshes[0].transaction_id
    assert alloc.lifetime == (300.0, 600.0) and alloc.credentials_valid
    assert drain(alloc) == []  # nothing was invalidated


def test_401_on_signed_request_means_invalid_credentials(caplog):
    """coturn answers bad credentials with an unsigned 401: provisional (RFC 8489 §9.2.5) until
    the request's deadline, then an authentication error (issue 9 item 1)."""
    alloc, sim, net = allocated()
    (relay,) = alloc.relay_candidates()
    sim.secret = "rotated"  # nonce still valid, password no longer
    net.run(309.999)
    assert [m for m, _ in methods(sim, since=300.0, binding=False)] == [Method.REFRESH] * 5  # retransmitted
    assert alloc.has_allocation() and alloc.credentials_valid
    net.run(310.0)
    assert drain(alloc) == [Invalid(relay)]
    assert not alloc.has_allocation() and not alloc.credentials_valid
    assert alloc.can_be_freed() is FreeReason.AUTHENTICATION_ERROR
    assert alloc.rejection is not None and alloc.rejection.code == 401
    # Nothing more is sent: the credentials are dropped, not retried.
    net.run(400.0)
    assert len(methods(sim, since=310.0)) == 0


def test_signed_401_to_a_signed_request_is_final_at_once(caplog):
    alloc, sim, net = allocated()
    sim.secret = "rotated"
    sim.error_key = alloc._key  # a relay that signs its 401 (coturn does not)
    net.run(300.0)
    assert methods(sim, since=300.0, binding=False) == [(Method.REFRESH, True)]  # no second try
    drain(alloc)
    assert alloc.can_be_freed() is FreeReason.AUTHENTICATION_ERROR
    assert any(
        w.startswith("Invalid credentials, refusing to re-authenticate") and "method=refresh" in w
        for w in warnings(caplog)
    )


def test_401_on_unauthenticated_first_allocate_is_not_fatal():
    alloc, sim, net = allocated()
    assert alloc.credentials_valid and alloc.can_be_freed() is None
    assert methods(sim) == [(Method.BINDING, False), (Method.ALLOCATE, False), (Method.ALLOCATE, True)]


def test_437_on_allocate_deletes_then_allocates_again():
    """A second Allocation on the same 5-tuple (our process restarted): ALLOCATE gets 437."""
    old, sim, net = allocated()
    stale = old.relay_candidates()[0]
    net.agents.clear()
    alloc = net.attach(Allocation(sim.socket, *sim.credentials(), REALM, 10.0, relay_id="r1"), CLIENT4)
    net.now = 10.0
    net.run(10.0)
    assert methods(sim, since=10.0) == [
        (Method.BINDING, False),
        (Method.ALLOCATE, False),  # -> 401
        (Method.ALLOCATE, True),  # -> 437
        (Method.REFRESH, True),  # LIFETIME=0 -> deleted
        (Method.ALLOCATE, True),  # -> success
    ]
    (delete,) = [m for _, _, m in sent(net, Method.REFRESH)]
    assert delete.get("LIFETIME") == 0
    assert alloc.has_allocation() and alloc.relay_candidates()[0] != stale
    assert sim.allocations[CLIENT4].relayed == [alloc.relay_candidates()[0].addr]


def test_437_right_after_our_delete_asks_again_shortly_instead_of_looping():
    """coturn keeps a deleted allocation for about a second and answers a new ALLOCATE on the
    5-tuple with 437 ("wrong transaction ID"); deleting again would loop at RTT speed, so the
    ALLOCATE is asked again every LINGER_RETRY (0.25 s) instead."""
    old, sim, net = allocated()
    sim.linger = 1.0
    net.agents.clear()
    alloc = net.attach(Allocation(sim.socket, *sim.credentials(), REALM, 10.0, relay_id="r1"), CLIENT4)
    net.now = 10.0
    net.run(10.999)
    assert methods(sim, since=10.0, binding=False) == [
        (Method.ALLOCATE, False),  # -> 401
        (Method.ALLOCATE, True),  # -> 437: the old allocation
        (Method.REFRESH, True),  # LIFETIME=0 -> deleted (lingering)
        (Method.ALLOCATE, True),  # -> 437 again: asked again shortly
        (Method.ALLOCATE, True),  # 10.25 -> 437
        (Method.ALLOCATE, True),  # 10.5 -> 437
        (Method.ALLOCATE, True),  # 10.75 -> 437
    ]
    assert not alloc.has_allocation()
    net.run(11.0)  # the retransmit: the relay closed the session meanwhile (438), then success
    assert [m for m, _ in methods(sim, since=10.9)] == [Method.ALLOCATE, Method.ALLOCATE]
    assert alloc.has_allocation() and alloc.can_be_freed() is None


def test_lost_allocate_response_recovers_through_delete_on_a_lingering_relay():
    """The signed ALLOCATE's success is lost; its retransmit (new transaction id) gets 437."""
    alloc, sim, net = setup()
    sim.linger = 1.0
    lost: list[Message] = []

    def drop_first_allocate_success(src, dst, payload):
        if src == RELAY4 and stun.is_stun(payload) and not lost:
            msg = stun.decode(payload)
            if (msg.method, msg.cls) == (Method.ALLOCATE, Class.SUCCESS):
                lost.append(msg)
                return True
        return False

    net.drop = drop_first_allocate_success
    net.run(5.0)
    assert lost and alloc.has_allocation()
    assert [c.addr for c in alloc.relay_candidates()] == sim.allocations[CLIENT4].relayed
    assert len(sim.requests) < 15  # a handful of requests, not a storm


def test_lost_allocate_response_after_our_delete_is_not_taken_for_the_linger():
    """The simulator's seed 33026: the ALLOCATE after our delete succeeds, its answer is lost, and
    every later ALLOCATE (a new transaction id each) gets 437 for the allocation we hold now. That
    437 was taken for the deleted allocation's linger until the request's deadline, and the relay
    was dropped for no response 10 s later while it answered every request. A 437 past the linger
    deletes again."""
    alloc, sim, net = setup()
    sim.linger = 1.0
    successes: list[Message] = []

    def drop_second_allocate_success(src, dst, payload):
        if src == RELAY4 and stun.is_stun(payload):
            msg = stun.decode(payload)
            if (msg.method, msg.cls) == (Method.ALLOCATE, Class.SUCCESS):
                successes.append(msg)
                return len(successes) in (1, 2)  # the first (as above) and the one after our delete
        return False

    net.drop = drop_second_allocate_success
    net.run(8.0)
    assert len(successes) >= 3 and alloc.has_allocation() and alloc.can_be_freed() is None
    assert [c.addr for c in alloc.relay_candidates()] == sim.allocations[CLIENT4].relayed
    assert len(sim.requests) < 40  # the linger's 0.25 s retries, not a storm


def test_a_request_lost_while_the_relay_was_away_does_not_drop_it_once_it_answers_again():
    """The simulator's seed 33008: a request sent while the relay was paused timed out (10 s) after
    the relay came back and had answered a later one; the allocation was taken for unreachable and
    the relay dropped for no response, 0.8 s after its last answer."""
    alloc, sim, net = allocated()
    now = net.now
    sim.black_hole = True
    alloc.bind_channel(PEER, now)  # every transmission lost; given up at now + 10
    net.run(now + 9.5)  # past its last retransmit
    sim.black_hole = False
    alloc.bind_channel(PEER2, net.now)  # answered
    net.run(now + 12.0)
    assert alloc.has_allocation() and alloc.can_be_freed() is None
    assert alloc.has_channel_to(PEER2, net.now)


def test_437_on_refresh_allocates_again():
    alloc, sim, net = allocated()
    (old,) = alloc.relay_candidates()
    sim.inject[Method.REFRESH] = 437
    del sim.allocations[CLIENT4]  # what a 437 means
    net.run(300.0)
    assert methods(sim, since=300.0, binding=False) == [(Method.REFRESH, True), (Method.ALLOCATE, True)]
    (new,) = alloc.relay_candidates()
    assert new != old
    assert drain(alloc) == [Invalid(old), New(new)]
    assert alloc.lifetime == (300.0, 600.0)


def test_437_on_channel_bind_allocates_again_and_rebinds_the_peer():
    alloc, sim, net = allocated()
    sim.reboot()  # same secret: forgets our allocation and nonce
    alloc.bind_channel(PEER, 5.0)
    net.now = 5.0
    net.run(5.0)
    assert methods(sim, since=5.0) == [
        (Method.CHANNEL_BIND, True),  # -> 438 (nonce forgotten)
        (Method.CHANNEL_BIND, True),  # -> 437
        (Method.ALLOCATE, True),  # peer re-buffered meanwhile
        (Method.CHANNEL_BIND, True),  # flushed after the ALLOCATE success
    ]
    assert alloc.has_channel_to(PEER, 5.0)
    (channel,) = alloc.channels.values()
    assert sim.allocations[CLIENT4].channels[channel.number][0] == PEER


def test_420_is_a_protocol_failure(caplog):
    alloc, sim, net = setup()
    sim.inject[Method.ALLOCATE] = 420
    net.run(0.0)
    assert alloc.can_be_freed() is FreeReason.PROTOCOL_FAILURE
    assert not alloc.has_allocation()
    assert any("does not understand" in w for w in warnings(caplog))


def test_other_error_on_allocate_clears_buffered_binds(caplog):
    alloc, sim, net = setup()
    alloc.bind_channel(PEER, 0.0)
    sim.inject[Method.ALLOCATE] = 500
    net.run(0.0)
    assert not alloc.buffered_channel_bindings and not alloc.has_allocation()
    assert any("unhandled error code" in w and "code=500" in w for w in warnings(caplog))


def test_other_error_on_channel_bind_drops_that_channel(caplog):
    alloc, sim, net = allocated()
    sim.inject[Method.CHANNEL_BIND] = 400
    alloc.bind_channel(PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    assert alloc.channels == {} and alloc.has_allocation()
    assert any(w.startswith("Channel bind failed") for w in warnings(caplog))


def test_refresh_success_without_lifetime_is_a_protocol_failure_not_a_refresh_storm(caplog):
    alloc, sim, net = allocated()
    net.drop = lambda src, dst, p: src == CLIENT4 and stun.decode(p).method == Method.REFRESH
    net.run(300.5)  # the REFRESH at lifetime/2 is in flight (lost); answer it without LIFETIME
    (tid,) = [t for t, p in alloc.sent_requests.items() if p.message.method == Method.REFRESH]
    reply = Message(Method.REFRESH, Class.SUCCESS, tid, [("SOFTWARE", "odd-relay")])
    alloc.handle_input(reply.encode(alloc._key), RELAY4, CLIENT4, 300.5)
    alloc.handle_timeout(300.5)
    assert [m.method for _, m in take(alloc)] == []  # no immediate REFRESH
    assert alloc.can_be_freed() is FreeReason.PROTOCOL_FAILURE
    assert [type(e) for e in drain(alloc)] == [Invalid] and alloc.poll_timeout() is None
    assert any(w.startswith("REFRESH success without LIFETIME") for w in warnings(caplog))


# --------------------------------------------------------------------------- timers
def test_refresh_at_half_lifetime_and_lifetime_renewed():
    alloc, sim, net = allocated()
    assert alloc.poll_timeout() == BINDING_INTERVAL
    net.run(299.999)
    assert Method.REFRESH not in [m for m, _ in methods(sim)]
    net.run(300.0)
    assert methods(sim, since=300.0, binding=False) == [(Method.REFRESH, True)]
    (refresh,) = [m for _, _, m in sent(net, Method.REFRESH)]
    assert "LIFETIME" not in refresh  # relay default applies
    assert alloc.lifetime == (300.0, 600.0)
    net.run(600.0)
    assert [t for t, m, _ in sim.requests if m == Method.REFRESH] == [300.0, 600.0]


def test_local_expiry_at_lifetime():
    alloc, sim, net = setup()
    sim.lifetime = 10  # short enough that expiry comes before the REFRESH backoff gives up
    net.run(0.0)
    drain(alloc)
    (relay,) = alloc.relay_candidates()
    net.drop = lambda src, dst, p: stun.is_stun(p) and stun.decode(p).method == Method.REFRESH
    net.run(9.999)
    assert alloc.has_allocation()
    assert [t for t, _, _ in sent(net, Method.REFRESH)] == [5.0, 6.0, 7.5, 9.75]
    net.run(10.0)
    assert not alloc.has_allocation() and alloc.lifetime is None
    assert drain(alloc) == [Invalid(relay)]
    assert alloc.sent_requests == {}


def test_keepalive_binding_every_25s_and_reset_by_outgoing_channel_data():
    alloc, sim, net = allocated()
    net.run(80.0)
    assert [t for t, m, _ in sim.requests if m == Method.BINDING] == [0.0, 25.0, 50.0, 75.0]
    alloc.bind_channel(PEER, 80.0)
    net.run(90.0)
    assert alloc.encapsulate(PEER, b"hi", 90.0) is not None  # outgoing data: next BINDING at 115
    net.run(114.9)
    assert [t for t, m, _ in sim.requests if m == Method.BINDING][-1] == 75.0
    net.run(150.0)
    assert [t for t, m, _ in sim.requests if m == Method.BINDING and t > 75.0] == [115.0, 140.0]


def test_no_keepalive_without_allocation():
    alloc, sim, net = setup()
    sim.refuse[Method.ALLOCATE] = 500
    net.run(200.0)
    # 401, then the refused ALLOCATE and its three retries at +1, +2, +4 s; never a BINDING.
    assert [m for m, _ in methods(sim)] == [Method.BINDING] + [Method.ALLOCATE] * 5
    assert alloc.poll_timeout() is None and alloc.can_be_freed() is FreeReason.REFUSED


# --------------------------------------------------------------------------- channels
def test_channel_numbers_round_robin_from_0x4000():
    alloc, sim, net = allocated()
    for peer in (PEER, PEER2):
        alloc.bind_channel(peer, 1.0)
    assert sorted(alloc.channels) == [0x4000, 0x4001]
    net.now = 1.0
    net.run(1.0)
    assert all(c.bound for c in alloc.channels.values())
    # Idle channels lapse (no refresh) and become reusable after 600 + 300 s ...
    net.run(902.0)
    assert not alloc.has_channel_to(PEER, 902.0)
    # ... yet the next bind does not go back to 0x4000: numbers are handed out round robin.
    alloc.bind_channel(PEER3, 902.0)
    assert [n for n, c in alloc.channels.items() if c.peer == PEER3] == [0x4002]
    # A re-usable number is reclaimed only when the round robin hands it out again: until then
    # its peer gets it back (the relay may still hold the binding and refuse another number).
    assert alloc.channels[0x4000].peer == PEER
    alloc.bind_channel(PEER, 902.0)
    assert [n for n, c in alloc.channels.items() if c.peer == PEER] == [0x4000]
    net.run(902.0)
    assert alloc.has_channel_to(PEER, 902.0)


def test_channel_bind_skips_duplicates_and_unknown_family():
    alloc, sim, net = allocated()
    alloc.bind_channel(PEER, 1.0)
    alloc.bind_channel(PEER, 1.0)  # in flight: no second bind
    alloc.bind_channel(("2001:db8::77", 9), 1.0)  # no IPv6 relay address
    assert len(alloc.channels) == 1
    assert [m.method for _, m in take(alloc)] == [Method.CHANNEL_BIND]


def test_channel_refreshed_at_300s_only_when_data_was_received():
    alloc, sim, net = allocated()
    alloc.bind_channel(PEER, 10.0)
    alloc.bind_channel(PEER2, 10.0)
    net.now = 10.0
    net.run(10.0)
    busy = next(n for n, c in alloc.channels.items() if c.peer == PEER)
    # Data arrives on the busy channel only.
    assert alloc.decapsulate(RELAY4, stun.encode_channel_data(busy, b"x"), 100.0) == (PEER, b"x")
    net.run(309.9)
    assert sim.count(Method.CHANNEL_BIND) == 2
    net.run(310.0)
    rebinds = [m for t, _, m in sent(net, Method.CHANNEL_BIND) if t == 310.0]
    assert [(m.get("CHANNEL-NUMBER"), m.get("XOR-PEER-ADDRESS")) for m in rebinds] == [(busy, PEER)]
    assert alloc.channels[busy].bound_at == 310.0
    # Without fresh data, no second refresh at 610.
    net.run(700.0)
    assert sim.count(Method.CHANNEL_BIND) == 3
    assert alloc.has_channel_to(PEER, 700.0) and not alloc.has_channel_to(PEER2, 700.0)


def test_optimistic_send_on_in_flight_channel():
    alloc, sim, net = allocated()
    assert alloc.encapsulate(PEER, b"first", 1.0) is None  # no channel: dropped, bind started
    (bind,) = take(alloc)
    assert bind[1].method == Method.CHANNEL_BIND
    transmit = alloc.encapsulate(PEER, b"second", 1.1)  # bind still unanswered
    assert transmit is not None and transmit.dst == RELAY4
    assert stun.decode_channel_data(transmit.payload) == (bind[1].get("CHANNEL-NUMBER"), b"second")
    assert not alloc.has_channel_to(PEER, 1.1)  # not confirmed yet


def test_buffered_channel_binds_flushed_after_allocate():
    alloc, sim, net = setup()
    alloc.bind_channel(PEER, 0.0)
    alloc.bind_channel(PEER2, 0.0)
    alloc.bind_channel(PEER, 0.0)  # already buffered
    assert list(alloc.buffered_channel_bindings) == [PEER, PEER2]
    net.run(0.0)
    assert not alloc.buffered_channel_bindings
    assert alloc.has_channel_to(PEER, 0.0) and alloc.has_channel_to(PEER2, 0.0)
    assert [m for m, _ in methods(sim)][-2:] == [Method.CHANNEL_BIND, Method.CHANNEL_BIND]


def test_channel_data_relayed_between_two_allocations_on_the_same_relay():
    sim = TurnSim(RELAY4)
    net = Net(sim)
    a = net.attach(Allocation(sim.socket, *sim.credentials("a"), REALM, 0.0, relay_id="r"), CLIENT4)
    b = net.attach(Allocation(sim.socket, *sim.credentials("b"), REALM, 0.0, relay_id="r"), ("10.0.0.3", 40000))
    net.run(0.0)
    (ra,), (rb,) = a.relay_candidates(), b.relay_candidates()
    a.bind_channel(rb.addr, 0.0)
    b.bind_channel(ra.addr, 0.0)
    net.run(0.0)
    net.run(1.0)
    ping = a.encapsulate(rb.addr, b"ping", 1.0)
    assert ping is not None
    net.transmit(a, ping)
    net.run(1.0)
    assert net.received == [(1.0, b, (ra.addr, b"ping"))]


# --------------------------------------------------------------------------- integrity
def test_response_failing_integrity_is_ignored_and_request_stays_in_flight(caplog):
    alloc, sim, net = allocated()
    (relay,) = alloc.relay_candidates()
    sim.error_key = long_term_key("someone", REALM, "else")
    sim.expire_nonces()
    net.run(300.0)  # REFRESH -> 438 signed with a key that is not ours
    assert methods(sim, since=300.0, binding=False) == [(Method.REFRESH, True)]
    (tid,) = alloc.sent_requests
    assert alloc.sent_requests[tid].message.method == Method.REFRESH
    assert alloc.nonce != sim.nonces[CLIENT4]  # the forged nonce was not taken
    assert any(w.startswith("Message integrity check failed") for w in warnings(caplog))
    # The eventual timeout decides: the relay keeps answering with bad signatures.
    net.run(310.0)
    assert drain(alloc) == [Invalid(relay)]
    assert alloc.can_be_freed() is FreeReason.NO_RESPONSE


@pytest.mark.parametrize("key", [b"not-the-key", None], ids=["wrong-key", "unsigned"])
def test_success_with_wrong_or_no_integrity_is_ignored(key, caplog):
    alloc, sim, _ = setup()
    answer(alloc, sim, 0.0)  # BINDING
    answer(alloc, sim, 0.0)  # ALLOCATE -> 401
    ((_, request),) = take(alloc)  # the signed ALLOCATE, never delivered
    forged = Message(
        Method.ALLOCATE,
        Class.SUCCESS,
        request.transaction_id,
        [("XOR-RELAYED-ADDRESS", ("6.6.6.6", 6666)), ("LIFETIME", 600)],
    )
    alloc.handle_input(forged.encode(key), RELAY4, CLIENT4, 0.0)
    assert not alloc.has_allocation() and request.transaction_id in alloc.sent_requests
    if key is not None:
        assert any(w.startswith("Message integrity check failed") for w in warnings(caplog))
    # The same response signed with our long-term key is taken.
    alloc.handle_input(forged.encode(alloc._key), RELAY4, CLIENT4, 0.0)
    assert [c.addr for c in alloc.relay_candidates()] == [("6.6.6.6", 6666)]
    assert alloc.sent_requests == {}


def test_unsigned_successes_never_complete_an_allocation():
    alloc, sim, net = setup()
    sim.sign_successes = False
    net.run(0.0)
    assert alloc.active_socket == RELAY4 and not alloc.has_allocation()  # BINDING needs no signature
    assert any(p.message.method == Method.ALLOCATE for p in alloc.sent_requests.values())


def test_binding_success_needs_no_integrity():
    alloc, sim, net = setup()
    sim.sign_successes = False
    net.run(0.0)
    assert alloc.active_socket == RELAY4 and alloc.srflx


# --------------------------------------------------------------------------- the probe
def test_probe_alive_relay_renews_lifetime():
    alloc, sim, net = allocated()
    net.run(42.0)
    alloc.refresh(42.0)
    net.run(42.0)
    assert alloc.lifetime == (42.0, 600.0)
    assert alloc.can_be_freed() is None and drain(alloc) == []


def test_probe_dead_relay_no_response_after_one_second():
    alloc, sim, net = allocated()
    (relay,) = alloc.relay_candidates()
    net.run(42.0)
    sim.black_hole = True
    alloc.refresh(42.0)
    net.run(42.999)
    assert alloc.has_allocation() and alloc.can_be_freed() is None
    net.run(43.0)
    assert drain(alloc) == [Invalid(relay)]
    assert alloc.can_be_freed() is FreeReason.NO_RESPONSE
    assert alloc.active_socket is None


def test_probe_rebooted_relay_same_secret_reallocates():
    alloc, sim, net = allocated()
    (old,) = alloc.relay_candidates()
    sim.reboot()
    net.run(42.0)
    alloc.refresh(42.0)
    net.run(42.0)
    assert methods(sim, since=42.0) == [
        (Method.REFRESH, True),  # -> 438: the rebooted relay does not know our nonce
        (Method.REFRESH, True),  # -> 437
        (Method.ALLOCATE, True),
    ]
    (new,) = alloc.relay_candidates()
    assert new != old and drain(alloc) == [Invalid(old), New(new)]
    net.run(60.0)
    assert alloc.can_be_freed() is None and alloc.has_allocation()


def test_probe_rebooted_relay_new_secret_is_an_authentication_error():
    alloc, sim, net = allocated()
    (old,) = alloc.relay_candidates()
    sim.reboot(new_secret="new-boot")
    net.run(42.0)
    alloc.refresh(42.0)
    net.run(43.0)
    assert methods(sim, since=42.0) == [(Method.REFRESH, True), (Method.REFRESH, True)]  # 438, 401 (unsigned)
    assert drain(alloc) == [Invalid(old)]  # at the probe's deadline
    assert alloc.can_be_freed() is FreeReason.AUTHENTICATION_ERROR


def test_probe_does_nothing_while_allocating():
    alloc, sim, _ = setup()
    answer(alloc, sim, 0.0)  # ALLOCATE now in flight
    alloc.refresh(0.5)
    assert [m.method for _, m in take(alloc)] == [Method.ALLOCATE]


def test_probe_on_suspended_allocation_starts_over_with_binding():
    alloc, sim, net = setup(disabled_fixes=frozenset({FIX_REFUSAL_RETRY}))
    sim.inject[Method.ALLOCATE] = 500  # (the old behaviour) a socket, no allocation, nothing in flight
    net.run(0.0)
    assert alloc.is_suspended()
    alloc.refresh(1.0)
    assert alloc.active_socket is None
    net.now = 1.0
    net.run(1.0)
    assert alloc.has_allocation()


# --------------------------------------------------------------------------- hostile input
def state(alloc: Allocation):
    channels = {n: (c.peer, c.bound, c.bound_at, c.last_received) for n, c in alloc.channels.items()}
    return (
        sorted(alloc.sent_requests),
        dict(alloc.relayed),
        alloc.lifetime,
        alloc.active_socket,
        channels,
        alloc.nonce,
        alloc.credentials_valid,
        alloc.explicit_failure,
        dict(alloc.srflx),
        alloc.host,
        alloc.srtt,
        list(alloc.buffered_channel_bindings),
        alloc.poll_timeout(),
    )


def test_malformed_and_foreign_packets_change_no_state():
    alloc, sim, net = allocated()
    alloc.bind_channel(PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    alloc.refresh(2.0)  # a REFRESH in flight whose id an attacker might know
    assert [m.method for _, m in take(alloc)] == [Method.REFRESH]
    (tid,) = alloc.sent_requests
    before = state(alloc)
    good = Message(Method.REFRESH, Class.SUCCESS, tid, [("LIFETIME", 1)])
    no_code = Message(Method.REFRESH, Class.ERROR, tid, [("SOFTWARE", "x")])
    packets = [
        b"",
        b"\x00",
        b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + tid,
        b"\x01\x01\x00\x04\x21\x12\xa4\x42" + tid + b"\x00\x01",  # truncated attribute
        b"\x01\x04\x00\x00\x21\x12\xa4\x43" + tid,  # bad cookie
        Message(Method.REFRESH, Class.SUCCESS, b"\x00" * 12, [("LIFETIME", 1)]).encode(),  # unknown id
        Message(Method.ALLOCATE, Class.SUCCESS, tid, [("LIFETIME", 1)]).encode(),  # wrong method
        Message(Method.REFRESH, Class.INDICATION, tid).encode(),
        good.encode(),  # unsigned success
        no_code.encode(),  # an error response without ERROR-CODE
        b"\x40\x00\x00\x05abc",  # ChannelData with a bad length
        b"\x4f\xff\x00\x01z",  # ChannelData on a channel we never bound
        bytes(range(256)),
    ]
    for packet in packets:
        alloc.handle_input(packet, RELAY4, CLIENT4, 3.0)
        alloc.decapsulate(RELAY4, packet, 3.0)
        assert state(alloc) == before, packet
    # A perfectly valid signed response, but from an address that is not the relay.
    real_key = alloc._key
    for src in [("192.0.2.99", 3478), (RELAY4[0], 3479), PEER]:
        alloc.handle_input(good.encode(real_key), src, CLIENT4, 3.0)
        number = next(iter(alloc.channels))
        assert alloc.decapsulate(src, stun.encode_channel_data(number, b"x"), 3.0) is None
        assert state(alloc) == before
    assert drain(alloc) == [] and take(alloc) == []
    # The genuine article, from the relay, is taken.
    alloc.handle_input(good.encode(real_key), RELAY4, CLIENT4, 3.0)
    assert alloc.lifetime == (3.0, 1.0)


# --------------------------------------------------------------------------- the simulated relay itself
_TIDS = random.Random(7)


def sim_request(sim, method, *attrs, nonce=None, password=None, tid=None):
    username, good = sim.credentials()
    msg = Message(method, Class.REQUEST, tid or stun.new_transaction_id(_TIDS), list(attrs))
    if nonce is None:
        return msg.encode()
    msg.add("USERNAME", username).add("REALM", REALM).add("NONCE", nonce)
    return msg.encode(long_term_key(username, REALM, password or good))


def sim_reply(sim, packet, now=0.0, src=CLIENT4) -> Message:
    ((dst, data),) = sim.handle(packet, src, now)
    assert dst == src
    return stun.decode(data)


def test_sim_auth_like_coturn():
    sim = TurnSim(RELAY4)
    challenge = sim_reply(sim, sim_request(sim, Method.ALLOCATE, ("REQUESTED-TRANSPORT", 17)))
    assert challenge.error_code == 401 and "MESSAGE-INTEGRITY" not in challenge
    nonce = challenge.get("NONCE")
    assert challenge.get("REALM") == REALM and nonce
    wrong = sim_reply(sim, sim_request(sim, Method.REFRESH, nonce=nonce, password="wrong"))
    assert wrong.error_code == 401 and "MESSAGE-INTEGRITY" not in wrong and wrong.get("NONCE") == nonce
    stale = sim_reply(sim, sim_request(sim, Method.REFRESH, nonce="made-up"))
    assert stale.error_code == 438 and stale.get("NONCE") not in (None, nonce)
    sim.error_key = b"k" * 16
    signed_wrong = sim_reply(sim, sim_request(sim, Method.REFRESH, nonce="made-up"))
    assert signed_wrong.verify_integrity(b"k" * 16)


def test_sim_allocation_lifecycle():
    sim = TurnSim(RELAY4)
    nonce = sim_reply(sim, sim_request(sim, Method.ALLOCATE)).get("NONCE")
    username, password = sim.credentials()
    key = long_term_key(username, REALM, password)
    assert sim_reply(sim, sim_request(sim, Method.REFRESH, nonce=nonce)).error_code == 437  # none yet
    ok = sim_reply(sim, sim_request(sim, Method.ALLOCATE, ("REQUESTED-TRANSPORT", 17), nonce=nonce))
    assert ok.cls == Class.SUCCESS and ok.verify_integrity(key) and ok.get("LIFETIME") == 600
    again = sim_request(sim, Method.ALLOCATE, ("REQUESTED-TRANSPORT", 17), nonce=nonce)
    assert sim_reply(sim, again).error_code == 437
    deleted = sim_reply(sim, sim_request(sim, Method.REFRESH, ("LIFETIME", 0), nonce=nonce))
    assert deleted.get("LIFETIME") == 0 and CLIENT4 not in sim.allocations
    sim_reply(sim, sim_request(sim, Method.ALLOCATE, ("REQUESTED-TRANSPORT", 17), nonce=nonce))
    assert sim_reply(sim, sim_request(sim, Method.REFRESH, nonce=nonce), now=599.0).get("LIFETIME") == 600
    assert sim_reply(sim, sim_request(sim, Method.REFRESH, nonce=nonce), now=1198.0).cls == Class.SUCCESS
    assert sim_reply(sim, sim_request(sim, Method.REFRESH, nonce=nonce), now=1798.0).error_code == 437  # expired


def test_sim_channel_data_needs_a_channel_and_reaches_outside_peers():
    sim = TurnSim(RELAY4)
    nonce = sim_reply(sim, sim_request(sim, Method.ALLOCATE)).get("NONCE")
    sim_reply(sim, sim_request(sim, Method.ALLOCATE, ("REQUESTED-TRANSPORT", 17), nonce=nonce))
    assert sim.handle(stun.encode_channel_data(0x4000, b"x"), CLIENT4, 1.0) == []  # no channel
    bind = sim_request(sim, Method.CHANNEL_BIND, ("CHANNEL-NUMBER", 0x4000), ("XOR-PEER-ADDRESS", PEER), nonce=nonce)
    assert sim_reply(sim, bind, 1.0).cls == Class.SUCCESS
    assert sim.handle(stun.encode_channel_data(0x4000, b"x"), CLIENT4, 2.0) == [(PEER, b"x")]
    assert sim.handle(stun.encode_channel_data(0x4000, b"x"), CLIENT4, 601.0) == []  # channel expired
    sim.black_hole = True
    assert sim.handle(sim_request(sim, Method.BINDING), CLIENT4, 3.0) == []


def test_each_of_many_peers_gets_its_own_channel_and_a_dropped_one_is_bound_again():
    """``encapsulate`` finds a peer's channel through a per-peer lookaside (a gateway with N clients
    has N channels per allocation): each peer's data goes on its own number, and once a channel is
    gone (a failed bind drops it) the peer's next datagram starts a new bind instead of using it."""
    alloc, sim, net = allocated()
    peers = [(f"203.0.113.{60 + i}", 7000) for i in range(40)]
    for peer in peers:
        alloc.bind_channel(peer, 1.0)
    net.run(1.0)
    numbers = {c.peer: n for n, c in alloc.channels.items()}
    assert len(numbers) == 40
    for _ in range(2):  # the second pass is answered from the lookaside
        for peer in peers:
            transmit = alloc.encapsulate(peer, b"x", 2.0)
            assert transmit is not None and stun.decode_channel_data(transmit.payload)[0] == numbers[peer]
    gone = peers[7]
    alloc._drop_channel(numbers[gone])  # as a refused bind does
    assert alloc.encapsulate(gone, b"x", 2.0) is None  # no channel: a bind is started
    assert [m.method for _, m in take(alloc)] == [Method.CHANNEL_BIND]


def test_a_peers_older_channel_bound_again_is_used_before_its_newer_one():
    """With ``channel-number-reuse`` off a lapsed channel's peer gets a second number, used at once
    while its bind is in flight; coturn still relays on the first (it holds bindings past their
    lifetime), which makes the first active, and its refresh binds it again. Data then goes on the
    first again, the first alive channel in order: the per-peer lookaside must not keep answering
    the second."""
    alloc, sim, net = allocated(disabled_fixes=frozenset({FIX_CHANNEL_NUMBER_REUSE}))
    alloc.bind_channel(PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    (first,) = alloc.channels
    net.run(700.0)  # nothing received: not refreshed, lapsed
    assert alloc.encapsulate(PEER, b"x", 700.0) is None  # a second number's bind starts
    assert [m.method for _, m in take(alloc)] == [Method.CHANNEL_BIND]  # in flight (not delivered)
    (second,) = set(alloc.channels) - {first}
    transmit = alloc.encapsulate(PEER, b"x", 700.1)
    assert transmit is not None and stun.decode_channel_data(transmit.payload)[0] == second
    # The relay relays the peer's datagram on the first number; the first's refresh binds it again.
    assert alloc.decapsulate(RELAY4, stun.encode_channel_data(first, b"from the peer"), 700.2) is not None
    alloc.handle_timeout(700.2)
    assert any(m.method == Method.CHANNEL_BIND and m.get("CHANNEL-NUMBER") == first for _, m in take(alloc))
    transmit = alloc.encapsulate(PEER, b"y", 700.3)
    assert transmit is not None and stun.decode_channel_data(transmit.payload)[0] == first
