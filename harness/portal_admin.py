"""The harness's side of the portal's admin API: requests, the portal's view of the relays, and its
event log copied into the history.

:class:`PortalAdmin` is a mixin of :class:`harness.fleet.Fleet`: it needs the fleet's ``admin_url``
and ``history``. Every wait here is bounded (``harness.waiting.wait_for``). The portal's events
(``relay_online``, ``relay_offline``, ``presence_flush``, ``partition``, ...) become ``kind="portal"``
ops at the portal's own timestamps; one poller copies them every ``PORTAL_EVENT_POLL_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from fake_portal.eventlog import EventKind

from .history import History, at_own_time
from .waiting import NotYet, wait_for

log = logging.getLogger("harness.portal_admin")

PORTAL_EVENT_POLL_S = 0.2
# The portal's events the history keeps (frames and stream reports are too many and say nothing
# the peers' own lines do not).
PORTAL_EVENT_KINDS = frozenset(EventKind) - {EventKind.FRAME, EventKind.STREAM_STATS}
ADMIN_ERRORS = (OSError, urllib.error.URLError)


def admin_request(
    url: str,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,
    token: str | None = None,
) -> Any:
    """One blocking JSON request to the admin API (with its bearer ``token`` when the portal has one);
    raises ``OSError`` (``URLError``) when it does not answer."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


class PortalAdmin:
    """Requests to the portal's admin API, and its events into the history."""

    history: History
    admin_token: str | None = None  # the portal's --admin-token, if it has one

    @property
    def admin_url(self) -> str:
        raise NotImplementedError

    def _init_portal_admin(self) -> None:
        self._events_task: asyncio.Task[None] | None = None
        self._events_seq = 0
        self._events_lock = asyncio.Lock()

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # The process backend's portal serves from this event loop: the blocking call goes to a thread.
        return await asyncio.to_thread(self.admin_sync, method, path, body)

    def admin_sync(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        return admin_request(self.admin_url + path, method, body, timeout, self.admin_token)

    async def portal_relays(self) -> list[dict[str, Any]]:
        """The portal's view of the relays (``GET /api/relays``)."""
        relays: list[dict[str, Any]] = await self.admin("GET", "/api/relays")
        return relays

    async def relay_id(self, name: str) -> str:
        """The portal's id for relay ``name``."""
        for relay in await self.portal_relays():
            if relay.get("name") == name:
                return str(relay["id"])
        raise KeyError(f"portal does not know relay {name!r}")

    async def relay_name(self, rid: str) -> str:
        for relay in await self.portal_relays():
            if relay["id"] == rid:
                return str(relay["name"])
        raise KeyError(f"portal does not know relay id {rid!r}")

    async def secret_fingerprints(self) -> dict[str, str]:
        return {r["name"]: r["secret_fingerprint"] for r in await self.portal_relays()}

    async def relay_joins(self) -> dict[str, tuple[str, float]]:
        """Per relay name, its secret fingerprint and when it last came online or went offline."""
        return {r["name"]: (r["secret_fingerprint"], r["since"]) for r in await self.portal_relays()}

    async def wait_relays_online(self, names: list[str], timeout: float) -> None:
        """Until the portal lists every relay in ``names`` online."""
        await self.wait_relays_rejoined(names, timeout, {})

    async def wait_relays_rejoined(
        self,
        names: list[str],
        timeout: float,
        before: dict[str, tuple[str, float]],
        *,
        new_secret: bool = True,
    ) -> None:
        """Until the portal lists every relay in ``names`` online again since ``before``
        (``relay_joins()``): a later ``since``, and a fingerprint other than the old one when
        ``new_secret`` (the same one otherwise). A name not in ``before`` need only be online."""

        async def all_back() -> bool:
            relays = {r["name"]: r for r in await self.portal_relays()}
            missing = []
            for n in names:
                relay = relays.get(n)
                old = before.get(n)
                if relay is None or not relay["online"]:
                    missing.append(n)
                elif old is not None and (
                    relay["since"] <= old[1] or (relay["secret_fingerprint"] != old[0]) is not new_secret
                ):
                    missing.append(n)
            if missing:
                raise NotYet(f"not back online{' with a new secret' if new_secret else ''}: {missing}")
            return True

        await wait_for(all_back, timeout, f"relays {names} online at the portal", 0.1, retry_on=ADMIN_ERRORS)

    async def wait_presence_settled(self, timeout: float = 15.0) -> None:
        """Until the portal has no relays_presence push pending (its debounce timer is idle): every
        relay_online/relay_offline it recorded has been followed by a presence_flush."""

        async def settled() -> bool:
            await self._fetch_portal_events()
            changes = self.history.select(("relay_online", "relay_offline"), kind="portal")
            flushes = self.history.select("presence_flush", kind="portal")
            return not (bool(changes) and (not flushes or flushes[-1].t < changes[-1].t))

        await wait_for(settled, timeout, "the portal's pending relays_presence push", 0.1)

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
                log.debug("Portal events not available error=%s", exc)
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
            with at_own_time(self.history, event.get("ts")):
                self.history.record("portal", kind, target, **data)
