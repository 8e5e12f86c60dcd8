"""``python -m sim`` (and ``python -m harness sim``): random fault schedules against the simulated world (``sim/world.py``).

    python -m sim --seed S --count N [--disable-fix NAME]... [--duration 600]
    python -m sim --seed S --replay [--disable-fix NAME]...      # re-run schedule S, print its digest
    python -m sim --schedule FILE [--replay]                      # run a schedule JSON (e.g. a minimal one)

Exit 0 when every schedule holds, 1 on a violation: the seed, the violation and the shrunk
(minimal) schedule are printed as one JSON object on stdout; 64 on bad arguments.
``main(argv, prog)`` is the hook for ``python -m harness sim``: ``return sim.cli.main(argv[1:], prog="python -m harness sim")``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from connlib.core import fixes

from .runner import Result, explore, run, shrink
from .schedule import Schedule, random_schedule


def build_parser(prog: str = "python -m sim") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="deterministic simulation of relays, portal and peers")
    parser.add_argument("--seed", type=int, default=0, help="first schedule seed (schedules are seed, seed+1, ...)")
    parser.add_argument("--count", type=int, default=100, help="number of random schedules")
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds per schedule")
    parser.add_argument(
        "--disable-fix", action="append", default=[], metavar="NAME", help=f"one of {sorted(fixes.KNOWN_FIXES)}"
    )
    parser.add_argument("--replay", action="store_true", help="run one schedule (--seed or --schedule) with its trace")
    parser.add_argument("--schedule", metavar="FILE", help="a schedule JSON to run instead of random ones")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="with --disable-fix: skip violations the same schedule also shows with every fix on",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="KIND",
        help="a fault kind never drawn (or relay_reboot:same_secret); e.g. to look past a known bug",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="CHECK",
        help="a violation kind that is noted but does not fail the run (a known bug)",
    )
    parser.add_argument("--no-shrink", action="store_true", help="report a violation without shrinking it")
    return parser


def _report(result: Result, disabled: list[str], **extra: object) -> dict:
    assert result.violation is not None
    return {
        "seed": result.schedule.seed,
        "disabled_fixes": disabled,
        "violation": result.violation.to_json(),
        "digest": result.digest,
        "schedule": result.schedule.to_json(),
        **extra,
    }


def main(argv: list[str] | None = None, prog: str = "python -m sim") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        disabled = sorted(fixes.checked(args.disable_fix))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 64
    if args.schedule or args.replay:
        if args.schedule:
            with open(args.schedule) as handle:
                data = json.load(handle)
            schedule = Schedule.from_json(data.get("schedule", data))
        else:
            schedule = random_schedule(args.seed, duration_s=args.duration, exclude=args.exclude)
        result = run(schedule, disabled, ignore=args.ignore)
        summary = {
            "seed": schedule.seed,
            "ok": result.ok,
            "digest": result.digest,
            "trace_items": result.trace_items,
            "violation": result.violation.to_json() if result.violation else None,
            "schedule": schedule.to_json(),
        }
        print(json.dumps(summary, sort_keys=True))
        return 0 if result.ok else 1
    started = time.monotonic()
    cpu = time.process_time()
    ran, failure = explore(
        args.seed,
        args.count,
        disabled,
        duration_s=args.duration,
        attribute=args.attribute,
        exclude=args.exclude,
        ignore=args.ignore,
    )
    elapsed = time.monotonic() - started
    if failure is None:
        rate = ran / (time.process_time() - cpu) * 60 if ran else 0.0
        print(
            json.dumps(
                {
                    "ok": True,
                    "schedules": ran,
                    "simulated_s_each": args.duration,
                    "wall_s": round(elapsed, 2),
                    "schedules_per_cpu_min": round(rate, 1),
                }
            )
        )
        return 0
    found_after = round(time.monotonic() - started, 2)
    cpu_after = round(time.process_time() - cpu, 2)
    minimal = failure if args.no_shrink else shrink(failure, disabled, attribute=args.attribute, ignore=args.ignore)
    print(
        json.dumps(
            _report(
                minimal,
                disabled,
                schedules_run=ran,
                wall_s_to_first_violation=found_after,
                cpu_s_to_first_violation=cpu_after,
                original_faults=len(failure.schedule.faults),
                original_violation=failure.violation.to_json() if failure.violation else None,
            ),
            sort_keys=True,
        )
    )
    return 1
