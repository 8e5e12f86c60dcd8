"""connlib's Node + asyncio driver against real coturn processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging

import pytest

from connlib.aio.driver import Driver
from connlib.core.allocation import DEFAULT_CHANNEL_TIMES, ChannelTimes, FreeReason
from connlib.core.messages import RelayConfig
from connlib.core.node import CandidateInvalid, CandidateNew, ChannelData, Node, NoRelays, RelayRemoved

pytestmark = pytest.mark.coturn

BACKOFF_BOUND = 10.0 + 1.5  # give-up time plus scheduling slack


def relay_config(coturn, rid: str = "relay-a", salt: str = "client") -> RelayConfig:
    username, password = coturn.credentials(salt=salt)
    return RelayConfig(id=rid, v4=coturn.addr, v6=None, username=username, password=password)


class Peer:
    """One Node driven by the real asyncio driver, with its events recorded."""

    def __init__(self, channel_times: ChannelTimes = DEFAULT_CHANNEL_TIMES) -> None:
        loop = asyncio.get_running_loop()
        self.node = Node(loop.time(), channel_times=channel_times)
        self.events: list = []
        self.driver = Driver(
            self.node, clock=loop.time, bind_v4=("127.0.0.1", 0), bind_v6=None, on_event=self.events.append
        )

    def allocation(self, rid: str = "relay-a"):
        return self.node.allocations.get(rid)

    def allocated(self, rid: str = "relay-a") -> bool:
        allocation = self.allocation(rid)
        return allocation is not None and allocation.has_allocation()

    def removed(self, rid: str = "relay-a") -> list[RelayRemoved]:
        return [e for e in self.events if isinstance(e, RelayRemoved) and e.rid == rid]

    def update(self, disconnected=(), connected=()) -> None:
        self.driver.call(lambda now: self.node.update_relays(list(disconnected), list(connected), now))


@pytest.fixture
async def peer():
    p = Peer()
    async with p.driver:
        yield p


@pytest.fixture
async def peer_b():
    p = Peer()
    async with p.driver:
        yield p


async def test_allocates_and_learns_srflx(coturn, peer):
    peer.update(connected=[relay_config(coturn)])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    allocation = peer.allocation()
    (relayed,) = allocation.relay_candidates()
    assert relayed.addr[0] == "127.0.0.1" and coturn.relay_ports[0] <= relayed.addr[1] <= coturn.relay_ports[1]
    assert allocation.srflx[4].addr == peer.driver.local_addresses()[4]
    assert allocation.lifetime[1] == 600
    assert allocation.srtt is not None and allocation.srtt < 1.0


async def test_refresh_renews_lifetime(coturn, peer):
    peer.update(connected=[relay_config(coturn)])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    first = peer.allocation().lifetime[0]
    peer.driver.call(peer.allocation().refresh)
    assert await peer.driver.wait_until(lambda: peer.allocation().lifetime[0] > first, timeout=2)
    assert peer.allocated() and not peer.removed()


async def test_channel_data_round_trip_between_two_allocations(coturn, peer, peer_b):
    peer.update(connected=[relay_config(coturn, salt="a")])
    peer_b.update(connected=[relay_config(coturn, salt="b")])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    assert await peer_b.driver.wait_until(peer_b.allocated, timeout=5)
    addr_a = peer.allocation().relay_candidates()[0].addr
    addr_b = peer_b.allocation().relay_candidates()[0].addr
    # Each side binds a channel to the other's relayed address; that installs the permission.
    peer.driver.call(lambda now: peer.node.bind_channel("relay-a", addr_b, now))
    peer_b.driver.call(lambda now: peer_b.node.bind_channel("relay-a", addr_a, now))
    assert await peer.driver.wait_until(
        lambda: peer.allocation().has_channel_to(addr_b, asyncio.get_running_loop().time()), 3
    )
    assert await peer_b.driver.wait_until(
        lambda: peer_b.allocation().has_channel_to(addr_a, asyncio.get_running_loop().time()), 3
    )

    received = peer_b.driver.subscribe()
    for i in range(20):
        transmit = peer.driver.call(
            lambda now, i=i: peer.node.encapsulate("relay-a", addr_b, f"ping {i}".encode(), now)
        )
        peer.driver.send_raw(transmit.payload, transmit.dst)
    got: list[ChannelData] = []
    while len(got) < 20:
        event = await asyncio.wait_for(received.get(), 3)
        if isinstance(event, ChannelData):
            got.append(event)
    assert [e.payload for e in got] == [f"ping {i}".encode() for i in range(20)]
    assert {e.peer for e in got} == {addr_a}


async def test_restart_with_same_secret_recovers_through_437(coturn, peer, caplog):
    peer.update(connected=[relay_config(coturn)])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    old = peer.allocation().relay_candidates()[0]
    before = len(peer.events)
    coturn.restart()  # same secret: our credentials still work, the allocation is gone
    peer.driver.call(peer.allocation().refresh)

    def recovered() -> bool:
        # The old relay candidate invalidated, then a relayed one announced: a new allocation. Not
        # "a different address": the restarted coturn may hand out the same relay port (seen in CI).
        events = peer.events[before:]
        invalid = next(
            (i for i, e in enumerate(events) if isinstance(e, CandidateInvalid) and e.candidate == old), None
        )
        return (
            invalid is not None
            and peer.allocated()
            and any(isinstance(e, CandidateNew) and e.candidate.kind == old.kind for e in events[invalid:])
        )

    assert await peer.driver.wait_until(recovered, timeout=3)
    assert not peer.removed()
    assert "Invalidating allocation" in caplog.text


async def test_restart_with_new_secret_frees_with_authentication_error(coturn, peer, caplog):
    peer.update(connected=[relay_config(coturn)])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    coturn.restart(secret="a-new-secret-after-reboot")
    peer.driver.call(peer.allocation().refresh)
    assert await peer.driver.wait_until(lambda: bool(peer.removed()), timeout=3)
    assert peer.removed()[0].reason == str(FreeReason.AUTHENTICATION_ERROR)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "Disconnecting from relay" in r.getMessage()
    ]
    assert len(warnings) == 1 and "rid=relay-a" in warnings[0].getMessage()
    assert "relay-a" not in peer.node.allocations


async def test_stopped_relay_is_freed_by_the_probe_within_a_second(coturn, peer):
    peer.update(connected=[relay_config(coturn)])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    coturn.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    peer.update(connected=[])  # a re-init that no longer names the relay ⇒ probe
    assert await peer.driver.wait_until(lambda: bool(peer.removed()), timeout=3)
    elapsed = loop.time() - started
    assert peer.removed()[0].reason == str(FreeReason.NO_RESPONSE)
    assert 0.9 <= elapsed <= 1.5, f"probe gave up after {elapsed:.2f}s, expected ~1 s"


async def test_stopped_relay_is_freed_by_the_backoff_within_bound(coturn, peer):
    peer.update(connected=[relay_config(coturn)])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    coturn.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    # An ordinary refresh (not the probe) uses the full request backoff.
    peer.driver.call(lambda now: peer.allocation()._send_refresh(now))
    assert await peer.driver.wait_until(lambda: bool(peer.removed()), timeout=BACKOFF_BOUND + 2)
    elapsed = loop.time() - started
    assert peer.removed()[0].reason == str(FreeReason.NO_RESPONSE)
    assert 9.5 <= elapsed <= BACKOFF_BOUND, f"gave up after {elapsed:.2f}s, expected 10 s"


async def test_unreachable_relay_at_start_is_freed_after_backoff(peer):
    from harness.coturn import free_udp_port

    dead = RelayConfig(id="relay-a", v4=("127.0.0.1", free_udp_port()), v6=None, username="1:x", password="p")
    loop = asyncio.get_running_loop()
    started = loop.time()
    peer.update(connected=[dead])
    assert await peer.driver.wait_until(lambda: bool(peer.removed()), timeout=BACKOFF_BOUND + 2)
    assert peer.removed()[0].reason == str(FreeReason.NO_RESPONSE)
    assert 9.5 <= loop.time() - started <= BACKOFF_BOUND


# --------------------------------------------------------------------------- issue 9
NO_ZOMBIE_BOUND = 15.0


def invalidations(caplog, rid: str = "relay-a") -> int:
    return sum(
        1 for r in caplog.records if r.getMessage().startswith("Invalidating allocation") and rid in r.getMessage()
    )


async def test_item7_relay_restarted_with_the_same_secret_is_reallocated_at_the_init(coturn, peer, caplog):
    """The client was cut off from the portal while the relay restarted with the same secret: the
    re-init lists it with identical credentials. The listed relay is probed: 438, 437, ALLOCATE."""
    config = relay_config(coturn)  # once: its username carries an expiry that moves each second
    peer.update(connected=[config])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    coturn.restart()
    loop = asyncio.get_running_loop()
    started = loop.time()
    before = invalidations(caplog)
    peer.update(connected=[config])  # the re-init
    recovered = lambda: invalidations(caplog) > before and peer.allocated()  # noqa: E731
    assert await peer.driver.wait_until(recovered, timeout=3)
    elapsed = loop.time() - started
    assert not peer.removed() and elapsed < 1.0, f"re-allocated {elapsed:.3f}s after the init"
    assert "Skipping known TURN server" in caplog.text  # the probe found it, not the credentials
    print(f"\nitem 7: re-allocated {elapsed * 1000:.0f} ms after the re-init")


@pytest.mark.parametrize("forgotten", [False, True], ids=["replaced", "forgotten-then-handed-back"])
async def test_item4_new_credentials_on_a_running_relay_allocate_at_once(coturn, peer, forgotten):
    """Same coturn, same secret, a new username (the portal rotated the credentials; the relay did
    not reboot). Without deleting the old allocation first: 437, then 441 on the delete: a zombie.
    ``forgotten``: the portal removed the relay first (no delete is sent: coturn keeps our allocation)
    and hands it back under the new username (found by the simulator, seed 30013); before the fix
    437 and 441 until coturn's allocation expired (600 s)."""
    peer.update(connected=[relay_config(coturn, salt="before")])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    if forgotten:
        peer.update(disconnected=["relay-a"])
        assert await peer.driver.wait_until(lambda: peer.allocation() is None, timeout=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    peer.update(connected=[relay_config(coturn, salt="after")])
    fresh = lambda: peer.allocated() and peer.allocation().username.endswith(":after")  # noqa: E731
    assert await peer.driver.wait_until(fresh, timeout=NO_ZOMBIE_BOUND)
    elapsed = loop.time() - started
    # 437, 441 to the delete under the new username, the delete under the old one; then coturn
    # keeps the deleted allocation for a moment (437 again) and the ALLOCATE's retransmit at 1 s
    # (2.5 s on a loaded machine) wins. The bound: usable again within 3 s.
    assert elapsed < 3.0, f"allocated under the new credentials after {elapsed:.2f}s"
    what = "handed back" if forgotten else "the update"
    print(f"\nitem 4: allocated under the new credentials {elapsed * 1000:.0f} ms after {what}")


async def test_item5_quota_exhausted_frees_the_relay_and_asks_for_new_ones(coturn_factory, peer, peer_b):
    """coturn --total-quota 1: the second client's ALLOCATE gets 486. It is retried (1, 2, 4 s),
    then the relay is freed and NoRelays asks the portal for others: no zombie within 15 s."""
    relay = coturn_factory(name="relay-a", extra_args=("--total-quota", "1"))
    peer.update(connected=[relay_config(relay, salt="a")])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    peer_b.update(connected=[relay_config(relay, salt="b")])
    assert await peer_b.driver.wait_until(lambda: bool(peer_b.removed()), timeout=NO_ZOMBIE_BOUND)
    elapsed = loop.time() - started
    assert peer_b.removed()[0].reason == str(FreeReason.REFUSED)
    assert any(isinstance(e, NoRelays) for e in peer_b.events)
    assert 6.5 <= elapsed <= 9.0, f"freed after {elapsed:.2f}s"
    print(f"\nitem 5: refused relay freed {elapsed:.2f}s after the update (NoRelays sent)")


@pytest.fixture
async def short_channels_peer():
    """A peer whose channels last 2 s (``connlib run --channel-lifetime 2``) while coturn's last 600 s."""
    p = Peer(ChannelTimes(2.0))
    async with p.driver:
        yield p


async def test_item3_lapsed_channel_is_rebound_with_the_same_number(coturn, short_channels_peer, peer_b):
    """A send-mostly flow: A sends, never receives, so A's channel is not refreshed and lapses on
    our side while coturn still holds the binding. The re-bind must reuse the number (coturn:
    "400 You cannot use the same peer with different channel number")."""
    peer = short_channels_peer  # ours lapses; coturn's is 600 s
    peer.update(connected=[relay_config(coturn, salt="a")])
    peer_b.update(connected=[relay_config(coturn, salt="b")])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    assert await peer_b.driver.wait_until(peer_b.allocated, timeout=5)
    addr_a = peer.allocation().relay_candidates()[0].addr
    addr_b = peer_b.allocation().relay_candidates()[0].addr
    loop = asyncio.get_running_loop()
    peer_b.driver.call(lambda now: peer_b.node.bind_channel("relay-a", addr_a, now))
    peer.driver.call(lambda now: peer.node.bind_channel("relay-a", addr_b, now))
    assert await peer.driver.wait_until(lambda: peer.allocation().has_channel_to(addr_b, loop.time()), 3)
    assert await peer_b.driver.wait_until(lambda: peer_b.allocation().has_channel_to(addr_a, loop.time()), 3)
    (number,) = peer.allocation().channels
    received = peer_b.driver.subscribe()

    async def send_until_delivered(payload: bytes, timeout: float) -> bool:
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            transmit = peer.driver.call(lambda now: peer.node.encapsulate("relay-a", addr_b, payload, now))
            if transmit is not None:
                peer.driver.send_raw(transmit.payload, transmit.dst)
            try:
                async with asyncio.timeout(0.1):
                    while True:
                        event = await received.get()
                        if isinstance(event, ChannelData) and event.payload == payload:
                            return True
            except TimeoutError:
                pass
        return False

    assert await send_until_delivered(b"before", 2.0)
    # Wait (bounded) until our side considers the channel lapsed.
    assert await peer.driver.wait_until(lambda: not peer.allocation().has_channel_to(addr_b, loop.time()), 4)
    assert await send_until_delivered(b"after", 3.0), "the flow is black-holed after the re-bind"
    assert list(peer.allocation().channels) == [number]


async def test_restart_with_same_secret_and_new_credentials_allocates_at_once(coturn, peer):
    """The relay restarted (same secret) and the portal lists it with fresh credentials: replaced,
    and coturn's unsigned 437 to ALLOCATE (if any) is acted on, not discarded as unsigned."""
    peer.update(connected=[relay_config(coturn, salt="before")])
    assert await peer.driver.wait_until(peer.allocated, timeout=5)
    coturn.restart()
    loop = asyncio.get_running_loop()
    started = loop.time()
    peer.update(connected=[relay_config(coturn, salt="after")])
    fresh = lambda: peer.allocated() and peer.allocation().username.endswith(":after")  # noqa: E731
    assert await peer.driver.wait_until(fresh, timeout=NO_ZOMBIE_BOUND)
    assert loop.time() - started < 2.0
    assert [e.reason for e in peer.removed()] == ["replaced (new credentials or address)"]


async def _allocate_from(port: int, coturn, salt: str) -> Peer:
    """A Peer whose socket is 127.0.0.1:``port``, asked to allocate on ``coturn`` under the
    credentials of ``salt`` (not awaited)."""
    loop = asyncio.get_running_loop()
    p = Peer()
    p.driver = Driver(p.node, clock=loop.time, bind_v4=("127.0.0.1", port), bind_v6=None, on_event=p.events.append)
    await p.driver.start()
    p.update(connected=[relay_config(coturn, salt=salt)])
    return p


async def test_a_released_allocation_frees_the_5_tuple_for_the_next_process(coturn):
    """coturn keeps an allocation nobody deleted for its lifetime: a later process on the same local
    port, under its own credentials, is refused until then (437 to its ALLOCATE; it cannot delete
    what another username holds). An exiting peer's release deletes it: the next one allocates."""
    for release in (False, True):
        first = await _allocate_from(0, coturn, "first")
        port = first.driver.local_addresses()[4][1]
        assert await first.driver.wait_until(first.allocated, timeout=5)
        if release:
            first.driver.call(first.node.release)
            node = first.node
            assert await first.driver.wait_until(lambda: not node.releasing(), timeout=1)  # noqa: B023
        await first.driver.stop()
        second = await _allocate_from(port, coturn, "next")
        try:
            # coturn lingers ~1 s after the delete, and our delete's answer is a 441 we keep in flight
            # for its retransmit (1 s): allocated 1.0 s later idle, past 2 s once under two workers
            allocated = await second.driver.wait_until(second.allocated, timeout=5 if release else 2)
            rejection = second.allocation().rejection
        finally:
            await second.driver.stop()
        if release:
            assert allocated, f"the next process on port {port} was refused: {rejection}"
        else:  # the premise, on real coturn: without the delete the port is taken
            assert not allocated and rejection is not None and rejection.code in (437, 441), rejection
