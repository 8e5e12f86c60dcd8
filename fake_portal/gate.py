"""The gate of this project's local HTTP control APIs, and the JSON helpers their handlers share.

Used by the portal's admin API (:mod:`fake_portal.admin`) and the chaos control service
(:mod:`harness.control`): one security model, written once. Every request passes three checks, in
this order:

1. **Host**: the ``Host`` header must name this server: ``127.0.0.1``, ``localhost``, ``::1``, the
   bound address, or one of the configured extra names (any port). Stops DNS rebinding.
2. **Origin**: a browser request must be same-origin: ``Origin`` and ``Referer``, when present, must
   be ``http://<the Host header>``, and ``Sec-Fetch-Site`` must be ``same-origin`` or ``none``. Stops
   cross-site POSTs and reads from any other page, including other ports on localhost.
3. **Token** (when one is set): ``Authorization: Bearer <token>``, or the gate's cookie (if it has
   one), or ``?token=`` on ``GET /`` (the page that sets the cookie). Public paths need none.

Then a query parameter the route does not take is a 400. Refusals are JSON ``{"error": ...}`` with a
4xx status and a WARN log line; every response carries :data:`SECURITY_HEADERS`. An ``HttpError``
raised by a handler becomes its JSON refusal; aiohttp's own 4xx (routing, 413) too.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from connlib.core.logfmt import kv
from connlib.core.messages import MessageError, loads_strict

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A refusal a handler raises: its status (4xx) and message become the JSON answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServerLog(logging.LoggerAdapter):
    """aiohttp's connection-level logger: a request it cannot parse (bad request line, header too
    long, bad Content-Length…) is the client's fault and gets a WARN line, not an ERROR traceback;
    anything else aiohttp reports (a handler that raised) stays an ERROR, because it is a bug."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.warning(
                "Unparseable request refused %s",
                kv(status=exc_info.code, error=repr(str(exc_info.message)[:100])),
            )
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(obj, default=str, allow_nan=False) + "\n",
        content_type="application/json",
    )


def error_response(status: int, message: str, **headers: str) -> web.Response:
    response = json_response({"error": message}, status)
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


def allowed_hosts(bound: str, extra: Collection[str]) -> frozenset[str]:
    """The names a server bound to ``bound`` answers to: the local ones, ``bound`` unless it is a
    wildcard, and ``extra``."""
    names = {h.strip().lower().strip("[]") for h in extra if h.strip()}
    bound = bound.lower().strip("[]")
    return LOCAL_HOSTS | names | ({bound} if bound not in WILDCARD_HOSTS else set())


def query_uint(request: web.Request, key: str, maximum: int) -> int | None:
    """The last ``key`` query parameter as an integer in 0..maximum (None if absent); else a 400."""
    values = request.query.getall(key, [])
    if not values:
        return None
    text = values[-1]
    if not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) > maximum:
        raise HttpError(400, f"query parameter {key} must be an integer in 0..{maximum}")
    return int(text)


async def json_body(request: web.Request, *, required: bool, fields: frozenset[str]) -> dict[str, Any]:
    """The request's strict-JSON object body with only ``fields`` ({} when empty and not ``required``)."""
    raw = await request.read()  # aiohttp refuses bodies over client_max_size with 413
    if not raw:  # whitespace alone is no JSON text (RFC 8259 §2 wants a value): loads_strict refuses it
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
        raise HttpError(400, f"unknown field {unknown[0][:40]!r}; expected {', '.join(sorted(fields)) or 'none'}")
    return obj


async def start_server(app: web.Application, host: str, port: int, logger: str) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port (no access log, no signal handling; parse errors as WARN through
    :class:`ServerLog` on ``logger``); the runner and the bound port."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        logger=ServerLog(logging.getLogger(logger), {}),
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])


class Gate:
    """The checks above as an aiohttp middleware (:meth:`middleware`).

    ``hosts``: the names besides the local ones (see :func:`allowed_hosts`); ``token``: None for an
    open API; ``cookie``: the cookie name that may carry the token (None: no cookie);
    ``public``: paths that need no token; ``query_keys``: the query parameters each path takes.
    """

    def __init__(
        self,
        *,
        token: str | None,
        hosts: frozenset[str],
        log: logging.Logger,
        realm: str,
        cookie: str | None = None,
        public: frozenset[str] = frozenset(),
        query_keys: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.token = token.encode() if token else None
        self.hosts = hosts
        self.log = log
        self.realm = realm
        self.cookie = cookie
        self.public = public
        self.query_keys = dict(query_keys or {})

    def unauthorized(self) -> web.Response:
        return error_response(401, "admin token required", **{"WWW-Authenticate": f'Bearer realm="{self.realm}"'})

    def token_matches(self, candidate: str) -> bool:
        assert self.token is not None
        return bool(candidate) and hmac.compare_digest(candidate.encode("utf-8", "replace"), self.token)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = repr(request.path[:100])
        try:
            refusal = self.refusal(request)
            if refusal is not None:
                self.log.warning("Request refused %s", kv(method=request.method, path=path, status=refusal.status))
                response: web.StreamResponse = refusal
            else:
                unknown = sorted(set(request.query) - self.query_keys.get(request.path, frozenset()))
                if unknown and request.match_info.route.resource is not None:
                    raise HttpError(400, f"unknown query parameter {unknown[0][:40]!r}")
                response = await handler(request)
        except HttpError as exc:
            response = error_response(exc.status, str(exc))
        except web.HTTPException as exc:  # routing (404, 405) and aiohttp's own limits (413)
            if exc.status >= 500:
                raise
            response = error_response(exc.status, exc.reason, **{k: v for k, v in exc.headers.items() if k == "Allow"})
        response.headers.update(SECURITY_HEADERS)
        self.log.debug("Request %s", kv(method=request.method, path=path, status=response.status))
        return response

    def refusal(self, request: web.Request) -> web.Response | None:
        host_header = request.headers.get("Host", "")
        host = host_name(host_header)
        if host is None or host not in self.hosts:
            return error_response(403, "Host not allowed: this API answers only to its configured names")
        own_origin = "http://" + host_header.strip().lower()
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().lower() != own_origin:
            return error_response(403, "cross-origin request refused (Origin)")
        referer = request.headers.get("Referer")
        if referer is not None:
            parts = urlsplit(referer.strip().lower())
            if f"{parts.scheme}://{parts.netloc}" != own_origin:
                return error_response(403, "cross-origin request refused (Referer)")
        if request.headers.get("Sec-Fetch-Site", "same-origin").lower() not in ("same-origin", "none"):
            return error_response(403, "cross-origin request refused (Sec-Fetch-Site)")
        if self.token is None or request.path in self.public or self._authorized(request):
            return None
        return self.unauthorized()

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        candidates = [value.strip()] if scheme.lower() == "bearer" else []
        if self.cookie is not None:
            candidates.append(request.cookies.get(self.cookie, ""))
            if request.path == "/" and request.method == "GET":
                candidates.append(request.query.get("token", ""))
        return any(self.token_matches(c) for c in candidates)
