"""The dashboard and what feeds it (issue 5): ``stream_stats`` from the client to the portal, the
portal's stream view and API, secrets kept out of the event log, and the page itself in headless
Chromium against a live process fleet (coturn relays, in-process portal, client and gateway).

The browser tests need the Python package ``playwright`` and Debian's ``chromium``; without them
they skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from connlib.aio.portal_client import PortalClient, portal_url
from connlib.app.peer import Peer, PeerConfig
from connlib.core.credentials import rest_credentials
from connlib.core.messages import (
    MAX_STREAM_GAPS,
    Event,
    Frame,
    MessageError,
    StreamGap,
    StreamReport,
    Topic,
    Vsn,
    decode_payload,
    encode_frame,
)
from fake_portal import FakePortal, PortalConfig
from fake_portal.core import Close, Portal, Send
from fake_portal.dashboard import render
from fake_portal.eventlog import EventKind, EventLog, redact
from fake_portal.identity import Endpoint, relay_id_from_name, salt_for, secret_fingerprint

TOKEN = "t"
BOUND = 10.0

REPORT: dict[str, Any] = {
    "sent": 120,
    "delivered": 100,
    "lost": 15,
    "in_flight": 5,
    "gaps": 2,
    "connected": True,
    "relay": "r-1",
    "peer_id": "gateway-1",
    "recent_gaps": [
        {"start": 1000.0, "end": 1000.5, "duration_s": 0.5},
        {"start": 1010.0, "end": 1012.25, "duration_s": 2.25},
    ],
}


# ---------------------------------------------------------------------------- helpers (sans-IO)
def make_portal() -> Portal:
    return Portal(PortalConfig(token=TOKEN), unix_offset=1_700_000_000.0)


def frame(topic: str, event: str, payload: Any = None, ref: int = 1) -> str:
    return encode_frame(Frame(topic, event, {} if payload is None else payload, ref))


def drain(portal: Portal) -> list[Send | Close]:
    out = []
    while (item := portal.poll_transmit()) is not None:
        out.append(item)
    return out


def replies(out: list[Send | Close], sid: int) -> list[dict]:
    frames = [json.loads(o.text) for o in out if isinstance(o, Send) and o.sid == sid]
    return [f["payload"] for f in frames if f["event"] == "phx_reply"]


def join(portal: Portal, role: Topic, peer_id: str, now: float = 0.0) -> int:
    endpoint = Endpoint(role, Vsn.V1, TOKEN, peer_id, peer_id, peer_id, f"pk-{peer_id}")
    sid = portal.open(endpoint, now)
    portal.handle_input(sid, frame(role, "phx_join"), now)
    drain(portal)
    return sid


def join_relay(portal: Portal, name: str, secret: str, now: float = 0.0) -> int:
    endpoint = Endpoint(Topic.RELAY, Vsn.V1, TOKEN, relay_id_from_name(name), name, relay_addrs=("127.0.0.1:3478",))
    sid = portal.open(endpoint, now)
    portal.handle_input(sid, frame("relay", "phx_join", {"stamp_secret": secret}), now)
    return sid


# ---------------------------------------------------------------------------- the message
def test_stream_report_round_trips_through_json():
    report = StreamReport.from_json(REPORT)
    assert report.recent_gaps[1] == StreamGap(1010.0, 1012.25, 2.25)
    assert report.to_json() == REPORT
    assert decode_payload(Event.STREAM_STATS, REPORT) == report
    minimal = StreamReport.from_json(
        {k: REPORT[k] for k in ("sent", "delivered", "lost", "in_flight", "gaps", "connected")}
    )
    assert (minimal.relay, minimal.peer_id, minimal.recent_gaps) == (None, None, ())


def _with(**changes: Any) -> dict:
    return {**REPORT, **changes}


def _without(key: str) -> dict:
    return {k: v for k, v in REPORT.items() if k != key}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_without("delivered"), "lacks field 'delivered'"),
        (_with(sent="120"), "wrong type"),
        (_with(lost=-1), "must not be negative"),
        (_with(connected=1), "wrong type"),
        (_with(gaps=True), "wrong type"),
        (_with(sent=10), "exceeds sent"),
        (_with(relay=""), "relay"),
        (_with(relay="x" * 300), "relay"),
        (_with(recent_gaps={}), "must be a list"),
        (_with(recent_gaps=[{"start": 1, "end": 2}]), "lacks field 'duration_s'"),
        (_with(recent_gaps=[{"start": 1, "end": 2, "duration_s": -1}]), "negative"),
        (_with(recent_gaps=[{"start": float("nan"), "end": 2, "duration_s": 1}]), "finite"),
        (
            _with(gaps=99, recent_gaps=[REPORT["recent_gaps"][0]] * (MAX_STREAM_GAPS + 1)),
            f"more than {MAX_STREAM_GAPS}",
        ),
        (_with(gaps=1), "more recent gaps than gaps"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_stream_reports_are_refused_with_a_reason(payload, reason):
    with pytest.raises(MessageError, match=reason):
        StreamReport.from_json(payload)


# ---------------------------------------------------------------------------- the portal's handling
def test_stream_stats_is_stored_logged_and_acknowledged():
    portal = make_portal()
    sid = join(portal, Topic.CLIENT, "client-1")
    portal.handle_input(sid, frame("client", "stream_stats", REPORT, ref=7), 10.0)
    assert replies(drain(portal), sid) == [{"status": "ok", "response": {}}]

    (stream,) = portal.streams_view(11.5)
    assert {k: stream[k] for k in REPORT} == REPORT
    assert stream["client_id"] == "client-1" and stream["client_online"] is True
    assert stream["age_s"] == 1.5 and stream["reports"] == 1
    assert stream["received_at"] == pytest.approx(1_700_000_010.0)
    logged = [e for e in portal.events.since(0) if e["kind"] == "stream_stats"]
    assert len(logged) == 1
    assert {k: logged[0][k] for k in ("id", "delivered", "lost", "gaps", "connected", "relay")} == {
        "id": "client-1",
        "delivered": 100,
        "lost": 15,
        "gaps": 2,
        "connected": True,
        "relay": "r-1",
    }


def test_stream_stats_keeps_the_latest_a_rate_and_a_history_per_client():
    portal = make_portal()
    a, b = join(portal, Topic.CLIENT, "a"), join(portal, Topic.CLIENT, "b")
    portal.handle_input(a, frame("client", "stream_stats", _with(sent=100, delivered=80, lost=0, in_flight=20)), 1.0)
    portal.handle_input(a, frame("client", "stream_stats", _with(sent=200, delivered=180, lost=0, in_flight=20)), 3.0)
    portal.handle_input(b, frame("client", "stream_stats", _with(connected=False, relay=None)), 3.0)
    streams = {s["client_id"]: s for s in portal.streams_view(3.0)}
    assert streams["a"]["delivered"] == 180 and streams["a"]["rate_per_s"] == 50.0 and streams["a"]["reports"] == 2
    assert [sample[1] for sample in streams["a"]["history"]] == [80, 180]
    assert streams["b"]["connected"] is False and streams["b"]["relay"] is None and streams["b"]["rate_per_s"] is None
    # A restarted client (counters went back) starts a new chart, with no rate across the restart.
    portal.handle_input(a, frame("client", "stream_stats", _with(sent=10, delivered=5, lost=0, in_flight=5)), 4.0)
    restarted = portal.streams_view(4.0)[0]
    assert restarted["rate_per_s"] is None and [s[1] for s in restarted["history"]] == [5]


def test_the_stream_outlives_the_clients_socket_and_says_so():
    portal = make_portal()
    sid = join(portal, Topic.CLIENT, "client-1")
    portal.handle_input(sid, frame("client", "stream_stats", REPORT), 1.0)
    portal.closed(sid, 2.0)
    (stream,) = portal.streams_view(9.0)
    assert stream["client_online"] is False and stream["age_s"] == 8.0 and stream["delivered"] == 100


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(_with(lost="many"), "wrong type"), (_with(sent=1), "exceeds sent"), (["not", "an", "object"], "JSON object")],
)
def test_a_malformed_stream_stats_gets_an_error_reply_and_changes_nothing(payload, reason):
    portal = make_portal()
    sid = join(portal, Topic.CLIENT, "client-1")
    portal.handle_input(sid, frame("client", "stream_stats", REPORT), 1.0)
    drain(portal)
    portal.handle_input(sid, frame("client", "stream_stats", payload, ref=2), 2.0)
    out = drain(portal)
    # A payload that is not an object is a channel error too (as on a Phoenix server): the socket lives.
    (reply,) = replies(out, sid)
    assert reply["status"] == "error" and reason in reply["response"]["reason"]
    assert not any(isinstance(o, Close) for o in out), "a bad report must not cost the client its socket"
    (stream,) = portal.streams_view(2.0)
    assert stream["delivered"] == 100 and stream["reports"] == 1
    # The socket still works.
    portal.handle_input(sid, frame("client", "stream_stats", _with(sent=130, delivered=110), ref=3), 3.0)
    assert replies(drain(portal), sid) == [{"status": "ok", "response": {}}]


def test_only_clients_report_streams():
    portal = make_portal()
    sid = join(portal, Topic.GATEWAY, "gateway-1")
    portal.handle_input(sid, frame("gateway", "stream_stats", REPORT), 1.0)
    (reply,) = replies(drain(portal), sid)
    assert reply["status"] == "error" and "unknown event stream_stats" in reply["response"]["reason"]
    assert portal.streams_view(1.0) == []


# ---------------------------------------------------------------------------- secrets in the event log
def test_the_event_log_shows_fingerprints_not_secrets_while_the_wire_keeps_them():
    portal = make_portal()
    secret = "relay-secret-0123456789abcdef"
    relay_sid = join_relay(portal, "relay-1", secret)
    drain(portal)
    client_sid = join(portal, Topic.CLIENT, "client-1")  # its init carries TURN passwords
    endpoint = Endpoint(Topic.CLIENT, Vsn.V1, TOKEN, "client-2", "client-2", "client-2", "pk-client-2")
    sid = portal.open(endpoint, 1.0)
    portal.handle_input(sid, frame("client", "phx_join"), 1.0)
    out = drain(portal)
    init = next(json.loads(o.text) for o in out if isinstance(o, Send) and json.loads(o.text)["event"] == "init")
    password = init["payload"]["relays"][0]["password"]
    assert (
        password
        and password == rest_credentials(secret, init["payload"]["relays"][0]["expires_at"], salt_for("pk-client-2"))[1]
    )
    # ICE pwd in signalling, and a truncated (malformed) frame that still shows a secret.
    portal.handle_input(
        client_sid, frame("client", "request_connection", {"peer_id": "g", "ufrag": "u", "pwd": "ice-pwd-xyz"}), 2.0
    )
    portal.handle_input(relay_sid, '{"topic":"relay","event":"phx_join","payload":{"stamp_secret":"' + secret, 3.0)

    logged = json.dumps(portal.events.since(0))
    for leaked in (secret, password, "ice-pwd-xyz"):
        assert leaked not in logged, f"{leaked!r} is in the event log"
    join_event = next(e for e in portal.events.since(0) if e.get("event") == "phx_join" and e.get("role") == "relay")
    assert join_event["payload"] == {"stamp_secret": "redacted:" + secret_fingerprint(secret)}
    assert portal.relays_view()[0]["secret_fingerprint"] == secret_fingerprint(secret)
    malformed = next(e for e in portal.events.since(0) if "raw" in e)
    assert "redacted:" + secret_fingerprint(secret) in malformed["raw"]
    assert f'"password": "redacted:{secret_fingerprint(password)}"' in logged


def test_redaction_copies_and_survives_deep_nesting():
    payload: dict[str, Any] = {"relays": [{"id": "r", "password": "p"}], "stamp_secret": "s", "note": "no secret here"}
    assert redact(payload) == {
        "relays": [{"id": "r", "password": "redacted:" + secret_fingerprint("p")}],
        "stamp_secret": "redacted:" + secret_fingerprint("s"),
        "note": "no secret here",
    }
    assert payload["relays"][0]["password"] == "p" and payload["stamp_secret"] == "s", "the original is untouched"
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    node["pwd"] = "deep"
    node = redact(deep)
    while "a" in node:
        node = node["a"]
    assert node == {"pwd": "redacted:" + secret_fingerprint("deep")}
    log = EventLog(10)
    log.record(1.0, EventKind.HEAL, stamp_secret="top", n=1)
    assert log.since(0)[0]["stamp_secret"] == "redacted:" + secret_fingerprint("top")


# ---------------------------------------------------------------------------- the page (no browser)
def test_the_page_is_self_contained_and_embeds_the_state_safely():
    hostile = "</script><script>alert(1)</script>"
    overview = {
        "now": 1.0,
        "relays": [
            {
                "id": "r",
                "name": hostile,
                "addr": "1.2.3.4:3478",
                "addrs": ["1.2.3.4:3478"],
                "online": True,
                "secret_fingerprint": "abcd1234",
                "since": 1.0,
            }
        ],
        "clients": [],
        "gateways": [],
        "connections": [],
        "streams": [],
        "last_seq": 0,
    }
    page = render(overview, [{"seq": 1, "ts": 1.0, "kind": "note", "text": hostile}])
    assert hostile not in page, "embedded data must not be able to close the script element"
    assert page.count("<script") == 2 and "<script src" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no external asset"
    match = re.search(r'<script id="initial" type="application/json">(.*?)</script>', page, re.S)
    assert match is not None
    embedded = match.group(1)
    assert json.loads(embedded)["overview"]["relays"][0]["name"] == hostile
    assert "&lt;/script&gt;" in page  # the <noscript> snapshot, escaped


async def admin_get(url: str) -> Any:
    def get() -> Any:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body.decode()

    return await asyncio.to_thread(get)


async def admin_post(url: str, body: Any) -> Any:
    def post() -> Any:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(post)


# ---------------------------------------------------------------------------- a real client Peer
async def eventually(predicate: Callable[[], Any], timeout: float = BOUND, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)
    return value


@pytest.fixture
async def portal() -> AsyncIterator[FakePortal]:
    async with FakePortal(PortalConfig(token=TOKEN, debounce=0.1)) as p:
        yield p


async def test_the_client_reports_its_stream_only_while_joined(portal, caplog):
    """Reports go out while the channel is joined; none pile up during a partition (they would
    arrive stale and overflow the Phoenix buffer), and reporting resumes after the heal."""
    config = PeerConfig(
        "client", portal.url, TOKEN, "client-1", report_interval=0.05, bind="127.0.0.1", heartbeat_interval=1.0
    )
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        if line["event"] == "stream":
            peer.stats.sent += 1  # as if a datagram went out: every report differs from the last

    peer = Peer(config, emit=emit)
    await peer.start()
    try:
        reports = lambda: [e for e in portal.core.events.since(0) if e["kind"] == "stream_stats"]  # noqa: E731
        emitted = lambda: sum(1 for line in lines if line["event"] == "stream")  # noqa: E731
        await eventually(lambda: len(reports()) >= 5, what="stream_stats at the portal")
        assert (await admin_get(portal.admin_url + "/api/streams"))[0]["client_id"] == "client-1"

        await admin_post(portal.admin_url + "/api/partition", {"id": "client-1"})
        await eventually(lambda: not peer.portal.joined.is_set(), what="the client to notice the partition")
        cut_at = emitted()
        await eventually(lambda: emitted() >= cut_at + 40, what="40 reports while cut off")
        await admin_post(portal.admin_url + "/api/heal", {})
        await eventually(peer.portal.joined.is_set, 15, what="the client back on the portal")
        healed_at = emitted()
        before = len(reports())
        await eventually(lambda: len(reports()) >= before + 5, what="reports again after the heal")
        while_cut = healed_at - cut_at
        received, sent_while_joined = len(reports()), emitted() - while_cut
        assert while_cut >= 40
        # Every report the portal got was sent while joined: none was queued during the cut.
        assert received <= sent_while_joined + 2, (received, emitted(), while_cut)
        overflow = [r for r in caplog.records if "Too many messages" in r.getMessage()]
        assert not overflow, overflow
    finally:
        await peer.stop()


# ---------------------------------------------------------------------------- the page in Chromium
@pytest.fixture
async def browser(chromium):
    """The shared headless Chromium (tests/plugins/browser.py)."""
    return chromium


@pytest.fixture
async def fleet():
    from harness.coturn import turnserver_path
    from harness.process_fleet import ProcessFleet, StackOptions

    if turnserver_path() is None:
        if os.environ.get("CI"):
            pytest.fail("turnserver not installed (Debian package 'coturn'); CI must run this test", pytrace=False)
        pytest.skip("turnserver not installed (Debian package 'coturn')")
    f = ProcessFleet(options=StackOptions(debounce=0.2))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


DELIVERED = '[data-client="client-1"] [data-k="delivered"]'


async def _counter(page, selector: str) -> int:
    return int((await page.locator(selector).inner_text()).replace(",", ""))


@pytest.mark.coturn
@pytest.mark.slow
async def test_dashboard_in_chromium_shows_relays_live_traffic_and_a_stopped_relay(fleet, browser, tmp_path):
    await eventually(lambda: fleet.client.stats.delivered >= 20, 20, what="the stream to flow")
    await eventually(lambda: fleet.portal.core.streams_view(0.0), what="a stream report at the portal")
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    origin = fleet.admin_url
    page.on(
        "request", lambda req: None if req.url.startswith(origin) else problems.append(f"external request {req.url}")
    )
    await page.goto(origin + "/", wait_until="load")
    assert await page.title() == "connlib relays · fake portal"

    # Both relays online, with the fingerprint of their current secret and never the secret.
    for name, relay in fleet.relays.items():
        row = page.locator(f'#relays tr[data-relay="{name}"]')
        text = await row.inner_text()
        assert re.search(r"\bonline\b", text) and "offline" not in text, text
        assert secret_fingerprint(relay.secret) in text
        assert relay.secret not in await page.content()

    # Live traffic: the counters go up without a reload, and name the relay carrying the stream.
    first = await _counter(page, DELIVERED)
    await page.wait_for_function(
        f"(n) => parseInt(document.querySelector('{DELIVERED}').textContent.replace(/,/g, '')) >= n + 100",
        arg=first,
        timeout=BOUND * 1000,
    )
    carrying = {r["id"]: r["name"] for r in fleet.portal.core.relays_view()}[fleet.carrying_relay()]
    card = await page.locator('[data-client="client-1"]').inner_text()
    assert "connected" in card and carrying in card and "gateway-1" in card, card

    # A stopped relay goes offline on the page (live) and in its event log.
    await fleet.stop_relay("relay-1")
    await page.wait_for_function(
        """() => { const row = document.querySelector('#relays tr[data-relay="relay-1"]');
                   return row && /\\boffline\\b/.test(row.innerText); }""",
        timeout=BOUND * 1000,
    )
    await page.wait_for_function(
        "() => /relay-1 went offline/.test(document.querySelector('#events').textContent)", timeout=BOUND * 1000
    )
    assert "online" in await page.locator('#relays tr[data-relay="relay-2"]').inner_text()
    assert "1/2" in await page.locator("#tiles").inner_text()
    # ... and the stream goes on.
    after = await _counter(page, DELIVERED)
    await page.wait_for_function(
        f"(n) => parseInt(document.querySelector('{DELIVERED}').textContent.replace(/,/g, '')) >= n + 50",
        arg=after,
        timeout=BOUND * 1000,
    )
    shot = os.environ.get("DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
    await page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 10_000
    assert not problems, problems
    await page.close()


async def test_dashboard_in_chromium_says_when_the_portal_is_gone(browser):
    """The page keeps the last state, dims it and says the portal is unreachable, then recovers."""
    portal = FakePortal(PortalConfig(token=TOKEN))
    await portal.start()
    page = await browser.new_page()
    try:
        await page.goto(portal.admin_url + "/", wait_until="load")
        await page.wait_for_function(
            "() => /live · updated/.test(document.querySelector('#live').textContent)", timeout=BOUND * 1000
        )
    finally:
        await portal.stop()
    await page.wait_for_function(
        "() => document.querySelector('#live').classList.contains('down')", timeout=BOUND * 1000
    )
    assert "unreachable" in await page.locator("#live").inner_text()
    assert await page.locator("main.stale").count() == 1

    # A portal back on the same admin port: the page picks it up by itself.
    again = FakePortal(PortalConfig(token=TOKEN, admin_port=portal.admin_port))
    await again.start()
    try:
        relay = PortalRelay(again, "relay-9")
        await relay.start()
        await page.wait_for_function(
            """() => !document.querySelector('#live').classList.contains('down')
                     && /relay-9/.test(document.querySelector('#relays').textContent)""",
            timeout=BOUND * 1000,
        )
        assert await page.locator("main.stale").count() == 0
        await relay.stop()
    finally:
        await page.close()
        await again.stop()


class PortalRelay:
    """Just a relay's presence on the portal (no coturn): enough for the page to list it."""

    def __init__(self, portal: FakePortal, name: str) -> None:
        url = portal_url(portal.url, "relay", ipv4="127.0.0.1", port="3478", name=name)
        self.client = PortalClient(url, TOKEN, "relay", {"stamp_secret": f"secret-of-{name}"})
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())
        await self.client.wait_joined(BOUND)

    async def stop(self) -> None:
        await self.client.close()
        assert self.task is not None
        await asyncio.gather(self.task, return_exceptions=True)


async def test_dashboard_in_chromium_with_the_admin_token_on(browser):
    """``/?token=`` once: the cookie it sets carries the page's own polling; without it, a 401."""
    admin_token = "dash-admin-token"
    portal = FakePortal(PortalConfig(token=TOKEN, admin_token=admin_token))
    await portal.start()
    relay = PortalRelay(portal, "relay-t")
    page = await browser.new_page()
    try:
        refused = await page.goto(portal.admin_url + "/", wait_until="load")
        assert refused is not None and refused.status == 401
        await relay.start()
        await page.goto(portal.admin_url + f"/?token={admin_token}", wait_until="load")
        assert page.url == portal.admin_url + "/", "the token is taken out of the address bar"
        await page.wait_for_function(
            """() => /live · updated/.test(document.querySelector('#live').textContent)
                     && /relay-t/.test(document.querySelector('#relays').textContent)""",
            timeout=BOUND * 1000,
        )
        # The polling itself (fetch, same origin, the HttpOnly cookie) keeps being accepted.
        seq = portal.core.events.last_seq
        await relay.stop()
        await page.wait_for_function(
            "() => /offline/.test(document.querySelector('#relays').textContent)", timeout=BOUND * 1000
        )
        assert portal.core.events.last_seq > seq
        assert admin_token not in await page.content()
    finally:
        await page.close()
        await portal.stop()
