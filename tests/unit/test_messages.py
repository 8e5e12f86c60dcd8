"""connlib.core.messages: Phoenix framing, relay objects, merge_relays and payload shapes (spec §3)."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connlib.core.messages import (
    MAX_FRAME_BYTES,
    PAYLOAD_TYPES,
    CandidateSignal,
    ConnectionSignal,
    Disconnect,
    Event,
    Frame,
    Init,
    MessageError,
    PayloadError,
    Relay,
    RelayConfig,
    RelayJoin,
    RelaysPresence,
    Reply,
    ReplyStatus,
    Topic,
    Vsn,
    candidate_type,
    decode_frame,
    decode_payload,
    encode_frame,
    error_reply,
    merge_relays,
    parse_addr,
    reply_frame,
)

RID = "0a133356-7a9e-4b9a-b413-0d95a5720fd8"
SPEC_RELAY = {
    "id": RID,
    "type": "turn",
    "addr": "172.28.0.101:3478",
    "username": "1719367575:ZQHcVGkdnfgGmcP1",
    "password": "ZWYiBeFHOJyYq0mcwAXjRpcuXIJJpzWlOXVdxwttrWg",
    "expires_at": 1719367575,
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


def turn(rid: str, addr: str, user: str = "u", pwd: str = "p") -> Relay:
    return Relay(rid, "turn", addr, user, pwd, 100)


# -- frames ------------------------------------------------------------------------------------


def test_decodes_the_spec_join_frame_with_null_payload():
    frame = decode_frame('{"topic":"client","event":"phx_join","payload":null,"ref":0}')
    assert frame == Frame("client", "phx_join", {}, 0)


def test_v1_encoding_is_the_connlib_object_without_join_ref():
    text = encode_frame(Frame(Topic.CLIENT, Event.NO_RELAYS, {}, 7, join_ref=3))
    assert json.loads(text) == {"topic": "client", "event": "no_relays", "payload": {}, "ref": 7}


def test_v2_frames_are_arrays_with_join_ref_first():
    frame = Frame("room:lobby", "shout", {"a": 1}, "2", "1")
    text = encode_frame(frame, Vsn.V2)
    assert json.loads(text) == ["1", "2", "room:lobby", "shout", {"a": 1}]
    assert decode_frame(text, Vsn.V2) == frame


@pytest.mark.parametrize(
    ("data", "vsn", "reason"),
    [
        ("not json", Vsn.V1, "not JSON"),
        (b"\xff\xfe", Vsn.V1, "not JSON"),
        ("[1,2,3]", Vsn.V1, "JSON object"),
        ('{"event":"x"}', Vsn.V1, "lacks topic"),
        ('{"topic":"client","event":"x","payload":[1]}', Vsn.V1, "payload must be a JSON object"),
        ('{"topic":"client","event":"x","ref":true}', Vsn.V1, "ref must be"),
        ('{"topic":"","event":"x"}', Vsn.V1, "topic must be a non-empty string"),
        ('{"topic":"client","event":5}', Vsn.V1, "event must be a non-empty string"),
        ('{"topic":"client","event":"x"}', Vsn.V2, "v2 frame must be an array"),
        ('[null,null,"client","x"]', Vsn.V2, "v2 frame must be an array"),
        ("[" * 100_000 + "]" * 100_000, Vsn.V1, "exceeds the limit"),
        ("[" * 30_000 + "]" * 30_000, Vsn.V1, "not JSON"),
    ],
)
def test_bad_frames_raise_message_error_with_a_reason(data, vsn, reason):
    with pytest.raises(MessageError, match=reason):
        decode_frame(data, vsn)


@pytest.mark.parametrize(
    ("data", "vsn", "request_ref"),
    [
        ('{"topic":"client","event":"x","payload":7,"ref":3}', Vsn.V1, 3),
        ('{"topic":"client","event":"x","payload":{},"ref":1.5}', Vsn.V1, None),
        ('["j","r","client","x",[1]]', Vsn.V2, "r"),
    ],
)
def test_well_formed_frames_with_unexpected_content_raise_payload_error_with_an_addressable_request(
    data, vsn, request_ref
):
    # The receiver errors the channel (a reply to exc.request) and keeps the socket.
    with pytest.raises(PayloadError) as info:
        decode_frame(data, vsn)
    assert info.value.request.topic == "client" and info.value.request.ref == request_ref


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ('{"topic":"client","event":"x","payload":{"n":NaN}}', "NaN"),
        ('{"topic":"client","event":"x","payload":{"n":' + "1" * 400 + "}}", "digits"),
        ('{"topic":"client","event":"x","payload":{"p":"\\ud800"}}', "surrogate"),
        ('{"topic":"client","event":"x","payload":' + "[" * 40 + "]" * 40 + "}", "too deep"),
    ],
)
def test_strict_decoding_refuses_what_json_loads_would_accept(data, reason):
    json.loads(data)  # the standard library takes all of these
    with pytest.raises(MessageError, match=reason) as info:
        decode_frame(data)
    assert not isinstance(info.value, PayloadError)


def test_ids_are_restricted_to_a_safe_charset():
    for bad in ("g\nlevel=ERROR", "a b", "x" * 129, "\u00e9", ""):
        with pytest.raises(MessageError, match="chars of"):
            ConnectionSignal(peer_id=bad, ufrag="u", pwd="p")
    assert ConnectionSignal(peer_id="gateway-1", ufrag="abc+/", pwd="A1b2+/").peer_id == "gateway-1"


def test_frame_size_limit_is_enforced_on_decode():
    padding = "x" * MAX_FRAME_BYTES
    with pytest.raises(MessageError, match="exceeds"):
        decode_frame(json.dumps({"topic": "client", "event": "x", "payload": {"p": padding}}))


@settings(max_examples=300, derandomize=True)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)), st.sampled_from(Vsn))
def test_decode_frame_raises_only_message_error(data, vsn):
    try:
        frame = decode_frame(data, vsn)
    except MessageError:
        return
    assert isinstance(frame.payload, dict) and frame.topic and frame.event


def test_replies_echo_topic_ref_and_join_ref():
    request = Frame("client", "phx_join", {}, 4, 4)
    ok = reply_frame(request, ReplyStatus.OK)
    assert (ok.topic, ok.event, ok.ref, ok.join_ref, ok.payload) == (
        "client",
        "phx_reply",
        4,
        4,
        {"status": "ok", "response": {}},
    )
    err = Reply.from_json(error_reply(request, "unmatched topic").payload)
    assert err.status is ReplyStatus.ERROR and err.reason == "unmatched topic"


@pytest.mark.parametrize("payload", [None, [], {"status": "maybe"}, {"status": "ok", "response": 3}, {}])
def test_malformed_reply_payloads(payload):
    with pytest.raises(MessageError):
        Reply.from_json(payload)


# -- relays ------------------------------------------------------------------------------------


def test_spec_relay_round_trips():
    relay = Relay.from_json(SPEC_RELAY)
    assert relay.expires_at == 1719367575 and relay.to_json() == SPEC_RELAY


def test_stun_relays_need_no_credentials():
    relay = Relay.from_json({"id": RID, "type": "stun", "addr": "[2001:db8::1]:3478"})
    assert relay.to_json() == {"id": RID, "type": "stun", "addr": "[2001:db8::1]:3478"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "tcp"}, "relay type"),
        ({"addr": "2001:db8::1:3478"}, "not hold an IP|IPv6 addresses must be written"),
        ({"addr": "[172.28.0.1]:3478"}, "IPv6 addresses must be written|not hold"),
        ({"addr": "relay.example.com:3478"}, "does not hold an IP address"),
        ({"addr": "172.28.0.101:70000"}, "port out of range"),
        ({"addr": "172.28.0.101"}, "not ip:port"),
        ({"expires_at": "1719367575"}, "wrong type"),
        ({"expires_at": True}, "wrong type"),
        ({"expires_at": -1}, "non-negative"),
        ({"username": ""}, "non-empty username"),
        ({"id": ""}, "relay id"),
        ({"id": 5}, "relay id"),
    ],
)
def test_invalid_relays_raise_message_error(change, reason):
    with pytest.raises(MessageError, match=reason):
        Relay.from_json({**SPEC_RELAY, **change})


def test_turn_relay_without_password_is_refused():
    raw = dict(SPEC_RELAY)
    del raw["password"]
    with pytest.raises(MessageError, match="password"):
        Relay.from_json(raw)


def test_parse_addr_unbrackets_ipv6():
    assert parse_addr("[2001:db8::1]:3478") == ("2001:db8::1", 3478, 6)
    assert parse_addr("127.0.0.1:1") == ("127.0.0.1", 1, 4)


def test_merge_relays_makes_dual_stack_entries_and_drops_stun():
    relays = [
        turn("b", "10.0.0.2:3478"),
        Relay("s", "stun", "10.0.0.9:3478"),
        turn("a", "[2001:db8::1]:3478"),
        turn("b", "[2001:db8::2]:3479"),
        turn("a", "10.0.0.1:3478"),
    ]
    assert merge_relays(relays) == [
        RelayConfig("a", ("10.0.0.1", 3478), ("2001:db8::1", 3478), "u", "p", "firezone"),
        RelayConfig("b", ("10.0.0.2", 3478), ("2001:db8::2", 3479), "u", "p", "firezone"),
    ]


def test_merge_relays_warns_and_ignores_a_duplicate_family(caplog):
    with caplog.at_level(logging.WARNING, logger="connlib.messages"):
        merged = merge_relays([turn("a", "10.0.0.1:3478"), turn("a", "10.0.0.2:3478")])
    assert merged == [RelayConfig("a", ("10.0.0.1", 3478), None, "u", "p")]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "Duplicate address family" in caplog.records[0].getMessage()


def test_merge_relays_keeps_the_first_credentials_of_an_id(caplog):
    with caplog.at_level(logging.WARNING, logger="connlib.messages"):
        merged = merge_relays([turn("a", "10.0.0.1:3478", pwd="one"), turn("a", "[::1]:3478", pwd="two")])
    assert merged == [RelayConfig("a", ("10.0.0.1", 3478), None, "u", "one")]
    assert "disagree on credentials" in caplog.records[0].getMessage()


# -- payloads ----------------------------------------------------------------------------------


def test_init_defaults_and_round_trip():
    assert Init.from_json({"interface": {}}) == Init()
    init = Init((Relay.from_json(SPEC_RELAY),), {"ipv4": "100.64.0.1"}, ())
    assert Init.from_json(json.loads(json.dumps(init.to_json()))) == init


def test_relays_presence_round_trip_and_spec_shape():
    presence = RelaysPresence.from_json({"disconnected_ids": ["e95f9517", "b0724bd1"], "connected": [SPEC_RELAY]})
    assert presence.disconnected_ids == ("e95f9517", "b0724bd1")
    assert presence.to_json() == {"disconnected_ids": ["e95f9517", "b0724bd1"], "connected": [SPEC_RELAY]}


@pytest.mark.parametrize(
    "payload",
    [
        {"connected": []},
        {"disconnected_ids": "x", "connected": []},
        {"disconnected_ids": [1], "connected": []},
        {"disconnected_ids": [], "connected": [{"id": "x"}]},
    ],
)
def test_malformed_relays_presence(payload):
    with pytest.raises(MessageError):
        RelaysPresence.from_json(payload)


def test_relay_join_and_disconnect_shapes():
    assert RelayJoin.from_json({"stamp_secret": "ab12"}).to_json() == {"stamp_secret": "ab12"}
    assert Disconnect.from_json({"reason": "token_expired"}).reason == "token_expired"
    with pytest.raises(MessageError, match="stamp_secret"):
        RelayJoin.from_json({"stamp_secret": ""})


def test_signalling_shapes_round_trip_through_decode_payload():
    signal = ConnectionSignal("gw-1", "abcd", "p" * 22, relay_id=RID)
    assert decode_payload(Event.REQUEST_CONNECTION, signal.to_json()) == signal
    assert decode_payload(Event.CONNECTION_ACCEPTED, {"peer_id": "c", "ufrag": "u1", "pwd": "x"}).relay_id is None
    lines = (
        "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
        "candidate:2 1 udp 16777215 10.0.0.1 6000 typ relay raddr 0.0.0.0 rport 0",
    )
    candidates = CandidateSignal("c-1", lines)
    assert decode_payload(Event.NEW_ICE_CANDIDATES, candidates.to_json()) == candidates
    assert [candidate_type(c) for c in lines] == ["host", "relay"]


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        (Event.REQUEST_CONNECTION, {"peer_id": "g", "ufrag": "a:b", "pwd": "x"}, "must not contain ':'"),
        (Event.REQUEST_CONNECTION, {"peer_id": "g", "ufrag": "ab"}, "lacks field 'pwd'"),
        (
            Event.NEW_ICE_CANDIDATES,
            {"peer_id": "g", "candidates": ["candidate:1 1 udp 1 1.2.3.4 5 typ bogus"]},
            "lacks 'typ",
        ),
        (Event.NEW_ICE_CANDIDATES, {"peer_id": "g", "candidates": [7]}, "starting with 'candidate:'"),
        (Event.NEW_ICE_CANDIDATES, {"peer_id": "g", "candidates": "candidate:1"}, "wrong type"),
        (Event.INVALIDATE_ICE_CANDIDATES, {"peer_id": "", "candidates": []}, "peer_id"),
        (Event.NO_RELAYS, {}, "has no payload type"),
    ],
)
def test_bad_signalling_payloads(event, payload, reason):
    with pytest.raises(MessageError, match=reason):
        decode_payload(event, payload)


@settings(max_examples=300, derandomize=True)
@given(st.sampled_from([e for e in Event]), json_values)
def test_decode_payload_raises_only_message_error(event, payload):
    try:
        typed = decode_payload(event, payload)
    except MessageError:
        return
    assert isinstance(typed, PAYLOAD_TYPES[event])
