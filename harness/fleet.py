"""The one fleet interface both backends satisfy: a portal, relays, a client and a gateway.

A ``Fleet`` starts one stack, injects faults into it and records every fault and every observation
into one :class:`~harness.history.History`:

- faults as two ops, Jepsen style: ``invoke`` when the harness starts it, then ``ok`` or
  ``fail: ...`` when it is done (checks measure from the ``invoke``);
- the peers' JSON lines (``init``, ``relays_presence``, ``relay_removed``, ``gap``, ``stream``, ...);
- the portal's own events from its admin API (``relay_online``, ``relay_offline``,
  ``presence_flush``, ``partition``, ...), as ``kind="portal"`` ops.

Backends: :class:`harness.docker_fleet.DockerFleet` (containers, what CI runs) and
:class:`harness.process_fleet.ProcessFleet` (coturn processes and in-process peers). A fault a
backend cannot model raises :class:`FaultNotSupported`.

Time: every op carries a monotonic time; an observation that carries its own wall-clock time is
placed at that time (``harness.history.EventClock``). The portal's admin API and its event log are
``harness.portal_admin``; bounded waits are ``harness.waiting``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from connlib.app.virtual import virtual_ids

from .history import History, new_history
from .portal_admin import PortalAdmin

log = logging.getLogger("harness.fleet")

CLIENT_ID = "client-1"
GATEWAY_ID = "gateway-1"

PARTITION_WINDOW = 0.6


class FaultNotSupported(NotImplementedError):
    """This backend cannot inject that fault (e.g. packet loss with local processes)."""


@dataclass
class StackOptions:
    relays: int = 2
    rate: float = 50.0
    count: int | None = None  # the client stops streaming after this many datagrams
    debounce: float = 1.0
    client_disabled_fixes: frozenset[str] = frozenset()
    gateway_disabled_fixes: frozenset[str] = frozenset()
    portal: dict[str, Any] = field(default_factory=dict)
    """Other ``PortalConfig`` fields (``relays_per_client``, ``heartbeat_timeout``, ...)."""
    relay_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Extra environment per relay name, e.g. ``{"relay-1": {"TURN_EXTRA": "total-quota=1"}}``
    (coturn options through the relay image; Docker backend)."""
    clients: int = 1
    """Virtual clients (``connlib run --clients N``): ids ``client-1-1`` .. ``client-1-N`` when
    N > 1 (``connlib.app.virtual.virtual_ids``), each with its own Tunnel and stream; the first is
    the fleet's ``client``."""
    peer_args: tuple[str, ...] = ()
    """Extra ``connlib run`` arguments of both peers, e.g. ``("--channel-lifetime", "10")``."""
    relay_heartbeat: float = 10.0
    """Seconds between a relay's Phoenix heartbeats (the portal drops it after ``heartbeat_timeout``)."""

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError("clients must be at least 1")
        self.client_disabled_fixes = frozenset(self.client_disabled_fixes)
        self.gateway_disabled_fixes = frozenset(self.gateway_disabled_fixes)


class Fleet(PortalAdmin, abc.ABC):
    """A running stack. Subclasses provide the lifecycle and the relay faults; every fault goes
    through :meth:`fault`, which records its ``invoke`` and its ``ok``/``fail`` in the history."""

    backend: str = "?"
    portal_down: bool = False
    """Between :meth:`stop_portal` and the start of :meth:`start_portal`: the admin API does not answer."""

    def __init__(self, history: History | None = None, options: StackOptions | None = None) -> None:
        self.history = history or new_history()
        self.options = options or StackOptions()
        self._init_portal_admin()

    # ------------------------------------------------------------------ lifecycle
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Fleet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def client_ids(self) -> list[str]:
        """The ids of the stack's (virtual) clients; the first is the one single-client checks read."""
        return virtual_ids(CLIENT_ID, self.options.clients)

    @property
    @abc.abstractmethod
    def admin_url(self) -> str: ...

    @property
    @abc.abstractmethod
    def relay_names(self) -> list[str]: ...

    def collect_errors(self) -> list[str]:
        """ERROR lines the stack's processes wrote since the last call (already logged at ERROR
        here, so that the test's ERROR rule sees them). In-process peers log directly: nothing."""
        return []

    def container_logs(self) -> dict[str, str]:
        """Each container's whole output, for the results folder of a failed test (none for processes)."""
        return {}

    # ------------------------------------------------------------------ relay faults
    async def restart_relay(self, name: str, new_secret: bool = True) -> None:
        """A reboot: the relay comes back under the same name (id), every allocation lost, with a
        new secret, or (``new_secret=False``) with the same one: credentials that look unchanged."""
        async with self.fault("restart", name, new_secret=new_secret):
            await self._restart_relay(name, new_secret)

    async def stop_relay(self, name: str) -> None:
        async with self.fault("stop", name):
            await self._stop_relay(name)

    async def start_relay(self, name: str) -> None:
        async with self.fault("start", name):
            await self._start_relay(name)

    async def kill_relay(self, name: str) -> None:
        """SIGKILL: no goodbye to the portal from the relay itself."""
        async with self.fault("kill", name):
            await self._kill_relay(name)

    async def pause_relay(self, name: str) -> None:
        """A black hole: the relay stops answering, its portal socket stays open."""
        async with self.fault("pause", name):
            await self._pause_relay(name)

    async def unpause_relay(self, name: str) -> None:
        async with self.fault("unpause", name):
            await self._unpause_relay(name)

    async def pause_peer(self, peer_id: str) -> None:
        """Freeze a peer (SIGSTOP/cgroup freeze): it sends nothing and its timers stand still."""
        async with self.fault("pause", peer_id):
            await self._pause_peer(peer_id)

    async def unpause_peer(self, peer_id: str) -> None:
        async with self.fault("unpause", peer_id):
            await self._unpause_peer(peer_id)

    async def idle_stream(self, peer_id: str) -> None:
        """The client ``peer_id`` has nothing to send until :meth:`resume_stream`: its stream pauses
        and it drops its connection, so its channels lapse (``PeerSession.go_idle``, ``connlib run``'s
        SIGUSR1; the simulator's ``stream_idle``). Done once the peer was told; its ``stream_idle``
        line says it went idle (a WARN instead if its stream was not flowing)."""
        async with self.fault("stream_idle", peer_id):
            await self._idle_stream(peer_id)

    async def resume_stream(self, peer_id: str) -> None:
        """The idle client streams again, on a new connection (SIGUSR2; its ``stream_resumed`` line)."""
        async with self.fault("stream_resume", peer_id):
            await self._resume_stream(peer_id)

    @abc.abstractmethod
    async def _idle_stream(self, peer_id: str) -> None: ...

    @abc.abstractmethod
    async def _resume_stream(self, peer_id: str) -> None: ...

    async def _pause_peer(self, peer_id: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot freeze a peer")

    async def _unpause_peer(self, peer_id: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot freeze a peer")

    async def udp_loss(self, name: str, probability: float) -> None:
        """Drop this share of the UDP datagrams arriving at relay ``name``, until ``clear_udp_loss``;
        for a peer id (Docker backend), of the datagrams arriving at the peer and of those it sends."""
        if not 0.0 < probability <= 1.0:
            raise ValueError("probability must be in (0, 1]")
        async with self.fault("udp_loss", name, probability=probability):
            await self._udp_loss(name, probability)

    async def clear_udp_loss(self, name: str) -> None:
        async with self.fault("clear_udp_loss", name):
            await self._clear_udp_loss(name)

    async def cut(self, target: str, network: str) -> None:
        """Disconnect container ``target`` (a relay name, ``portal``, or a peer id) from ``network``."""
        async with self.fault("cut", target, network=network):
            await self._cut(target, network)

    async def reconnect(self, target: str, network: str) -> None:
        async with self.fault("reconnect", target, network=network):
            await self._reconnect(target, network)

    @abc.abstractmethod
    async def _restart_relay(self, name: str, new_secret: bool) -> None: ...

    @abc.abstractmethod
    async def _stop_relay(self, name: str) -> None: ...

    @abc.abstractmethod
    async def _start_relay(self, name: str) -> None: ...

    @abc.abstractmethod
    async def _kill_relay(self, name: str) -> None: ...

    @abc.abstractmethod
    async def _pause_relay(self, name: str) -> None: ...

    @abc.abstractmethod
    async def _unpause_relay(self, name: str) -> None: ...

    async def _udp_loss(self, name: str, probability: float) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot drop UDP datagrams")

    async def _clear_udp_loss(self, name: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot drop UDP datagrams")

    async def dropped_datagrams(self, name: str) -> int:
        """Datagrams the UDP loss on relay ``name`` dropped so far."""
        raise FaultNotSupported(f"the {self.backend} backend cannot drop UDP datagrams")

    async def stun_requests(self, name: str) -> int:
        """STUN messages (requests, indications) relay ``name`` received since counting began."""
        raise FaultNotSupported(f"the {self.backend} backend cannot count a relay's requests")

    async def _cut(self, target: str, network: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend has no networks to cut")

    async def _reconnect(self, target: str, network: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend has no networks to cut")

    # ------------------------------------------------------------------ restarts, cuts, quotas
    async def move_relay(self, name: str) -> None:
        """Relay ``name`` comes up on a new address with its state lost (its secret kept) and joins the
        portal announcing it (the simulator's ``address_change``). Done once it is online again."""
        async with self.fault("address_change", name):
            await self._move_relay(name)

    async def _move_relay(self, name: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot move a relay")

    async def restart_peer(self, peer_id: str) -> None:
        """The peer's ``connlib run`` restarts: a new process that keeps nothing of the old one (a new
        socket, so a new port; new allocations, connection and portal session). Done once the new
        process runs and its output is followed again (the simulator's ``peer_restart``)."""
        async with self.fault("restart", peer_id):
            await self._restart_peer(peer_id)

    async def stop_portal(self) -> None:
        """The portal goes down, and with it everything it held (presence, sessions, partitions)."""
        async with self.fault("stop", "portal"):
            await self._stop_portal()

    async def start_portal(self) -> None:
        """The portal comes back empty; done once every running relay has joined it again (the
        peers re-join on their own: that is what a ``portal_restart`` tests)."""
        async with self.fault("start", "portal"):
            await self._start_portal()

    async def cut_datagrams(self, target: str, relay: str) -> None:
        """No packet between ``target`` (a peer id or a relay name) and relay ``relay``, either way,
        until :meth:`heal_datagrams`: they vanish on arrival, nobody is told (``peer_relay_cut``,
        ``relay_relay_cut``)."""
        async with self.fault("cut_datagrams", target, relay=relay):
            await self._cut_datagrams(target, relay)

    async def heal_datagrams(self, target: str, relay: str) -> None:
        """Undo :meth:`cut_datagrams`; a ``cut_dropped`` observation says how many packets it dropped."""
        async with self.fault("heal_datagrams", target, relay=relay):
            await self._heal_datagrams(target, relay)

    async def blackhole_portal(self, target: str) -> None:
        """Packets between ``target`` (a peer id or a relay name) and the portal vanish silently until
        :meth:`clear_portal_blackhole`: open sockets hang, dials time out (``portal_blackhole``; the
        admin partition, by contrast, is a refusal)."""
        async with self.fault("portal_blackhole", target):
            await self._blackhole_portal(target)

    async def clear_portal_blackhole(self, target: str) -> None:
        async with self.fault("clear_portal_blackhole", target):
            await self._clear_portal_blackhole(target)

    async def refuse_allocations(self, name: str, code: int) -> None:
        """Relay ``name`` answers new ALLOCATEs with ``code`` while its allocations keep working, until
        :meth:`allow_allocations` (the simulator's ``quota``)."""
        async with self.fault("quota", name, code=code):
            await self._refuse_allocations(name, code)

    async def allow_allocations(self, name: str) -> None:
        async with self.fault("clear_quota", name):
            await self._allow_allocations(name)

    async def _restart_peer(self, peer_id: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot restart a peer")

    async def _stop_portal(self) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot restart the portal")

    async def _start_portal(self) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot restart the portal")

    async def _cut_datagrams(self, target: str, relay: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot drop datagrams")

    async def _heal_datagrams(self, target: str, relay: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot drop datagrams")

    async def _blackhole_portal(self, target: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot black-hole the portal")

    async def _clear_portal_blackhole(self, target: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot black-hole the portal")

    async def _refuse_allocations(self, name: str, code: int) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot change a relay's quota")

    async def _allow_allocations(self, name: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend cannot change a relay's quota")

    # ------------------------------------------------------------------ portal faults
    async def partition(self, peer_id: str, seconds: float | None = None) -> None:
        """Cut a peer (or relay id) off the portal: its socket is closed and refused until healed."""
        body = {"id": peer_id} | ({"seconds": seconds} if seconds else {})
        async with self.fault("partition", peer_id, seconds=seconds):
            await self.admin("POST", "/api/partition", body)

    async def heal(self, peer_id: str | None = None) -> None:
        async with self.fault("heal", peer_id or "*"):
            await self.admin("POST", "/api/heal", {"id": peer_id} if peer_id else {})

    async def rotate_credentials(self, name: str) -> None:
        """New credentials for relay ``name`` without a reboot: the portal hands every peer a new
        username under the same secret (one relays_presence); the relay keeps its allocations."""
        rid = await self.relay_id(name)
        async with self.fault("rotate_credentials", name, relay=rid):
            await self.admin("POST", f"/api/relays/{rid}/rotate-credentials")

    @asynccontextmanager
    async def partitioned(self, peer_id: str, window: float = PARTITION_WINDOW) -> AsyncIterator[None]:
        """Keep ``peer_id`` cut off the portal for the duration of the block, then heal it.

        The partition is a short timed one renewed every ``window / 3`` s: the portal's 503 then
        carries ``Retry-After: 1``, so the peer keeps knocking about once a second, and after the
        heal it is back within a second instead of after an ever longer reconnect backoff.
        """
        body = {"id": peer_id, "seconds": window}
        async with self.fault("partition", peer_id, window=window):
            await self.admin("POST", "/api/partition", body)

        async def renew() -> None:
            while True:
                await asyncio.sleep(window / 3)
                await self.admin("POST", "/api/partition", body)

        renewing = asyncio.create_task(renew(), name=f"partition-{peer_id}")
        try:
            yield
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            await self.heal(peer_id)

    @asynccontextmanager
    async def fault(self, what: str, target: str, **data: Any) -> AsyncIterator[None]:
        started = time.monotonic()
        self.history.fault(what, target, "invoke", **data)
        try:
            yield
        except BaseException as exc:
            self.history.fault(
                what, target, f"fail: {exc!r}"[:300], took_s=round(time.monotonic() - started, 3), **data
            )
            raise
        self.history.fault(what, target, "ok", took_s=round(time.monotonic() - started, 3), **data)
