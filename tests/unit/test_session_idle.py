"""``PeerSession.go_idle`` / ``resume`` (``connlib run``'s SIGUSR1 / SIGUSR2), on the simulator's fake
clock: an idle client sends nothing and holds no connection, so its channels lapse; resumed, it
streams again on a new connection, and the idle time is no gap in its stream."""

from __future__ import annotations

import logging

import pytest

from connlib.app import lines
from connlib.app.session import Phase
from sim.world import GATEWAY_ID, World

LIFETIME = 10.0


@pytest.fixture(autouse=True)
def _quiet_loggers():
    saved = logging.getLogger("connlib").level
    logging.getLogger("connlib").setLevel(logging.WARNING)
    yield
    logging.getLogger("connlib").setLevel(saved)


def streaming_world() -> tuple[World, list[lines.Line]]:
    world = World(3, relays=1, rate=2.0, channel_lifetime=LIFETIME, trace=False)
    seen: list[lines.Line] = []
    world.line_observers.append(lambda peer, line, now: seen.append(line) if peer is world.client else None)
    world.run(30.0)
    assert world.client.session.phase is Phase.STREAMING
    return world, seen


def test_an_idle_client_sends_nothing_and_resumes_on_a_new_connection_with_no_gap_for_the_idle_time():
    world, seen = streaming_world()
    client, session = world.client, world.client.session
    assert session.go_idle(world.now)
    client.flush(world.now)
    assert client.tunnel.connection_state(GATEWAY_ID) is None  # dropped at once
    sent = session.stats.sent
    world.run(world.now + 2.5 * LIFETIME)  # the channels lapse meanwhile
    assert session.stats.sent == sent, "an idle client sent datagrams"
    assert not session.go_idle(world.now), "idle twice"
    assert session.stats.pending == {}  # what was in flight counted as lost, nothing more is owed

    resumed, delivered = world.now, session.stats.delivered
    assert session.resume(world.now, world.unix(world.now))
    client.flush(world.now)
    world.run(world.now + 10.0)
    assert client.tunnel.is_connected(GATEWAY_ID)
    assert session.stats.sent > sent and session.stats.delivered > delivered, "the stream did not come back"
    gaps = [line for line in seen if isinstance(line, lines.Gap) and line.end >= world.unix(resumed)]
    assert all(gap.start >= world.unix(resumed) for gap in gaps), f"the idle time counted as a gap: {gaps}"
    assert [type(line) for line in seen if isinstance(line, lines.StreamIdle | lines.StreamResumed)] == [
        lines.StreamIdle,
        lines.StreamResumed,
    ]
    assert not session.resume(world.now, world.unix(world.now)), "resumed twice"


def test_a_client_not_streaming_yet_does_not_go_idle_and_one_not_idle_does_not_resume():
    world = World(3, relays=1, trace=False)
    session = world.client.session
    assert session.phase is Phase.WAIT_INIT
    assert not session.go_idle(0.0) and not session.idle
    assert not session.resume(0.0, world.unix(0.0))
    assert session.poll_line() is None
