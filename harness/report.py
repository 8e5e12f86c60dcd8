"""The results folder of one run, and the summary table printed at the end of it.

    results/<UTC time>-<session>/
        summary.json            one row per test: scenario, backend, figures, verdict, duration, history
        summary.md              the same as the table printed at the end of the pytest run
        junit.xml               one testcase per scenario, its figures as properties (harness.junit)
        report.html             a self-contained timeline per scenario (harness.html_report)
        history/<test>.jsonl    the test's history, one op per line (harness.history.Op)
        logs/<test>/<name>.log  container output, for tests that did not pass (Docker backend)
    results/latest -> the newest run

Rows with no figures (harness self-tests) are left out of the table but kept in summary.json.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import checks, html_report, junit
from .history import History

KEY_FIGURES = ("detect_s", "resumed_s", "gap_s")


@dataclass
class Row:
    nodeid: str
    scenario: str
    backend: str
    figures: dict[str, Any] = field(default_factory=dict)
    verdict: str = "not run"
    reason: str = ""  # what failed: the assertion's message (naming the bug, for a twin's scenario)
    duration_s: float = 0.0
    history: str = ""  # the stem of its file under history/


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:150]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


class Results:
    def __init__(self, root: Path, session: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.root = root
        self.dir = root / f"{stamp}-{session[:8]}"
        self.rows: dict[str, Row] = {}
        self.started = time.monotonic()

    def row(self, nodeid: str, scenario: str = "", backend: str = "") -> Row:
        row = self.rows.get(nodeid)
        if row is None:
            row = self.rows[nodeid] = Row(nodeid, scenario or nodeid.split("::")[-1], backend)
        if scenario:
            row.scenario = scenario
        if backend:
            row.backend = backend
        return row

    def write_history(self, nodeid: str, history: History) -> Path:
        self.row(nodeid).history = _slug(nodeid)
        path = self.dir / "history" / f"{_slug(nodeid)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for op in sorted(history.ops, key=lambda op: op.t):
                out.write(json.dumps(op.to_json(), default=str) + "\n")
        return path

    def write_logs(self, nodeid: str, logs: dict[str, str]) -> None:
        folder = self.dir / "logs" / _slug(nodeid)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in logs.items():
            (folder / f"{name}.log").write_text(text)

    def table(self) -> str:
        rows = [r for r in self.rows.values() if r.figures]
        if not rows:
            return ""
        header = ["scenario", "backend", "verdict", *KEY_FIGURES, "other figures"]
        lines = []
        for r in rows:
            others = " ".join(f"{k}={_fmt(v)}" for k, v in r.figures.items() if k not in KEY_FIGURES)
            lines.append(
                [r.scenario, r.backend, r.verdict, *(_fmt(r.figures.get(k, "-")) for k in KEY_FIGURES), others]
            )
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]

        def fmt(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)) + " | " + cells[-1]

        out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|---"]
        out += [fmt(line) for line in lines]
        return "\n".join(out)

    def finish(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        wall = time.monotonic() - self.started
        rows = [asdict(r) for r in self.rows.values()]
        summary = {"wall_s": round(wall, 1), "rows": rows}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        junit.write(self.dir, rows, wall)
        html_report.write(self.dir)
        table = self.table()
        (self.dir / "summary.md").write_text(f"# e2e results ({wall:.0f} s)\n\n{table}\n")
        latest = self.root / "latest"
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.dir.name)
        except OSError:
            pass
        return table


def aggregate(folders: list[Path]) -> str:
    """One line per scenario over every run: verdict counts, then p50/p95/max of each numeric figure."""
    rows: dict[str, list[dict]] = {}
    runs = 0
    for folder in folders:
        path = folder / "summary.json"
        if not path.exists():
            continue
        runs += 1
        for row in json.loads(path.read_text())["rows"]:
            rows.setdefault(f"{row['scenario']} [{row['backend']}]", []).append(row)
    lines = [f"{runs} run(s)"]
    for scenario, found in rows.items():
        verdicts: dict[str, int] = {}
        for row in found:
            verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
        stats = []
        keys = sorted(
            {
                k
                for row in found
                for k, v in row["figures"].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        for key in keys:
            values = [row["figures"][key] for row in found if isinstance(row["figures"].get(key), (int, float))]
            stats.append(
                f"{key} p50={checks.percentile(values, 50):.2f} p95={checks.p95(values):.2f} max={max(values):.2f}"
            )
        lines.append(f"{scenario}: {verdicts}; " + "; ".join(stats))
    return "\n".join(lines)


def write_reports(folder: Path) -> Path:
    """(Re)write ``junit.xml`` and ``report.html`` of a results folder from its summary and histories."""
    summary = json.loads((folder / "summary.json").read_text())
    junit.write(folder, summary.get("rows", []), float(summary.get("wall_s", 0.0)))
    return html_report.write(folder)
