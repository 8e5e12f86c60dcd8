"""``python -m harness``: the chaos harness from the command line.

    python -m harness images [--tag latest]        build the images (what `make images` runs)
    python -m harness wait-ready --project P       wait until a compose stack streams (`make up`)
    python -m harness sweep                        remove what dead test sessions left in Docker
    python -m harness up [--relays N] ...          start a stack, print where it is, follow its history
    python -m harness chaos [--duration 60] ...    random relay faults against a live stream; exit 1 if
                                                   the stream did not come back after one, or on ERROR lines
    python -m harness summary results/2026*        figures of many runs together: per scenario, the
                                                   verdicts and p50/p95/max of each figure

Both ``up`` and ``chaos`` take ``--fleet docker|process`` (default docker) and write the history
and a summary under ``results/`` (``--results``). Ctrl-C (or SIGTERM) tears the stack down; a
``kill -9`` leaves it to the next run's sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import time
import uuid
from pathlib import Path

from . import checks, compose_ready
from .docker_engine import connect
from .docker_fleet import DockerFleet
from .docker_session import DockerSession
from .fleet import CLIENT_ID, FaultNotSupported, Fleet, StackOptions
from .history import History, new_history
from .images import E2E_TAG, MODES, ensure_images
from .process_fleet import ProcessFleet
from .report import Results
from .sweep import sweep
from .waiting import wait_for

log = logging.getLogger("harness.cli")

RECOVERY_BOUND = 15.0
FAULTS = ("restart", "pause", "stop", "loss", "partition")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("sweep", help="remove the Docker leftovers of dead test sessions")
    images = sub.add_parser("images", help="build the stack's images (base image, wheels, one build per image)")
    images.add_argument("--tag", default=E2E_TAG, help=f"image tag (default {E2E_TAG}; make uses latest)")
    images.add_argument("--mode", choices=MODES[:2], default="auto", help="auto: only what is stale")
    compose_ready.add_arguments(sub.add_parser("wait-ready", help="wait until a compose stack is usable"))
    summary = sub.add_parser("summary", help="aggregate the summary.json of several result folders")
    summary.add_argument("folders", nargs="+", type=Path)
    for name, text in (
        ("up", "start a stack and follow its history until Ctrl-C"),
        ("chaos", "inject random relay faults and check the stream recovers"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--fleet", choices=("docker", "process"), default="docker")
        c.add_argument("--relays", type=int, default=2)
        c.add_argument("--debounce", type=float, default=1.0)
        c.add_argument("--rate", type=float, default=50.0)
        c.add_argument("--images", choices=("auto", "build", "existing"), default="auto")
        c.add_argument("--results", default="results")
        c.add_argument(
            "--disable-fix", action="append", default=[], help="client test switch (credentials-compare, probe)"
        )
    chaos = sub.choices["chaos"]
    chaos.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    chaos.add_argument("--seed", type=int, default=None)
    chaos.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "docker", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "sweep":
        print(sweep(connect()))
        return 0
    if args.command == "images":
        started = time.monotonic()
        tags = ensure_images(connect(timeout=900), args.tag, args.mode)
        print(f"images {' '.join(tags.values())} ready in {time.monotonic() - started:.1f}s")
        return 0
    if args.command == "wait-ready":
        return compose_ready.run(args)
    if args.command == "summary":
        print(aggregate(args.folders))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    options = StackOptions(
        relays=args.relays, debounce=args.debounce, rate=args.rate, client_disabled_fixes=frozenset(args.disable_fix)
    )
    history = new_history()
    results = Results(Path(args.results), uuid.uuid4().hex)
    session = None
    fleet: Fleet
    if args.fleet == "docker":
        client = connect()
        print(sweep(client), file=sys.stderr)
        tag = "latest" if args.images == "existing" else E2E_TAG
        session = DockerSession(client, ensure_images(client, tag, args.images))
        fleet = DockerFleet(history, options, session=session)
    else:
        fleet = ProcessFleet(history, options)
    code = 1
    try:
        await fleet.start()
        print(
            json.dumps(
                {
                    "event": "stack_ready",
                    "backend": fleet.backend,
                    "admin": fleet.admin_url,
                    "relays": fleet.relay_names,
                }
            ),
            flush=True,
        )
        code = await (_follow(fleet) if args.command == "up" else _chaos(fleet, args, results))
    finally:
        errors = fleet.collect_errors()
        await fleet.stop()
        if session is not None:
            session.remove_all()
        results.write_history(f"{args.command}", history)
        table = results.finish()
        print(table or "", f"\nresults: {results.dir}", sep="\n", file=sys.stderr)
        if errors or checks.error_lines(history):
            print(
                f"ERROR lines from the stack: {errors or [op.data for op in checks.error_lines(history)]}",
                file=sys.stderr,
            )
            code = 1
    return code


async def _follow(fleet: Fleet) -> int:
    """Print every op but the periodic reports as a JSON line, until interrupted."""
    shown = 0
    while True:
        for op in fleet.history.ops[shown:]:
            if op.what not in ("stream", "status"):
                print(json.dumps(op.to_json(), default=str), flush=True)
        shown = len(fleet.history.ops)
        await asyncio.sleep(0.2)


async def _chaos(fleet: Fleet, args: argparse.Namespace, results: Results) -> int:
    rng = random.Random(args.seed)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults: {sorted(unknown)}")
    h = fleet.history
    end = time.monotonic() + args.duration
    failures = 0
    n = 0
    while time.monotonic() < end:
        n += 1
        kind = rng.choice(kinds)
        rid = checks.carrying_relay(h, CLIENT_ID)
        name = await fleet.relay_name(rid) if rid else rng.choice(fleet.relay_names)
        row = results.row(f"chaos-{n:03d}-{kind}", f"{n:03d} {kind} {name}", fleet.backend)
        t0 = time.monotonic()
        try:
            await _inject(fleet, kind, name, rng)
        except FaultNotSupported as exc:
            row.verdict = f"skipped ({exc})"
            continue
        try:

            def back(t0: float = t0) -> float | None:
                return checks.resumed_at(h, t0) or _flowing(h, t0)

            resumed = await wait_for(back, RECOVERY_BOUND, "the stream to come back")
            row.figures.update(resumed_s=max(0.0, resumed - t0), gap_s=checks.longest_gap(h, t0))
            row.verdict = "recovered"
        except AssertionError as exc:
            failures += 1
            row.verdict = f"FAILED: {exc}"
        print(
            json.dumps(
                {
                    "event": "fault_done",
                    "n": n,
                    "kind": kind,
                    "relay": name,
                    "verdict": row.verdict,
                    **{k: round(v, 3) for k, v in row.figures.items()},
                }
            ),
            flush=True,
        )
        await fleet.wait_relays_online(fleet.relay_names, 30)
    return 1 if failures else 0


def _flowing(history: History, since: float) -> float | None:
    """No gap in progress and fresh echoes reported at least 2 s after ``since``."""
    reports = [op for op in checks.peer_events(history, "stream", CLIENT_ID, since + 2.0) if op.data.get("connected")]
    return since if len(reports) >= 2 and reports[-1].data["delivered"] > reports[0].data["delivered"] else None


async def _inject(fleet: Fleet, kind: str, name: str, rng: random.Random) -> None:
    hold = rng.uniform(2.0, 6.0)  # how long a reversible fault lasts
    if kind == "restart":
        await fleet.restart_relay(name)
    elif kind == "stop":
        await fleet.stop_relay(name)
        await asyncio.sleep(hold)
        await fleet.start_relay(name)
    elif kind == "pause":
        await fleet.pause_relay(name)
        await asyncio.sleep(hold)
        await fleet.unpause_relay(name)
    elif kind == "loss":
        await fleet.udp_loss(name, 0.5)
        await asyncio.sleep(hold)
        await fleet.clear_udp_loss(name)
    elif kind == "partition":
        async with fleet.partitioned(CLIENT_ID):
            await asyncio.sleep(hold)


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


if __name__ == "__main__":
    sys.exit(main())
