"""Issue 9 item 11 (ICE): the controlled side does not re-nominate on every USE-CANDIDATE."""

from __future__ import annotations

import random

from connlib.core import stun
from connlib.core.ice import Connected, Connection, LocalCandidate, RemoteCandidate, candidate_priority
from connlib.core.stun import Class, Message, Method

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
