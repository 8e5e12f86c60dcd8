"""The admin HTTP API: a JSON control surface for tests, the chaos harness and humans, on aiohttp.

Routes (``GET /openapi.json`` is the authoritative list, see :mod:`fake_portal.openapi`):

- ``GET /`` dashboard page; ``GET /api/relays``, ``/api/clients``, ``/api/gateways``,
  ``/api/connections``, ``/api/streams`` (each client's latest ``stream_stats``);
  ``GET /api/overview`` → all of those at one instant plus ``now`` (unix) and ``last_seq``;
  ``GET /api/events?since=<seq>&limit=<n>`` → ``{"last_seq", "events"}``; ``GET /api/health``
- ``POST /api/partition`` ``{"id", "seconds"?}``; ``POST /api/heal`` ``{"id"?}`` (no id: heal all);
  ``POST /api/relays/<id>/disconnect``

Every request passes three gates, in this order (the README's security model):

1. **Host**: the ``Host`` header must name this server: ``127.0.0.1``, ``localhost``, ``::1``, the
   bound address, or a name in ``admin_allowed_hosts`` (any port). Stops DNS rebinding.
2. **Origin**: a browser request must be same-origin: ``Origin`` and ``Referer``, when present, must
   be ``http://<the Host header>``, and ``Sec-Fetch-Site`` must be ``same-origin`` or ``none``. Stops
   cross-site POSTs and reads from any other page, including other ports on localhost.
3. **Token** (when ``admin_token`` is set): ``Authorization: Bearer <token>``, or the
   ``fake_portal_admin`` cookie, which ``GET /?token=<token>`` sets (HttpOnly, SameSite=Strict) so
   that the dashboard's own fetches carry it. ``/api/health`` needs no token.

Refusals are JSON ``{"error": ...}`` with 4xx; bad parameters change no state.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from connlib.core.logfmt import kv
from connlib.core.messages import ID_PATTERN, MessageError, Topic, is_safe_id, loads_strict
from fake_portal import dashboard
from fake_portal.config import PortalConfig
from fake_portal.core import Portal
from fake_portal.openapi import MAX_EVENTS_LIMIT, MAX_PARTITION_SECONDS, MAX_SEQ, openapi_document

log = logging.getLogger("fake_portal.admin")

MAX_BODY_BYTES = 64 * 1024
DASHBOARD_EVENTS = 300  # events the dashboard page arrives with; it polls for the rest
COOKIE = "fake_portal_admin"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
PUBLIC_PATHS = frozenset({"/api/health"})
QUERY_KEYS = {"/": frozenset({"token"}), "/api/events": frozenset({"since", "limit"})}
"""Query parameters a route takes; any other is a 400 (all other routes take none)."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's connection-level logger: a request it cannot parse (bad request line, header too
    long, bad Content-Length…) is the client's fault and gets a WARN line, not an ERROR traceback;
    anything else aiohttp reports (a handler that raised) stays an ERROR, because it is a bug."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.warning(
                "Unparseable admin request refused %s",
                kv(status=exc_info.code, error=repr(str(exc_info.message)[:100])),
            )
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(obj, default=str, allow_nan=False) + "\n",
        content_type="application/json",
    )


def _error(status: int, message: str, **headers: str) -> web.Response:
    response = _json({"error": message}, status)
    response.headers.update(headers)
    return response


def format_host(host: str) -> str:
    """A host for a URL: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_name(header: str) -> str | None:
    """The host part of a ``Host`` header or URL netloc, lower-cased and unbracketed; ``None`` if
    it is not a plausible host[:port]."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1 :] and not _is_port(header[end + 2 :], header[end + 1])):
            return None
        host = header[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host
    host, sep, port = header.rpartition(":")
    if not sep:
        host = header
    elif not _is_port(port, ":"):
        return None
    return host or None


def _is_port(text: str, sep: str) -> bool:
    return sep == ":" and text.isdigit() and len(text) <= 5


def _uint(request: web.Request, key: str, maximum: int) -> int | None:
    values = request.query.getall(key, [])
    if not values:
        return None
    text = values[-1]
    if not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) > maximum:
        raise HttpError(400, f"query parameter {key} must be an integer in 0..{maximum}")
    return int(text)


JSON_WHITESPACE = b" \t\r\n"  # RFC 8259 §2


async def _body(request: web.Request, *, required: bool, fields: frozenset[str]) -> dict[str, Any]:
    raw = await request.read()  # aiohttp refuses bodies over client_max_size with 413
    if not raw.strip(JSON_WHITESPACE):  # bytes.strip() would also take \x0b, \x0c, \x1c-\x1f
        if required:
            raise HttpError(400, "a JSON object body is required")
        return {}
    try:
        obj = loads_strict(raw)
    except MessageError as exc:
        raise HttpError(400, f"body is not strict JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HttpError(400, "body must be a JSON object")
    unknown = sorted(set(obj) - fields)
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0][:40]!r}; expected {', '.join(sorted(fields))}")
    return obj


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
        token = self.config.admin_token
        self._token = token.encode() if token else None

    # -- the server ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._gates],
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
        return app

    async def serve(self, host: str, port: int) -> int:
        """Start listening; returns the bound port."""
        if host in WILDCARD_HOSTS and self._token is None:
            log.warning(
                "Admin API on a wildcard address without an admin token %s",
                kv(host=host or "*", port=port, hint="set --admin-token or FAKE_PORTAL_ADMIN_TOKEN"),
            )
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            logger=_ServerLog(logging.getLogger("fake_portal.admin.http"), {}),
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def allowed_hosts(self) -> frozenset[str]:
        extra = {h.strip().lower().strip("[]") for h in self.config.admin_allowed_hosts if h.strip()}
        bound = self.config.admin_host.lower().strip("[]")
        return LOCAL_HOSTS | extra | ({bound} if bound not in WILDCARD_HOSTS else set())

    @web.middleware
    async def _gates(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            refusal = self._refusal(request)
            if refusal is not None:
                log.warning(
                    "Admin request refused %s",
                    kv(method=request.method, path=repr(request.path[:100]), status=refusal.status),
                )
                response: web.StreamResponse = refusal
            else:
                unknown = sorted(set(request.query) - QUERY_KEYS.get(request.path, frozenset()))
                if unknown and request.match_info.route.resource is not None:
                    raise HttpError(400, f"unknown query parameter {unknown[0][:40]!r}")
                response = await handler(request)
        except HttpError as exc:
            response = _error(exc.status, str(exc))
        except web.HTTPException as exc:  # routing (404, 405) and aiohttp's own limits (413)
            if exc.status >= 500:
                raise
            response = _error(exc.status, exc.reason, **{k: v for k, v in exc.headers.items() if k == "Allow"})
        response.headers.update(SECURITY_HEADERS)
        log.debug("Admin request %s", kv(method=request.method, path=repr(request.path[:100]), status=response.status))
        return response

    def _refusal(self, request: web.Request) -> web.Response | None:
        host_header = request.headers.get("Host", "")
        host = host_name(host_header)
        if host is None or host not in self.allowed_hosts():
            return _error(403, "Host not allowed: the admin API answers only to its configured names")
        own_origin = "http://" + host_header.strip().lower()
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().lower() != own_origin:
            return _error(403, "cross-origin request refused (Origin)")
        referer = request.headers.get("Referer")
        if referer is not None:
            parts = urlsplit(referer.strip().lower())
            if f"{parts.scheme}://{parts.netloc}" != own_origin:
                return _error(403, "cross-origin request refused (Referer)")
        if request.headers.get("Sec-Fetch-Site", "same-origin").lower() not in ("same-origin", "none"):
            return _error(403, "cross-origin request refused (Sec-Fetch-Site)")
        if self._token is None or request.path in PUBLIC_PATHS or self._authorized(request):
            return None
        return _error(401, "admin token required", **{"WWW-Authenticate": 'Bearer realm="fake_portal admin"'})

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        candidates = [value.strip()] if scheme.lower() == "bearer" else []
        candidates.append(request.cookies.get(COOKIE, ""))
        if request.path == "/" and request.method == "GET":
            candidates.append(request.query.get("token", ""))
        return any(c and hmac.compare_digest(c.encode("utf-8", "replace"), self._token) for c in candidates)

    # -- GET ----------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        if self._token is not None and "token" in request.query:
            # Keep a valid token in a cookie for the page's own fetches, and take it out of the
            # address bar and the history. (A wrong one is a 401 even with other valid credentials.)
            if not hmac.compare_digest(request.query["token"].encode("utf-8", "replace"), self._token):
                return _error(401, "admin token required", **{"WWW-Authenticate": 'Bearer realm="fake_portal admin"'})
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, request.query["token"], httponly=True, samesite="Strict", path="/")
            return response
        now = self.clock()
        events = self.core.events.since(max(0, self.core.events.last_seq - DASHBOARD_EVENTS))
        return web.Response(text=dashboard.render(self.overview(now), events), content_type="text/html")

    async def _openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document(token=self._token is not None))

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    def _view(self, view: Callable[[float], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return _json(view(self.clock()))

        return handler

    async def _events(self, request: web.Request) -> web.Response:
        since = _uint(request, "since", MAX_SEQ) or 0
        limit = _uint(request, "limit", MAX_EVENTS_LIMIT)
        return _json({"last_seq": self.core.events.last_seq, "events": self.core.events.since(since, limit)})

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
        obj = await _body(request, required=True, fields=frozenset({"id", "seconds"}))
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
        return _json(result)

    async def _heal(self, request: web.Request) -> web.Response:
        peer_id = _optional_id(await _body(request, required=False, fields=frozenset({"id"})), required=False)
        healed = self.core.heal(peer_id, self.clock())
        self.after_command()
        return _json({"healed": healed})

    async def _disconnect(self, request: web.Request) -> web.Response:
        relay_id = request.match_info["relay_id"]
        if not is_safe_id(relay_id):
            raise HttpError(400, f"relay id must match {ID_PATTERN}")
        if not self.core.kick_relay(relay_id, self.clock()):
            raise HttpError(404, f"relay {relay_id} is not online")
        self.after_command()
        return _json({"disconnected": relay_id})

    async def _rotate(self, request: web.Request) -> web.Response:
        relay_id = request.match_info["relay_id"]
        if not is_safe_id(relay_id):
            raise HttpError(400, f"relay id must match {ID_PATTERN}")
        rotation = self.core.rotate_credentials(relay_id, self.clock())
        if rotation is None:
            raise HttpError(404, f"relay {relay_id} is not online")
        self.after_command()
        return _json({"rotated": relay_id, "rotation": rotation})
