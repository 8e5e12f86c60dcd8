"""``python -m connlib run``: a client or gateway wired to the portal, with a traffic probe.

The glue (portal messages into the ``Tunnel``, its ``Signal`` events back to the portal, the
client's numbered echo stream, the gateway's echo) is the sans-IO
:class:`~connlib.app.session.PeerSession`; this module only drives it with asyncio: the
``Driver`` (UDP), the ``PortalClient`` (websocket) and one loop timer at the session's
``poll_timeout`` (a callback, not a task: a client streaming at 10 datagrams/s wakes 10 times a
second, and with hundreds of virtual clients in one loop a task step, a future and a timeout
context per wake were a tenth of the process). Everything the harness needs is a JSON line on
stdout (schema: :mod:`connlib.app.lines`); human logs go to stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..aio.driver import Driver
from ..aio.portal_client import PortalClient, PortalError, portal_url
from ..core.addr import format_address
from ..core.allocation import CHANNEL_LIFETIME, ChannelTimes
from ..core.logfmt import kv
from ..core.phoenix import ChannelClosed
from ..core.tunnel import POLICY_RELAY_ONLY, Signal, Tunnel
from . import lines
from .session import ANSWER_TIMEOUT, RELAY_WAIT, PeerSession, SessionConfig
from .stream import StreamStats

log = logging.getLogger("connlib.run")

# How long an exiting peer waits for its relays to answer its deletes: a few round trips; a relay
# that does not answer keeps the allocation until its lifetime ends, as without the delete.
RELEASE_TIMEOUT = 1.0

__all__ = ["ANSWER_TIMEOUT", "RELAY_WAIT", "Peer", "PeerConfig"]


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
    channel_lifetime: float = CHANNEL_LIFETIME
    status_file: str | None = None
    """Where the portal channel's state is kept as JSON (a container's healthcheck reads it)."""

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
            config.role,
            self.clock(),
            seed=config.seed,
            policy=config.policy,
            disabled_fixes=config.disabled_fixes,
            channel_times=ChannelTimes(config.channel_lifetime),
        )
        self.session = PeerSession(
            SessionConfig(
                role=config.role,
                peer_id=config.peer_id,
                connect_to=config.connect_to,
                rate=config.rate,
                count=config.count,
                report_interval=config.report_interval,
            ),
            self.tunnel,
            self.clock(),
        )
        self.driver = Driver(
            self.tunnel,
            clock=self.clock,
            bind_v4=(config.bind, 0),
            on_event=self._on_tunnel_event,
            on_flush=self._check_session_wakeup,
        )
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
        self.initialised = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._outbox: asyncio.Queue[Signal] = asyncio.Queue()
        self._loop = loop
        self._session_timer: asyncio.TimerHandle | None = None
        self._session_at: float | None = None  # the deadline the session timer is armed for
        self._session_stopped = False
        self.done = asyncio.Event()

    @property
    def stats(self) -> StreamStats:
        """The client's echo stream (the session's)."""
        return self.session.stats

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.driver.start()
        addresses = self.driver.local_addresses().values()
        self.tunnel.set_host_candidates(addresses)
        self._tasks = [
            asyncio.create_task(self.portal.run(), name="portal"),
            asyncio.create_task(self._forward_signals(), name="signals"),
        ]
        self._arm_session(self.clock())  # the session's first run, as soon as the loop is free
        local = ",".join(format_address(a) for a in addresses)
        log.info("Peer started %s", kv(role=self.config.role, id=self.config.peer_id, local=local))

    async def stop(self) -> None:
        # Delete our allocations first (bounded): a relay keeps an allocation nobody deleted for
        # its lifetime, and refuses a later process that gets the same local port until then.
        self.driver.call(self.tunnel.release)
        released = await self.driver.wait_until(lambda: not self.tunnel.releasing(), RELEASE_TIMEOUT)
        await self.portal.close()
        self._disarm_session()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.driver.stop()
        log.info("Peer stopped %s", kv(role=self.config.role, id=self.config.peer_id, deletes_answered=released))
        if self.config.role == "client":
            self.emit(self.session.final_report())  # the final figures

    async def run_forever(self) -> int:
        await self.start()
        try:
            return await self.wait_finished()
        finally:
            await self.stop()

    def finish(self) -> None:
        """End ``run_forever`` as a finished stream does (SIGTERM, e.g. ``docker stop``): ``stop``
        runs, so the relays get their deletes."""
        self.done.set()

    def go_idle(self) -> None:
        """SIGUSR1: the client stops streaming and drops its connection until :meth:`resume`
        (``PeerSession.go_idle``); a WARN, and nothing else, if its stream is not flowing."""
        if not self.driver.call(self.session.go_idle):
            log.warning("Not going idle %s", kv(id=self.config.peer_id, phase=self.session.phase.value))
        self._drain_session()

    def resume(self) -> None:
        """SIGUSR2: an idle client streams again on a new connection (``PeerSession.resume``)."""
        if not self.driver.call(lambda now: self.session.resume(now, time.time())):
            log.warning("Not resuming %s", kv(id=self.config.peer_id, reason="not idle"))
        self._drain_session()

    async def wait_finished(self) -> int:
        """Wait (after ``start``) until the stream is done or the portal failed; the exit code."""
        portal_task = self._tasks[0]
        done = asyncio.create_task(self.done.wait())
        try:
            finished, _ = await asyncio.wait([portal_task, done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
        if portal_task in finished and (exc := portal_task.exception()) is not None:
            if isinstance(exc, PortalError):
                print(f"error: {exc}", file=sys.stderr)
                return 2
            raise exc
        return 0 if self.stats.lost == 0 else 1

    def emit(self, line: lines.Line) -> None:
        record = {"ts": round(time.time(), 3), "role": self.config.role, "id": self.config.peer_id, **line.to_json()}
        self._emit_line(record)

    # ------------------------------------------------------------------ session plumbing
    def _drain_session(self) -> None:
        while (line := self.session.poll_line()) is not None:
            self.emit(line)
        while (signal := self.session.poll_signal()) is not None:
            self._outbox.put_nowait(signal)
        if self.session.initialised:
            self.initialised.set()
        if self.session.done:
            self.done.set()
        deadline = self.session.poll_timeout()
        if deadline is not None:
            self._arm_session(deadline)

    async def _on_portal_state(self, state: str) -> None:
        self.session.handle_portal_state(state, self.clock())
        self._drain_session()
        if self.config.status_file:
            _write_status(self.config.status_file, {"portal": state, "ts": round(time.time(), 3)})

    def _on_portal_message(self, event: str, payload: dict[str, Any]) -> None:
        self.driver.call(lambda now: self.session.handle_portal_message(event, payload, now))
        self._drain_session()

    def _on_tunnel_event(self, event: object) -> None:
        self.session.handle_tunnel_event(event, self.clock(), time.time())
        self._drain_session()

    async def _forward_signals(self) -> None:
        while True:
            signal = await self._outbox.get()
            try:
                await self.portal.send(signal.event, signal.payload)
            except ChannelClosed:
                pass  # stopping: the portal channel closed

    # ------------------------------------------------------------------ the session's timer
    def _arm_session(self, deadline: float) -> None:
        """Run the session at ``deadline``, unless its timer is armed for earlier already: every echo
        passes here, and moving the timer per echo would cost what it saves (a timer that fires
        early finds nothing due, and is armed again for the session's deadline then)."""
        if self._session_stopped or (self._session_at is not None and self._session_at <= deadline):
            return
        if self._session_timer is not None:
            self._session_timer.cancel()
        self._session_at = deadline
        self._session_timer = self._loop.call_at(deadline, self._session_due)

    def _disarm_session(self) -> None:
        self._session_stopped = True
        if self._session_timer is not None:
            self._session_timer.cancel()
        self._session_timer = self._session_at = None

    def _session_due(self) -> None:
        self._session_timer = self._session_at = None
        self.driver.call(self._session_timeout)
        self._drain_session()  # arms the timer for the session's next deadline
        if self.session.needs_wakeup:  # what it waits for came true meanwhile: again, at once
            self._arm_session(self.clock())

    def _session_timeout(self, now: float) -> None:
        self.session.handle_timeout(now, time.time())

    def _check_session_wakeup(self) -> None:
        """After every flush of the driver: what the session waits for besides time (its
        ``needs_wakeup``: a usable relay, the connection up) may have come true; it runs at once then.
        Not while the session itself runs (no timer armed then): ``_session_due`` looks once it is done."""
        if self._session_timer is not None and self.session.needs_wakeup:
            self._arm_session(self.clock())


def _write_status(path: str, status: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file); a failure is only logged."""
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(status, out)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("Cannot write the status file %s", kv(path=path, error=exc))


def _print_json(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
