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

Time: every op carries a monotonic time. An observation that carries its own wall-clock time (a
peer's ``ts``, a portal event's ``ts``) is placed at that time on the monotonic axis
(:class:`EventClock`), so that the latency of the log pipeline does not count as connlib's.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from .history import History

log = logging.getLogger("harness.fleet")

CLIENT_ID = "client-1"
GATEWAY_ID = "gateway-1"

PORTAL_EVENT_POLL_S = 0.2
PARTITION_WINDOW = 0.6
PORTAL_EVENT_KINDS = frozenset(
    {"relay_online", "relay_offline", "presence_flush", "partition", "heal", "connect", "disconnect", "rejected"}
)


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
    relay_heartbeat: float = 10.0
    """Seconds between a relay's Phoenix heartbeats (the portal drops it after ``heartbeat_timeout``)."""

    def __post_init__(self) -> None:
        self.client_disabled_fixes = frozenset(self.client_disabled_fixes)
        self.gateway_disabled_fixes = frozenset(self.gateway_disabled_fixes)


class EventClock:
    """``time.monotonic``, except while an observation that carries its own wall-clock time is
    being recorded: then the history reads that time, mapped onto the monotonic axis.

    Containers share the host's clock, so a peer's ``ts`` (``time.time()`` when it happened) minus
    the offset below is when it happened on this process's monotonic clock.
    """

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()
        self._pinned: float | None = None

    def __call__(self) -> float:
        return self._pinned if self._pinned is not None else time.monotonic()

    def to_monotonic(self, wall: float) -> float:
        return wall - self.offset

    @contextmanager
    def at_wall(self, wall: float | None) -> Iterator[None]:
        self._pinned = None if wall is None else self.to_monotonic(wall)
        try:
            yield
        finally:
            self._pinned = None


def new_history() -> History:
    return History(clock=EventClock())


def observe_at(history: History, line: dict[str, Any]) -> None:
    """Record a peer's JSON line at its own ``ts`` when the history's clock allows it."""
    clock = history.clock
    if isinstance(clock, EventClock) and isinstance(line.get("ts"), (int, float)):
        with clock.at_wall(float(line["ts"])):
            history.observe_line(line)
    else:
        history.observe_line(line)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); returns that value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)
    return value


class Fleet(abc.ABC):
    """A running stack. Subclasses provide the lifecycle and the relay faults."""

    backend: str = "?"

    def __init__(self, history: History | None = None, options: StackOptions | None = None) -> None:
        self.history = history or new_history()
        self.options = options or StackOptions()
        self._events_task: asyncio.Task | None = None
        self._events_seq = 0
        self._events_lock = asyncio.Lock()

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
    @abc.abstractmethod
    def admin_url(self) -> str: ...

    @property
    @abc.abstractmethod
    def relay_names(self) -> list[str]: ...

    def collect_errors(self) -> list[str]:
        """ERROR lines the stack's processes wrote since the last call (already logged at ERROR
        here, so that the test's ERROR rule sees them). In-process peers log directly: nothing."""
        return []

    # ------------------------------------------------------------------ relay faults
    async def restart_relay(self, name: str) -> None:
        """A reboot: the relay comes back under the same name (id) with a new secret."""
        async with self.fault("restart", name):
            await self._restart_relay(name)

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

    async def udp_loss(self, name: str, probability: float) -> None:
        """Drop this share of the UDP datagrams arriving at relay ``name``, until ``clear_udp_loss``."""
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
    async def _restart_relay(self, name: str) -> None: ...

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

    async def _cut(self, target: str, network: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend has no networks to cut")

    async def _reconnect(self, target: str, network: str) -> None:
        raise FaultNotSupported(f"the {self.backend} backend has no networks to cut")

    # ------------------------------------------------------------------ portal faults
    async def partition(self, peer_id: str, seconds: float | None = None) -> None:
        """Cut a peer (or relay id) off the portal: its socket is closed and refused until healed."""
        body = {"id": peer_id} | ({"seconds": seconds} if seconds else {})
        async with self.fault("partition", peer_id, seconds=seconds):
            await self.admin("POST", "/api/partition", body)

    async def heal(self, peer_id: str | None = None) -> None:
        async with self.fault("heal", peer_id or "*"):
            await self.admin("POST", "/api/heal", {"id": peer_id} if peer_id else {})

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

    # ------------------------------------------------------------------ portal admin API
    async def admin(self, method: str, path: str, body: dict | None = None) -> Any:
        # The process backend's portal serves from this event loop: the blocking call goes to a thread.
        return await asyncio.to_thread(self.admin_sync, method, path, body)

    def admin_sync(self, method: str, path: str, body: dict | None = None, timeout: float = 5.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.admin_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    async def portal_relays(self) -> list[dict[str, Any]]:
        """The portal's view of the relays (``GET /api/relays``)."""
        return await self.admin("GET", "/api/relays")

    async def relay_id(self, name: str) -> str:
        """The portal's id for relay ``name``."""
        for relay in await self.portal_relays():
            if relay.get("name") == name:
                return relay["id"]
        raise KeyError(f"portal does not know relay {name!r}")

    async def relay_name(self, rid: str) -> str:
        for relay in await self.portal_relays():
            if relay["id"] == rid:
                return relay["name"]
        raise KeyError(f"portal does not know relay id {rid!r}")

    async def wait_relays_online(
        self, names: list[str], timeout: float, fingerprints: dict[str, str] | None = None
    ) -> None:
        """Until the portal lists every relay in ``names`` online (with a secret other than the one in
        ``fingerprints``, if given: a restarted relay has rejoined)."""

        async def missing() -> list[str]:
            try:
                relays = {r["name"]: r for r in await self.portal_relays()}
            except (OSError, urllib.error.URLError) as exc:
                return [f"(admin API: {exc})"]
            old = fingerprints or {}
            return [
                n
                for n in names
                if not (n in relays and relays[n]["online"] and relays[n]["secret_fingerprint"] != old.get(n))
            ]

        deadline = time.monotonic() + timeout
        while waiting := await missing():
            if time.monotonic() > deadline:
                raise AssertionError(f"relays not online at the portal after {timeout:.0f}s: {waiting}")
            await asyncio.sleep(0.1)

    async def secret_fingerprints(self) -> dict[str, str]:
        return {r["name"]: r["secret_fingerprint"] for r in await self.portal_relays()}

    async def wait_presence_settled(self, timeout: float = 15.0) -> None:
        """Until the portal has no relays_presence push pending (its debounce timer is idle): every
        relay_online/relay_offline it recorded has been followed by a presence_flush."""

        async def pending() -> bool:
            await self._fetch_portal_events()
            changes = self.history.select(("relay_online", "relay_offline"), kind="portal")
            flushes = self.history.select("presence_flush", kind="portal")
            return bool(changes) and (not flushes or flushes[-1].t < changes[-1].t)

        deadline = time.monotonic() + timeout
        while await pending():
            if time.monotonic() > deadline:
                raise AssertionError(f"the portal still has a relays_presence push pending after {timeout:.0f}s")
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ portal events → history
    def start_portal_events(self) -> None:
        self._events_task = asyncio.create_task(self._poll_portal_events(), name="portal-events")

    async def stop_portal_events(self) -> None:
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
            self._events_task = None
            try:
                await self._fetch_portal_events()  # the last ones, up to the stop
            except OSError:
                pass

    async def _poll_portal_events(self) -> None:
        while True:
            try:
                await self._fetch_portal_events()
            except OSError as exc:  # the portal may be restarting or gone at teardown
                log.debug("Portal events not available: %s", exc)
            await asyncio.sleep(PORTAL_EVENT_POLL_S)

    async def _fetch_portal_events(self) -> None:
        async with self._events_lock:  # the poller and wait_presence_settled must not record twice
            answer = await self.admin("GET", f"/api/events?since={self._events_seq}&limit=2000")
            self._record_portal_events(answer["events"])

    def _record_portal_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self._events_seq = max(self._events_seq, event["seq"])
            kind = event.get("kind")
            if kind not in PORTAL_EVENT_KINDS:
                continue
            data = {k: v for k, v in event.items() if k not in ("kind", "seq")}
            target = str(event.get("id") or event.get("ids") or "")
            clock = self.history.clock
            if isinstance(clock, EventClock):
                with clock.at_wall(float(event["ts"])):
                    self.history.record("portal", kind, target, **data)
            else:
                self.history.record("portal", kind, target, **data)
