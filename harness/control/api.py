"""The chaos service's HTTP routes (aiohttp), behind :class:`fake_portal.gate.Gate`: the same Host,
Origin and token checks as the portal's admin API, no cookie (callers send ``Authorization: Bearer``;
the dashboard's buttons go through the portal, see :mod:`fake_portal.chaos_proxy`).

Routes: ``GET /openapi.json`` (:mod:`harness.control.openapi`, the authoritative list), ``/api/health``
(no token), ``/api/targets``, ``/api/history?since=&limit=``; ``POST /api/relays/{relay}/<action>``
(restart, stop, start, kill, pause, unpause; ``{"duration_s"}`` for stop, kill and pause),
``/api/relays/{relay}/loss`` ``{"probability", "duration_s"?}``, ``/api/relays/{relay}/clear-loss``,
``/api/peers/{peer}/partition`` ``{"from"?, "duration_s"?}``, ``/api/peers/{peer}/heal`` ``{"from"?}``.

Input is checked before anything happens: a bad body, a bad duration or probability, a malformed
name is a 400 and changes nothing. An action answers its history entry (200), or ``{"error",
"action"}`` with the status :class:`~harness.control.actions.ActionFailed` carries.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fake_portal.gate import (
    Gate,
    HttpError,
    allowed_hosts,
    error_response,
    json_body,
    json_response,
    query_uint,
    start_server,
)

from .actions import FROM_PORTAL, RELAY_ACTIONS, UNDO, ActionFailed, Controller
from .journal import CAPACITY
from .openapi import MAX_DURATION_S, MAX_SEQ, openapi_document
from .targets import TargetError

log = logging.getLogger("harness.control.api")

MAX_BODY_BYTES = 16 * 1024


def _number(obj: dict[str, Any], key: str, low: float, high: float, *, required: bool = False) -> float | None:
    """``obj[key]`` as a number in (low, high], or None when absent (and not ``required``); else a 400."""
    value = obj.get(key)
    if value is None and not required:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low < value <= high
    ):
        raise HttpError(400, f"{key} must be a number in ({low:g}, {high:g}]" + ("" if required else " or null"))
    return float(value)


def _duration(obj: dict[str, Any]) -> float | None:
    return _number(obj, "duration_s", 0.0, MAX_DURATION_S)


def _source(obj: dict[str, Any]) -> str:
    value = obj.get("from")
    if value is None:
        return FROM_PORTAL
    if not isinstance(value, str):
        raise HttpError(400, f"from must be {FROM_PORTAL!r} or a relay's name")
    return value


class ControlApi:
    def __init__(self, controller: Controller, *, token: str | None, bound: str, hosts: tuple[str, ...]) -> None:
        self.controller = controller
        self.gate = Gate(
            token=token,
            hosts=allowed_hosts(bound, hosts),
            log=log,
            realm="chaos control",
            public=frozenset({"/api/health"}),
            query_keys={"/api/history": frozenset({"since", "limit"})},
        )
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.gate.middleware], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/openapi.json", self._openapi, allow_head=False)
        app.router.add_get("/api/health", self._health, allow_head=False)
        app.router.add_get("/api/targets", self._targets, allow_head=False)
        app.router.add_get("/api/history", self._history, allow_head=False)
        for action in RELAY_ACTIONS:
            app.router.add_post(f"/api/relays/{{relay}}/{action}", self._relay_action(action))
        app.router.add_post("/api/relays/{relay}/loss", self._loss)
        app.router.add_post("/api/relays/{relay}/clear-loss", self._clear_loss)
        app.router.add_post("/api/peers/{peer}/partition", self._partition)
        app.router.add_post("/api/peers/{peer}/heal", self._heal)
        return app

    async def serve(self, host: str, port: int) -> int:
        """Start listening; returns the bound port."""
        self._runner, bound = await start_server(self.app(), host, port, "harness.control.http")
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ GET
    async def _openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document(token=self.gate.token is not None))

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "stack": self.controller.stack.stack})

    async def _targets(self, request: web.Request) -> web.Response:
        members = await asyncio.to_thread(self.controller.stack.members)
        return json_response(
            {
                "stack": self.controller.stack.stack,
                "relays": [m.as_json() for m in members if m.role == "relay"],
                "peers": [m.as_json() for m in members if m.role != "relay"],
            }
        )

    async def _history(self, request: web.Request) -> web.Response:
        since = query_uint(request, "since", MAX_SEQ) or 0
        limit = query_uint(request, "limit", CAPACITY)
        if limit == 0:
            raise HttpError(400, f"query parameter limit must be an integer in 1..{CAPACITY}")
        journal = self.controller.journal
        return json_response({"last_seq": journal.last_seq, "actions": journal.since(since, limit)})

    # ------------------------------------------------------------------ POST
    async def _act(self, action: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
        try:
            return json_response(await action())
        except TargetError as exc:
            raise HttpError(exc.status, str(exc)) from None
        except ActionFailed as exc:
            response = error_response(exc.status, str(exc))
            if exc.entry is not None:
                response = json_response({"error": str(exc), "action": exc.entry}, exc.status)
            return response

    def _relay_action(self, action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        fields = frozenset({"duration_s"}) if action in UNDO else frozenset()

        async def handler(request: web.Request) -> web.Response:
            duration = _duration(await json_body(request, required=False, fields=fields))
            relay = request.match_info["relay"]
            return await self._act(lambda: self.controller.relay(relay, action, duration))

        return handler

    async def _loss(self, request: web.Request) -> web.Response:
        obj = await json_body(request, required=True, fields=frozenset({"probability", "duration_s"}))
        probability = _number(obj, "probability", 0.0, 1.0, required=True)
        assert probability is not None
        duration = _duration(obj)
        return await self._act(lambda: self.controller.loss(request.match_info["relay"], probability, duration))

    async def _clear_loss(self, request: web.Request) -> web.Response:
        await json_body(request, required=False, fields=frozenset())
        return await self._act(lambda: self.controller.clear_loss(request.match_info["relay"]))

    async def _partition(self, request: web.Request) -> web.Response:
        obj = await json_body(request, required=False, fields=frozenset({"from", "duration_s"}))
        source, duration = _source(obj), _duration(obj)
        return await self._act(lambda: self.controller.partition(request.match_info["peer"], source, duration))

    async def _heal(self, request: web.Request) -> web.Response:
        source = _source(await json_body(request, required=False, fields=frozenset({"from"})))
        return await self._act(lambda: self.controller.heal(request.match_info["peer"], source))
