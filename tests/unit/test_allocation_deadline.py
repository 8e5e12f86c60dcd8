"""``Allocation.poll_timeout`` keeps its control deadline between control inputs (a speed-up for the
data path): whatever happens, it answers what a fresh computation answers.

Two allocations on the simulated relay bind channels to each other and exchange data with loss,
refreshes, retransmits, expiries and a reboot of the relay; every poll compares the kept answer
with one computed from scratch. A method that changes a deadline without dropping the kept one
fails here.
"""

from __future__ import annotations

import random

from connlib.core.allocation import Allocation, ChannelTimes
from connlib.core.credentials import REALM

from .turn_sim import Net, TurnSim

RELAY4 = ("192.0.2.1", 3478)
CLIENTS = (("10.0.0.2", 40000), ("10.0.0.3", 40000))


class Checked(Allocation):
    polls = 0

    def poll_timeout(self) -> float | None:
        kept = super().poll_timeout()
        self._deadline = None  # what poll_timeout answered before it kept anything
        fresh = super().poll_timeout()
        assert kept == fresh, f"kept deadline {kept} but the state says {fresh}"
        Checked.polls += 1
        return fresh


def test_the_kept_deadline_is_always_the_fresh_one():
    rng = random.Random(7)
    sim = TurnSim(RELAY4, None)
    # Binary fractions only: with times like 51.6 + 20 the refresh deadline and its due check
    # round differently and the fake clock never moves past it (a busy loop the real clock hides).
    sim.latency = 0.0625
    net = Net(sim)
    times = ChannelTimes(lifetime=40.0)  # channels refreshed and lapsing within the run
    allocations = []
    for i, client in enumerate(CLIENTS):
        allocation = Checked(sim.socket, *sim.credentials(salt=f"c{i}"), REALM, 0.0, relay_id="r1", channel_times=times)
        allocations.append(net.attach(allocation, client))
    net.run(5.0)
    assert all(a.has_allocation() for a in allocations)
    net.drop = lambda src, dst, payload: rng.random() < 0.1
    for step in range(400):
        net.run(net.now + rng.choice((0.0625, 0.5, 3.0)))
        a, b = rng.sample(allocations, 2)
        peer = b.relay_candidates()[0].addr if b.has_allocation() else ("203.0.113.9", 7000)
        if rng.random() < 0.7:  # data one way (binds the channel when there is none)
            if (transmit := a.encapsulate(peer, b"data %d" % step, net.now)) is not None:
                net.transmit(a, transmit)
        if rng.random() < 0.02:
            a.refresh(net.now)
        if step == 200:
            sim.reboot()  # the allocations are lost: 437s, a new ALLOCATE each
    assert Checked.polls > 1000
