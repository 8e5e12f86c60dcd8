"""connlib.core.phoenix.PhoenixChannel and ReconnectBackoff driven by a fake clock (spec §3.5)."""

from __future__ import annotations

import json
import logging
import random

import pytest

from connlib.core.messages import Vsn
from connlib.core.phoenix import (
    ChannelClosed,
    Connect,
    ForcedLogout,
    GaveUp,
    Hiccup,
    Joined,
    LoginFailed,
    PhoenixChannel,
    Push,
    Reconnect,
    ReconnectBackoff,
    ReplyReceived,
)


def drain_sent(channel: PhoenixChannel) -> list:
    out = []
    while (text := channel.poll_transmit()) is not None:
        out.append(json.loads(text))
    return out


def next_sent(channel: PhoenixChannel) -> object:
    """The next frame ``channel`` sends, decoded; there must be one."""
    text = channel.poll_transmit()
    assert text is not None
    return json.loads(text)


def next_delays(backoff: ReconnectBackoff, n: int) -> list[float]:
    """``n`` delays asked for at t=0 (before any ``max_elapsed``, so none is ``None``)."""
    delays = []
    for _ in range(n):
        delay = backoff.next_delay(0.0)
        assert delay is not None
        delays.append(delay)
    return delays


def drain_events(channel: PhoenixChannel) -> list:
    out = []
    while (event := channel.poll_event()) is not None:
        out.append(event)
    return out


def reply(ref, status="ok", topic="client", **response) -> str:
    return json.dumps(
        {"event": "phx_reply", "ref": ref, "topic": topic, "payload": {"status": status, "response": response}}
    )


def push(event: str, payload: dict, topic: str = "client") -> str:
    return json.dumps({"event": event, "ref": None, "topic": topic, "payload": payload})


def joined_channel(now: float = 0.0, **kwargs) -> PhoenixChannel:
    channel = PhoenixChannel("client", **kwargs)
    channel.connected(now)
    (join,) = drain_sent(channel)
    channel.handle_input(reply(join["ref"]), now)
    assert isinstance(drain_events(channel)[0], Joined)
    return channel


def test_first_frame_is_the_join_with_ref_0():
    channel = PhoenixChannel("relay", {"stamp_secret": "ab"})
    channel.connected(0.0)
    assert drain_sent(channel) == [{"topic": "relay", "event": "phx_join", "payload": {"stamp_secret": "ab"}, "ref": 0}]


def test_messages_wait_for_the_join_reply_then_go_in_order():
    channel = PhoenixChannel("client")
    first = channel.send("no_relays", {})
    channel.connected(0.0)
    second = channel.send("request_connection", {"peer_id": "g"})
    assert [f["event"] for f in drain_sent(channel)] == ["phx_join"]
    channel.handle_input(reply(0, relays=[]), 0.1)
    assert drain_events(channel) == [Joined("client", {"relays": []})]
    sent = drain_sent(channel)
    assert [(f["event"], f["ref"]) for f in sent] == [("no_relays", 1), ("request_connection", 2)]
    channel.handle_input(reply(2, "error", reason="offline"), 0.2)
    (answer,) = drain_events(channel)
    assert isinstance(answer, ReplyReceived) and answer.request_id == second != first
    assert answer.event == "request_connection" and answer.reply.reason == "offline"


def test_an_exact_duplicate_is_not_queued_twice():
    channel = PhoenixChannel("client")
    assert channel.send("no_relays", {}) == channel.send("no_relays", {})
    channel.send("no_relays", {"x": 1})
    channel.connected(0.0)
    channel.handle_input(reply(0), 0.0)
    assert [f["payload"] for f in drain_sent(channel)[1:]] == [{}, {"x": 1}]


def test_at_most_32_messages_are_buffered_and_the_oldest_goes(caplog):
    channel = PhoenixChannel("client")
    with caplog.at_level(logging.WARNING, logger="connlib.phoenix"):
        for i in range(34):
            channel.send("m", {"i": i})
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    channel.connected(0.0)
    channel.handle_input(reply(0), 0.0)
    assert [f["payload"]["i"] for f in drain_sent(channel)[1:]] == list(range(2, 34))


def test_heartbeat_every_interval_on_topic_phoenix():
    channel = joined_channel(0.0)
    assert channel.poll_timeout() == 10.0
    channel.handle_timeout(9.99)
    assert drain_sent(channel) == []
    channel.handle_timeout(10.0)
    assert drain_sent(channel) == [{"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": 1}]
    assert channel.poll_timeout() == 20.0


def test_heartbeat_interval_is_configurable():
    channel = joined_channel(0.0, heartbeat_interval=0.25)
    channel.handle_timeout(0.25)
    assert [f["event"] for f in drain_sent(channel)] == ["heartbeat"]


def test_answered_heartbeats_keep_the_connection():
    channel = joined_channel(0.0)
    for i in range(1, 10):
        channel.handle_timeout(10.0 * i)
        (heartbeat,) = drain_sent(channel)
        channel.handle_input(reply(heartbeat["ref"], topic="phoenix"), 10.0 * i + 0.01)
    assert drain_events(channel) == [] and channel.is_joined


def test_more_than_three_unanswered_heartbeats_ask_for_a_reconnect():
    channel = joined_channel(0.0)
    for i in range(1, 4):
        channel.handle_timeout(10.0 * i)
    assert drain_events(channel) == []  # three unanswered is still fine
    channel.handle_timeout(40.0)
    assert drain_events(channel) == [Reconnect("4 heartbeats unanswered")]


def test_join_timeout_after_5_seconds():
    channel = PhoenixChannel("client")
    channel.connected(100.0)
    assert channel.poll_timeout() == 105.0
    channel.handle_timeout(104.9)
    assert drain_events(channel) == []
    channel.handle_timeout(105.0)
    (event,) = drain_events(channel)
    assert isinstance(event, Reconnect) and "join" in event.reason


def test_an_error_reply_to_the_join_is_fatal():
    channel = PhoenixChannel("client")
    channel.connected(0.0)
    channel.handle_input(reply(0, "error", reason="disabled"), 0.1)
    assert drain_events(channel) == [LoginFailed("disabled")]
    assert channel.is_closed and channel.poll_timeout() is None
    with pytest.raises(ChannelClosed):
        channel.send("no_relays", {})


def test_unmatched_topic_rejoins_and_resends_the_message():
    channel = joined_channel(0.0)
    channel.send("no_relays", {})
    (sent,) = drain_sent(channel)
    channel.handle_input(reply(sent["ref"], "error", reason="unmatched topic"), 1.0)
    assert [(f["event"], f["ref"]) for f in drain_sent(channel)] == [("phx_join", 2)]
    assert drain_events(channel) == []
    channel.handle_input(reply(2), 1.1)
    assert isinstance(drain_events(channel)[0], Joined)
    assert [(f["event"], f["ref"]) for f in drain_sent(channel)] == [("no_relays", 3)]


def test_pushes_become_messages_and_other_topics_are_ignored():
    channel = joined_channel(0.0)
    channel.handle_input(push("init", {"relays": []}), 0.1)
    channel.handle_input(push("init", {"relays": []}, topic="gateway"), 0.1)
    assert drain_events(channel) == [Push("client", "init", {"relays": []})]


def test_phx_close_reconnects_and_disconnect_is_fatal():
    channel = joined_channel(0.0)
    channel.handle_input(push("phx_close", {}), 0.1)
    assert drain_events(channel) == [Reconnect("portal sent phx_close")]
    channel = joined_channel(0.0)
    channel.handle_input(push("disconnect", {"reason": "token_expired"}), 0.1)
    assert drain_events(channel) == [ForcedLogout("token_expired")] and channel.is_closed


def test_phx_error_and_malformed_frames_are_only_logged(caplog):
    channel = joined_channel(0.0)
    with caplog.at_level(logging.DEBUG, logger="connlib.phoenix"):
        channel.handle_input(push("phx_error", {}), 0.1)
        channel.handle_input("{nope", 0.1)
    assert drain_events(channel) == [] and channel.is_joined
    assert max(r.levelno for r in caplog.records) == logging.WARNING


def test_disconnect_schedules_a_connect_after_the_backoff_and_refs_restart():
    channel = joined_channel(0.0, backoff=ReconnectBackoff(jitter=0.0))
    channel.send("no_relays", {})
    drain_sent(channel)
    channel.disconnected(3.0, reason="socket closed (1006)")
    assert drain_events(channel) == [Hiccup(0.5, "socket closed (1006)")]
    assert channel.poll_timeout() == 3.5
    channel.handle_timeout(3.49)
    assert drain_events(channel) == []
    channel.handle_timeout(3.5)
    assert drain_events(channel) == [Connect()]
    channel.connected(3.6)
    assert [(f["event"], f["ref"]) for f in drain_sent(channel)] == [("phx_join", 0)]


def test_retry_after_overrides_the_backoff():
    channel = PhoenixChannel("client")
    channel.disconnected(0.0, reason="HTTP 503", retry_after=7.0)
    assert drain_events(channel) == [Hiccup(7.0, "HTTP 503")]


def test_backoff_resets_only_on_a_successful_join():
    channel = PhoenixChannel("client", backoff=ReconnectBackoff(jitter=0.0))
    delays = []
    for t in range(4):
        channel.disconnected(float(t), reason="refused")
        delays.append(drain_events(channel)[0].delay)
        channel.handle_timeout(t + 0.99)
        drain_events(channel)
        channel.connected(t + 0.99)  # connects but the join is never answered
    assert delays == [0.5, 0.75, 1.125, 1.6875]
    channel.handle_input(reply(0), 10.0)
    channel.disconnected(11.0)
    assert drain_events(channel)[-1].delay == 0.5


def test_v2_join_carries_its_ref_as_join_ref():
    channel = PhoenixChannel("client", vsn=Vsn.V2)
    channel.connected(0.0)
    assert [next_sent(channel)] == [[0, 0, "client", "phx_join", {}]]
    channel.handle_input(json.dumps([0, 0, "client", "phx_reply", {"status": "ok", "response": {}}]), 0.0)
    channel.send("no_relays", {})
    assert next_sent(channel) == [0, 1, "client", "no_relays", {}]


def test_gives_up_after_max_elapsed():
    channel = PhoenixChannel("client", backoff=ReconnectBackoff(max_elapsed=2.0))
    channel.disconnected(0.0)
    deadline = channel.poll_timeout()
    assert deadline is not None
    channel.handle_timeout(deadline)
    drain_events(channel)
    channel.disconnected(2.5)
    assert isinstance(drain_events(channel)[-1], GaveUp) and channel.is_closed


# -- ReconnectBackoff -----------------------------------------------------------------------------------


def test_backoff_sequence_is_exponential_and_capped_without_jitter():
    backoff = ReconnectBackoff(initial=0.5, multiplier=1.5, max_interval=2.0, jitter=0.0)
    assert [backoff.next_delay(0.0) for _ in range(6)] == [0.5, 0.75, 1.125, 1.6875, 2.0, 2.0]


def test_backoff_jitter_stays_within_half_and_is_reproducible_with_a_seed():
    first = ReconnectBackoff(rng=random.Random(7))
    second = ReconnectBackoff(rng=random.Random(7))
    a = next_delays(first, 30)
    assert a == next_delays(second, 30)
    interval = 0.5
    for delay in a:
        assert 0.5 * interval <= delay <= 1.5 * interval
        interval = min(interval * 1.5, 60.0)
    assert len(set(a)) == len(a)  # jitter is actually applied


def test_default_backoff_caps_at_60_seconds():
    backoff = ReconnectBackoff(jitter=0.0)
    delays = next_delays(backoff, 40)
    assert max(delays) == 60.0 and delays[-1] == 60.0
    backoff.reset()
    assert backoff.next_delay(0.0) == 0.5
