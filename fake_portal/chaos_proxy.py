"""The dashboard's way to the chaos control service (:mod:`harness.control`): the portal forwards.

Why a proxy and not CORS: the chaos service's gate (the same as the admin API's,
:mod:`fake_portal.gate`) refuses every cross-origin request, and the dashboard's script holds no
token (it lives in an HttpOnly cookie). So the browser only ever talks to its own origin: the portal
passes ``GET``/``POST /api/chaos/<path>`` (after its own Host, Origin and token checks) to
``<chaos_url>/api/<path>`` with the admin token as bearer, and answers the chaos service's status and
JSON. The chaos service is never reachable from a page, and the token never reaches script.

Contract: ``path`` is letters, digits, ``/``, ``_``, ``-`` (else 400); the query and a JSON body go
through unchanged; no chaos URL configured: 404; the chaos service does not answer: 502, WARN.
"""

from __future__ import annotations

import logging
import re

import aiohttp
from aiohttp import web

from connlib.core.logfmt import kv

from .gate import HttpError

log = logging.getLogger("fake_portal.chaos_proxy")

PREFIX = "/api/chaos/"
PATH = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+){0,3}")
TIMEOUT_S = 30.0  # a relay's stop waits for its grace period (5 s), a kill for its exit


class ChaosProxy:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        if self.url is None:
            raise HttpError(404, "this portal has no chaos service (--chaos-url)")
        path = request.match_info["path"]
        if not PATH.fullmatch(path):
            raise HttpError(400, f"chaos path must match {PATH.pattern}")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = await request.read()
        try:
            async with self._session.request(
                request.method, f"{self.url}/api/{path}", params=request.query, data=body or None, headers=headers
            ) as answer:
                text = await answer.text()
                return web.Response(status=answer.status, text=text, content_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "Chaos service not answering %s", kv(path=path, error=repr(str(exc))[:120] or type(exc).__name__)
            )
            raise HttpError(502, f"the chaos service did not answer: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
