"""A connection whose relay is lost, fake clock: migrated once it has connected (or on the gateway,
which cannot ask for connections), failed at once on the client before it ever connected (the
``fail-unconnected`` fix: the gateway's end, all of whose pairs ran through that relay, is failing
by ICE timeout meanwhile, and the session asks for a new connection)."""

from __future__ import annotations

from connlib.core import fixes, messages
from connlib.core.ice import Failed
from connlib.core.tunnel import Migrating, Tunnel

from .turn_sim import Net, TurnSim

R1, R2 = ("192.0.2.1", 3478), ("192.0.2.2", 3478)


def _peer(role: str, disabled: frozenset[str] = frozenset()) -> tuple[Tunnel, Net]:
    """A tunnel on two relays with a connection to its peer ("peer"), not connected."""
    relays = [TurnSim(R1), TurnSim(R2)]
    net = Net(*relays)
    tunnel = net.attach(Tunnel(role, 0.0, seed=1, disabled_fixes=disabled), ("10.0.1.1", 40000))
    tunnel.update_relays([], [relays[0].config("r1"), relays[1].config("r2")], 0.0)
    net.run(1.0)
    assert sorted(tunnel.usable_relays()) == ["r1", "r2"]
    if role == "client":
        tunnel.connect("peer", net.now)
    else:
        offer = messages.ConnectionSignal("peer", "ufrag", "password-of-the-client-0123", None)
        tunnel.handle_signal(messages.Event.CONNECTION_REQUEST, offer, net.now)
    assert tunnel.connections["peer"].relay_id is not None
    return tunnel, net


def _lose_its_relay(tunnel: Tunnel, net: Net) -> list[Failed | Migrating]:
    relay = tunnel.connections["peer"].relay_id
    assert relay is not None
    list(iter(tunnel.poll_event, None))
    tunnel.update_relays([relay], [], net.now)
    net.run(net.now + 0.1)
    return [e for e in iter(tunnel.poll_event, None) if isinstance(e, Failed | Migrating)]


def test_a_client_connection_that_never_connected_fails_when_its_relay_goes():
    tunnel, net = _peer("client")
    events = _lose_its_relay(tunnel, net)
    assert events == [Failed("peer", "relay lost before connecting")]
    assert "peer" not in tunnel.connections  # the session's next check asks for a new one


def test_with_the_fix_off_it_migrates():
    tunnel, net = _peer("client", frozenset({fixes.FIX_FAIL_UNCONNECTED}))
    assert [type(e) for e in _lose_its_relay(tunnel, net)] == [Migrating]


def test_the_gateway_migrates_its_connection_that_never_connected():
    """It cannot ask for a connection: the client's end may still be checking, and takes the new
    candidates."""
    tunnel, net = _peer("gateway")
    assert [type(e) for e in _lose_its_relay(tunnel, net)] == [Migrating]


def test_a_client_connection_that_connected_once_migrates():
    tunnel, net = _peer("client")
    tunnel.connections["peer"].ever_connected = True  # what a nomination sets
    assert [type(e) for e in _lose_its_relay(tunnel, net)] == [Migrating]
