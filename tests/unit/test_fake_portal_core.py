"""fake_portal.core.Portal driven with a fake clock: exact debounce, heartbeat timeout, selection."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc

from connlib.core.credentials import rest_credentials
from connlib.core.messages import Frame, RelaysPresence, Topic, Vsn, encode_frame
from fake_portal.config import PortalConfig
from fake_portal.core import Close, Portal, Send
from fake_portal.eventlog import summarize
from fake_portal.identity import Endpoint, relay_id_from_name

TOKEN = "t"


def make_portal(**overrides) -> Portal:
    return Portal(PortalConfig(token=TOKEN, **overrides), unix_offset=1_700_000_000.0)


def relay_endpoint(name: str) -> Endpoint:
    return Endpoint(
        Topic.RELAY, Vsn.V1, TOKEN, relay_id_from_name(name), name, relay_addrs=(f"10.0.0.{len(name)}:3478",)
    )


def peer_endpoint(peer_id: str) -> Endpoint:
    return Endpoint(Topic.CLIENT, Vsn.V1, TOKEN, peer_id, peer_id, peer_id, f"pk-{peer_id}")


def frame(topic: str, event: str, payload: dict | None = None, ref: int = 1) -> str:
    return encode_frame(Frame(topic, event, payload or {}, ref))


def outputs(portal: Portal) -> list:
    out = []
    while (item := portal.poll_transmit()) is not None:
        out.append(item)
    return out


def pushes(portal: Portal, sid: int, event: str) -> list[dict]:
    return [
        json.loads(o.text)["payload"]
        for o in outputs(portal)
        if isinstance(o, Send) and o.sid == sid and json.loads(o.text)["event"] == event
    ]


def join_relay(portal: Portal, name: str, secret: str, now: float) -> int:
    sid = portal.open(relay_endpoint(name), now)
    portal.handle_input(sid, frame("relay", "phx_join", {"stamp_secret": secret}), now)
    return sid


def join_client(portal: Portal, peer_id: str, now: float) -> int:
    sid = portal.open(peer_endpoint(peer_id), now)
    portal.handle_input(sid, frame("client", "phx_join"), now)
    return sid


def test_presence_push_happens_exactly_one_debounce_after_the_first_change():
    portal = make_portal(debounce=1.0)
    relay = join_relay(portal, "r1", "s", 0.0)
    client = join_client(portal, "c1", 0.5)
    outputs(portal)
    portal.handle_timeout(1.0)  # the join's own flush: the client already has r1
    assert pushes(portal, client, "relays_presence") == []
    portal.closed(relay, 10.0)
    join_relay(portal, "r2", "s2", 10.6)  # rides along with the first change
    assert portal.poll_timeout() == 11.0
    portal.handle_timeout(10.999)
    assert pushes(portal, client, "relays_presence") == []
    portal.handle_timeout(11.0)
    (payload,) = pushes(portal, client, "relays_presence")
    presence = RelaysPresence.from_json(payload)
    assert presence.disconnected_ids == (relay_id_from_name("r1"),)
    assert [r.id for r in presence.connected] == [relay_id_from_name("r2")]


def test_heartbeat_timeout_is_measured_from_the_last_heartbeat():
    portal = make_portal(heartbeat_timeout=30.0)
    relay = join_relay(portal, "r1", "s", 0.0)
    portal.handle_input(relay, frame("phoenix", "heartbeat", ref=2), 20.0)
    outputs(portal)
    portal.handle_timeout(30.0)
    assert outputs(portal) == [] and portal.relays_view()[0]["online"]
    portal.handle_timeout(50.0)
    assert outputs(portal) == [Close(relay, 4002, "heartbeat timeout")]
    assert not portal.relays_view()[0]["online"]


def test_relays_stay_with_a_client_when_more_come_online():
    portal = make_portal(debounce=0.0, relays_per_client=2)
    join_relay(portal, "r1", "s1", 0.0)
    client = join_client(portal, "c1", 0.0)
    join_relay(portal, "r2", "s2", 1.0)
    portal.handle_timeout(1.0)
    (first,) = pushes(portal, client, "relays_presence")  # fewer than N cached: topped up
    assert {r["id"] for r in first["connected"]} == {relay_id_from_name("r1"), relay_id_from_name("r2")}
    join_relay(portal, "r3", "s3", 2.0)
    portal.handle_timeout(2.0)
    assert pushes(portal, client, "relays_presence") == []  # a full, healthy set is left alone


def test_partition_expires_on_its_own():
    portal = make_portal()
    client = join_client(portal, "c1", 0.0)
    result = portal.partition("c1", 5.0, 1.0)
    assert result["sockets_closed"] == 1 and result["until"] == 1_700_000_006.0
    assert Close(client, 4001, "partitioned") in outputs(portal)
    rejection = portal.admit(peer_endpoint("c1"), 5.9)
    assert rejection is not None and rejection.status == 503
    assert portal.admit(peer_endpoint("c1"), 6.0) is None


def test_frames_for_a_closed_socket_are_ignored():
    portal = make_portal()
    client = join_client(portal, "c1", 0.0)
    portal.closed(client, 1.0)
    outputs(portal)
    portal.handle_input(client, frame("client", "no_relays"), 1.1)
    assert outputs(portal) == []


def test_rotated_credentials_reach_every_peer_as_one_push_under_the_same_secret():
    portal = make_portal(debounce=1.0)
    join_relay(portal, "r1", "s1", 0.0)
    client = join_client(portal, "c1", 0.0)
    portal.handle_timeout(1.0)
    outputs(portal)
    rid = relay_id_from_name("r1")
    assert portal.rotate_credentials("unknown", 2.0) is None
    assert portal.rotate_credentials(rid, 2.0) == 1
    portal.handle_timeout(3.0)
    (payload,) = pushes(portal, client, "relays_presence")
    presence = RelaysPresence.from_json(payload)
    assert presence.disconnected_ids == ()
    (entry,) = presence.connected
    assert entry.id == rid and entry.username.endswith(".r1")
    expiry, _, salt = entry.username.partition(":")
    assert rest_credentials("s1", int(expiry), salt) == (entry.username, entry.password)  # what coturn checks
    # the relay's socket re-joins with the same secret: the rotation holds, nothing is pushed
    join_relay(portal, "r1", "s1", 4.0)
    portal.handle_timeout(5.0)
    assert pushes(portal, client, "relays_presence") == []
    assert portal.relays_view()[0]["rotation"] == 1


def test_a_fan_out_built_as_it_is_polled_is_the_one_an_eager_flush_makes():
    # The flush builds each frame when poll_transmit asks; any other entry point first builds the
    # rest, so a socket closed halfway still gets its frame first and the log keeps its order.
    def run(close_halfway: bool) -> tuple[list, list]:
        portal = make_portal(debounce=1.0)
        relay = join_relay(portal, "r1", "s1", 0.0)
        join_relay(portal, "r2", "s2", 0.0)
        clients = [join_client(portal, f"c{i}", 0.0) for i in range(4)]
        portal.handle_timeout(1.0)
        outputs(portal)
        portal.closed(relay, 2.0)
        portal.handle_timeout(3.0)
        got = [portal.poll_transmit()]
        if close_halfway:
            portal.closed(clients[3], 3.5)
        got += outputs(portal)
        if not close_halfway:
            portal.closed(clients[3], 3.5)
        return got, [{k: v for k, v in e.items() if k != "seq"} for e in portal.events.since(0)]

    lazy, eager = run(True), run(False)
    assert [o.sid for o in lazy[0]] == [3, 4, 5, 6]
    assert lazy == eager


def test_the_event_log_keeps_a_fan_out_as_differences_and_reads_back_what_was_sent():
    # A fan-out's relays_presence frames differ in a few strings (each peer's credentials): the log
    # keeps each as a difference from one base text (fake_portal.eventlog), a fraction of the
    # ~360-character text, and reads back the summary of the very text sent.
    portal = make_portal(debounce=1.0)
    relay = join_relay(portal, "r1", "s1", 0.0)
    join_relay(portal, "r2", "s2", 0.0)
    for i in range(300):
        join_client(portal, f"c{i}", 0.0)
    portal.handle_timeout(1.0)
    outputs(portal)
    portal.closed(relay, 2.0)
    seq = portal.events.last_seq
    gc.collect()
    texts: list[bytes] = [b""] * 300  # copies: the log may hold the very text objects sent
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        portal.handle_timeout(3.0)
        sent = 0
        while (item := portal.poll_transmit()) is not None:
            texts[sent] = item.text.encode()  # type: ignore[union-attr]
            sent += 1
        gc.collect()  # what the fan-out left to the collector is not kept
        kept = tracemalloc.get_traced_memory()[0] - start - sum(sys.getsizeof(t) for t in texts)
    finally:
        tracemalloc.stop()
    assert sent == 300
    # Per frame, the log kept ~0.87 KB before (the whole text, its own seq, kind string and
    # timestamp) and ~0.52 KB since (the entry's tuple, the difference; the rest is the peer's
    # presence state): the bound sits between the two.
    assert kept / sent < 690, f"{kept / sent:.0f} bytes kept per frame sent"
    entries = [e for e in portal.events.since(seq) if e["kind"] == "frame"]
    assert [e["payload"] for e in entries] == [summarize(json.loads(t)["payload"]) for t in texts]
    assert all(e["payload"]["connected"][0]["password"].startswith("redacted:") for e in entries)
