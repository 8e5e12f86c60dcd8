"""``python -m connlib run``: a client or gateway wired to the portal, with a traffic probe.

The portal client feeds ``init`` / ``relays_presence`` / signalling into a ``Tunnel``; the tunnel's
``Signal`` events go back to the portal. The client sends a steady, numbered stream of datagrams
to its gateway, which echoes them. Everything the harness needs is a JSON line on stdout:
``{"event": "stream", "delivered": N, "lost": M, ...}`` periodically, ``{"event": "gap", "start",
"end", "duration_s"}`` for every gap (wall-clock seconds), and one line per relay/connection event.
Human logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import messages
from .driver import Driver
from .ice import Connected, Failed, PathLost
from .logfmt import kv
from .node import NoRelays, Node, RelayAdded, RelayRemoved
from .portal_client import PortalClient, PortalError, portal_url
from .stun import format_address
from .tunnel import POLICY_ALL, POLICY_RELAY_ONLY, Migrating, Received, Signal, Tunnel

log = logging.getLogger("connlib.run")

PROBE_MAGIC = b"PRB1"
PROBE_HEADER = struct.Struct("!4sQd")  # magic, sequence number, send time (monotonic)
ANSWER_TIMEOUT = 5.0  # a connection request the gateway has not answered by then is sent again
LOSS_TIMEOUT = 2.0  # an echo later than this counts as lost
RELAY_WAIT = 5.0  # how long the client waits for a first allocation before connecting anyway


# ---------------------------------------------------------------------------- traffic probe
@dataclass
class StreamStats:
    """The client's view of its echo stream: what was delivered, what was lost, and the gaps."""

    rate: float
    emit: Callable[[dict], None]
    gap_threshold: float = 0.0
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    pending: dict[int, float] = field(default_factory=dict)
    last_delivery: float | None = None  # monotonic
    last_delivery_wall: float | None = None
    gaps: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gap_threshold:
            # A gap is a silence several packet intervals long (and never below 250 ms).
            self.gap_threshold = max(0.25, 5.0 / self.rate)

    def next_packet(self, now: float) -> bytes:
        seq = self.sent
        self.sent += 1
        self.pending[seq] = now
        return PROBE_HEADER.pack(PROBE_MAGIC, seq, now)

    def on_echo(self, payload: bytes, now: float) -> None:
        if len(payload) < PROBE_HEADER.size:
            return
        magic, seq, _ = PROBE_HEADER.unpack_from(payload)
        if magic != PROBE_MAGIC or self.pending.pop(seq, None) is None:
            return  # a duplicate, or an echo already counted as lost
        self.delivered += 1
        wall = time.time()
        if self.last_delivery is not None and now - self.last_delivery > self.gap_threshold:
            gap = {
                "event": "gap",
                "start": round(self.last_delivery_wall, 3),
                "end": round(wall, 3),
                "duration_s": round(now - self.last_delivery, 3),
            }
            self.gaps.append(gap)
            self.emit(gap)
        self.last_delivery, self.last_delivery_wall = now, wall

    def expire(self, now: float) -> None:
        for seq, sent_at in list(self.pending.items()):
            if now - sent_at > LOSS_TIMEOUT:
                del self.pending[seq]
                self.lost += 1

    def report(self) -> dict:
        return {"event": "stream", "sent": self.sent, "delivered": self.delivered, "lost": self.lost,
                "in_flight": len(self.pending), "gaps": len(self.gaps)}  # fmt: skip


# ---------------------------------------------------------------------------- the peer
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
        node = Node(self.clock(), seed=config.seed, disabled_fixes=config.disabled_fixes)
        self.tunnel = Tunnel(config.role, self.clock(), seed=config.seed, policy=config.policy, node=node)
        self.driver = Driver(self.tunnel, clock=self.clock, bind_v4=(config.bind, 0), on_event=self._on_tunnel_event)
        url = portal_url(config.portal, config.role, external_id=config.peer_id,
                         name=config.name or config.peer_id, public_key=config.public_key)  # fmt: skip
        self.portal = PortalClient(url, config.token, config.role, on_message=self._on_portal_message,
                                   heartbeat_interval=config.heartbeat_interval, on_state=self._on_portal_state)  # fmt: skip
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
        log.info("Peer started %s", kv(role=self.config.role, id=self.config.peer_id,
                                       local=",".join(format_address(a) for a in addresses)))  # fmt: skip

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
            if portal_task in finished and portal_task.exception() is not None:
                exc = portal_task.exception()
                if isinstance(exc, PortalError):
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                raise exc
            return 0 if self.stats.lost == 0 else 1
        finally:
            await self.stop()

    def emit(self, line: dict) -> None:
        line = {"ts": round(time.time(), 3), "role": self.config.role, "id": self.config.peer_id, **line}
        self.events.append(line)
        self._emit_line(line)

    # ------------------------------------------------------------------ portal → tunnel
    async def _on_portal_state(self, state: str) -> None:
        self.emit({"event": "portal", "state": state})

    def _on_portal_message(self, event: str, payload: dict[str, Any]) -> None:
        try:
            typed = messages.decode_payload(event, payload)
        except messages.MessageError as exc:
            log.warning("Ignoring malformed portal message %s", kv(event_name=event, error=exc))
            return
        if event == messages.Event.INIT:
            relays = messages.merge_relays(typed.relays)
            self.emit({"event": "init", "relays": [r.id for r in relays]})
            self.driver.call(lambda now: self.tunnel.update_relays([], relays, now))
            if self.initialised.is_set():
                self.driver.call(self.tunnel.portal_reconnected)
            self.initialised.set()
        elif event == messages.Event.RELAYS_PRESENCE:
            relays = messages.merge_relays(typed.connected)
            self.emit({"event": "relays_presence", "disconnected_ids": list(typed.disconnected_ids),
                       "connected": [r.id for r in relays]})  # fmt: skip
            self.driver.call(lambda now: self.tunnel.update_relays(typed.disconnected_ids, relays, now))
        elif event == messages.Event.DISCONNECT:
            log.warning("Portal disconnected us %s", kv(reason=typed.reason))
        else:
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
                    self.emit({"event": "no_relays"})
                self._outbox.put_nowait(event)
            case Received(peer_id=peer, payload=payload):
                if self.config.role == "gateway":
                    self.tunnel.send(peer, payload, self.clock())  # echo
                else:
                    self.stats.on_echo(payload, self.clock())
            case Connected(peer_id=peer, local=local, remote=remote):
                self.emit({"event": "connected", "peer": peer, "relay": local.rid,
                           "local": format_address(local.addr), "remote": format_address(remote)})  # fmt: skip
            case Failed(peer_id=peer, reason=reason):
                self.emit({"event": "connection_failed", "peer": peer, "reason": reason})
            case PathLost(peer_id=peer, rid=rid):
                self.emit({"event": "path_lost", "peer": peer, "relay": rid})
            case Migrating(peer_id=peer, from_relay=old, to_relay=new):
                self.emit({"event": "migrating", "peer": peer, "from": old, "to": new})
            case RelayAdded(rid=rid):
                self.emit({"event": "relay_added", "relay": rid})
            case RelayRemoved(rid=rid, reason=reason):
                self.emit({"event": "relay_removed", "relay": rid, "reason": reason})
            case NoRelays():
                pass  # reported with its no_relays signal

    # ------------------------------------------------------------------ the client's stream
    async def _client_loop(self) -> None:
        await self.initialised.wait()
        gateway = self.config.connect_to
        assert gateway is not None
        # Give the first allocations a moment, so that the connection starts on a relay.
        await self.driver.wait_until(lambda: self.tunnel.node.sample_relay() is not None, RELAY_WAIT)
        # Ask until the connection is up (the gateway may not be online yet). The stream starts
        # then, and every loss after that counts.
        self._ensure_connection(gateway, self.clock())
        while not await self.driver.wait_until(lambda: gateway in self.tunnel.connected_peers(), 1.0):
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
        connection = self.tunnel.connections.get(gateway)
        unanswered = (
            connection is not None
            and connection.remote_ufrag is None
            and self._connect_requested_at is not None
            and now - self._connect_requested_at > ANSWER_TIMEOUT
        )
        if connection is None or unanswered:
            if self._connect_requested_at is not None:
                log.info("Requesting the connection again %s", kv(peer=gateway))
            self._connect_requested_at = now
            self.driver.call(lambda t: self.tunnel.connect(gateway, t))

    async def _report(self) -> None:
        from .phoenix import ChannelClosed

        while True:
            await asyncio.sleep(self.config.report_interval)
            if self.config.role == "client":
                self.stats.expire(self.clock())
                connection = self.tunnel.connections.get(self.config.connect_to or "")
                relay = connection.nominated.local.rid if connection and connection.nominated else None
                report = {**self.stats.report(), "connected": relay is not None, "relay": relay}
                self.emit(report)
                # The portal's dashboard shows it live. Only while joined: reports queued during an
                # outage would be stale on arrival and would fill the channel's buffer (and WARN).
                if not self.portal.joined.is_set():
                    continue
                try:
                    recent = self.stats.gaps[-messages.MAX_STREAM_GAPS :]
                    stats = messages.StreamReport(
                        sent=report["sent"], delivered=report["delivered"], lost=report["lost"],
                        in_flight=report["in_flight"], gaps=report["gaps"], connected=report["connected"],
                        relay=relay, peer_id=self.config.connect_to,
                        recent_gaps=tuple(messages.StreamGap(g["start"], g["end"], g["duration_s"]) for g in recent),
                    )  # fmt: skip
                    await self.portal.send(messages.Event.STREAM_STATS, stats.to_json())
                except messages.MessageError as exc:  # the probe broke its own invariants: a bug
                    log.error("Cannot report the stream to the portal %s", kv(error=exc))
                except ChannelClosed:
                    pass  # stopping: the portal channel closed after the check above
            else:
                self.emit({"event": "status", "connections": self.tunnel.connected_peers(),
                           "relays": self.tunnel.node.usable_relays()})  # fmt: skip


def _print_json(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- CLI
def add_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a client or gateway against the portal")
    run.add_argument("--role", choices=("client", "gateway"), default="client")
    run.add_argument("--portal", required=True, help="portal base URL, e.g. ws://127.0.0.1:8080")
    run.add_argument("--token", required=True, help="portal token for this role")
    run.add_argument("--id", dest="peer_id", default=None, help="external id (default: the role)")
    run.add_argument("--name", default=None)
    run.add_argument("--connect", dest="connect_to", default=None, help="client: gateway id to stream to")
    run.add_argument("--policy", choices=(POLICY_RELAY_ONLY, POLICY_ALL), default=POLICY_RELAY_ONLY)
    run.add_argument("--rate", type=_positive, default=50.0, help="client: datagrams per second (default 50)")
    run.add_argument("--count", type=int, default=None, help="client: stop after this many datagrams")
    run.add_argument("--report-interval", type=_positive, default=1.0, help="seconds between stream lines")
    run.add_argument("--bind", default="0.0.0.0", help="local IPv4 address for the UDP socket")
    run.add_argument("--heartbeat-interval", type=_positive, default=10.0)
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(handler=_run, default_log_level="INFO")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


async def _run(args: argparse.Namespace) -> int:
    from .cli import disabled_fixes_from_env

    config = PeerConfig(
        role=args.role, portal=args.portal, token=args.token, peer_id=args.peer_id or args.role,
        name=args.name, connect_to=args.connect_to, policy=args.policy, rate=args.rate, count=args.count,
        report_interval=args.report_interval, bind=args.bind, seed=args.seed,
        heartbeat_interval=args.heartbeat_interval, disabled_fixes=disabled_fixes_from_env(),
    )  # fmt: skip
    if config.disabled_fixes:
        log.warning("TEST BUILD: #6666 fixes disabled %s", kv(fixes=",".join(sorted(config.disabled_fixes))))
    peer = Peer(config)
    return await peer.run_forever()
