"""A gateway ``Tunnel`` with many connections, fake clock.

A datagram or a timer concerns one connection; a gateway with thousands must not ask every other
one about it (a pass per datagram made the gateway's cost grow with the square of its clients:
at 200 virtual clients two thirds of its time went to ``has_output`` and ``poll_timeout`` of
connections the datagram was not for). And the deadline the Tunnel keeps instead of the pass
must always be the pass's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from connlib.core import ice, messages
from connlib.core.addr import Address
from connlib.core.tunnel import Received, Signal, Tunnel

from .turn_sim import Net, TurnSim

GATEWAY = "gw"
CLIENTS = 30
RELAY = ("192.0.2.1", 3478)
ROUTED: dict[str, messages.Event] = {  # what the portal turns each signal into for the other peer
    messages.Event.REQUEST_CONNECTION: messages.Event.CONNECTION_REQUEST,
    messages.Event.CONNECTION_ACCEPTED: messages.Event.CONNECTION_ACCEPTED,
    messages.Event.NEW_ICE_CANDIDATES: messages.Event.NEW_ICE_CANDIDATES,
    messages.Event.INVALIDATE_ICE_CANDIDATES: messages.Event.INVALIDATE_ICE_CANDIDATES,
}


class Portal:
    """Routes the peers' signals to each other, as the portal does; keeps what each peer received."""

    def __init__(self, net: Net, peers: dict[str, Tunnel]) -> None:
        self.net, self.peers = net, peers
        self.received: Counter[tuple[str, str]] = Counter()  # (receiver, sender) -> datagrams

    def run(self, seconds: float, step: float = 0.05) -> Iterator[float]:
        """Advance the clock ``step`` by ``step``, routing signals in between; yields the time."""
        end = self.net.now + seconds
        while self.net.now < end:
            self.net.run(self.net.now + step)
            self.route()
            yield self.net.now

    def route(self) -> None:
        for me, tunnel in self.peers.items():
            while (event := tunnel.poll_event()) is not None:
                match event:
                    case Signal(event=name, payload=payload) if name in ROUTED and payload["peer_id"] in self.peers:
                        other = payload["peer_id"]
                        signal = messages.decode_payload(ROUTED[name], {**payload, "peer_id": me})
                        self.peers[other].handle_signal(ROUTED[name], signal, self.net.now)
                    case Received(peer_id=sender):
                        self.received[(me, sender)] += 1


def client_address(k: int) -> Address:
    return (f"10.0.1.{k}", 40000)


@pytest.fixture
def world() -> tuple[Net, Portal]:
    relay = TurnSim(RELAY)
    net = Net(relay)
    peers = {GATEWAY: net.attach(Tunnel("gateway", 0.0, seed=1), ("10.0.0.2", 40000))}
    for k in range(1, CLIENTS + 1):
        peers[f"c{k}"] = net.attach(Tunnel("client", 0.0, seed=100 + k), client_address(k))
    for tunnel in peers.values():
        tunnel.update_relays([], [relay.config("r1")], 0.0)
    portal = Portal(net, peers)
    for _ in portal.run(1.0):
        pass
    for k in range(1, CLIENTS + 1):
        peers[f"c{k}"].connect(GATEWAY, net.now)
    for _ in portal.run(5.0):
        pass
    assert peers[GATEWAY].connected_peers() == [f"c{k}" for k in range(1, CLIENTS + 1)]
    return net, portal


def soonest(tunnel: Tunnel) -> float | None:
    """What the pass over every connection gives."""
    deadlines = [tunnel.node.poll_timeout(), *(c.poll_timeout() for c in tunnel.connections.values())]
    return min((d for d in deadlines if d is not None), default=None)


def exchange(portal: Portal, seconds: float) -> Iterator[float]:
    """Every client sends its gateway a datagram each step, the gateway answers each one."""
    gateway = portal.peers[GATEWAY]
    for now in portal.run(seconds):
        for peer_id, tunnel in portal.peers.items():
            if peer_id != GATEWAY:
                assert tunnel.send(GATEWAY, b"ping", now)
                assert gateway.send(peer_id, b"pong", now)
        yield now


def test_a_datagram_or_a_timer_asks_only_its_own_connection(world, monkeypatch):
    net, portal = world
    asked: Counter[str] = Counter()
    for name in ("poll_timeout", "handle_timeout", "has_output", "handle_stun", "owns_request"):
        method = getattr(ice.Connection, name)

        def counted(self, *args, _method=method, _name=name):
            asked[_name] += 1
            return _method(self, *args)

        monkeypatch.setattr(ice.Connection, name, counted)
    before = sum(portal.received.values())
    for _ in exchange(portal, 5.0):
        pass
    datagrams = sum(portal.received.values()) - before
    assert datagrams >= 2 * CLIENTS * 90  # both ways, every step after the first
    # Per datagram: its own connection's deadline, its drain, its checks; a keep-alive a second
    # per connection. A pass over the 30 connections per datagram asked ~60 times per datagram.
    per_datagram = {name: round(count / datagrams, 2) for name, count in asked.items()}
    assert sum(per_datagram.values()) < 3, per_datagram


def test_the_kept_deadline_is_the_pass_s_through_traffic_keepalives_and_a_lost_relay(world):
    net, portal = world
    gateway = portal.peers[GATEWAY]
    for _ in exchange(portal, 3.0):
        assert gateway.poll_timeout() == soonest(gateway)
    for k in range(1, 11):  # a third of the clients go quiet: their paths are lost, checks resume
        portal.peers.pop(f"c{k}")
        net.agents.pop(client_address(k))
    for _ in exchange(portal, 12.0):
        assert gateway.poll_timeout() == soonest(gateway)
    assert len(gateway.connected_peers()) == CLIENTS - 10  # the quiet ones failed and were dropped
    assert all(portal.received[(GATEWAY, f"c{k}")] > 0 for k in range(11, CLIENTS + 1))
