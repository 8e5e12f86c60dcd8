"""Issue 11, sans-IO: Phoenix-like liveness and channel errors, strict edge validation, bounded state.

Every test drives :class:`fake_portal.core.Portal` with a fake clock. "Changes no state" is checked on
the views the admin API serves.
"""

from __future__ import annotations

import json
import math

import pytest

from connlib.core.messages import MAX_JSON_DEPTH, Frame, MessageError, encode_frame, loads_strict
from fake_portal.config import PortalConfig
from fake_portal.core import Close, CloseCode, Portal, Send
from fake_portal.eventlog import EventKind, EventLog
from fake_portal.identity import EndpointError, parse_endpoint
from tests.unit.test_fake_portal_core import join_client, join_relay, make_portal, outputs, peer_endpoint


def frames_to(out: list, sid: int) -> list[dict]:
    return [json.loads(o.text) for o in out if isinstance(o, Send) and o.sid == sid]


def closes(out: list, sid: int) -> list[Close]:
    return [o for o in out if isinstance(o, Close) and o.sid == sid]


def state(portal: Portal) -> tuple:
    return (
        portal.relays_view(),
        portal.peers_view("client", 0.0),  # type: ignore[arg-type]
        portal.connections_view(),
        portal.streams_view(0.0),
    )


# -- liveness ----------------------------------------------------------------------------------


def test_the_default_silence_timeout_is_phoenix_s_60_seconds():
    assert PortalConfig(token="t").heartbeat_timeout == 60.0


def test_any_frame_is_a_sign_of_life_not_only_a_heartbeat():
    portal = make_portal(heartbeat_timeout=10.0)
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    # A Phoenix client that joins and then only talks on its channel (no heartbeat yet).
    for t in (8.0, 16.0, 24.0):
        portal.handle_input(sid, encode_frame(Frame("client", "no_relays", {}, int(t))), t)
        portal.handle_timeout(t)
    portal.handle_timeout(33.9)
    assert closes(outputs(portal), sid) == []
    portal.handle_timeout(34.0)
    (close,) = closes(outputs(portal), sid)
    assert close.code == CloseCode.HEARTBEAT_TIMEOUT


def test_a_malformed_frame_is_a_sign_of_life_too_but_still_closes():
    portal = make_portal(heartbeat_timeout=10.0)
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    portal.handle_input(sid, '{"topic":"client","event":"no_relays","payload":7,"ref":1}', 9.0)
    portal.handle_timeout(10.0)
    assert closes(outputs(portal), sid) == []


def test_heartbeat_deadlines_do_not_pile_up_per_frame():
    portal = make_portal(heartbeat_timeout=10.0)
    sid = join_client(portal, "c1", 0.0)
    for i in range(1000):
        portal.handle_input(sid, encode_frame(Frame("phoenix", "heartbeat", {}, i)), i / 100)
    assert len(portal._heartbeat_deadlines) <= 2


# -- channel errors, not socket closes -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"topic":"client","event":"no_relays","payload":7,"ref":5}',
        '{"topic":"client","event":"no_relays","payload":"x","ref":5}',
        '{"topic":"client","event":"no_relays","payload":[1,2],"ref":5}',
        '{"topic":"client","event":"no_relays","payload":{},"ref":5,"join_ref":1.5}',
    ],
)
def test_a_well_formed_frame_with_unexpected_content_errors_the_channel_and_the_socket_lives(text):
    portal = make_portal()
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    before = state(portal)
    portal.handle_input(sid, text, 1.0)
    out = outputs(portal)
    assert closes(out, sid) == []
    (reply,) = frames_to(out, sid)
    assert reply["event"] == "phx_reply" and reply["ref"] == 5 and reply["topic"] == "client"
    reason = reply["payload"]["response"]["reason"]
    assert reply["payload"]["status"] == "error" and ("payload" in reason or "join_ref" in reason)
    assert state(portal) == before
    portal.handle_input(sid, encode_frame(Frame("phoenix", "heartbeat", {}, 6)), 2.0)
    assert frames_to(outputs(portal), sid)[0]["payload"]["status"] == "ok"


def test_v2_array_with_a_non_object_payload_gets_an_error_reply_too():
    portal = make_portal()
    endpoint = peer_endpoint("c2")
    from dataclasses import replace

    from connlib.core.messages import Vsn

    sid = portal.open(replace(endpoint, vsn=Vsn.V2), 0.0)
    portal.handle_input(sid, '["1","1","client","phx_join",{}]', 0.0)
    outputs(portal)
    portal.handle_input(sid, '["1","2","client","no_relays",7]', 1.0)
    out = outputs(portal)
    assert closes(out, sid) == []
    (reply,) = [json.loads(o.text) for o in out if isinstance(o, Send)]
    assert reply[:4] == ["1", "2", "client", "phx_reply"] and reply[4]["status"] == "error"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("this is not json", "not JSON"),
        ("7", "Phoenix frame"),
        ('{"topic":"client"}', "lacks"),
        ('{"topic":"client","event":"x","payload":{"n":NaN}}', "NaN"),
        ('{"topic":"client","event":"x","payload":{"n":Infinity}}', "Infinity"),
        ('{"topic":"client","event":"x","payload":{"n":1e999}}', "finite"),
        ('{"topic":"client","event":"x","payload":{"n":' + "9" * 400 + "}}", "integer"),
        ('{"topic":"client","event":"x","payload":{"pwd":"\\ud800"}}', "surrogate"),
        ('{"topic":"client","event":"x","payload":{"\\udfff":1}}', "surrogate"),
        ('{"topic":"client","event":"x","payload":' + "[" * 977 + "]" * 977 + "}", "deep"),
    ],
)
def test_undecodable_frames_close_cleanly_with_a_clear_reason_and_change_nothing(text, why):
    portal = make_portal()
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    before = state(portal)
    portal.handle_input(sid, text, 1.0)
    (close,) = closes(outputs(portal), sid)
    assert close.code == CloseCode.MALFORMED and why in close.reason and len(close.reason.encode()) <= 123
    after = state(portal)
    assert (after[0], after[2], after[3]) == (before[0], before[2], before[3])
    assert [p["id"] for p in after[1]] == ["c1"]


@pytest.mark.parametrize(
    "payload",
    [
        {"stamp_secret": "\ud800"},
        {"stamp_secret": "x" * 300},
    ],
)
def test_a_relay_join_with_a_bad_secret_is_refused_before_it_is_stored(payload):
    portal = make_portal()
    sid = portal.open(
        __import__("tests.unit.test_fake_portal_core", fromlist=["relay_endpoint"]).relay_endpoint("r1"), 0.0
    )
    text = json.dumps({"topic": "relay", "event": "phx_join", "payload": payload, "ref": 1})
    portal.handle_input(sid, text, 0.0)
    assert portal.relays_view() == []
    assert not any(isinstance(o, Close) and o.code != CloseCode.MALFORMED for o in outputs(portal))


def test_a_400_digit_counter_in_stream_stats_is_refused_without_a_traceback():
    portal = make_portal()
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    big = "9" * 400
    text = (
        '{"topic":"client","event":"stream_stats","ref":3,"payload":{"sent":' + big + ',"delivered":1,"lost":0,'
        '"in_flight":0,"gaps":0,"connected":false}}'
    )
    portal.handle_input(sid, text, 1.0)  # must not raise
    assert portal.streams_view(1.0) == []


def test_stream_stats_counters_above_2_to_the_63_get_an_error_reply():
    portal = make_portal()
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    payload = {"sent": 2**64, "delivered": 1, "lost": 0, "in_flight": 0, "gaps": 0, "connected": False}
    portal.handle_input(sid, encode_frame(Frame("client", "stream_stats", payload, 3)), 1.0)
    out = outputs(portal)
    assert closes(out, sid) == [] or closes(out, sid)[0].code == CloseCode.MALFORMED
    assert portal.streams_view(1.0) == []


# -- the strict parser itself ----------------------------------------------------------------------


def test_loads_strict_accepts_ordinary_json_and_bounds_the_rest():
    assert loads_strict('{"a":[1,2.5,"x",null,true]}') == {"a": [1, 2.5, "x", None, True]}
    assert loads_strict(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}  # a proper pair is fine
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_strict(ok) is not None
    for bad in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "NaN", "-Infinity", "1e400", "9" * 20):
        with pytest.raises(MessageError):
            loads_strict(bad)
    with pytest.raises(MessageError):
        loads_strict(b"\xff\xfe")
    assert loads_strict(str(2**63 - 1)) == 2**63 - 1 and loads_strict(str(-(2**63))) == -(2**63)
    assert math.isfinite(loads_strict("1e15"))
    with pytest.raises(MessageError):
        loads_strict("1e300")


# -- ids at the edge -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "external_id=a%0Alevel%3DERROR+forged%3Dyes",
        "external_id=a%0D",
        "external_id=" + "a" * 200,
        "external_id=%F0%9F%98%80",
        "name=x%0Ay",
        "public_key=a%00b",
    ],
)
def test_peer_ids_and_names_with_unsafe_characters_are_refused_at_the_upgrade(query):
    with pytest.raises(EndpointError) as info:
        parse_endpoint(f"/client/websocket?{query}", {}, relay_id_from="name")
    assert info.value.status == 400


def test_a_relay_name_with_a_newline_is_refused():
    with pytest.raises(EndpointError):
        parse_endpoint("/relay/websocket?ipv4=127.0.0.1&name=r%0Ax", {}, relay_id_from="name")


def test_ordinary_ids_still_pass():
    for q in ("external_id=client-1&public_key=pk-client-1", "external_id=c.1_a:b@x&public_key=ab%2Bcd%2F%3D"):
        assert parse_endpoint(f"/client/websocket?{q}", {}, relay_id_from="name").peer_id
    assert parse_endpoint("/relay/websocket?ipv6=::1&port=3478", {}, relay_id_from="name").name == "[::1]:3478"


def test_signalling_peer_ids_with_control_characters_get_an_error_reply():
    portal = make_portal()
    sid = join_client(portal, "c1", 0.0)
    outputs(portal)
    payload = {"peer_id": "g\nlevel=ERROR", "ufrag": "u", "pwd": "p"}
    portal.handle_input(sid, encode_frame(Frame("client", "request_connection", payload, 4)), 1.0)
    (reply,) = frames_to(outputs(portal), sid)
    assert reply["payload"]["status"] == "error" and "peer_id" in reply["payload"]["response"]["reason"]


# -- bounded memory --------------------------------------------------------------------------------


def test_the_event_log_keeps_a_bounded_summary_not_the_payload():
    portal = make_portal()
    sid = join_client(portal, "c1", 0.0)
    big = {f"k{i}": "x" * 1000 for i in range(60)}
    portal.handle_input(sid, encode_frame(Frame("client", "no_such_event", big, 9)), 1.0)
    (entry,) = [e for e in portal.events.since(0) if e.get("event") == "no_such_event"]
    assert len(json.dumps(entry)) < 2048
    assert entry["payload_bytes"] > 60_000


def test_event_kinds_are_a_schema_and_every_recorded_kind_is_in_it():
    portal = make_portal()
    join_relay(portal, "r1", "s1", 0.0)
    sid = join_client(portal, "c1", 0.0)
    portal.handle_input(sid, "garbage", 1.0)
    portal.partition("c1", 5.0, 2.0)
    portal.heal(None, 3.0)
    portal.handle_timeout(100.0)
    kinds = {e["kind"] for e in portal.events.since(0)}
    assert kinds <= set(EventKind)
    assert {"relay_online", "connect", "frame", "partition", "heal", "disconnect"} <= kinds
    with pytest.raises(ValueError):
        EventLog(10).record(0.0, "not_a_kind")


def test_peers_that_are_gone_are_forgotten_beyond_a_bound():
    portal = make_portal(max_offline_peers=50)
    for i in range(500):
        sid = join_client(portal, f"c{i}", float(i))
        portal.closed(sid, float(i) + 0.5)
    outputs(portal)
    assert len(portal.peers_view("client", 600.0)) <= 50  # type: ignore[arg-type]
    assert "c499" in {p["id"] for p in portal.peers_view("client", 600.0)}  # type: ignore[arg-type]  # the newest stay
    online = join_client(portal, "keep", 600.0)
    assert any(p["id"] == "keep" and p["online"] for p in portal.peers_view("client", 600.0))  # type: ignore[arg-type]
    assert online
