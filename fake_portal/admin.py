"""The admin HTTP API: a JSON control surface for tests, the chaos harness and humans, on aiohttp.

Routes (``GET /openapi.json`` is the authoritative list, see :mod:`fake_portal.openapi`):

- ``GET /`` dashboard page; ``GET /api/relays``, ``/api/clients``, ``/api/gateways``,
  ``/api/connections``, ``/api/streams`` (each client's latest ``stream_stats``);
  ``GET /api/overview`` → all of those at one instant plus ``now`` (unix) and ``last_seq``;
  ``GET /api/events?since=<seq>&limit=<n>`` → ``{"last_seq", "events"}``; ``GET /api/health``
- ``POST /api/partition`` ``{"id", "seconds"?}``; ``POST /api/heal`` ``{"id"?}`` (no id: heal all);
  ``POST /api/relays/<id>/disconnect``
- ``GET``/``POST /api/chaos/<path>``: passed to the stack's chaos control service
  (:mod:`fake_portal.chaos_proxy`; 404 without ``chaos_url``)

Every request passes the three checks of :mod:`fake_portal.gate` (the README's security model):
Host (``127.0.0.1``, ``localhost``, ``::1``, the bound address, or a name in ``admin_allowed_hosts``),
Origin (same-origin only), and the token (when ``admin_token`` is set): ``Authorization: Bearer
<token>``, or the ``fake_portal_admin`` cookie, which ``GET /?token=<token>`` sets (HttpOnly,
SameSite=Strict) so that the dashboard's own fetches carry it. ``/api/health`` needs no token.

Refusals are JSON ``{"error": ...}`` with 4xx; bad parameters change no state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from connlib.core.logfmt import kv
from connlib.core.messages import ID_PATTERN, Topic, is_safe_id
from fake_portal import dashboard
from fake_portal.chaos_proxy import PREFIX as CHAOS_PREFIX
from fake_portal.chaos_proxy import ChaosProxy
from fake_portal.config import PortalConfig
from fake_portal.core import Portal
from fake_portal.gate import (
    WILDCARD_HOSTS,
    Gate,
    Handler,
    HttpError,
    allowed_hosts,
    format_host,
    json_body,
    json_response,
    query_uint,
    start_server,
)
from fake_portal.openapi import MAX_EVENTS_LIMIT, MAX_PARTITION_SECONDS, MAX_SEQ, openapi_document

__all__ = ["AdminApi", "format_host"]

log = logging.getLogger("fake_portal.admin")

MAX_BODY_BYTES = 64 * 1024
DASHBOARD_EVENTS = 300  # events the dashboard page arrives with; it polls for the rest
COOKIE = "fake_portal_admin"
PUBLIC_PATHS = frozenset({"/api/health"})
QUERY_KEYS = {
    "/": frozenset({"token"}),
    "/api/events": frozenset({"since", "limit"}),
    "/api/chaos/history": frozenset({"since", "limit"}),
}
"""Query parameters a route takes; any other is a 400 (all other routes take none)."""


def _optional_id(obj: dict[str, Any], *, required: bool) -> str | None:
    value = obj.get("id")
    if value is None and not required:
        return None
    if not is_safe_id(value):
        raise HttpError(400, f"id must be a string matching {ID_PATTERN}")
    return value


class AdminApi:
    """Routes admin requests to the portal core; ``after_command`` flushes what a command caused."""

    def __init__(
        self,
        core: Portal,
        *,
        clock: Callable[[], float],
        after_command: Callable[[], None],
        config: PortalConfig | None = None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.after_command = after_command
        self.config = config or core.config
        self._runner: web.AppRunner | None = None
        self.chaos = ChaosProxy(self.config.chaos_url, self.config.admin_token)
        self.gate = Gate(
            token=self.config.admin_token,
            hosts=self.allowed_hosts(),
            log=log,
            realm="fake_portal admin",
            cookie=COOKIE,
            public=PUBLIC_PATHS,
            query_keys=QUERY_KEYS,
        )

    # -- the server ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.gate.middleware],
            client_max_size=MAX_BODY_BYTES,
            handler_args={"max_line_size": 8190, "max_field_size": 8190},
        )
        get = {
            "/": self._page,
            "/openapi.json": self._openapi,
            "/api/health": self._health,
            "/api/overview": self._view(self.overview),
            "/api/streams": self._view(self.core.streams_view),
            "/api/relays": self._view(lambda now: self.core.relays_view()),
            "/api/clients": self._view(lambda now: self.core.peers_view(Topic.CLIENT, now)),
            "/api/gateways": self._view(lambda now: self.core.peers_view(Topic.GATEWAY, now)),
            "/api/connections": self._view(lambda now: self.core.connections_view()),
            "/api/events": self._events,
        }
        for path, handler in get.items():
            app.router.add_get(path, handler, allow_head=False)
        app.router.add_post("/api/partition", self._partition)
        app.router.add_post("/api/heal", self._heal)
        app.router.add_post("/api/relays/{relay_id}/disconnect", self._disconnect)
        app.router.add_post("/api/relays/{relay_id}/rotate-credentials", self._rotate)
        app.router.add_get(CHAOS_PREFIX + "{path:.*}", self.chaos.forward, allow_head=False)
        app.router.add_post(CHAOS_PREFIX + "{path:.*}", self.chaos.forward)
        return app

    async def serve(self, host: str, port: int) -> int:
        """Start listening; returns the bound port."""
        if host in WILDCARD_HOSTS and self.gate.token is None:
            log.warning(
                "Admin API on a wildcard address without an admin token %s",
                kv(host=host or "*", port=port, hint="set --admin-token or FAKE_PORTAL_ADMIN_TOKEN"),
            )
        self._runner, bound = await start_server(self.app(), host, port, "fake_portal.admin.http")
        return bound

    async def stop(self) -> None:
        await self.chaos.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def allowed_hosts(self) -> frozenset[str]:
        return allowed_hosts(self.config.admin_host, self.config.admin_allowed_hosts)

    # -- GET ----------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        if self.gate.token is not None and "token" in request.query:
            # Keep a valid token in a cookie for the page's own fetches, and take it out of the
            # address bar and the history. (A wrong one is a 401 even with other valid credentials.)
            if not self.gate.token_matches(request.query["token"]):
                return self.gate.unauthorized()
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, request.query["token"], httponly=True, samesite="Strict", path="/")
            return response
        now = self.clock()
        events = self.core.events.since(max(0, self.core.events.last_seq - DASHBOARD_EVENTS))
        return web.Response(
            text=dashboard.render(self.overview(now), events, chaos=self.chaos.url is not None),
            content_type="text/html",
        )

    async def _openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document(token=self.gate.token is not None))

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True})

    def _view(self, view: Callable[[float], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return json_response(view(self.clock()))

        return handler

    async def _events(self, request: web.Request) -> web.Response:
        since = query_uint(request, "since", MAX_SEQ) or 0
        limit = query_uint(request, "limit", MAX_EVENTS_LIMIT)
        return json_response({"last_seq": self.core.events.last_seq, "events": self.core.events.since(since, limit)})

    def overview(self, now: float) -> dict[str, Any]:
        """Everything the dashboard shows except the event log, taken at one instant."""
        return {
            "now": round(self.core.unix(now), 3),
            "relays": self.core.relays_view(),
            "clients": self.core.peers_view(Topic.CLIENT, now),
            "gateways": self.core.peers_view(Topic.GATEWAY, now),
            "connections": self.core.connections_view(),
            "streams": self.core.streams_view(now),
            "last_seq": self.core.events.last_seq,
        }

    # -- POST ---------------------------------------------------------------------------------

    async def _partition(self, request: web.Request) -> web.Response:
        obj = await json_body(request, required=True, fields=frozenset({"id", "seconds"}))
        peer_id = _optional_id(obj, required=True)
        assert peer_id is not None
        seconds = obj.get("seconds")
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or not 0 < seconds <= MAX_PARTITION_SECONDS
        ):
            raise HttpError(400, f"seconds must be a number in (0, {MAX_PARTITION_SECONDS}] or null")
        result = self.core.partition(peer_id, None if seconds is None else float(seconds), self.clock())
        self.after_command()
        return json_response(result)

    async def _heal(self, request: web.Request) -> web.Response:
        peer_id = _optional_id(await json_body(request, required=False, fields=frozenset({"id"})), required=False)
        healed = self.core.heal(peer_id, self.clock())
        self.after_command()
        return json_response({"healed": healed})

    async def _disconnect(self, request: web.Request) -> web.Response:
        relay_id = request.match_info["relay_id"]
        if not is_safe_id(relay_id):
            raise HttpError(400, f"relay id must match {ID_PATTERN}")
        if not self.core.kick_relay(relay_id, self.clock()):
            raise HttpError(404, f"relay {relay_id} is not online")
        self.after_command()
        return json_response({"disconnected": relay_id})

    async def _rotate(self, request: web.Request) -> web.Response:
        relay_id = request.match_info["relay_id"]
        if not is_safe_id(relay_id):
            raise HttpError(400, f"relay id must match {ID_PATTERN}")
        rotation = self.core.rotate_credentials(relay_id, self.clock())
        if rotation is None:
            raise HttpError(404, f"relay {relay_id} is not online")
        self.after_command()
        return json_response({"rotated": relay_id, "rotation": rotation})
