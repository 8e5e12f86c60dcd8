"""The page at ``GET /`` of the admin API: a live dashboard of the stack.

One self-contained HTML page (no external assets: the stack has no network). It arrives with the
current state embedded, rendered by inline script before the ``load`` event, then polls
``/api/overview`` and ``/api/events?since=`` every second. It shows the relays (online/offline, id,
address, secret fingerprint, since, who uses them), the client's live traffic stream
(``stream_stats``: sent/delivered/lost, current relay, a rate chart, recent gaps), connections and
the relay on each side, clients and gateways, and the portal's event log (chatter hidden by
default). Kept apart from the API so routing never changes with the page.

With a chaos service (the portal's ``chaos_url``) the page also has **fault buttons** (per relay:
restart, stop, start, kill, pause, unpause, UDP loss, clear loss; per peer: partition and heal, from
the portal or from one relay; an optional duration after which the chaos service undoes the fault)
and polls the chaos history: the stream chart marks each fault as an amber band (from its start to
when it was undone, or a thin line for a restart) named after it, and each gap of the stream as a red
band. The buttons call the chaos service **through the portal** (``POST /api/chaos/...``, same origin,
the admin cookie): the page never holds a token and never calls another origin
(:mod:`fake_portal.chaos_proxy` says why).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

POLL_MS = 1000


def _embed(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(obj, default=str, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _rows(items: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(item.get(c, '')))}</td>" for c in columns) + "</tr>" for item in items
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _snapshot(overview: dict[str, Any]) -> str:
    """The state as plain tables, for a browser without JavaScript (inside ``<noscript>``)."""
    return (
        "<div style='padding:0 24px'><p>This dashboard updates live with JavaScript; below is the state when the page"
        " was served.</p>"
        f"<h2>Relays</h2>{_rows(overview['relays'], ('id', 'name', 'addrs', 'online', 'secret_fingerprint', 'since'))}"
        f"<h2>Clients</h2>{_rows(overview['clients'], ('id', 'name', 'online', 'relays', 'partitioned'))}"
        f"<h2>Gateways</h2>{_rows(overview['gateways'], ('id', 'name', 'online', 'relays', 'partitioned'))}"
        f"<h2>Streams</h2>{_rows(overview['streams'], ('client_id', 'sent', 'delivered', 'lost', 'gaps', 'connected', 'relay'))}"
        "</div>"
    )


def render(overview: dict[str, Any], events: list[dict[str, Any]], *, chaos: bool = False) -> str:
    """The page, with the state it arrives with; ``chaos``: the portal reaches a chaos service."""
    initial = _embed({"overview": overview, "events": events, "chaos": chaos})
    return (
        PAGE.replace("__NOSCRIPT__", _snapshot(overview))
        .replace("__INITIAL__", initial)
        .replace("__POLL_MS__", str(POLL_MS))
    )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>connlib relays · fake portal</title>
<link rel="icon" href="data:,">
<style>
:root {
  --bg: #0b1120; --panel: #111a2e; --panel2: #16213a; --line: #23304d; --text: #e2e8f0; --muted: #8b9bb8;
  --green: #22c55e; --green-bg: rgba(34,197,94,.14); --red: #f43f5e; --red-bg: rgba(244,63,94,.15);
  --amber: #f59e0b; --amber-bg: rgba(245,158,11,.15); --blue: #38bdf8; --blue-bg: rgba(56,189,248,.13);
  --violet: #a78bfa; --violet-bg: rgba(167,139,250,.14);
  --mono: "DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
html, body { margin: 0; background: var(--bg); color: var(--text);
  font: 13px/1.45 "DejaVu Sans", system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; align-items: center; gap: 16px; padding: 14px 24px; border-bottom: 1px solid var(--line);
  background: linear-gradient(90deg, #0f1a33, #0b1120); position: sticky; top: 0; z-index: 2; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; letter-spacing: .2px; }
header h1 .sub { color: var(--muted); font-weight: 400; margin-left: 8px; font-size: 13px; }
.logo { width: 26px; height: 26px; border-radius: 7px; background: linear-gradient(135deg, #38bdf8, #6366f1);
  display: grid; place-items: center; font-weight: 700; color: #0b1120; font-size: 14px; }
#live { margin-left: auto; display: flex; align-items: center; gap: 8px; color: var(--muted); }
#live .dot { width: 9px; height: 9px; border-radius: 50%; background: var(--green); box-shadow: 0 0 0 3px var(--green-bg); }
#live.down .dot { background: var(--red); box-shadow: 0 0 0 3px var(--red-bg); }
#live.down { color: var(--red); }
main { padding: 18px 24px 40px; display: grid; grid-template-columns: repeat(12, 1fr); gap: 16px; max-width: 1800px; }
main.stale section, main.stale .tiles { opacity: .55; }
.tiles { grid-column: 1 / -1; display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; }
.tile .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .08em; }
.tile .v { font-size: 22px; font-weight: 600; margin-top: 2px; font-variant-numeric: tabular-nums; }
.tile .v small { font-size: 12px; color: var(--muted); font-weight: 400; margin-left: 4px; }
.tile.good .v { color: var(--green); } .tile.bad .v { color: var(--red); } .tile.warn .v { color: var(--amber); }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 12px; padding: 14px 16px; min-width: 0; }
section h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .1em; color: var(--muted); margin: 0 0 10px;
  display: flex; align-items: center; gap: 10px; font-weight: 600; }
section h2 .count { background: var(--panel2); border: 1px solid var(--line); border-radius: 999px; padding: 0 8px;
  color: var(--text); letter-spacing: 0; font-size: 11px; }
.col { display: flex; flex-direction: column; gap: 16px; min-width: 0; }
.span7 { grid-column: span 7; } .span5 { grid-column: span 5; } .span12 { grid-column: 1 / -1; }
@media (max-width: 1100px) { .span7, .span5 { grid-column: 1 / -1; } .tiles { grid-template-columns: repeat(3, 1fr); } }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; font-weight: 500; color: var(--muted); font-size: 11px; text-transform: uppercase;
  letter-spacing: .06em; padding: 6px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
td { padding: 7px 8px; border-bottom: 1px solid rgba(35,48,77,.6); vertical-align: middle; }
tr:last-child td { border-bottom: 0; }
tbody tr:hover td { background: rgba(56,189,248,.04); }
.mono { font-family: var(--mono); font-size: 12px; }
.muted { color: var(--muted); }
.pill { display: inline-flex; align-items: center; gap: 6px; padding: 1px 9px 1px 8px; border-radius: 999px;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
.pill::before { content: ""; width: 7px; height: 7px; border-radius: 50%; background: currentColor; }
.pill.on { color: var(--green); background: var(--green-bg); }
.pill.off { color: var(--red); background: var(--red-bg); }
.pill.warn { color: var(--amber); background: var(--amber-bg); }
.pill.info { color: var(--blue); background: var(--blue-bg); }
.chip { display: inline-block; padding: 0 7px; border: 1px solid var(--line); border-radius: 6px; background: var(--panel2);
  font-size: 12px; margin: 1px 3px 1px 0; white-space: nowrap; }
.chip.path { border-color: rgba(34,197,94,.55); color: #bbf7d0; }
.chip.relay { border-color: rgba(167,139,250,.5); color: #ddd6fe; }
.fp { font-family: var(--mono); font-size: 12px; color: #fde68a; background: rgba(253,230,138,.08); padding: 0 5px; border-radius: 4px; }
tr.is-off td { color: #94a3b8; }
.empty { color: var(--muted); padding: 18px 4px; text-align: center; }
/* traffic */
.stream { border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; background: var(--panel2); }
.stream + .stream { margin-top: 12px; }
.stream .top { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.stream .who { font-weight: 600; font-size: 14px; }
.stream .meta { margin-left: auto; color: var(--muted); font-size: 12px; }
.nums { display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 8px; margin: 12px 0 8px; }
.num .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .06em; }
.num .v { font-size: 19px; white-space: nowrap; font-weight: 600; font-variant-numeric: tabular-nums; }
.num.delivered .v { color: var(--green); } .num.lost .v { color: var(--text); } .num.lost.bad .v { color: var(--red); }
.chart { width: 100%; height: 74px; display: block; margin: 4px 0 2px; }
.chart-legend { display: flex; gap: 14px; color: var(--muted); font-size: 11px; }
.chart-legend i { display: inline-block; width: 10px; height: 3px; border-radius: 2px; margin-right: 5px; vertical-align: middle; }
.gaps { margin-top: 10px; }
.gaps h3 { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .06em; margin: 0 0 4px; font-weight: 500; }
.gaps td { padding: 4px 8px; }
.bar { height: 8px; border-radius: 4px; background: linear-gradient(90deg, var(--amber), var(--red)); min-width: 3px; }
/* event log */
.logbar { display: flex; gap: 14px; align-items: center; margin-left: auto; text-transform: none; letter-spacing: 0; font-weight: 400; }
.logbar input[type=search] { background: var(--panel2); border: 1px solid var(--line); color: var(--text); border-radius: 6px;
  padding: 4px 8px; width: 220px; font: inherit; }
.logbar label { display: flex; gap: 6px; align-items: center; color: var(--text); cursor: pointer; }
#events-wrap { max-height: 460px; overflow: auto; border-radius: 8px; }
#events td { padding: 4px 8px; font-size: 12px; }
#events td.w { white-space: nowrap; }
#events td.t { white-space: nowrap; color: var(--muted); font-family: var(--mono); }
#events td.d { font-family: var(--mono); word-break: break-all; }
.tag { display: inline-block; padding: 0 7px; border-radius: 5px; font-size: 11px; font-weight: 600; white-space: nowrap;
  background: var(--panel2); color: var(--muted); border: 1px solid var(--line); }
.tag.good { color: var(--green); background: var(--green-bg); border-color: transparent; }
.tag.bad { color: var(--red); background: var(--red-bg); border-color: transparent; }
.tag.warn { color: var(--amber); background: var(--amber-bg); border-color: transparent; }
.tag.info { color: var(--blue); background: var(--blue-bg); border-color: transparent; }
.tag.violet { color: var(--violet); background: var(--violet-bg); border-color: transparent; }
.dir { color: var(--muted); }
/* chaos */
.chaos-row { display: flex; align-items: center; gap: 6px; flex-wrap: wrap; padding: 6px 0; border-bottom: 1px solid rgba(35,48,77,.6); }
.chaos-row .who { min-width: 72px; font-weight: 600; }
.chaos-row button, .chaos-row select { background: var(--panel2); color: var(--text); border: 1px solid var(--line); border-radius: 6px;
  padding: 2px 8px; font: inherit; font-size: 12px; cursor: pointer; }
.chaos-row button:hover { border-color: var(--amber); color: #fde68a; }
.chaos-row button.bad { border-color: rgba(244,63,94,.5); }
.chaos-opts input { width: 64px; background: var(--panel2); color: var(--text); border: 1px solid var(--line); border-radius: 6px; padding: 2px 6px; font: inherit; }
#chaos-status { min-height: 18px; margin: 8px 0 4px; font-size: 12px; }
#chaos-status.bad { color: var(--red); } #chaos-status.good { color: var(--green); }
#chaos-log td { padding: 3px 8px; font-size: 12px; }
footer { grid-column: 1 / -1; color: var(--muted); font-size: 12px; }
footer a { color: var(--blue); text-decoration: none; margin-right: 12px; }
</style>
</head>
<body>
<header>
  <div class="logo">fz</div>
  <h1>connlib relays <span class="sub">fake portal dashboard</span></h1>
  <div id="live" role="status" aria-live="polite"><span class="dot"></span><span id="live-text">loading…</span></div>
</header>
<main id="main">
  <div class="tiles" id="tiles"></div>
  <div class="col span7">
  <section id="relays-section">
    <h2>Relays <span class="count" id="relays-count">0</span></h2>
    <table id="relays"><thead><tr><th>Status</th><th>Name</th><th>ID</th><th>Address</th><th>Secret</th><th>Since</th><th>Used by</th></tr></thead>
    <tbody></tbody></table>
  </section>
  <section id="connections-section">
    <h2>Connections <span class="count" id="connections-count">0</span></h2>
    <table id="connections"><thead><tr><th>Path (client → its relay ⇢ gateway's relay → gateway)</th><th>State</th><th>Candidates</th><th>Updated</th></tr></thead>
    <tbody></tbody></table>
  </section>
  <section id="peers-section">
    <h2>Clients &amp; gateways <span class="count" id="peers-count">0</span></h2>
    <table id="peers"><thead><tr><th>Role</th><th>ID</th><th>Status</th><th>Relays</th><th>Since</th></tr></thead>
    <tbody></tbody></table>
  </section>
  </div>
  <div class="col span5">
  <section id="traffic-section">
    <h2>Live traffic <span class="count" id="streams-count">0</span></h2>
    <div id="streams"></div>
  </section>
  <section id="chaos-section" hidden>
    <h2>Chaos <span class="count" id="chaos-count">0</span>
      <span class="logbar chaos-opts">
        <label>duration <input type="number" id="chaos-duration" min="0" step="any" placeholder="until undone" aria-label="fault duration in seconds"> s</label>
        <label>loss <input type="number" id="chaos-loss" min="1" max="100" value="50" aria-label="UDP loss in percent"> %</label>
      </span>
    </h2>
    <div id="chaos-targets"></div>
    <div id="chaos-status" role="status" aria-live="polite"></div>
    <table id="chaos-log"><thead><tr><th>Time</th><th>Action</th><th>Target</th><th>Outcome</th><th>Until</th></tr></thead><tbody></tbody></table>
  </section>
  </div>
  <section class="span12" id="events-section">
    <h2>Portal event log <span class="count" id="events-count">0</span>
      <span class="logbar">
        <input type="search" id="filter" placeholder="filter (e.g. relay-1, presence, client)" aria-label="filter events">
        <label><input type="checkbox" id="chatter" checked> hide chatter (heartbeats, stream reports, ok replies)</label>
      </span>
    </h2>
    <div id="events-wrap"><table id="events"><thead><tr><th>Time</th><th>Seq</th><th>Kind</th><th>Who</th><th>Details</th></tr></thead>
    <tbody></tbody></table></div>
  </section>
  <footer>JSON API:
    <a href="/api/overview">/api/overview</a><a href="/api/relays">/api/relays</a><a href="/api/clients">/api/clients</a>
    <a href="/api/gateways">/api/gateways</a><a href="/api/connections">/api/connections</a><a href="/api/streams">/api/streams</a>
    <a href="/api/events?since=0&amp;limit=100">/api/events</a>
  </footer>
</main>
<noscript>__NOSCRIPT__</noscript>
<script id="initial" type="application/json">__INITIAL__</script>
<script>
"use strict";
const POLL_MS = __POLL_MS__, KEEP_EVENTS = 3000, SHOW_EVENTS = 400, STALE_S = 5;
const $ = (id) => document.getElementById(id);
const ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const S = { ov: null, skew: 0, lastSeq: 0, events: [], chatterRefs: new Set(), lastStream: {}, names: {},
            up: true, lastOk: Date.now(), filter: "", hideChatter: true, chaos: false, chaosKey: "", faults: [] };

const short = (id) => (id && UUID.test(id) ? id.slice(0, 8) : id ?? "");
const relayName = (id) => (id ? S.names[id] || short(id) : "—");
const nowServer = () => Date.now() / 1000 + S.skew;
const pad = (n, w = 2) => String(n).padStart(w, "0");
function clock(ts, ms) {
  const d = new Date(ts * 1000);
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return ms ? `${t}.${pad(d.getMilliseconds(), 3)}` : t;
}
function dur(s) {
  s = Math.max(0, s);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(Math.floor(s % 60))}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
const ago = (ts) => (ts ? `${dur(nowServer() - ts)} ago` : "—");
const num = (n) => (n ?? 0).toLocaleString("en-US");
const pill = (on, yes = "online", no = "offline") => `<span class="pill ${on ? "on" : "off"}">${on ? yes : no}</span>`;

// ------------------------------------------------------------------ overview
function renderTiles(ov) {
  const online = (xs) => xs.filter((x) => x.online).length;
  const sum = (k) => ov.streams.reduce((a, s) => a + (s[k] || 0), 0);
  const rate = ov.streams.reduce((a, s) => a + (s.rate_per_s || 0), 0);
  const tile = (k, v, cls, small = "") => `<div class="tile ${cls}"><div class="k">${k}</div><div class="v">${v}${small ? `<small>${small}</small>` : ""}</div></div>`;
  const ro = online(ov.relays), co = online(ov.clients), go = online(ov.gateways), lost = sum("lost");
  $("tiles").innerHTML = [
    tile("Relays online", `${ro}/${ov.relays.length}`, ov.relays.length && ro === ov.relays.length ? "good" : ro ? "warn" : "bad"),
    tile("Clients online", `${co}/${ov.clients.length}`, co === ov.clients.length ? "" : "warn"),
    tile("Gateways online", `${go}/${ov.gateways.length}`, go === ov.gateways.length ? "" : "warn"),
    tile("Connections", ov.connections.length, ""),
    tile("Delivered", num(sum("delivered")), "good", ov.streams.length ? `${rate.toFixed(0)}/s` : ""),
    tile("Lost · gaps", `${num(lost)} · ${num(sum("gaps"))}`, lost ? "bad" : ""),
  ].join("");
}

function renderRelays(ov) {
  const use = {};
  const add = (rid, html) => rid && (use[rid] ||= new Map()).set(html.key, html);
  const peers = [...ov.clients, ...ov.gateways];
  const onPath = new Set();
  for (const c of ov.connections) {
    if (c.client_relay_id) onPath.add(`${c.client_relay_id}|${c.client_id}`);
    if (c.gateway_relay_id) onPath.add(`${c.gateway_relay_id}|${c.gateway_id}`);
  }
  for (const s of ov.streams) if (s.connected && s.relay) onPath.add(`${s.relay}|${s.client_id}`);
  for (const p of peers) for (const rid of p.relays) add(rid, { key: p.id, path: onPath.has(`${rid}|${p.id}`) });
  for (const key of onPath) { const [rid, pid] = key.split("|"); add(rid, { key: pid, path: true }); }
  const rows = ov.relays.map((r) => {
    const users = [...(use[r.id]?.values() || [])].sort((a, b) => a.key.localeCompare(b.key));
    const chips = users.map((u) => `<span class="chip ${u.path ? "path" : ""}" title="${u.path ? "its connection's path runs through this relay" : "has credentials for this relay"}">${u.path ? "⇄ " : ""}${esc(u.key)}</span>`).join("") || `<span class="muted">—</span>`;
    const addrs = (r.addrs || [r.addr]).map((a) => `<div>${esc(a)}</div>`).join("");
    return `<tr class="${r.online ? "" : "is-off"}" data-relay="${esc(r.name)}">
      <td>${pill(r.online)}</td><td><b>${esc(r.name)}</b></td>
      <td class="mono" title="${esc(r.id)}">${esc(short(r.id))}</td><td class="mono">${addrs}</td>
      <td><span class="fp" title="sha256 of the relay's current secret">${esc(r.secret_fingerprint)}</span></td>
      <td title="${esc(r.since ? new Date(r.since * 1000).toISOString() : "")}">${ago(r.since)}</td><td>${chips}</td></tr>`;
  });
  $("relays").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="7" class="empty">No relay has joined the portal yet.</td></tr>`;
  $("relays-count").textContent = ov.relays.length;
}

function chart(history, gaps) {
  const W = 600, H = 74, P = 4;
  if (history.length < 2) return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none"><text x="${W / 2}" y="${H / 2}" fill="#8b9bb8" font-size="12" text-anchor="middle">collecting samples…</text></svg>`;
  const pts = [];
  for (let i = 1; i < history.length; i++) {
    const [t0, d0, l0] = history[i - 1], [t1, d1, l1] = history[i];
    const dt = Math.max(1e-3, t1 - t0);
    pts.push({ t: t1, r: Math.max(0, (d1 - d0) / dt), l: Math.max(0, (l1 - l0) / dt) });
  }
  const tEnd = history[history.length - 1][0], span = Math.min(120, Math.max(20, tEnd - history[0][0])), tStart = tEnd - span;
  const max = Math.max(1, ...pts.map((p) => Math.max(p.r, p.l))) * 1.15;
  const x = (t) => P + ((t - tStart) / span) * (W - 2 * P);
  const y = (v) => H - P - (v / max) * (H - 2 * P);
  const shown = pts.filter((p) => p.t >= tStart);
  const line = shown.map((p) => `${x(p.t).toFixed(1)},${y(p.r).toFixed(1)}`).join(" ");
  const area = shown.length ? `${x(shown[0].t).toFixed(1)},${H - P} ${line} ${x(shown[shown.length - 1].t).toFixed(1)},${H - P}` : "";
  const lost = shown.filter((p) => p.l > 0).map((p) => `<rect x="${(x(p.t) - 2).toFixed(1)}" y="${y(p.l).toFixed(1)}" width="4" height="${(H - P - y(p.l)).toFixed(1)}" fill="#f43f5e"/>`).join("");
  const grid = [0.5, 1].map((f) => `<line x1="0" x2="${W}" y1="${y(max / 1.15 * f).toFixed(1)}" y2="${y(max / 1.15 * f).toFixed(1)}" stroke="#23304d" stroke-dasharray="3 4"/>`).join("");
  // Each gap of the stream as a red band; each chaos fault as an amber band (a line for an instant one), named.
  const band = (t0, t1) => { const a = Math.max(P, x(t0)), b = Math.min(W - P, x(t1)); return b >= P && a <= W - P ? [a, Math.max(2, b - a)] : null; };
  const gapBands = gaps.map((g) => [g, band(g.start, g.end)]).filter(([, b]) => b).map(([g, [a, w]]) =>
    `<rect class="gap" data-gap="${g.duration_s.toFixed(3)}" x="${a.toFixed(1)}" y="${P}" width="${w.toFixed(1)}" height="${H - 2 * P}" fill="rgba(244,63,94,.22)"><title>gap ${g.duration_s.toFixed(3)} s</title></rect>`).join("");
  const faults = S.faults.filter((f) => f.undo_of == null && !String(f.outcome).startsWith("failed"));
  const faultMarks = faults.map((f, i) => {
    const b = band(f.ts, f.end ?? tEnd);
    if (!b) return "";
    const name = `${f.action} ${f.target}`;
    return `<g class="fault" data-fault="${esc(name)}"><rect x="${b[0].toFixed(1)}" y="0" width="${b[1].toFixed(1)}" height="${H}" fill="rgba(245,158,11,.16)" stroke="#f59e0b" stroke-width="1" vector-effect="non-scaling-stroke"/>
      <text x="${(b[0] + 3).toFixed(1)}" y="${11 + 10 * (i % 3)}" fill="#fde68a" font-size="10">${esc(name)}</text><title>${esc(name)}</title></g>`;
  }).join("");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="delivered per second">
    ${gapBands}${faultMarks}${grid}<polygon points="${area}" fill="rgba(34,197,94,.15)"/><polyline points="${line}" fill="none" stroke="#22c55e" stroke-width="2" vector-effect="non-scaling-stroke"/>${lost}</svg>`;
}

// ------------------------------------------------------------------ chaos
const RELAY_ACTIONS = ["restart", "stop", "start", "kill", "pause", "unpause", "loss", "clear-loss"];
const TIMED = new Set(["stop", "kill", "pause", "loss"]);
function renderChaosTargets(ov) {
  const relays = ov.relays.map((r) => r.name).sort(), peers = [...ov.clients, ...ov.gateways].map((p) => p.id).sort();
  const key = JSON.stringify([relays, peers]);
  if (key === S.chaosKey) return;  // buttons are re-made only when the targets change: a click never hits a stale one
  S.chaosKey = key;
  const button = (act, label, target, cls = "") => `<button type="button" class="${cls}" data-act="${esc(act)}" data-target="${esc(target)}" aria-label="${esc(label)} ${esc(target)}">${esc(label)}</button>`;
  const relayRows = relays.map((name) => `<div class="chaos-row" data-chaos-relay="${esc(name)}"><span class="who">${esc(name)}</span>
    ${RELAY_ACTIONS.map((a) => button(a, a, name, a === "kill" || a === "stop" ? "bad" : "")).join("")}</div>`);
  const sources = ["portal", ...relays].map((n) => `<option value="${esc(n)}">${n === "portal" ? "from the portal" : `from ${esc(n)}`}</option>`).join("");
  const peerRows = peers.map((id) => `<div class="chaos-row" data-chaos-peer="${esc(id)}"><span class="who">${esc(id)}</span>
    ${button("partition", "partition", id, "bad")}${button("heal", "heal", id)}<select aria-label="partition ${esc(id)} from">${sources}</select></div>`);
  $("chaos-targets").innerHTML = [...relayRows, ...peerRows].join("") || `<div class="empty">No relay or peer to act on yet.</div>`;
}
function chaosRequest(act, target, row) {
  const duration = parseFloat($("chaos-duration").value);
  const body = {};
  if (TIMED.has(act) || act === "partition") { if (duration > 0) body.duration_s = duration; }
  if (act === "loss") body.probability = Math.min(100, Math.max(1, parseFloat($("chaos-loss").value) || 50)) / 100;
  if (act === "partition" || act === "heal") return [`peers/${encodeURIComponent(target)}/${act}`, { ...body, from: row.querySelector("select").value }];
  return [`relays/${encodeURIComponent(target)}/${act}`, body];
}
async function chaosClick(ev) {
  const btn = ev.target.closest("button[data-act]");
  if (!btn) return;
  const [path, body] = chaosRequest(btn.dataset.act, btn.dataset.target, btn.closest(".chaos-row"));
  const status = $("chaos-status");
  status.className = ""; status.textContent = `${btn.getAttribute("aria-label")}…`;
  btn.disabled = true;
  try {
    const response = await fetch(`/api/chaos/${path}`, { method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) { status.className = "good"; status.textContent = `${answer.action} ${answer.target}: ok (${answer.took_s} s)`; }
    else { status.className = "bad"; status.textContent = `${btn.getAttribute("aria-label")}: ${answer.error || `HTTP ${response.status}`}`; }
  } catch (err) {
    status.className = "bad"; status.textContent = `${btn.getAttribute("aria-label")}: ${err}`;
  } finally {
    btn.disabled = false;
    pollChaos();
  }
}
function renderChaosLog() {
  const rows = [...S.faults].reverse().slice(0, 12).map((f) => `<tr data-seq="${f.seq}"><td class="mono">${clock(f.ts, true)}</td>
    <td><span class="tag ${f.undo_of == null ? "warn" : "good"}">${esc(f.action)}</span>${f.undo_of == null ? "" : ` <span class="muted">undo of #${f.undo_of}</span>`}</td>
    <td>${esc(f.target)}${f.params?.from && f.params.from !== "portal" ? ` <span class="muted">from ${esc(f.params.from)}</span>` : ""}</td>
    <td class="${String(f.outcome).startsWith("failed") ? "bad" : ""}">${esc(f.outcome)}</td><td class="mono">${f.until && f.end == null ? clock(f.until) : f.end == null && f.outcome === "ok" ? "until undone" : ""}</td></tr>`);
  $("chaos-log").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="5" class="empty">No fault injected yet.</td></tr>`;
  $("chaos-count").textContent = S.faults.length;
}
async function pollChaos() {
  if (!S.chaos) return;
  try {
    const answer = await getJSON("/api/chaos/history?limit=200");
    S.faults = answer.actions;
    renderChaosLog();
    if (S.ov) renderStreams(S.ov);
  } catch (err) {
    $("chaos-status").className = "bad";
    $("chaos-status").textContent = `chaos service: ${err.message}`;
  }
}

function renderStreams(ov) {
  const cards = ov.streams.map((s) => {
    const stale = s.age_s > STALE_S;
    const state = stale
      ? `<span class="pill warn">stale · no report for ${dur(s.age_s)}</span>`
      : s.connected ? `<span class="pill on">connected</span> <span class="muted">via</span> <span class="chip relay">${esc(relayName(s.relay))}</span>`
      : `<span class="pill off">not connected</span>`;
    const lossPct = s.sent ? (100 * s.lost / Math.max(1, s.delivered + s.lost)).toFixed(2) : "0.00";
    const gaps = [...(s.recent_gaps || [])].reverse().slice(0, 8);
    const longest = Math.max(0.001, ...gaps.map((g) => g.duration_s));
    const gapRows = gaps.map((g) => `<tr><td class="mono">${clock(g.start, true)}</td><td class="mono">${clock(g.end, true)}</td>
      <td style="width:45%"><div class="bar" style="width:${(100 * g.duration_s / longest).toFixed(1)}%"></div></td>
      <td class="mono" style="text-align:right">${g.duration_s.toFixed(3)} s</td></tr>`).join("");
    return `<div class="stream" data-client="${esc(s.client_id)}">
      <div class="top"><span class="who">${esc(s.client_id)} <span class="muted">→</span> ${esc(s.peer_id || "?")}</span>${state}
        <span class="meta">report #${num(s.reports)} · ${dur(s.age_s)} ago${s.client_online ? "" : " · client offline"}</span></div>
      <div class="nums">
        <div class="num sent"><div class="k">Sent</div><div class="v" data-k="sent">${num(s.sent)}</div></div>
        <div class="num delivered"><div class="k">Delivered</div><div class="v" data-k="delivered">${num(s.delivered)}</div></div>
        <div class="num lost ${s.lost ? "bad" : ""}"><div class="k">Lost</div><div class="v" data-k="lost">${num(s.lost)}</div></div>
        <div class="num"><div class="k">In flight</div><div class="v" data-k="in_flight">${num(s.in_flight)}</div></div>
        <div class="num"><div class="k">Rate /s</div><div class="v">${s.rate_per_s == null ? "—" : s.rate_per_s.toFixed(0)}</div></div>
        <div class="num ${s.lost ? "lost bad" : ""}"><div class="k">Loss</div><div class="v">${lossPct}%</div></div>
      </div>
      ${chart(s.history || [], s.recent_gaps || [])}
      <div class="chart-legend"><span><i style="background:#22c55e"></i>delivered / s</span><span><i style="background:#f43f5e"></i>lost / s</span><span>last ${dur(Math.min(120, Math.max(20, (s.history?.length ? s.history[s.history.length - 1][0] - s.history[0][0] : 0))))}</span></div>
      <div class="gaps"><h3>Gaps: ${num(s.gaps)} in total${s.gaps ? `, the ${gaps.length} most recent` : ""}</h3>
        ${gapRows ? `<table><thead><tr><th>Start</th><th>End</th><th></th><th style="text-align:right">Duration</th></tr></thead><tbody>${gapRows}</tbody></table>` : `<div class="muted">No gap in the stream so far.</div>`}
      </div></div>`;
  });
  $("streams").innerHTML = cards.join("") || `<div class="empty">No client has reported traffic yet.<br>A client sends <span class="mono">stream_stats</span> every second while its portal channel is joined.</div>`;
  $("streams-count").textContent = ov.streams.length;
}

function renderConnections(ov) {
  const rows = ov.connections.map((c) => {
    const hop = (rid) => (rid ? `<span class="chip relay">${esc(relayName(rid))}</span>` : `<span class="muted">?</span>`);
    const path = `<span class="chip">${esc(c.client_id)}</span>→ ${hop(c.client_relay_id)}⇢ ${hop(c.gateway_relay_id)}→ <span class="chip">${esc(c.gateway_id)}</span>`;
    const cls = c.state === "accepted" ? "on" : c.state === "requested" ? "info" : "warn";
    return `<tr><td>${path}</td>
      <td><span class="pill ${cls}">${esc(c.state)}</span></td>
      <td class="mono" title="candidates announced by client / gateway">${c.candidates.client ?? 0} / ${c.candidates.gateway ?? 0}</td>
      <td>${ago(c.updated)}</td></tr>`;
  });
  $("connections").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="4" class="empty">No connection signalled yet.</td></tr>`;
  $("connections-count").textContent = ov.connections.length;
}

function renderPeers(ov) {
  const row = (role) => (p) => {
    const part = p.partitioned ? ` <span class="pill warn" title="cut off by the admin API">partitioned${p.partitioned_until ? ` until ${clock(p.partitioned_until)}` : ""}</span>` : "";
    const relays = p.relays.map((rid) => `<span class="chip relay">${esc(relayName(rid))}</span>`).join("") || `<span class="muted">—</span>`;
    return `<tr class="${p.online ? "" : "is-off"}"><td><span class="tag ${role === "client" ? "info" : "violet"}">${role}</span></td>
      <td><b>${esc(p.id)}</b>${p.name && p.name !== p.id ? ` <span class="muted">${esc(p.name)}</span>` : ""}</td>
      <td>${pill(p.online)}${part}</td><td>${relays}</td><td>${ago(p.since)}</td></tr>`;
  };
  const rows = [...ov.clients.map(row("client")), ...ov.gateways.map(row("gateway"))];
  $("peers").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="5" class="empty">No client or gateway has joined yet.</td></tr>`;
  $("peers-count").textContent = ov.clients.length + ov.gateways.length;
}

function renderOverview(ov) {
  S.ov = ov;
  S.skew = ov.now - Date.now() / 1000;
  for (const r of ov.relays) S.names[r.id] = r.name;
  renderTiles(ov); renderRelays(ov); renderStreams(ov); renderConnections(ov); renderPeers(ov);
  if (S.chaos) renderChaosTargets(ov);
}

// ------------------------------------------------------------------ event log
const KIND_TAG = { relay_online: "good", relay_offline: "bad", connect: "info", disconnect: "warn", rejected: "bad",
                   partition: "warn", heal: "good", presence_flush: "violet", stream_stats: "" };
function compact(obj, max = 220) {
  let text = JSON.stringify(obj);
  if (text && text.length > max) text = text.slice(0, max) + "…";
  return text ?? "";
}
function who(e) {
  const id = e.role === "relay" || e.kind?.startsWith("relay_") ? relayName(e.id) : e.id;
  return `${e.role ? `<span class="muted">${esc(e.role)}</span> ` : ""}${esc(id ?? "")}`;
}
function details(e) {
  switch (e.kind) {
    case "frame": {
      const arrow = e.dir === "in" ? "⇠ in " : "⇢ out";
      if (e.error) return `<span class="dir">${arrow}</span> <b style="color:var(--red)">malformed</b> ${esc(e.error)}`;
      let body = e.payload;
      if (e.event === "phx_reply" && body) body = body.status === "ok" && !Object.keys(body.response || {}).length ? "ok" : body;
      return `<span class="dir">${arrow}</span> <b>${esc(e.event)}</b> <span class="muted">${esc(e.topic)}${e.ref == null ? "" : ` ref=${esc(e.ref)}`}</span> ${esc(typeof body === "string" ? body : compact(body))}`;
    }
    case "relay_online": return `${esc(relayName(e.id))} online with secret <span class="fp">${esc(e.secret_fingerprint)}</span>`;
    case "relay_offline": return `${esc(relayName(e.id))} went offline`;
    case "presence_flush": return `relays_presence pushed to ${e.pushed} socket(s); online: ${esc((e.online || []).map(relayName).join(", ") || "none")}`;
    case "connect": return `socket ${e.sid} opened (vsn ${esc(e.vsn)})`;
    case "disconnect": return `socket ${e.sid} closed: ${esc(e.reason)}`;
    case "rejected": return `upgrade refused: HTTP ${e.status} ${esc(e.reason)}`;
    case "partition": return `partitioned ${esc(e.id)} ${e.seconds ? `for ${e.seconds}s` : "until healed"} (${e.sockets_closed} socket(s) closed)`;
    case "heal": return `healed ${esc((e.ids || []).join(", ") || "nothing")}`;
    case "stream_stats": return `${num(e.delivered)} delivered, ${num(e.lost)} lost, ${num(e.gaps)} gaps · ${e.connected ? `via ${esc(relayName(e.relay))}` : "not connected"}`;
    default: { const { seq, ts, kind, ...rest } = e; return esc(compact(rest)); }
  }
}
function classify(e) {
  // Chatter: heartbeats, stream reports and their ok replies; a stream report that changes the
  // picture (connected, relay, a new gap) is news.
  if (e.kind === "frame") {
    const key = `${e.sid}|${e.ref}`;
    if (e.dir === "in" && (e.event === "heartbeat" || e.event === "stream_stats")) { S.chatterRefs.add(key); return true; }
    if (e.dir === "out" && e.event === "phx_reply" && S.chatterRefs.has(key)) {
      S.chatterRefs.delete(key);
      return e.payload?.status === "ok";
    }
    return false;
  }
  if (e.kind === "stream_stats") {
    const sig = `${e.connected}|${e.relay}|${e.gaps}`, prev = S.lastStream[e.id];
    S.lastStream[e.id] = sig;
    return prev === sig;
  }
  return false;
}
function addEvents(list) {
  for (const e of list) {
    if (e.seq <= S.lastSeq) continue;
    e._chatter = classify(e);
    S.lastSeq = e.seq;
    S.events.push(e);
  }
  if (S.events.length > KEEP_EVENTS) S.events.splice(0, S.events.length - KEEP_EVENTS);
  if (S.chatterRefs.size > 5000) S.chatterRefs.clear();
}
function renderEvents() {
  const f = S.filter.toLowerCase();
  const out = [];
  let matching = 0;
  for (let i = S.events.length - 1; i >= 0; i--) {
    const e = S.events[i];
    if (S.hideChatter && e._chatter) continue;
    const text = `${e.kind} ${e.event || ""} ${e.role || ""} ${e.id || ""} ${relayName(e.id)} ${details(e)}`;
    if (f && !text.toLowerCase().includes(f)) continue;
    matching++;
    if (out.length >= SHOW_EVENTS) continue;
    const tag = e.kind === "frame" ? (e.error ? "bad" : "") : KIND_TAG[e.kind] ?? "";
    out.push(`<tr data-kind="${esc(e.kind)}"><td class="t">${clock(e.ts, true)}</td><td class="t">${e.seq}</td>
      <td><span class="tag ${tag}">${esc(e.kind === "frame" ? "frame" : e.kind)}</span></td><td class="w">${who(e)}</td><td class="d">${details(e)}</td></tr>`);
  }
  $("events").tBodies[0].innerHTML = out.join("") || `<tr><td colspan="5" class="empty">No event${f ? " matches the filter" : " yet"}.</td></tr>`;
  $("events-count").textContent = matching > SHOW_EVENTS ? `${SHOW_EVENTS} of ${num(matching)}` : num(matching);
}

// ------------------------------------------------------------------ polling
function setLive(up, text) {
  S.up = up;
  $("live").classList.toggle("down", !up);
  $("live-text").textContent = text;
  $("main").classList.toggle("stale", !up);
}
async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}
async function poll() {
  try {
    const [ov, ev] = await Promise.all([getJSON("/api/overview"), getJSON(`/api/events?since=${S.lastSeq}&limit=1000`)]);
    await pollChaos();
    renderOverview(ov);
    const before = S.lastSeq;
    addEvents(ev.events);
    if (S.lastSeq !== before) renderEvents();
    S.lastOk = Date.now();
    setLive(true, `live · updated ${clock(Date.now() / 1000)}`);
  } catch (err) {
    setLive(false, `portal unreachable for ${dur((Date.now() - S.lastOk) / 1000)} · retrying`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
$("filter").addEventListener("input", (ev) => { S.filter = ev.target.value; renderEvents(); });
$("chatter").addEventListener("change", (ev) => { S.hideChatter = ev.target.checked; renderEvents(); });

const initial = JSON.parse($("initial").textContent);
S.chaos = initial.chaos;
$("chaos-section").hidden = !S.chaos;
$("chaos-targets").addEventListener("click", chaosClick);
renderOverview(initial.overview);
pollChaos();
addEvents(initial.events);
renderEvents();
setLive(true, `live · updated ${clock(Date.now() / 1000)}`);
setTimeout(poll, POLL_MS);
</script>
</body>
</html>
"""
