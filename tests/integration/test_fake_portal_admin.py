"""The admin HTTP API over a real socket: hostile parameters, Host/Origin checks, the admin token,
the OpenAPI document. ``http.client`` so that every header (Host, Origin, Sec-Fetch-Site) is ours.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from connlib.aio.portal_client import portal_url
from fake_portal import FakePortal, PortalConfig
from fake_portal.__main__ import _parser, config_from_args

TOKEN = "test-token"
ADMIN_TOKEN = "admin-secret-token"
BOUND = 5.0


def request(
    portal: FakePortal,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", portal.admin_port, timeout=BOUND)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        all_headers = {"Host": f"127.0.0.1:{portal.admin_port}", **(headers or {})}
        data = body.encode() if isinstance(body, str) else body
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
            all_headers["Content-Length"] = str(len(data))
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders(data)
        response = conn.getresponse()
        raw = response.read()
        head = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    ctype = head.get("content-type", "")
    return response.status, head, json.loads(raw) if ctype.startswith("application/json") else raw.decode()


async def call(portal: FakePortal, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    return await asyncio.to_thread(request, portal, *args, **kwargs)


@pytest.fixture
async def portal() -> AsyncIterator[FakePortal]:
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.05)) as p:
        yield p


@pytest.fixture
async def locked() -> AsyncIterator[FakePortal]:
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.05, admin_token=ADMIN_TOKEN)) as p:
        yield p


async def upgrade_status(portal: FakePortal, peer: str) -> int:
    url = portal_url(portal.url, "client", external_id=peer, public_key=peer)
    try:
        async with connect(url, additional_headers={"X-Authorization": f"Bearer {TOKEN}"}, proxy=None):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


# -- hostile parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["since=" + "1" + "0" * 30, "since=-1", "since=1.5", "limit=" + "9" * 40, "limit=0x10", "since=%00"]
)
async def test_out_of_range_event_paging_is_a_400(portal, query):
    status, _, body = await call(portal, "GET", f"/api/events?{query}")
    assert status == 400 and body["error"]


async def test_event_paging_still_works(portal):
    status, _, body = await call(portal, "GET", "/api/events?since=0&limit=5")
    assert status == 200 and set(body) == {"last_seq", "events"}


@pytest.mark.parametrize(
    "body",
    [
        '{"id": "c1", "seconds": NaN}',
        '{"id": "c1", "seconds": Infinity}',
        '{"id": "c1", "seconds": 1e308}',
        '{"id": "c1", "seconds": 0}',
        '{"id": "c1", "seconds": true}',
        '{"id": "c1", "seconds": ' + "9" * 400 + "}",
        '{"id": "c1\\nlevel=ERROR", "seconds": 1}',
        '{"id": "\\ud800"}',
        '{"id": ""}',
        "[1]",
        "",
    ],
)
async def test_a_bad_partition_is_a_400_and_changes_nothing(portal, body):
    status, _, answer = await call(portal, "POST", "/api/partition", body)
    assert status == 400 and answer["error"]
    assert portal.core._partitions == {}
    assert await upgrade_status(portal, "c1") == 101


async def test_a_timed_partition_gives_a_small_retry_after(portal):
    status, _, answer = await call(portal, "POST", "/api/partition", '{"id": "c1", "seconds": 2.5}')
    assert status == 200 and answer["sockets_closed"] == 0
    url = portal_url(portal.url, "client", external_id="c1", public_key="c1")
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers={"X-Authorization": f"Bearer {TOKEN}"}, proxy=None):
            pass
    assert info.value.response.status_code == 503 and info.value.response.headers["Retry-After"] == "3"


@pytest.mark.parametrize("relay", ["%0Aforged", "x" * 300, "%F0%9F%98%80"])
async def test_a_hostile_relay_id_in_the_path_is_refused(portal, relay):
    status, _, body = await call(portal, "POST", f"/api/relays/{relay}/disconnect")
    assert status in (400, 404) and body["error"]


@pytest.mark.parametrize("body", ["\x0c", "\x0b", " \x0c ", "\x1c", " \t", "\r\n", " "])
async def test_a_body_of_whitespace_is_a_400_not_an_empty_body(portal, body):
    """Only a body of no bytes is "no body": whitespace alone is not a JSON text (RFC 8259 §2: a
    value is required), JSON's own (space, tab, CR, LF; schemathesis sent " \t") or not (a form
    feed healed everyone once; schemathesis found both)."""
    status, _, answer = await call(portal, "POST", "/api/heal", body)
    assert status == 400 and answer["error"]


async def test_a_body_over_the_limit_is_a_413(portal):
    status, _, _ = await call(portal, "POST", "/api/heal", '{"id": "' + "x" * 100_000 + '"}')
    assert status == 413


# -- Host and Origin ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", "", "[::2]:1"])
async def test_a_foreign_host_header_is_refused(portal, host):
    # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1.
    for method, path in (("GET", "/api/relays"), ("GET", "/"), ("POST", "/api/heal")):
        status, _, body = await call(portal, method, path, "{}" if method == "POST" else None, {"Host": host})
        assert status == 403 and "Host" in body["error"], (method, path, host)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "localhost:8080"])
async def test_local_host_names_are_accepted(portal, host):
    status, _, _ = await call(portal, "GET", "/api/relays", headers={"Host": host})
    assert status == 200


async def test_configured_host_names_are_accepted():
    config = PortalConfig(token=TOKEN, admin_allowed_hosts=("portal", "dash.internal"))
    async with FakePortal(config) as p:
        for host in ("portal:8080", "dash.internal"):
            assert (await call(p, "GET", "/api/relays", headers={"Host": host}))[0] == 200
        assert (await call(p, "GET", "/api/relays", headers={"Host": "other"}))[0] == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1.evil.example:1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Referer": "http://evil.example/page"},
    ],
)
async def test_cross_origin_browser_requests_are_refused(portal, headers):
    # A cross-site POST from any page a developer has open, or a cross-site read.
    status, _, body = await call(portal, "POST", "/api/partition", '{"id": "c1"}', headers)
    assert status == 403 and body["error"]
    assert portal.core._partitions == {}
    status, _, _ = await call(portal, "GET", "/api/overview", headers=headers)
    assert status == 403


async def test_same_origin_requests_are_accepted(portal):
    origin = f"http://127.0.0.1:{portal.admin_port}"
    headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin", "Referer": origin + "/"}
    status, _, body = await call(portal, "POST", "/api/heal", "{}", headers)
    assert status == 200 and body == {"healed": []}


# -- the admin token ---------------------------------------------------------------------------


async def test_without_the_admin_token_every_route_but_health_is_a_401(locked):
    for method, path in (
        ("GET", "/"),
        ("GET", "/api/overview"),
        ("GET", "/api/events"),
        ("GET", "/openapi.json"),
        ("POST", "/api/heal"),
        ("POST", "/api/relays/x/disconnect"),
    ):
        status, head, _ = await call(locked, method, path, "{}" if method == "POST" else None)
        assert status == 401, (method, path)
        assert head.get("www-authenticate", "").startswith("Bearer")
    status, _, body = await call(locked, "GET", "/api/events", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and ADMIN_TOKEN not in json.dumps(body)
    assert (await call(locked, "GET", "/api/health"))[0] == 200


async def test_the_admin_token_as_bearer_or_as_the_dashboard_cookie(locked):
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await call(locked, "POST", "/api/heal", "{}", auth))[0] == 200
    status, head, _ = await call(locked, "GET", f"/?token={ADMIN_TOKEN}")
    assert status == 303 and head["location"] == "/"  # the token leaves the address bar
    cookie = head["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";", 1)[0]
    status, _, page = await call(locked, "GET", "/", headers={"Cookie": pair})
    assert status == 200 and "<html" in page.lower()
    assert (await call(locked, "GET", "/api/overview", headers={"Cookie": pair}))[0] == 200
    assert (await call(locked, "GET", "/api/overview", headers={"Cookie": "fake_portal_admin=nope"}))[0] == 401
    assert (await call(locked, "GET", "/?token=nope"))[0] == 401
    # A wrong token in the URL never becomes a cookie, whatever else the request carries.
    status, head, _ = await call(locked, "GET", "/?token=nope", headers=auth)
    assert status == 401 and "set-cookie" not in head


def test_the_admin_token_comes_from_a_flag_or_the_environment(monkeypatch):
    args = _parser().parse_args(["--admin-token", "from-flag", "--admin-allowed-host", "portal"])
    config = config_from_args(args)
    assert config.admin_token == "from-flag" and "portal" in config.admin_allowed_hosts
    monkeypatch.setenv("FAKE_PORTAL_ADMIN_TOKEN", "from-env")
    assert config_from_args(_parser().parse_args([])).admin_token == "from-env"


async def test_a_wildcard_admin_bind_without_a_token_is_a_warning(caplog):
    caplog.set_level(logging.WARNING, "fake_portal")
    async with FakePortal(PortalConfig(token=TOKEN, admin_host="0.0.0.0")):
        pass
    assert any("admin" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- OpenAPI -----------------------------------------------------------------------------------


async def test_the_openapi_document_lists_every_route(portal):
    status, _, doc = await call(portal, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {
        "/",
        "/api/health",
        "/api/relays",
        "/api/clients",
        "/api/gateways",
        "/api/connections",
        "/api/streams",
        "/api/overview",
        "/api/events",
        "/api/partition",
        "/api/heal",
        "/api/relays/{relay_id}/disconnect",
    } <= set(doc["paths"])
