"""``python -m connlib run``: a client or gateway wired to the portal, with a traffic probe.

The portal client feeds ``init`` / ``relays_presence`` / signalling into a ``Tunnel``; the tunnel's
``Signal`` events go back to the portal. The client sends a steady, numbered stream of datagrams
to its gateway, which echoes them (:mod:`connlib.app.stream`). Everything the harness needs is a
JSON line on stdout (schema: :mod:`connlib.app.lines`); human logs go to stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..aio.driver import Driver
from ..aio.portal_client import PortalClient, PortalError, portal_url
from ..core import messages
from ..core.addr import format_address
from ..core.ice import Connected, Failed, PathLost
from ..core.logfmt import kv
from ..core.node import NoRelays, RelayAdded, RelayRemoved
from ..core.phoenix import ChannelClosed
from ..core.tunnel import POLICY_RELAY_ONLY, Migrating, Received, Signal, Tunnel
from . import lines
from .stream import StreamStats

log = logging.getLogger("connlib.run")

ANSWER_TIMEOUT = 5.0  # a connection request the gateway has not answered by then is sent again
RELAY_WAIT = 5.0  # how long the client waits for a first allocation before connecting anyway


@dataclass
class PeerConfig:
    role: str
    portal: str
    token: str
    peer_id: str
    name: str | None = None
    connect_to: str | None = None
    policy: str = POLICY_RELAY_ONLY
    rate: float = 50.0
    count: int | None = None
    report_interval: float = 1.0
    bind: str = "0.0.0.0"
    seed: int = 0
    heartbeat_interval: float = 10.0
    disabled_fixes: frozenset[str] = frozenset()

    @property
    def public_key(self) -> str:
        # Stable per id: the portal salts relay credentials with it (reproducible across reconnects).
        return hashlib.sha256(f"connlib-{self.role}-{self.peer_id}".encode()).hexdigest()


class Peer:
    """A running client or gateway. Usable in-process (tests) or from the CLI."""

    def __init__(self, config: PeerConfig, emit: Callable[[dict], None] | None = None) -> None:
        self.config = config
        self._emit_line = emit or _print_json
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.tunnel = Tunnel(
            config.role, self.clock(), seed=config.seed, policy=config.policy, disabled_fixes=config.disabled_fixes
        )
        self.driver = Driver(self.tunnel, clock=self.clock, bind_v4=(config.bind, 0), on_event=self._on_tunnel_event)
        url = portal_url(
            config.portal,
            config.role,
            external_id=config.peer_id,
            name=config.name or config.peer_id,
            public_key=config.public_key,
        )
        self.portal = PortalClient(
            url,
            config.token,
            config.role,
            on_message=self._on_portal_message,
            heartbeat_interval=config.heartbeat_interval,
            on_state=self._on_portal_state,
        )
        self.stats = StreamStats(rate=config.rate, emit=self.emit)
        self.events: list[dict] = []
        self.initialised = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._outbox: asyncio.Queue[Signal] = asyncio.Queue()
        self._connect_requested_at: float | None = None
        self.done = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.driver.start()
        addresses = self.driver.local_addresses().values()
        self.tunnel.set_host_candidates(addresses)
        self._tasks = [
            asyncio.create_task(self.portal.run(), name="portal"),
            asyncio.create_task(self._forward_signals(), name="signals"),
            asyncio.create_task(self._report(), name="report"),
        ]
        if self.config.role == "client" and self.config.connect_to:
            self._tasks.append(asyncio.create_task(self._client_loop(), name="client"))
        local = ",".join(format_address(a) for a in addresses)
        log.info("Peer started %s", kv(role=self.config.role, id=self.config.peer_id, local=local))

    async def stop(self) -> None:
        await self.portal.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.driver.stop()
        if self.config.role == "client":
            self.emit(self.stats.report())  # the final figures

    async def run_forever(self) -> int:
        await self.start()
        try:
            portal_task = self._tasks[0]
            waiters = [portal_task, asyncio.create_task(self.done.wait())]
            finished, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if portal_task in finished and (exc := portal_task.exception()) is not None:
                if isinstance(exc, PortalError):
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                raise exc
            return 0 if self.stats.lost == 0 else 1
        finally:
            await self.stop()

    def emit(self, line: lines.Line) -> None:
        record = {"ts": round(time.time(), 3), "role": self.config.role, "id": self.config.peer_id, **line.to_json()}
        self.events.append(record)
        self._emit_line(record)

    # ------------------------------------------------------------------ portal → tunnel
    async def _on_portal_state(self, state: str) -> None:
        self.emit(lines.PortalState(state))

    def _on_portal_message(self, event: str, payload: dict[str, Any]) -> None:
        try:
            typed = messages.decode_payload(event, payload)
        except messages.MessageError as exc:
            log.warning("Ignoring malformed portal message %s", kv(event_name=event, error=exc))
            return
        match typed:
            case messages.Init():
                relays = messages.merge_relays(typed.relays)
                self.emit(lines.Init([r.id for r in relays]))
                self.driver.call(lambda now: self.tunnel.update_relays([], relays, now))
                if self.initialised.is_set():
                    self.driver.call(self.tunnel.portal_reconnected)
                self.initialised.set()
            case messages.RelaysPresence():
                relays = messages.merge_relays(typed.connected)
                self.emit(lines.RelaysPresence(list(typed.disconnected_ids), [r.id for r in relays]))
                self.driver.call(lambda now: self.tunnel.update_relays(typed.disconnected_ids, relays, now))
            case messages.Disconnect():
                log.warning("Portal disconnected us %s", kv(reason=typed.reason))
            case _:
                self.driver.call(lambda now: self.tunnel.handle_signal(event, typed, now))

    async def _forward_signals(self) -> None:
        while True:
            signal = await self._outbox.get()
            await self.portal.send(signal.event, signal.payload)

    # ------------------------------------------------------------------ tunnel → world
    def _on_tunnel_event(self, event: object) -> None:
        match event:
            case Signal():
                if event.event == messages.Event.NO_RELAYS:
                    self.emit(lines.NoRelaysLine())
                self._outbox.put_nowait(event)
            case Received(peer_id=peer, payload=payload):
                if self.config.role == "gateway":
                    self.tunnel.send(peer, payload, self.clock())  # echo
                else:
                    self.stats.on_echo(payload, self.clock(), time.time())
            case Connected(peer_id=peer, local=local, remote=remote):
                self.emit(lines.Connected(peer, local.rid, format_address(local.addr), format_address(remote)))
            case Failed(peer_id=peer, reason=reason):
                self.emit(lines.ConnectionFailed(peer, reason))
            case PathLost(peer_id=peer, rid=rid):
                self.emit(lines.PathLost(peer, rid))
            case Migrating(peer_id=peer, from_relay=old, to_relay=new):
                self.emit(lines.Migrating(peer, old, new))
            case RelayAdded(rid=rid):
                self.emit(lines.RelayAdded(rid))
            case RelayRemoved(rid=rid, reason=reason):
                self.emit(lines.RelayRemoved(rid, reason))
            case NoRelays():
                pass  # reported with its no_relays signal

    # ------------------------------------------------------------------ the client's stream
    async def _client_loop(self) -> None:
        await self.initialised.wait()
        gateway = self.config.connect_to
        assert gateway is not None
        # Give the first allocations a moment, so that the connection starts on a relay.
        await self.driver.wait_until(lambda: self.tunnel.has_usable_relay(), RELAY_WAIT)
        # Ask until the connection is up (the gateway may not be online yet). The stream starts
        # then, and every loss after that counts.
        self._ensure_connection(gateway, self.clock())
        while not await self.driver.wait_until(lambda: self.tunnel.is_connected(gateway), 1.0):
            self._ensure_connection(gateway, self.clock())
        interval = 1.0 / self.config.rate
        next_send = self.clock()
        while True:
            now = self.clock()
            self._ensure_connection(gateway, now)
            if self.config.count is None or self.stats.sent < self.config.count:
                packet = self.stats.next_packet(now)
                self.driver.call(lambda t, p=packet: self.tunnel.send(gateway, p, t))
            elif not self.stats.pending:
                self.done.set()
                return
            self.stats.expire(now)
            next_send += interval
            await asyncio.sleep(max(0.0, next_send - self.clock()))

    def _ensure_connection(self, gateway: str, now: float) -> None:
        """Request the connection if there is none (never asked, or it failed), or if the gateway
        did not answer in time (it was offline, or the request was lost in a partition)."""
        state = self.tunnel.connection_state(gateway)
        unanswered = (
            state is not None
            and not state.answered
            and self._connect_requested_at is not None
            and now - self._connect_requested_at > ANSWER_TIMEOUT
        )
        if state is None or unanswered:
            if self._connect_requested_at is not None:
                log.info("Requesting the connection again %s", kv(peer=gateway))
            self._connect_requested_at = now
            self.driver.call(lambda t: self.tunnel.connect(gateway, t))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.config.report_interval)
            if self.config.role == "client":
                await self._report_stream()
            else:
                self.emit(lines.Status(self.tunnel.connected_peers(), self.tunnel.usable_relays()))

    async def _report_stream(self) -> None:
        self.stats.expire(self.clock())
        state = self.tunnel.connection_state(self.config.connect_to or "")
        relay = state.carrying_relay if state is not None else None
        report = self.stats.report(connected=relay is not None, relay=relay)
        self.emit(report)
        # The portal's dashboard shows it live. Only while joined: reports queued during an
        # outage would be stale on arrival and would fill the channel's buffer (and WARN).
        if not self.portal.joined.is_set():
            return
        try:
            recent = self.stats.gaps[-messages.MAX_STREAM_GAPS :]
            stats = messages.StreamReport(
                sent=report.sent,
                delivered=report.delivered,
                lost=report.lost,
                in_flight=report.in_flight,
                gaps=report.gaps,
                connected=relay is not None,
                relay=relay,
                peer_id=self.config.connect_to,
                recent_gaps=tuple(messages.StreamGap(g.start, g.end, g.duration_s) for g in recent),
            )
            await self.portal.send(messages.Event.STREAM_STATS, stats.to_json())
        except messages.MessageError as exc:  # the probe broke its own invariants: a bug
            log.error("Cannot report the stream to the portal %s", kv(error=exc))
        except ChannelClosed:
            pass  # stopping: the portal channel closed after the check above


def _print_json(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
