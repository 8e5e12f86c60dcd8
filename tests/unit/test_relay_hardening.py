"""Issue 9: relay handling that survives what real relays and real networks do (fake clock).

One section per numbered item; each test provokes the bug (it failed on the code before the fix)
and, where an end-to-end scenario relies on the behaviour, a mutation twin disables the fix by
its switch in ``connlib.core.fixes`` and shows the bug comes back.
"""

from __future__ import annotations

import random

import pytest

from connlib.core import stun
from connlib.core.allocation import Allocation, ChannelTimes, FreeReason
from connlib.core.candidate import RemoteCandidate, candidate_priority
from connlib.core.credentials import REALM
from connlib.core.ice import Connected, Connection, LocalCandidate, PathLost
from connlib.core.node import Node, NoRelays, RelayRemoved
from connlib.core.stun import Class, Message, Method

from .turn_sim import Net, TurnSim

RELAY4 = ("192.0.2.1", 3478)
CLIENT4 = ("10.0.0.2", 40000)
PEER = ("203.0.113.50", 7000)
PEER2 = ("203.0.113.51", 7000)
NO_ZOMBIE_BOUND = 15.0
MAX_RATE = 10.0  # requests per second to any relay


def allocation(**kw):
    sim = TurnSim(RELAY4)
    net = Net(sim)
    alloc = net.attach(Allocation(sim.socket, *sim.credentials(), REALM, 0.0, relay_id="r1", **kw), CLIENT4)
    net.run(0.0)
    assert alloc.has_allocation()
    list(iter(alloc.poll_event, None))
    return alloc, sim, net


def node_with(*sims: TurnSim, disabled=()):
    net = Net(*sims)
    node = net.attach(Node(0.0, seed=3, disabled_fixes=frozenset(disabled)), CLIENT4)
    node.update_relays([], [sim.config(f"r{i}") for i, sim in enumerate(sims)], 0.0)
    net.run(0.0)
    return node, net


def events(node) -> list:
    return list(iter(node.poll_event, None))


def in_flight(alloc: Allocation, method: Method) -> bytes:
    (tid,) = [t for t, p in alloc.sent_requests.items() if p.message.method == method]
    return tid


def forge(alloc: Allocation, method: Method, code: int, *extra) -> None:
    """An unsigned error from the relay's address carrying the id of our request in flight."""
    tid = in_flight(alloc, method)
    attrs = [("ERROR-CODE", (code, "forged")), *extra]
    alloc.handle_input(Message(method, Class.ERROR, tid, attrs).encode(), RELAY4, CLIENT4, alloc_now(alloc))


def alloc_now(alloc: Allocation) -> float:
    return min(p.sent_at for p in alloc.sent_requests.values())


def max_rate(sim: TurnSim, window: float = 1.0) -> int:
    times = sorted(t for t, _, _ in sim.requests)
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


# --------------------------------------------------------------------------- item 1: unsigned errors
@pytest.mark.parametrize(
    ("code", "extra"),
    [(401, [("REALM", REALM), ("NONCE", "forged-nonce")]), (437, []), (420, []), (438, []), (500, [])],
    ids=["401", "437", "420", "438-without-nonce", "500"],
)
def test_item1_forged_unsigned_error_to_a_signed_request_changes_nothing(code, extra):
    alloc, sim, net = allocation()
    (relayed,) = alloc.relay_candidates()
    net.drop = lambda src, dst, p: src == CLIENT4 and stun.decode(p).method == Method.REFRESH
    net.run(300.0)  # the REFRESH at lifetime/2 is in flight (its first copy lost)
    forge(alloc, Method.REFRESH, code, *extra)
    net.drop = lambda src, dst, p: False
    net.run(305.0)  # a retransmit reaches the relay and is answered
    assert alloc.has_allocation() and alloc.relay_candidates() == [relayed]
    assert alloc.credentials_valid and alloc.can_be_freed() is None and alloc.explicit_failure is None
    assert alloc.lifetime is not None and alloc.lifetime[0] > 300.0  # the real answer renewed it
    assert sim.count(Method.ALLOCATE) == 2  # no re-allocation (401 + signed, both at t=0)


def test_item1_forged_401_does_not_free_a_healthy_relay_at_node_level():
    sim = TurnSim(RELAY4)
    node, net = node_with(sim)
    events(node)
    alloc = node.allocations["r0"]
    net.drop = lambda src, dst, p: src == CLIENT4 and stun.decode(p).method == Method.REFRESH
    net.run(300.0)
    forge(alloc, Method.REFRESH, 401, ("REALM", REALM), ("NONCE", "x"))
    node.handle_timeout(300.0)
    net.drop = lambda src, dst, p: False
    net.run(320.0)
    evs = events(node)
    assert not [e for e in evs if isinstance(e, RelayRemoved | NoRelays)]
    assert node.usable_relays() == ["r0"]


def test_item1_unsigned_401_only_until_the_deadline_is_an_authentication_error():
    alloc, sim, net = allocation()
    sim.secret = "rotated"  # coturn: unsigned 401 to every signed request from now on
    net.run(310.0)
    list(iter(alloc.poll_event, None))
    assert alloc.can_be_freed() is FreeReason.AUTHENTICATION_ERROR
    assert alloc.rejection is not None and (alloc.rejection.code, alloc.rejection.authenticated) == (401, False)


# --------------------------------------------------------------------------- item 2: BINDING errors
@pytest.mark.parametrize(
    ("code", "extra"),
    [(437, []), (420, []), (401, [("REALM", "other-realm"), ("NONCE", "n")])],
    ids=["437", "420", "401-foreign-realm"],
)
def test_item2_error_to_the_keepalive_binding_is_not_a_turn_error(code, extra):
    alloc, sim, net = allocation()
    (relayed,) = alloc.relay_candidates()
    net.drop = lambda src, dst, p: src == RELAY4  # the keep-alive's answer is lost ...
    net.run(25.0)
    forge(alloc, Method.BINDING, code, *extra)  # ... and a forged error arrives instead
    net.drop = lambda src, dst, p: False
    net.run(3600.0)
    assert alloc.has_allocation() and alloc.relay_candidates() == [relayed]
    assert alloc.can_be_freed() is None and alloc.explicit_failure is None


# --------------------------------------------------------------------------- item 3: channel numbers
def channel_lapse(disabled=()):
    alloc, sim, net = allocation(**({"disabled_fixes": frozenset(disabled)} if disabled else {}))
    alloc.bind_channel(PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    (number,) = alloc.channels
    net.run(700.0)  # send-mostly: nothing received, so the channel is not refreshed and lapses
    assert alloc.encapsulate(PEER, b"x", 700.0) is None  # lapsed: re-bind started
    net.run(700.0)
    transmit = alloc.encapsulate(PEER, b"hello", 700.0)
    return alloc, sim, net, number, transmit


def test_item3_lapsed_channel_is_rebound_with_the_same_number():
    alloc, sim, net, number, transmit = channel_lapse()
    assert list(alloc.channels) == [number] == [stun.CHANNEL_MIN]
    assert alloc.has_channel_to(PEER, 700.0) and transmit is not None
    assert sim.allocations[CLIENT4].channels[number][0] == PEER
    assert sim.count(Method.CHANNEL_BIND) <= 3  # bind, 438 re-sign at most, re-bind


def test_item3_twin_without_channel_number_reuse_the_relay_refuses_the_new_number():
    alloc, sim, net, number, transmit = channel_lapse(disabled={"channel-number-reuse"})
    assert not alloc.has_channel_to(PEER, 700.0)  # 400: "same peer with different channel number"


def test_item3_a_lapsed_peer_keeps_its_number_when_another_peer_is_bound_first():
    """The simulator's seed 67 (channel lifetime 30 s): a peer idle past lifetime + rebind timeout
    (45 s) on our clock, then a new peer is bound, then the old one again. coturn still holds the
    old binding (tests/sim/test_calibration.py: past its lifetime), so the old peer must get its
    old number back; binding the new peer must not make us forget it."""
    alloc, sim, net = allocation(channel_times=ChannelTimes(30.0))
    alloc.bind_channel(PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    (number,) = alloc.channels
    net.run(47.0)  # idle since the bind: lapsed at 31, its number re-usable (for us) from 46
    alloc.bind_channel(PEER2, 47.0)  # a new peer first ...
    alloc.bind_channel(PEER, 47.0)  # ... then the lapsed one, in the same instant
    net.run(47.0)
    assert [n for n, c in alloc.channels.items() if c.peer == PEER] == [number]
    assert sim.allocations[CLIENT4].channels[number][0] == PEER
    assert alloc.has_channel_to(PEER, 47.0) and alloc.has_channel_to(PEER2, 47.0)


def test_item3_a_shortened_channel_lifetime_scales_the_lapse_and_the_refresh():
    """``connlib run --channel-lifetime`` (a relay configured with coturn's --channel-lifetime):
    a channel in use is re-bound at half of it, an idle one lapses after it, and re-binds keep
    the number."""
    alloc, sim, net = allocation(channel_times=ChannelTimes(10.0))
    alloc.bind_channel(PEER, 1.0)
    net.now = 1.0
    net.run(1.0)
    (number,) = alloc.channels
    alloc.decapsulate(RELAY4, stun.encode_channel_data(number, b"in"), 2.0)  # in use
    net.run(6.5)
    assert sim.count(Method.CHANNEL_BIND) == 2 and alloc.has_channel_to(PEER, 6.5)  # refreshed at 6 s
    net.run(17.0)  # idle since: lapsed 10 s after the refresh
    assert not alloc.has_channel_to(PEER, 17.0)
    assert alloc.encapsulate(PEER, b"x", 17.0) is None  # re-bind started ...
    net.run(17.0)
    assert alloc.has_channel_to(PEER, 17.0) and list(alloc.channels) == [number]  # ... with the same number


# --------------------------------------------------------------------------- item 4: new credentials
def rotated_without_reboot(disabled=()):
    sim = TurnSim(RELAY4)
    node, net = node_with(sim, disabled=disabled)
    old = node.relay_candidates("r0")
    events(node)
    net.run(10.0)
    node.update_relays([], [sim.config("r0", salt="rotated")], 10.0)  # same secret, new username
    net.run(10.0 + NO_ZOMBIE_BOUND)
    return node, sim, net, old


def test_item4_new_credentials_on_a_running_relay_allocate_at_once_no_zombie():
    node, sim, net, old = rotated_without_reboot()
    alloc = node.allocations["r0"]
    assert alloc.has_allocation() and node.relay_candidates("r0") != old
    assert sim.allocations[CLIENT4].relayed == [c.addr for c in node.relay_candidates("r0")]
    assert alloc.lifetime is not None and alloc.lifetime[0] == 10.0  # recovered at once
    assert max_rate(sim) <= MAX_RATE


def test_item4_twin_without_delete_on_replace_the_relay_is_lost():
    node, sim, net, old = rotated_without_reboot(disabled={"delete-on-replace"})
    assert "r0" not in node.usable_relays()  # 437, 441 ...: freed for refusing, held off
    assert max_rate(sim) <= MAX_RATE


# --------------------------------------------------------------------------- item 5: quota
@pytest.mark.parametrize("code", [486, 508])
def test_item5_refused_allocate_frees_the_relay_and_asks_the_portal(code):
    sim = TurnSim(RELAY4)
    sim.refuse[Method.ALLOCATE] = code
    node, net = node_with(sim)
    net.run(NO_ZOMBIE_BOUND)
    evs = events(node)
    assert "r0" not in node.allocations
    assert [e for e in evs if isinstance(e, RelayRemoved)] == [RelayRemoved("r0", str(FreeReason.REFUSED))]
    assert NoRelays() in evs
    assert max_rate(sim) <= MAX_RATE and sim.count(Method.ALLOCATE) <= 6
    # The portal answers no_relays with the same relay: it is held off, not hammered.
    node.update_relays([], [sim.config("r0")], NO_ZOMBIE_BOUND)
    net.run(30.0)
    assert sim.count(Method.ALLOCATE) <= 6
    sim.refuse.clear()  # quota freed up
    net.run(60.0)
    assert node.usable_relays() == ["r0"]


def test_item5_twin_without_refusal_retry_the_relay_is_a_zombie():
    sim = TurnSim(RELAY4)
    sim.refuse[Method.ALLOCATE] = 486
    node, net = node_with(sim, disabled={"refusal-retry"})
    net.run(NO_ZOMBIE_BOUND)
    allocation = node.allocations["r0"]
    assert not allocation.has_allocation() and node.poll_timeout() is None and NoRelays() not in events(node)


# --------------------------------------------------------------------------- item 6: REFRESH storm
def test_item6_refused_refresh_is_not_resent_at_every_timeout():
    alloc, sim, net = allocation()
    sim.latency = 0.0005
    sim.refuse[Method.REFRESH] = 500
    net.run(600.0, max_steps=10_000)
    assert sim.count(Method.REFRESH) <= 4
    assert alloc.can_be_freed() is FreeReason.REFUSED  # freed ~7 s after the first refusal
    assert max_rate(sim) <= MAX_RATE


# --------------------------------------------------------------------------- item 7: same secret
def restarted_same_secret(disabled=()):
    sim = TurnSim(RELAY4)
    node, net = node_with(sim, disabled=disabled)
    old = node.relay_candidates("r0")
    events(node)
    net.run(30.0)
    sim.reboot()  # allocations and nonces lost, the secret (so our credentials) unchanged
    node.update_relays([], [sim.config("r0")], 30.0)  # the re-init after a portal partition
    net.run(31.0)
    return node, sim, old


def test_item7_relay_restarted_with_the_same_secret_is_detected_at_the_init():
    node, sim, old = restarted_same_secret()
    assert node.usable_relays() == ["r0"] and node.relay_candidates("r0") != old
    assert CLIENT4 in sim.allocations
    assert sim.allocations[CLIENT4].relayed == [c.addr for c in node.relay_candidates("r0")]


def test_item7_twin_without_probe_listed_dead_candidates_are_offered():
    node, sim, old = restarted_same_secret(disabled={"probe-listed"})
    assert node.relay_candidates("r0") == old and CLIENT4 not in sim.allocations


def test_item7_path_removed_by_the_peer_is_a_lost_path_and_our_relay_is_probed():
    """Both sides on one relay that rebooted with the same secret inside the portal's debounce: the
    side that learns it (a probe) invalidates its candidate; the other side is told nothing else,
    so losing its nominated path that way must count as a lost path (our relay is probed: the
    same reboot may have taken our allocation too)."""
    local = LocalCandidate("relay", ("192.0.2.1", 50000), "r1")
    remote = ("192.0.2.1", 50001)
    conn = Connection.new("client", controlling=False, now=0.0, rng=random.Random(1))
    conn.set_remote_credentials("peer", "peer-password-0123456789", 0.0)
    conn.add_local_candidate(local, 0.0)
    conn.add_remote_candidate(RemoteCandidate("relay", remote, candidate_priority("relay")), 0.0)
    msg = Message(Method.BINDING, Class.REQUEST, (1).to_bytes(12, "big"))
    msg.add("USERNAME", f"{conn.local_ufrag}:peer")
    msg.add("PRIORITY", candidate_priority("prflx"))
    msg.add("ICE-CONTROLLING", 1)
    msg.add("USE-CANDIDATE")
    conn.handle_stun(stun.decode(msg.encode(conn.local_pwd.encode(), fingerprint=True)), local, remote, 0.5)
    assert any(isinstance(e, Connected) for e in iter(conn.poll_event, None))
    conn.remove_remote_candidate(remote)  # the peer's invalidation arrives through the portal
    assert [e for e in iter(conn.poll_event, None) if isinstance(e, PathLost)] == [PathLost("client", "r1")]


# --------------------------------------------------------------------------- item 8: path probe
def path_probe_with_one_loss(disabled=()):
    sim = TurnSim(RELAY4)
    node, net = node_with(sim, disabled=disabled)
    events(node)
    net.run(30.0)
    lost: list[bytes] = []

    def drop_first_refresh(src, dst, payload):
        if src == CLIENT4 and not lost and stun.is_stun(payload) and stun.decode(payload).method == Method.REFRESH:
            lost.append(payload)
            return True
        return False

    net.drop = drop_first_refresh
    node.probe("r0", 30.0)
    net.run(40.0)
    return node, lost


def test_item8_path_probe_survives_one_lost_packet():
    node, lost = path_probe_with_one_loss()
    assert lost and node.usable_relays() == ["r0"]
    assert not [e for e in events(node) if isinstance(e, RelayRemoved)]


def test_item8_twin_single_shot_probe_frees_the_healthy_relay():
    node, lost = path_probe_with_one_loss(disabled={"path-probe-retransmit"})
    assert "r0" not in node.allocations


def rotated_on_a_lingering_relay(linger: float, until: float):
    """New credentials at t=10 for a relay that did not reboot and lingers ``linger`` s on a delete."""
    sim = TurnSim(RELAY4)
    sim.linger = linger
    node, net = node_with(sim)
    net.run(10.0)
    node.update_relays([], [sim.config("r0", salt="rotated")], 10.0)
    net.run(until)
    return node, sim


def test_item4_a_lingering_relay_after_the_old_credentials_delete_is_waited_for():
    """coturn keeps a deleted allocation for about a second (437 to a new ALLOCATE): after our
    delete under the old credentials, the ALLOCATE is asked again, not deleted again."""
    node, sim = rotated_on_a_lingering_relay(1.0, until=12.0)
    after = [(t, m) for t, m, _ in sim.requests if t >= 10.0 and m != Method.BINDING]
    A, R = Method.ALLOCATE, Method.REFRESH
    # 401; 437; delete (new username) -> 441; delete (old) -> ok; 437 (lingering) every 0.25 s;
    # at 1 s: 438, ok
    lingering = [(10.25, A), (10.5, A), (10.75, A)]
    assert after == [(10.0, A), (10.0, A), (10.0, R), (10.0, R), (10.0, A), *lingering, (11.0, A), (11.0, A)]
    assert node.usable_relays() == ["r0"] and node.allocations["r0"].lifetime == (11.0, 600.0)


def test_item4_a_relay_lingering_a_little_over_a_second_is_allocated_on_soon_after():
    """coturn's linger ends on its own timer tick, a little after a second (seen: re-allocated
    1.6-3.5 s after the rotation on Docker): the ALLOCATE is asked again every 0.25 s, so the
    allocation is back within a quarter second of the linger's end, not a backoff step later."""
    node, sim = rotated_on_a_lingering_relay(1.1, until=13.0)
    received_at, _ = node.allocations["r0"].lifetime
    assert 11.1 <= received_at <= 11.1 + 0.25 + 1e-9
    lingering = [t for t, m, _ in sim.requests if 10.0 < t < 11.1 and m == Method.ALLOCATE]
    assert len(lingering) <= 5  # a bounded rate while it lingers (4/s)


def test_item1_unsigned_refusal_of_a_channel_bind_drops_that_channel_not_the_relay():
    alloc, sim, net = allocation()
    alloc.bind_channel(PEER, 1.0)
    forge(alloc, Method.CHANNEL_BIND, 403)  # e.g. a peer address the relay forbids, unsigned
    net.drop = lambda src, dst, p: True  # and nothing authenticated ever comes
    alloc.handle_timeout(11.0)
    assert alloc.channels == {} and alloc.has_allocation() and alloc.can_be_freed() is None
