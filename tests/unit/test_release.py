"""An exiting peer deletes its allocations (``Allocation.release``, ``Node.release``), fake clock.

Without the delete coturn keeps an allocation for its lifetime (600 s) on the peer's 5-tuple, and a
later process that gets the same local port is refused on it (437 to its ALLOCATE) until then.
"""

from __future__ import annotations

from connlib.core import stun
from connlib.core.node import Node
from connlib.core.stun import Method

from .test_allocation import CLIENT4, PEER, allocated, setup, take
from .turn_sim import Net, TurnSim


def requests_after(sim: TurnSim, before: int) -> list[tuple[Method | int, bool]]:
    """What the relay received after its first ``before`` requests: ``(method, signed)``."""
    return [(method, signed) for _, method, signed in sim.requests[before:]]


def test_release_deletes_the_allocation_and_sends_nothing_after():
    alloc, sim, net = allocated()
    alloc.bind_channel(PEER, net.now)
    net.run(net.now + 1)
    start = len(sim.requests)
    alloc.release(net.now)
    net.run(net.now + 1)
    assert requests_after(sim, start) == [(Method.REFRESH, True)]
    assert CLIENT4 not in sim.allocations  # LIFETIME 0: the relay let it go
    assert not alloc.releasing()
    net.run(net.now + 3600)  # an hour on: no REFRESH, keep-alive, channel bind or new ALLOCATE
    assert requests_after(sim, start) == [(Method.REFRESH, True)]
    assert alloc.poll_timeout() is None and alloc.can_be_freed() is None


def test_release_answers_a_stale_nonce_with_the_new_one():
    alloc, sim, net = allocated()
    sim.expire_nonces()
    start = len(sim.requests)
    alloc.release(net.now)
    assert alloc.releasing()
    net.run(net.now + 1)
    assert requests_after(sim, start) == [(Method.REFRESH, True), (Method.REFRESH, True)]  # 438, then again
    assert CLIENT4 not in sim.allocations and not alloc.releasing()


def test_a_released_allocation_ignores_an_error_to_its_delete():
    alloc, sim, net = allocated()
    sim.inject[Method.REFRESH] = 437  # already gone on the relay
    start = len(sim.requests)
    alloc.release(net.now)
    net.run(net.now + 60)
    assert requests_after(sim, start) == [(Method.REFRESH, True)]  # no re-ALLOCATE after the 437
    assert not alloc.releasing() and not any(m.method == Method.ALLOCATE for _, m in take(alloc))


def test_release_before_the_allocation_sends_nothing():
    alloc, sim, net = setup()
    for transmit in iter(alloc.poll_transmit, None):  # the first ALLOCATE never reaches the relay
        assert stun.decode(transmit.payload).method in (Method.ALLOCATE, Method.BINDING)
    alloc.release(net.now)
    assert alloc.poll_transmit() is None and not alloc.releasing()
    net.run(net.now + 60)
    assert requests_after(sim, 0) == []


def test_a_released_node_deletes_every_allocation_and_ignores_relay_updates():
    a, b = TurnSim(("192.0.2.101", 3478)), TurnSim(("192.0.2.102", 3478))  # TurnSim()'s own run out past 255
    net = Net(a, b)
    node = net.attach(Node(0.0), CLIENT4)
    node.update_relays([], [a.config("a"), b.config("b")], 0.0)
    net.run(2.0)
    assert {rid for rid, al in node.allocations.items() if al.has_allocation()} == {"a", "b"}
    node.release(net.now)
    assert node.releasing()
    net.run(net.now + 1)
    assert not node.releasing()
    assert CLIENT4 not in a.allocations and CLIENT4 not in b.allocations
    c = TurnSim(("192.0.2.103", 3478))
    node.update_relays(["a"], [c.config("c")], net.now)  # a late portal message while exiting
    assert set(node.allocations) == {"a", "b"} and not list(iter(node.poll_transmit, None))
