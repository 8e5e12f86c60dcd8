"""``python -m harness``: the chaos harness from the command line.

    python -m harness images [--tag latest]        build the images (what `make images` runs)
    python -m harness wait-ready --project P       wait until a compose stack streams (`make up`)
    python -m harness sweep                        remove what dead test sessions left in Docker
    python -m harness up [--relays N] ...          start a stack, print where it is, follow its history
    python -m harness chaos [--duration 60] ...    random relay faults against a live stream; exit 1 if
                                                   the stream did not come back after one, or on ERROR lines
    python -m harness chaos --schedule FILE        play a simulator schedule (its JSON) on the real stack
    python -m harness summary results/2026*        figures of many runs together: per scenario, the
                                                   verdicts and p50/p95/max of each figure
    python -m harness report results/latest        (re)write a results folder's junit.xml and report.html
    python -m harness sim --seed S --count N ...   the deterministic simulation (``python -m sim``)

Both ``up`` and ``chaos`` take ``--fleet docker|process`` (default docker) and write the history
and a summary under ``results/`` (``--results``). Ctrl-C (or SIGTERM) tears the stack down; a
``kill -9`` leaves it to the next run's sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path

from sim import cli as sim_cli
from sim.schedule import Schedule

from . import chaos, checks, compose_ready, schedule_runner
from .docker_engine import DockerUnavailable, connect
from .docker_fleet import DockerFleet
from .docker_session import DockerSession
from .fleet import Fleet, StackOptions
from .history import new_history
from .images import E2E_TAG, MODES, PREFIX, ImagesUnavailable, check_prefix, ensure_images
from .process_fleet import ProcessFleet
from .report import Results, aggregate, write_reports
from .sweep import sweep

log = logging.getLogger("harness.cli")


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
    report = sub.add_parser("report", help="write junit.xml and report.html of result folders")
    report.add_argument("folders", nargs="+", type=Path)
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
    chaos_args = sub.choices["chaos"]
    chaos_args.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    chaos_args.add_argument("--seed", type=int, default=None)
    chaos_args.add_argument(
        "--faults", default=",".join(chaos.FAULTS), help=f"comma-separated subset of {','.join(chaos.FAULTS)}"
    )
    chaos_args.add_argument(
        "--schedule",
        type=Path,
        default=None,
        help="play a simulator schedule (JSON, as `python -m sim` prints a failing one) instead of random faults",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # its own parser: the same command line as `python -m sim`
        return sim_cli.main(argv[1:], prog="python -m harness sim")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "docker", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "sweep":
        print(sweep(connect()))
        return 0
    if args.command == "images":
        started = time.monotonic()
        try:
            check_prefix(PREFIX)  # before the engine is asked anything
            tags = ensure_images(connect(timeout=900), args.tag, args.mode)
        except (DockerUnavailable, ImagesUnavailable) as exc:
            print(f"images: {exc}", file=sys.stderr)
            return 1
        print(f"images {' '.join(tags.values())} ready in {time.monotonic() - started:.1f}s")
        return 0
    if args.command == "wait-ready":
        return compose_ready.run(args)
    if args.command == "summary":
        print(aggregate(args.folders))
        return 0
    if args.command == "report":
        for folder in args.folders:
            print(write_reports(folder))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    schedule = None
    if getattr(args, "schedule", None) is not None:
        try:
            schedule = Schedule.from_json(json.loads(args.schedule.read_text()))
            schedule_runner.check_playable(schedule)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"--schedule {args.schedule}: {exc}", file=sys.stderr)
            return 2
        args.relays = schedule.relays
        if (unplayed := schedule_runner.unplayed_settings(schedule, args.rate)) is not None:
            print(unplayed, file=sys.stderr)
        if args.fleet == "process" and schedule_runner.stack_settings(schedule):
            print(
                "the process backend does not play channel_lifetime_s (its relays and peers keep 600 s)",
                file=sys.stderr,
            )
    options = StackOptions(
        relays=args.relays,
        debounce=args.debounce,
        rate=args.rate,
        client_disabled_fixes=frozenset(args.disable_fix),
        **(schedule_runner.stack_settings(schedule) if schedule is not None else {}),
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
        if args.command == "up":
            code = await _follow(fleet)
        elif schedule is not None:
            code = await schedule_runner.run_schedule(fleet, schedule, results)
        else:
            code = await chaos.run(fleet, args, results)
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


if __name__ == "__main__":
    sys.exit(main())
