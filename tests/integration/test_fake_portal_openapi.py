"""Schemathesis fuzzes the running admin API from the API's own ``/openapi.json``.

Every operation gets generated valid and invalid requests (positive and negative modes) with all of
schemathesis' default checks: no 5xx, documented status codes and content types, responses that
match their schemas, invalid data refused, valid data accepted, and the token actually required.
The portal runs on its own event-loop thread with a relay and a client joined, so the views are not
empty and ``/api/relays/{relay_id}/disconnect`` can hit a real relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from websockets.sync.client import ClientConnection, connect

from connlib.aio.portal_client import portal_url
from fake_portal import FakePortal, PortalConfig
from fake_portal.openapi import openapi_document

TOKEN = "openapi-token"
ADMIN_TOKEN = "openapi-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STATS: Counter[str] = Counter()
EXAMPLES = int(os.environ.get("ADMIN_FUZZ_EXAMPLES", "50"))


def _join(stack: ExitStack, portal: FakePortal, role: str, **params: str) -> ClientConnection:
    url = portal_url(portal.url, role, **params)
    ws = stack.enter_context(connect(url, additional_headers={"X-Authorization": f"Bearer {TOKEN}"}, proxy=None))
    payload = {"stamp_secret": "s3cret"} if role == "relay" else {}
    ws.send(json.dumps({"topic": role, "event": "phx_join", "payload": payload, "ref": 1}))
    while json.loads(ws.recv(timeout=5)).get("event") != "phx_reply":
        pass
    return ws


@pytest.fixture(scope="module")
def threaded_portal() -> Iterator[FakePortal]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-portal-openapi", daemon=True)
    thread.start()
    portal = FakePortal(PortalConfig(token=TOKEN, debounce=0.05, admin_token=ADMIN_TOKEN))
    asyncio.run_coroutine_threadsafe(portal.start(), loop).result(10)
    with ExitStack() as stack:
        _join(stack, portal, "relay", ipv4="127.0.0.1", name="relay-1")
        _join(stack, portal, "client", external_id="c1")
        yield portal
    asyncio.run_coroutine_threadsafe(portal.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    print(f"\nschemathesis against the admin API: {dict(sorted(STATS.items()))}")
    assert STATS["5xx"] == 0


@pytest.fixture(scope="module")
def admin_schema(threaded_portal: FakePortal) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(threaded_portal.admin_url + "/openapi.json", headers=AUTH)
    # The token as configured auth (not a header forced onto every call), so that a negative case
    # that drops it is sent without it and must get its 401.
    schema.config.update(base_url=threaded_portal.admin_url, headers=AUTH)
    return schema


# schemathesis' own pytest loader does not run on pytest 9 yet, so each documented operation and
# generation mode is a parametrized test driving the operation's hypothesis strategy directly.
DOC = openapi_document(token=True)
OPERATIONS = [(path, method.upper()) for path, item in DOC["paths"].items() for method in item]


# No input at all (the token is configured auth), or only a free-form string: no negative case exists.
NOTHING_TO_NEGATE = {("/", "GET")} | {
    (path, method.upper())
    for path, item in DOC["paths"].items()
    for method, op in item.items()
    if not op.get("parameters") and "requestBody" not in op
}
CASES = [
    pytest.param(path, method, mode, id=f"{method} {path} {mode}")
    for path, method in OPERATIONS
    for mode in GenerationMode
    if not (mode is GenerationMode.NEGATIVE and (path, method) in NOTHING_TO_NEGATE)
]


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_the_admin_api_matches_its_openapi_document(admin_schema, path, method, mode) -> None:
    operation = admin_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate()
        STATS["requests"] += 1
        STATS[f"{response.status_code // 100}xx"] += 1

    check()
