"""``Node``: the relay set (spec §2, the two #6666 fixes), against simulated relays, fake clock.

The last section disables one fix at a time and shows the scenario that the normal-mode tests
use really exhibits the seed's bug, so those tests would catch a regression.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connlib.core import node as node_mod
from connlib.core import stun
from connlib.core.allocation import Candidate, FreeReason
from connlib.core.fixes import FIX_CREDENTIALS_COMPARE, FIX_PROBE, FIX_PROBE_LISTED
from connlib.core.node import (
    CandidateInvalid,
    CandidateNew,
    ChannelData,
    Node,
    NoRelays,
    RelayAdded,
    RelayRemoved,
)
from connlib.core.stun import Method

from .turn_sim import Net, TurnSim

CLIENT4 = ("10.0.0.2", 40000)
NO_RESPONSE = str(FreeReason.NO_RESPONSE)  # "no response received. Is STUN blocked?"
NO_RESPONSE_WARN = f"Disconnecting from relay; {NO_RESPONSE}"


def relays(n: int, **kw) -> list[TurnSim]:
    return [TurnSim((f"192.0.2.{101 + i}", 3478), secret=f"secret-{i}", **kw) for i in range(n)]


def setup(*sims: TurnSim, now: float = 0.0, **node_kw):
    net = Net(*sims, now=now)
    node = net.attach(Node(now, seed=7, **node_kw), CLIENT4)
    return node, net


def deploy(node: Node, net: Net, sims: dict[str, TurnSim]) -> None:
    """``update_relays(∅, sims)`` at ``net.now`` and let the allocations complete."""
    node.update_relays([], [sim.config(rid) for rid, sim in sims.items()], net.now)
    net.run(net.now)
    for rid in sims:
        assert node.allocations[rid].has_allocation(), rid


def events(node: Node) -> list:
    return list(iter(node.poll_event, None))


def of(kind, evs) -> list:
    return [e for e in evs if isinstance(e, kind)]


def messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def requests_since(sim: TurnSim, t: float) -> list[Method | int]:
    return [m for at, m, _ in sim.requests if at >= t and m != Method.BINDING]


# --------------------------------------------------------------------------- update_relays upsert
def test_add_allocates_and_announces_candidates(caplog):
    (a,) = relays(1)
    node, net = setup(a)
    node.update_relays([], [a.config("a")], 0.0)
    assert events(node) == [RelayAdded("a")]
    net.run(0.0)
    evs = events(node)
    assert [(e.rid, e.candidate.kind) for e in evs] == [("a", "host"), ("a", "srflx"), ("a", "relay")]
    assert all(isinstance(e, CandidateNew) for e in evs)
    assert node.usable_relays() == ["a"] and node.relay_candidates("a") == [evs[-1].candidate]
    assert any(m.startswith("Added new TURN server") and "rid=a" in m for m in messages(caplog, logging.INFO))


def test_same_relay_same_credentials_is_skipped_and_probed(caplog):
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    events(node)
    allocation = node.allocations["a"]
    net.run(10.0)
    node.update_relays([], [a.config("a")], 10.0)
    net.run(10.0)
    assert node.allocations["a"] is allocation
    # Probed (issue 9 item 7: it may have restarted with the same secret), nothing else changes.
    assert events(node) == [] and requests_since(a, 10.0) == [Method.REFRESH]
    assert allocation.lifetime == (10.0, 600.0)
    assert any(m.startswith("Skipping known TURN server") for m in messages(caplog, logging.INFO))


@pytest.mark.parametrize("change", ["password", "username", "address"])
def test_known_id_with_different_credentials_or_address_is_replaced(change, caplog):
    a, b = relays(2)
    b.secret = a.secret  # so that only the address differs in the "address" case
    node, net = setup(a, b)
    deploy(node, net, {"a": a})
    old_relay = node.relay_candidates("a")
    events(node)
    old = node.allocations["a"]
    config = a.config("a")
    config = {
        "password": replace(config, password="not-the-same"),
        "username": replace(config, username="123:other"),
        "address": replace(config, v4=b.v4),
    }[change]
    net.run(10.0)
    node.update_relays([], [config], 10.0)
    evs = events(node)
    assert evs == [CandidateInvalid("a", old_relay[0]), RelayRemoved("a", evs[1].reason), RelayAdded("a")]
    assert "replaced" in evs[1].reason
    assert node.allocations["a"] is not old
    assert any(m.startswith("Replaced TURN server") for m in messages(caplog, logging.INFO))
    if change == "address":  # a working relay: the fresh allocation completes there
        net.run(10.0)
        assert node.allocations["a"].has_allocation() and CLIENT4 in b.allocations


def test_replaced_relay_on_same_address_recovers_from_the_stale_server_allocation():
    """Same relay, new credentials that it accepts, old allocation still held (issue 9 item 4):
    437 to the ALLOCATE, 441 to the delete under the new username, the delete under the old
    credentials, then the ALLOCATE succeeds, all at once."""
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    stale = node.relay_candidates("a")
    net.run(10.0)
    node.update_relays([], [a.config("a", salt="new-salt")], 10.0)
    net.run(10.0)
    assert requests_since(a, 10.0) == [
        Method.ALLOCATE,
        Method.ALLOCATE,
        Method.REFRESH,
        Method.REFRESH,
        Method.ALLOCATE,
    ]
    assert node.allocations["a"].has_allocation() and node.relay_candidates("a") != stale


def test_a_forgotten_relay_handed_back_under_new_credentials_recovers_from_its_allocation():
    """The portal removes a relay that still holds our allocation (no delete is sent), then hands it
    back under a new username (found by the simulator, seed 30013): 437 to the ALLOCATE, 441 to the
    delete under the new username, the delete under the credentials the allocation was made with,
    then the ALLOCATE succeeds. Before, the relay refused both until the old allocation expired."""
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    node.update_relays(["a"], [], 10.0)
    net.run(10.0)
    assert "a" not in node.allocations and CLIENT4 in a.allocations  # still held on the relay
    before = len(a.requests)
    node.update_relays([], [a.config("a", salt="new-salt")], 20.0)
    net.run(20.0)
    assert [m for _, m, _ in a.requests[before:] if m != Method.BINDING] == [
        Method.ALLOCATE,
        Method.ALLOCATE,
        Method.REFRESH,
        Method.REFRESH,
        Method.ALLOCATE,
    ]
    assert node.allocations["a"].has_allocation()


def test_a_forgotten_relay_is_held_for_as_long_as_its_last_refresh_said():
    """The allocation's lifetime runs from its last REFRESH, not from the ALLOCATE: forgotten after
    the ALLOCATE's 600 s but within the refreshed ones, the relay still holds it, and the delete
    under the old credentials is still owed (two of stop 20's held_until mutants survived here)."""
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    net.run(700.0)  # refreshed at half its lifetime (300 s): held on the relay until ~900 s
    assert CLIENT4 in a.allocations and a.allocations[CLIENT4].expires_at > 850.0
    node.update_relays(["a"], [], 700.0)
    net.run(700.0)
    node.update_relays([], [a.config("a", salt="new-salt")], 710.0)
    net.run(712.0)
    assert node.allocations["a"].has_allocation()


def test_a_forgotten_relay_whose_allocation_was_deleted_or_expired_gets_no_old_delete():
    """Nothing to delete: a relay handed back after our allocation's lifetime allocates at once."""
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    node.update_relays(["a"], [], 10.0)
    lifetime = a.allocations[CLIENT4].expires_at
    net.run(lifetime + 1.0)
    before = len(a.requests)
    node.update_relays([], [a.config("a", salt="new-salt")], net.now)
    net.run(net.now)
    assert [m for _, m, _ in a.requests[before:] if m != Method.BINDING] == [Method.ALLOCATE, Method.ALLOCATE]
    assert node.allocations["a"].has_allocation()


def test_forgotten_relays_are_bounded_and_the_oldest_goes_first(monkeypatch):
    """At most MAX_FORGOTTEN forgotten relays are kept (here 2): forgetting a third drops the
    oldest, whose allocation then gets no delete under its old credentials (the relay refuses the
    new username, 437 and 441, until it expires), while the newest two recover through theirs."""
    monkeypatch.setattr(node_mod, "MAX_FORGOTTEN", 2)
    sims = relays(3)
    node, net = setup(*sims)
    names = {"a": sims[0], "b": sims[1], "c": sims[2]}
    deploy(node, net, names)
    for t, rid in ((10.0, "a"), (11.0, "b"), (12.0, "c")):  # each removed while it holds ours
        node.update_relays([rid], [], t)
        net.run(t)
    for rid, sim in names.items():
        node.update_relays([], [sim.config(rid, salt="new-salt")], net.now)
        net.run(net.now + 2.0)
        assert node.allocations[rid].has_allocation() is (rid != "a"), rid  # a: refused until expiry


def test_disconnected_ids_are_removed(caplog):
    a, b = relays(2)
    node, net = setup(a, b)
    deploy(node, net, {"a": a, "b": b})
    relay_a = node.relay_candidates("a")
    events(node)
    node.update_relays(["a"], [b.config("b")], 1.0)
    assert events(node) == [CandidateInvalid("a", relay_a[0]), RelayRemoved("a", "removed by the portal")]
    assert sorted(node.allocations) == ["b"]
    assert any(m.startswith("Removed TURN server") and "rid=a" in m for m in messages(caplog, logging.INFO))


def test_removing_an_unknown_id_is_harmless(caplog):
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    events(node)
    node.update_relays(["nope"], [a.config("a")], 1.0)
    net.run(1.0)
    assert events(node) == [] and sorted(node.allocations) == ["a"]
    assert any(m.startswith("Cannot delete unknown allocation") for m in messages(caplog, logging.DEBUG))


# --------------------------------------------------------------------------- probe + GC
def test_unlisted_relays_get_the_one_shot_probe_listed_ones_the_retransmitted_one():
    a, b, c = relays(3)
    node, net = setup(a, b, c)
    deploy(node, net, {"a": a, "b": b, "c": c})
    net.run(30.0)
    node.update_relays([], [b.config("b")], 30.0)
    probes = [(t.dst, stun.decode(t.payload).method) for t in iter(node.poll_transmit, None)]
    assert sorted(probes) == [(a.v4, Method.REFRESH), (b.v4, Method.REFRESH), (c.v4, Method.REFRESH)]
    deadlines = {rid: [p.backoff.deadline for p in node.allocations[rid].sent_requests.values()] for rid in "abc"}
    assert deadlines == {"a": [31.0], "b": [32.5], "c": [31.0]}


def test_dead_unlisted_relay_removed_within_one_second_alive_one_stays(caplog):
    a, b, c = relays(3)
    node, net = setup(a, b, c)
    deploy(node, net, {"a": a, "b": b, "c": c})
    relay_a = node.relay_candidates("a")
    net.run(30.0)
    events(node)
    a.black_hole = True  # died while we were partitioned from the portal
    node.update_relays([], [b.config("b")], 30.0)
    net.run(30.999)
    assert sorted(node.allocations) == ["a", "b", "c"]
    assert node.allocations["c"].lifetime == (30.0, 600.0)  # the probe renewed c
    net.run(31.0)
    assert sorted(node.allocations) == ["b", "c"]
    assert events(node) == [CandidateInvalid("a", relay_a[0]), RelayRemoved("a", NO_RESPONSE)]
    warns = [m for m in messages(caplog, logging.WARNING) if m.startswith("Disconnecting from relay")]
    assert warns == [f"{NO_RESPONSE_WARN} rid=a"]
    net.run(60.0)
    assert sorted(node.allocations) == ["b", "c"]


def test_rebooted_unlisted_relay_with_new_secret_is_removed_for_authentication():
    a, b = relays(2)
    node, net = setup(a, b)
    deploy(node, net, {"a": a, "b": b})
    net.run(30.0)
    a.reboot(new_secret="fresh-boot")
    node.update_relays([], [b.config("b")], 30.0)
    net.run(30.999)  # 438, then an unsigned 401: provisional until the probe's deadline
    assert sorted(node.allocations) == ["a", "b"]
    net.run(31.0)
    assert sorted(node.allocations) == ["b"]
    assert of(RelayRemoved, events(node)) == [RelayRemoved("a", "authentication error")]


def test_no_relays_once_per_loss_of_the_last_relay(caplog):
    a, b = relays(2)
    node, net = setup(a, b)
    deploy(node, net, {"a": a})
    events(node)
    node.update_relays(["a"], [], 1.0)
    assert of(NoRelays, events(node)) == [NoRelays()]
    node.update_relays([], [], 2.0)
    node.handle_timeout(3.0)
    assert of(NoRelays, events(node)) == []
    net.now = 5.0
    deploy(node, net, {"b": b})
    assert of(NoRelays, events(node)) == []
    # The last relay dies on its own: GC announces it again.
    b.black_hole = True
    net.run(35.0)
    node.update_relays([], [], 35.0)  # probe
    net.run(36.0)
    assert not node.allocations
    assert of(NoRelays, events(node)) == [NoRelays()]
    info = messages(caplog, logging.INFO)
    assert info.count("Removed last relay; requesting a new set") == 2


def test_a_fresh_node_owes_no_no_relays():
    node, net = setup()
    node.handle_timeout(1.0)
    node.update_relays([], [], 2.0)  # an init with no relays: nothing was lost
    assert of(NoRelays, events(node)) == []


def test_an_unusable_entry_does_not_shield_a_known_relay_from_the_probe():
    a, b = relays(2)
    node, net = setup(a, b)
    deploy(node, net, {"a": a, "b": b})
    net.run(30.0)
    broken = replace(a.config("a"), v4=None, v6=None)  # same id, no address: ignored
    node.update_relays([], [broken, b.config("b")], 30.0)
    probes = [(t.dst, stun.decode(t.payload).method) for t in iter(node.poll_transmit, None)]
    assert probes == [(a.v4, Method.REFRESH), (b.v4, Method.REFRESH)]
    assert [p.backoff.deadline for p in node.allocations["a"].sent_requests.values()] == [31.0]


def test_packets_from_previous_relays_are_dropped_silently():
    a, b = relays(2)
    node, net = setup(a, b)
    deploy(node, net, {"a": a, "b": b})
    node.update_relays(["a"], [b.config("b")], 1.0)
    events(node)
    list(iter(node.poll_transmit, None))
    late = stun.Message(Method.REFRESH, stun.Class.SUCCESS, bytes(12), [("LIFETIME", 600)]).encode()
    for packet in (late, stun.encode_channel_data(0x4000, b"late"), b"garbage"):
        assert node.handle_input(packet, a.v4, CLIENT4, 2.0) is True
        assert node.handle_input(packet, ("198.51.100.1", 3478), CLIENT4, 2.0) is False  # not relay traffic
    assert events(node) == [] and node.poll_transmit() is None and sorted(node.allocations) == ["b"]


def test_peer_traffic_from_another_port_of_a_previous_relay_ip_is_not_swallowed():
    """Only the relay's own port is relay traffic: a peer's relayed address on that relay (or,
    on loopback, any peer at all) shares the IP and must still reach the tunnel."""
    a, b = relays(2)
    node, net = setup(a, b)
    deploy(node, net, {"a": a, "b": b})
    node.update_relays([], [a.config("a", salt="churned"), b.config("b")], 1.0)  # a replaced
    node.update_relays(["b"], [], 1.0)  # b removed
    list(iter(node.poll_transmit, None))
    check = stun.Message(Method.BINDING, stun.Class.REQUEST, bytes(12)).encode()  # an ICE connectivity check
    for relay in (a, b):
        assert relay.v4 is not None
        peer_relayed = (relay.v4[0], 49999)
        assert node.handle_input(check, peer_relayed, CLIENT4, 2.0) is False
        assert node.handle_input(b"\x17app-data", peer_relayed, CLIENT4, 2.0) is False
    assert node.handle_input(check, b.v4, CLIENT4, 2.0) is True  # b's own port: late relay traffic


def test_channel_data_is_returned_as_channel_data():
    (a,) = relays(1)
    net = Net(a)
    n1 = net.attach(Node(0.0, seed=1), CLIENT4)
    n2 = net.attach(Node(0.0, seed=2), ("10.0.0.3", 40000))
    for node, salt in ((n1, "one"), (n2, "two")):
        node.update_relays([], [a.config("r", salt=salt)], 0.0)
    net.run(0.0)
    (r1,), (r2,) = n1.relay_candidates("r"), n2.relay_candidates("r")
    n1.bind_channel("r", r2.addr, 0.0)
    n2.bind_channel("r", r1.addr, 0.0)
    net.run(1.0)
    hello = n1.encapsulate("r", r2.addr, b"hello", 1.0)
    assert hello is not None
    net.transmit(n1, hello)
    net.run(1.0)
    assert net.received == [(1.0, n2, ChannelData("r", r1.addr, b"hello"))]
    assert n1.encapsulate("nope", r2.addr, b"x", 1.0) is None


# --------------------------------------------------------------------------- sampling
def test_sample_relay_only_allocated_relays_with_rtt_deterministic_with_seed():
    picks = []
    for _ in range(2):
        fast, near, slow, dead, failing = relays(5)
        fast.latency, near.latency, slow.latency, failing.latency = 0.010, 0.012, 0.100, 0.001
        dead.black_hole = True
        failing.inject[Method.ALLOCATE] = 500  # answers BINDING (so it has an RTT), no allocation
        sims = {"fast": fast, "near": near, "slow": slow, "dead": dead, "failing": failing}
        node, net = setup(*sims.values())
        node.update_relays([], [sim.config(rid) for rid, sim in sims.items()], 0.0)
        net.run(1.0)
        assert node.usable_relays() == ["fast", "near", "slow"]
        assert node.allocations["failing"].srtt is not None and node.allocations["dead"].srtt is None
        picks.append([node.sample_relay() for _ in range(40)])
    assert picks[0] == picks[1]  # same seed, same choices
    assert set(picks[0]) == {"fast", "near"}  # slow is beyond median + 3·MAD


def test_sample_relay_two_relays_and_none():
    fast, slow = relays(2)
    fast.latency, slow.latency = 0.010, 0.050
    node, net = setup(fast, slow)
    assert node.sample_relay() is None
    node.update_relays([], [fast.config("fast"), slow.config("slow")], 0.0)
    assert node.sample_relay() is None  # nothing allocated yet
    net.run(1.0)
    assert {node.sample_relay() for _ in range(20)} == {"fast"}  # 1.5 × min RTT


# --------------------------------------------------------------------------- the seed's two bugs
def rebooted_relay_with_new_credentials(disabled=()):
    """The #6648 scenario: a relay reboots (new secret) while we are partitioned from the portal;
    the re-``init`` names it with the same id and new credentials."""
    (a,) = relays(1)
    node, net = setup(a, disabled_fixes=disabled)
    deploy(node, net, {"a": a})
    before = node.allocations["a"]
    net.run(30.0)
    a.reboot(new_secret="after-reboot")
    fresh = a.config("a")
    node.update_relays([], [fresh], 30.0)
    net.run(30.0 + 20.0)  # the model's idle-spin bound
    return node, a, fresh, before


def test_rebooted_relay_with_new_credentials_is_replaced():
    node, sim, fresh, before = rebooted_relay_with_new_credentials()
    allocation = node.allocations["a"]
    assert allocation is not before and allocation.matches_credentials(fresh.username, fresh.password)
    assert allocation.has_allocation() and CLIENT4 in sim.allocations
    assert node.relay_candidates("a")[0].addr == sim.allocations[CLIENT4].relayed[0]


def test_mutation_without_credentials_compare_the_stale_allocation_stays():
    # The probe of listed relays (issue 9 item 7) would catch it too: disable that net as well.
    node, sim, fresh, before = rebooted_relay_with_new_credentials(disabled={FIX_CREDENTIALS_COMPARE, FIX_PROBE_LISTED})
    allocation = node.allocations["a"]
    assert allocation is before and not allocation.matches_credentials(fresh.username, fresh.password)
    assert allocation.has_allocation() and CLIENT4 not in sim.allocations  # a ghost allocation: the bug


def silently_dead_unlisted_relay(disabled=()):
    a, b = relays(2)
    node, net = setup(a, b, disabled_fixes=disabled)
    deploy(node, net, {"a": a, "b": b})
    net.run(30.0)  # keep-alives at 25, 50: none in the window below
    a.black_hole = True
    node.update_relays([], [b.config("b")], 30.0)
    net.run(40.0)  # the backoff bound after the update
    return node


def test_silently_dead_unlisted_relay_is_removed_within_the_bound():
    assert sorted(silently_dead_unlisted_relay().allocations) == ["b"]


def test_mutation_without_probe_the_dead_relay_is_kept():
    node = silently_dead_unlisted_relay(disabled={FIX_PROBE})
    assert sorted(node.allocations) == ["a", "b"] and node.allocations["a"].has_allocation()


def test_unknown_fix_name_is_rejected():
    with pytest.raises(ValueError, match="unknown fixes"):
        Node(0.0, disabled_fixes={"credentials"})


def test_candidate_invalid_for_a_relay_freed_by_gc():
    (a,) = relays(1)
    node, net = setup(a)
    deploy(node, net, {"a": a})
    (relay,) = node.relay_candidates("a")
    events(node)
    a.black_hole = True
    net.run(35.0)  # keep-alive at 25 s times out at 35 s
    evs = events(node)
    assert evs[:2] == [CandidateInvalid("a", relay), RelayRemoved("a", NO_RESPONSE)]
    assert evs[2:] == [NoRelays()]
    assert isinstance(relay, Candidate) and node.poll_timeout() is None


@settings(deadline=None, derandomize=True, database=None, max_examples=200)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=9))
def test_median_is_statistics_median(values):
    # node.py has its own median so that `python -m connlib allocate` need not import statistics.
    assert node_mod._median(values) == statistics.median(values)
