"""The admin HTTP API: a JSON control surface for tests, the chaos harness and humans.

A deliberately small HTTP/1.1 server (one request per connection, ``Connection: close``) so the
portal needs no web framework. Routes:

- ``GET /`` dashboard page; ``GET /api/relays``, ``/api/clients``, ``/api/gateways``,
  ``/api/connections``, ``/api/streams`` (each client's latest ``stream_stats``);
  ``GET /api/overview`` → all of those at one instant plus ``now`` (unix) and ``last_seq``;
  ``GET /api/events?since=<seq>&limit=<n>`` → ``{"last_seq", "events"}``
- ``POST /api/partition`` ``{"id", "seconds"?}``; ``POST /api/heal`` ``{"id"?}`` (no id: heal all);
  ``POST /api/relays/<id>/disconnect``
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from connlib.core.logfmt import kv
from connlib.core.messages import Topic
from fake_portal import dashboard
from fake_portal.core import Portal

log = logging.getLogger("fake_portal.admin")

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_LINES = 100
REQUEST_TIMEOUT = 10.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    408: "Request Timeout",
}
_RELAY_DISCONNECT = re.compile(r"^/api/relays/([^/]+)/disconnect$")
GET_ROUTES = (
    "/",
    "/api/relays",
    "/api/clients",
    "/api/gateways",
    "/api/connections",
    "/api/streams",
    "/api/overview",
    "/api/events",
)
DASHBOARD_EVENTS = 300  # events the dashboard page arrives with; it polls for the rest
POST_ROUTES = ("/api/partition", "/api/heal")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj, default=str).encode() + b"\n")


def _body_object(body: bytes, *, required: bool) -> dict[str, Any]:
    if not body.strip():
        if required:
            raise HttpError(400, "a JSON object body is required")
        return {}
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HttpError(400, "body must be a JSON object")
    return obj


def _int_param(query: dict[str, list[str]], key: str, default: int | None) -> int | None:
    values = query.get(key)
    if not values:
        return default
    if not values[-1].isdigit():
        raise HttpError(400, f"query parameter {key} must be a non-negative integer")
    return int(values[-1])


class AdminApi:
    """Routes admin requests to the portal core; ``after_command`` flushes what a command caused."""

    def __init__(self, core: Portal, *, clock: Callable[[], float], after_command: Callable[[], None]) -> None:
        self.core = core
        self.clock = clock
        self.after_command = after_command

    def dispatch(self, method: str, target: str, body: bytes) -> Response:
        url = urlsplit(target)
        path, query = url.path, parse_qs(url.query)
        try:
            if method == "GET":
                return self._get(path, query)
            if method == "POST":
                response = self._post(path, body)
                self.after_command()
                return response
            raise HttpError(405, f"method {method[:10]} not allowed")
        except HttpError as exc:
            return _json(exc.status, {"error": str(exc)})

    def _get(self, path: str, query: dict[str, list[str]]) -> Response:
        now = self.clock()
        if path == "/":
            events = self.core.events.since(max(0, self.core.events.last_seq - DASHBOARD_EVENTS))
            page = dashboard.render(self.overview(now), events)
            return Response(200, page.encode(), "text/html; charset=utf-8")
        if path == "/api/overview":
            return _json(200, self.overview(now))
        if path == "/api/streams":
            return _json(200, self.core.streams_view(now))
        if path == "/api/relays":
            return _json(200, self.core.relays_view())
        if path == "/api/clients":
            return _json(200, self.core.peers_view(Topic.CLIENT, now))
        if path == "/api/gateways":
            return _json(200, self.core.peers_view(Topic.GATEWAY, now))
        if path == "/api/connections":
            return _json(200, self.core.connections_view())
        if path == "/api/events":
            since = _int_param(query, "since", 0)
            events = self.core.events.since(since or 0, _int_param(query, "limit", None))
            return _json(200, {"last_seq": self.core.events.last_seq, "events": events})
        if path in POST_ROUTES or _RELAY_DISCONNECT.match(path):
            raise HttpError(405, f"{path} needs POST")
        raise HttpError(404, f"no route {path[:100]}")

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

    def _post(self, path: str, body: bytes) -> Response:
        now = self.clock()
        if path == "/api/partition":
            obj = _body_object(body, required=True)
            peer_id, seconds = obj.get("id"), obj.get("seconds")
            if not isinstance(peer_id, str) or not peer_id:
                raise HttpError(400, "id must be a non-empty string")
            if seconds is not None and (
                isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0
            ):
                raise HttpError(400, "seconds must be a positive number")
            return _json(200, self.core.partition(peer_id, seconds, now))
        if path == "/api/heal":
            peer_id = _body_object(body, required=False).get("id")
            if peer_id is not None and not isinstance(peer_id, str):
                raise HttpError(400, "id must be a string")
            return _json(200, {"healed": self.core.heal(peer_id, now)})
        if match := _RELAY_DISCONNECT.match(path):
            relay_id = unquote(match.group(1))
            if not self.core.kick_relay(relay_id, now):
                raise HttpError(404, f"relay {relay_id[:100]} is not online")
            return _json(200, {"disconnected": relay_id})
        if path in GET_ROUTES:
            raise HttpError(405, f"{path} needs GET")
        raise HttpError(404, f"no route {path[:100]}")

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle_connection, host, port)

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    method, target, body = await _read_request(reader)
                response = self.dispatch(method, target, body)
                log.debug("Admin request %s", kv(method=method, target=target, status=response.status))
            except HttpError as exc:
                response = _json(exc.status, {"error": str(exc)})
            except TimeoutError:
                response = _json(408, {"error": "request not received in time"})
            head = (
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Error')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + response.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    try:
        request_line = await reader.readline()
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        content_length = 0
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                if not value.strip().isdigit():
                    raise HttpError(400, "bad Content-Length")
                content_length = int(value.strip())
        else:
            raise HttpError(400, "too many header lines")
    except (ValueError, asyncio.LimitOverrunError):
        raise HttpError(400, "request line or header too long") from None
    if content_length > MAX_BODY_BYTES:
        raise HttpError(413, f"body over {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(content_length) if content_length else b""
    return parts[0], parts[1], body
