"""Issue 9 item 11, the sans-IO parts: nomination on the controlled side, bounded remote
candidates, check retransmits under one transaction id, a host candidate per family; and no answer to
a check on a candidate the connection does not have (the simulator's seed 31014)."""

from __future__ import annotations

import random

from connlib.core import messages, stun
from connlib.core.allocation import Allocation
from connlib.core.candidate import RemoteCandidate, candidate_line, candidate_priority
from connlib.core.credentials import REALM
from connlib.core.ice import MAX_REMOTE_CANDIDATES, Connected, Connection, LocalCandidate, PathLost
from connlib.core.stun import Class, Message, Method
from connlib.core.tunnel import Tunnel

from .turn_sim import Net, TurnSim

LOCAL = LocalCandidate("relay", ("192.0.2.1", 50000), "r1")
R1, R2 = ("198.51.100.1", 60000), ("198.51.100.2", 60000)


def check(conn: Connection, tid: int) -> Message:
    msg = Message(Method.BINDING, Class.REQUEST, tid.to_bytes(12, "big"))
    msg.add("USERNAME", f"{conn.local_ufrag}:peer")
    msg.add("PRIORITY", candidate_priority("prflx"))
    msg.add("ICE-CONTROLLING", 1)
    msg.add("USE-CANDIDATE")
    return stun.decode(msg.encode(conn.local_pwd.encode(), fingerprint=True))


def test_controlled_side_keeps_its_nomination_while_the_controller_checks_every_pair():
    conn = Connection.new("client", controlling=False, now=0.0, rng=random.Random(1))
    conn.set_remote_credentials("peer", "peer-password-0123456789", 0.0)
    conn.add_local_candidate(LOCAL, 0.0)
    for addr in (R1, R2):
        conn.add_remote_candidate(RemoteCandidate("relay", addr, candidate_priority("relay")), 0.0)
    now = 0.0
    for i in range(20):  # the controller's checks on both pairs, each with USE-CANDIDATE
        now += 0.25
        conn.handle_stun(check(conn, i + 1), LOCAL, R1 if i % 2 == 0 else R2, now)
    connected = [e for e in iter(conn.poll_event, None) if isinstance(e, Connected)]
    assert len(connected) == 1 and conn.nominated is not None and conn.nominated.remote.addr == R1


def test_controlled_side_moves_when_its_nominated_pair_went_quiet():
    conn = Connection.new("client", controlling=False, now=0.0, rng=random.Random(1))
    conn.set_remote_credentials("peer", "peer-password-0123456789", 0.0)
    conn.add_local_candidate(LOCAL, 0.0)
    for addr in (R1, R2):
        conn.add_remote_candidate(RemoteCandidate("relay", addr, candidate_priority("relay")), 0.0)
    conn.handle_stun(check(conn, 1), LOCAL, R1, 0.0)
    conn.handle_stun(check(conn, 2), LOCAL, R2, 5.0)  # R1 silent for 5 s: the peer moved
    assert conn.nominated is not None and conn.nominated.remote.addr == R2


def test_a_check_on_a_candidate_the_connection_does_not_have_is_not_answered():
    """The peer pairs our relay candidate of an earlier connection (its candidates came late): an
    answer would have it nominate a pair this connection never takes, each side sure of another
    path (seed 31014: the client connected, the gateway failed by ICE timeout). str0m discards it."""
    conn = Connection.new("gateway", controlling=False, now=0.0, rng=random.Random(1))
    conn.set_remote_credentials("peer", "peer-password-0123456789", 0.0)
    conn.add_local_candidate(LOCAL, 0.0)
    conn.add_remote_candidate(RemoteCandidate("relay", R1, candidate_priority("relay")), 0.0)
    list(iter(conn.poll_transmit, None))
    elsewhere = LocalCandidate("relay", ("192.0.2.9", 50000), "r9")
    assert conn.handle_stun(check(conn, 1), elsewhere, R1, 1.0)  # ours by its USERNAME: consumed
    assert conn.poll_transmit() is None and conn.nominated is None
    assert all(pair.local == LOCAL for pair in conn.pairs)
    conn.handle_stun(check(conn, 2), LOCAL, R1, 1.5)
    answers = [t for t in iter(conn.poll_transmit, None) if stun.decode(t.payload).cls == Class.SUCCESS]
    assert [t.local for t in answers] == [LOCAL] and conn.nominated is not None


def _connection(controlling: bool) -> Connection:
    conn = Connection.new("peer", controlling=controlling, now=0.0, rng=random.Random(2))
    conn.set_remote_credentials("peer", "peer-password-0123456789", 0.0)
    conn.add_local_candidate(LOCAL, 0.0)
    return conn


def test_remote_candidates_are_bounded():
    conn = _connection(controlling=True)
    added = [
        conn.add_remote_candidate(RemoteCandidate("relay", ("198.51.100.1", 1000 + i), 1), 0.0) for i in range(100)
    ]
    assert sum(added) == MAX_REMOTE_CANDIDATES == len(conn.remote_candidates) == len(conn.pairs)


def test_remote_candidates_bound_the_channel_binds_on_our_relay():
    sim = TurnSim(("192.0.2.1", 3478))
    net = Net(sim)
    tunnel = net.attach(Tunnel("gateway", 0.0, seed=1), ("10.0.0.2", 40000))
    tunnel.update_relays([], [sim.config("r1")], 0.0)
    net.run(0.0)
    offer = messages.ConnectionSignal("client", "ufrag", "pwd-0123456789012345678", None)
    tunnel.handle_signal(messages.Event.CONNECTION_REQUEST, offer, 0.0)
    for batch in range(10):  # a hostile or buggy peer: 10 messages of 10 relay candidates each
        lines = tuple(
            candidate_line("relay", ("198.51.100.9", 2000 + 10 * batch + i), candidate_priority("relay"))
            for i in range(10)
        )
        tunnel.handle_signal(messages.Event.NEW_ICE_CANDIDATES, messages.CandidateSignal("client", lines), 0.0)
    net.run(1.0)
    assert sim.count(Method.CHANNEL_BIND) <= MAX_REMOTE_CANDIDATES + 1  # + the 438/401 re-sign at most


def test_a_late_answer_to_an_earlier_check_copy_counts():
    conn = _connection(controlling=True)
    conn.add_remote_candidate(RemoteCandidate("relay", R1, candidate_priority("relay")), 0.0)
    conn.handle_timeout(0.0)
    first = [stun.decode(t.payload) for t in iter(conn.poll_transmit, None)]
    conn.handle_timeout(conn.poll_timeout() or 1.0)  # no answer yet: retransmitted
    second = [stun.decode(t.payload) for t in iter(conn.poll_transmit, None)]
    assert len(first) == len(second) == 1
    assert second[0].transaction_id == first[0].transaction_id  # RFC 8489 §6.2.1
    answer = Message(Method.BINDING, Class.SUCCESS, first[0].transaction_id, [("XOR-MAPPED-ADDRESS", LOCAL.addr)])
    answer = stun.decode(answer.encode(b"peer-password-0123456789", fingerprint=True))
    assert conn.handle_stun(answer, LOCAL, R1, 0.3)
    assert conn.connected


def test_dual_stack_relay_gives_a_host_candidate_per_family():
    sim = TurnSim(("192.0.2.1", 3478), ("2001:db8::1", 3478))
    net = Net(sim)
    alloc = Allocation(sim.socket, *sim.credentials(), REALM, 0.0, relay_id="r1")
    net.attach(alloc, ("10.0.0.2", 40000), ("2001:db8:c::2", 40000))
    net.run(0.0)
    hosts = [c.addr for c in alloc.candidates() if c.kind == "host"]
    assert sorted(hosts) == [("10.0.0.2", 40000), ("2001:db8:c::2", 40000)]


T0 = 100.0  # the checks' time base (not 0: a last answer at 0.0 would read as none)


def _nominated(keepalive: float) -> Connection:
    conn = Connection.new("peer", controlling=False, now=T0, rng=random.Random(2), keepalive=keepalive)
    conn.set_remote_credentials("peer", "peer-password-0123456789", T0)
    conn.add_local_candidate(LOCAL, T0)
    conn.add_remote_candidate(RemoteCandidate("relay", R1, candidate_priority("relay")), T0)
    conn.handle_stun(check(conn, 1), LOCAL, R1, T0)
    assert conn.nominated is not None
    list(iter(conn.poll_transmit, None))
    return conn


def test_keepalive_interval_sets_the_check_pace_and_the_path_lost_bound():
    """A connection's ``keepalive`` paces the nominated pair's checks; the path is lost after
    four unanswered intervals (connlib's default: 1 s and 4 s; the simulator runs 2 s)."""
    for keepalive, lost_after in ((1.0, 4.0), (2.0, 8.0)):
        conn = _nominated(keepalive)
        assert conn.poll_timeout() == T0 + keepalive
        sent = 0
        now = T0
        while conn.nominated is not None and now < T0 + 20.0:
            now = conn.poll_timeout() or T0 + 20.0
            conn.handle_timeout(now)
            sent += len(list(iter(conn.poll_transmit, None)))
        assert now == T0 + lost_after and sent == lost_after / keepalive - 1
        assert any(isinstance(e, PathLost) for e in iter(conn.poll_event, None))
