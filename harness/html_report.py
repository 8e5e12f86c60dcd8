"""One self-contained HTML report of a run: what broke, and when, for a person to look at.

Per scenario: its verdict and figures, and a timeline drawn as inline SVG (no script, no network):

- faults as bands, from the fault's ``invoke`` to its end (``ok``/``fail``), or for a fault that a
  later one undoes (pause → unpause, stop → start, udp_loss → clear_udp_loss, cut → reconnect,
  partition → heal) until that one ends;
- the client's delivered and lost datagrams per second (from its ``stream`` lines), gaps in the
  echoed stream as red marks;
- every peer's relay events: added, removed, replaced, migrated, path lost.

Time is seconds since the scenario's first op. Each band and mark carries ``data-start`` and
``data-end`` so a test (or a person with dev tools) can check it against the history.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .history import Op
from .junit import PASSING

UNDONE_BY = {
    "pause": "unpause",
    "stop": "start",
    "udp_loss": "clear_udp_loss",
    "cut": "reconnect",
    "partition": "heal",
    "cut_datagrams": "heal_datagrams",
    "portal_blackhole": "clear_portal_blackhole",
    "quota": "clear_quota",
}
RELAY_EVENTS = ("relay_added", "relay_removed", "migrating", "path_lost", "no_relays")
WIDTH, LEFT, RIGHT = 960, 90, 20
LANE = 18


@dataclass(frozen=True)
class Band:
    what: str
    target: str
    start: float
    end: float
    outcome: str


@dataclass(frozen=True)
class Scenario:
    row: Mapping[str, Any]
    ops: list[Op]


def fault_bands(ops: Iterable[Op]) -> list[Band]:
    """Pair each fault's ``invoke`` with its end, and a fault with the one that undoes it."""
    bands: list[Band] = []
    open_invokes: dict[tuple[str, str], Op] = {}
    undo_waiting: dict[tuple[str, str], Band] = {}  # (undoing fault, target) -> the band it closes
    for op in sorted((o for o in ops if o.kind == "fault"), key=lambda o: o.t):
        key = (op.what, op.target)
        if op.outcome == "invoke":
            open_invokes.setdefault(key, op)
            continue
        start = open_invokes.pop(key, op)
        band = Band(op.what, op.target, start.t, op.t, op.outcome)
        undone = undo_waiting.pop(key, None) or (undo_waiting.pop((op.what, "*"), None) if op.what == "heal" else None)
        if undone is not None:
            bands.append(Band(undone.what, undone.target, undone.start, op.t, undone.outcome))
        elif op.what in UNDONE_BY and op.outcome == "ok":
            undo_waiting[(UNDONE_BY[op.what], op.target)] = band
        else:
            bands.append(band)
    bands += undo_waiting.values()  # never undone: the band ends with its own action
    return sorted(bands, key=lambda b: b.start)


def per_second(ops: Iterable[Op], peer: str) -> list[tuple[float, int, int]]:
    """``(t, delivered, lost)`` per stream report of ``peer``: the counts since the previous one."""
    out = []
    last_delivered = last_lost = 0
    for op in ops:
        if op.kind == "observe" and op.what == "stream" and op.target == peer:
            delivered, lost = int(op.data.get("delivered", 0)), int(op.data.get("lost", 0))
            out.append((op.t, max(0, delivered - last_delivered), max(0, lost - last_lost)))
            last_delivered, last_lost = delivered, lost
    return out


def _x(t: float, t0: float, span: float) -> float:
    return LEFT + (t - t0) / span * (WIDTH - LEFT - RIGHT)


def _stream_peer(ops: Iterable[Op], default: str) -> str:
    """The peer whose ``stream`` lines the history holds (the client; its id varies by backend)."""
    return next((o.target for o in ops if o.kind == "observe" and o.what == "stream"), default)


def _timeline(scenario: Scenario, client: str) -> str:
    ops = sorted(scenario.ops, key=lambda o: o.t)
    if not ops:
        return "<p class='empty'>no history</p>"
    client = _stream_peer(ops, client)
    t0, t1 = ops[0].t, ops[-1].t
    span = max(t1 - t0, 1.0)
    bands = fault_bands(ops)
    stream = per_second(ops, client)
    gaps = [o for o in ops if o.kind == "observe" and o.what == "gap" and o.target == client]
    peers = sorted({o.target for o in ops if o.kind == "observe" and o.what in RELAY_EVENTS})
    chart_top, chart_h = 10, 120
    lanes_top = chart_top + chart_h + 30
    height = lanes_top + LANE * (len(peers) + 1) + 40
    peak = max([d + lo for _, d, lo in stream] + [1])
    parts = [f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img">']
    labels: list[str] = []
    for number, band in enumerate(bands):
        x0, x1 = _x(band.start, t0, span), _x(band.end, t0, span)
        parts.append(
            f'<rect class="fault" x="{x0:.1f}" y="{chart_top}" width="{max(x1 - x0, 2):.1f}" '
            f'height="{height - chart_top - 20}" data-what="{html.escape(band.what)}" '
            f'data-start="{band.start - t0:.3f}" data-end="{band.end - t0:.3f}">'
            f"<title>{html.escape(band.what)} {html.escape(band.target)} ({html.escape(band.outcome)}) "
            f"{band.start - t0:.1f}–{band.end - t0:.1f} s</title></rect>"
        )
        labels.append(
            f'<text class="band-label" x="{x0 + 2:.1f}" y="{height - 24 - 11 * (number % 3)}">'
            f"{html.escape(band.what)} {html.escape(band.target)}</text>"
        )
    previous = t0
    for t, delivered, lost in stream:  # each report covers the time since the previous one
        x0, x1 = _x(previous, t0, span), _x(t, t0, span)
        width = max(x1 - x0 - 1, 1.0)
        previous = t
        h_d = delivered / peak * chart_h
        h_l = lost / peak * chart_h
        base = chart_top + chart_h
        parts.append(
            f'<rect class="delivered" x="{x0:.1f}" y="{base - h_d:.1f}" width="{width:.1f}" height="{h_d:.1f}">'
            f"<title>{t - t0:.1f} s: {delivered} delivered</title></rect>"
        )
        if lost:
            parts.append(
                f'<rect class="lost" x="{x0:.1f}" y="{base - h_d - h_l:.1f}" width="{width:.1f}" height="{h_l:.1f}">'
                f"<title>{t - t0:.1f} s: {lost} lost</title></rect>"
            )
    for gap in gaps:
        start = gap.t - float(gap.data.get("duration_s", 0.0))
        x0, x1 = _x(start, t0, span), _x(gap.t, t0, span)
        parts.append(
            f'<rect class="gap" x="{x0:.1f}" y="{chart_top + chart_h + 4}" width="{max(x1 - x0, 2):.1f}" height="8" '
            f'data-start="{start - t0:.3f}" data-end="{gap.t - t0:.3f}"><title>gap {gap.data.get("duration_s")} s'
            f"</title></rect>"
        )
    parts.append(f'<text class="axis" x="4" y="{chart_top + 12}">{peak}/report</text>')
    parts.append(f'<text class="axis" x="4" y="{chart_top + chart_h}">datagrams</text>')
    for lane, peer in enumerate(peers):
        y = lanes_top + LANE * lane
        parts.append(f'<text class="lane" x="4" y="{y + 12}">{html.escape(peer)}</text>')
        parts.append(f'<line class="lane" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y + 8}" y2="{y + 8}"/>')
        for op in ops:
            if op.kind == "observe" and op.what in RELAY_EVENTS and op.target == peer:
                label = _event_label(op)
                parts.append(
                    f'<circle class="ev {op.what}" cx="{_x(op.t, t0, span):.1f}" cy="{y + 8}" r="4" '
                    f'data-start="{op.t - t0:.3f}"><title>{html.escape(label)}</title></circle>'
                )
    tick_y = height - 8
    step = _tick_step(span)
    tick = 0.0
    while tick <= span:
        x = _x(t0 + tick, t0, span)
        parts.append(f'<text class="axis tick" x="{x:.1f}" y="{tick_y}" text-anchor="middle">{tick:g}s</text>')
        tick += step
    parts += labels
    parts.append("</svg>")
    return "".join(parts)


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if span / step <= 12:
            return float(step)
    return 1200.0


def _event_label(op: Op) -> str:
    data = op.data
    match op.what:
        case "relay_removed":
            reason = str(data.get("reason", ""))
            kind = "replaced" if reason.startswith("replaced") else "removed"
            return f"{kind} {data.get('relay')} ({reason}) at {op.t:.2f}"
        case "migrating":
            return f"migrated {data.get('peer')} {data.get('from')} → {data.get('to')}"
        case _:
            return f"{op.what} {data.get('relay', '')}".strip()


STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:20px} h2{font-size:16px;margin:28px 0 6px}
.reason{white-space:pre-wrap;color:#a00}
.verdict{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#2e7d32} .fail{background:#c62828} .other{background:#6d6d6d}
table.figures{border-collapse:collapse;margin:6px 0} table.figures td{border:1px solid #ddd;padding:2px 8px}
svg{background:#fff;border:1px solid #ddd} rect.fault{fill:#ffb74d;opacity:.35}
rect.delivered{fill:#43a047} rect.lost{fill:#e53935} rect.gap{fill:#c62828}
circle.ev{fill:#1565c0} circle.relay_removed{fill:#c62828} circle.migrating{fill:#6a1b9a}
circle.path_lost{fill:#ef6c00} circle.no_relays{fill:#000} line.lane{stroke:#ccc}
text{font-size:11px;fill:#444} text.band-label{fill:#8d4f00;font-weight:600}
.legend .sw{display:inline-block;width:12px;height:10px;margin:0 3px 0 10px}
.sw.fault{background:#ffb74d;opacity:.6} .sw.delivered{background:#43a047} .sw.lost{background:#e53935}
.sw.gap{background:#c62828;height:4px} .dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin:0 3px 0 10px}
.dot.ev{background:#1565c0} .dot.relay_removed{background:#c62828} .dot.migrating{background:#6a1b9a}
.dot.path_lost{background:#ef6c00}
"""


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 else f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        return "[" + ", ".join(_figure(v) for v in value) + "]"
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def _verdict_class(verdict: str) -> str:
    if verdict in PASSING:
        return "pass"
    return "fail" if verdict.startswith(("FAILED", "ERROR")) else "other"


LEGEND = (
    '<p class="legend"><span class="sw fault"></span>fault <span class="sw delivered"></span>delivered '
    '<span class="sw lost"></span>lost <span class="sw gap"></span>gap in the echoed stream · relay events: '
    '<span class="dot ev"></span>added <span class="dot relay_removed"></span>removed/replaced '
    '<span class="dot migrating"></span>migrated <span class="dot path_lost"></span>path lost</p>'
)


def render(scenarios: Iterable[Scenario], title: str, client: str = "client") -> str:
    body = [f"<h1>{html.escape(title)}</h1>", LEGEND]
    for index, scenario in enumerate(scenarios):
        row = scenario.row
        verdict = str(row.get("verdict", "not run"))
        figures = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_figure(v))}</td></tr>"
            for k, v in (row.get("figures") or {}).items()
        )
        body.append(
            f'<section class="scenario" id="s{index}"><h2>{html.escape(str(row.get("scenario", "")))} '
            f'<span class="verdict {_verdict_class(verdict)}">{html.escape(verdict)}</span></h2>'
            f"<div>{html.escape(str(row.get('nodeid', '')))} · {html.escape(str(row.get('backend', '')))} · "
            f"{float(row.get('duration_s') or 0):.1f} s</div>"
            + (f'<pre class="reason">{html.escape(str(row["reason"]))}</pre>' if row.get("reason") else "")
            + f'<table class="figures">{figures}</table>{_timeline(scenario, client)}</section>'
        )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def load(folder: Path) -> tuple[list[Scenario], float]:
    """The scenarios of a results folder (``summary.json`` + ``history/*.jsonl``) and its wall time."""
    summary = json.loads((folder / "summary.json").read_text())
    histories = {p.stem: p for p in (folder / "history").glob("*.jsonl")}
    scenarios = []
    for row in summary.get("rows", []):
        path = histories.get(str(row.get("history", "")))
        ops = [Op(**json.loads(line)) for line in path.read_text().splitlines() if line] if path else []
        scenarios.append(Scenario(row, ops))
    return scenarios, float(summary.get("wall_s", 0.0))


def write(folder: Path, title: str | None = None) -> Path:
    scenarios, wall = load(folder)
    path = folder / "report.html"
    path.write_text(render(scenarios, title or f"e2e run {folder.name} ({wall:.0f} s)"))
    return path
