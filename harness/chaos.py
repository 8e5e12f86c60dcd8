"""``python -m harness chaos``: random relay faults against a live stream, each followed by a bounded
wait for the stream to come back (``RECOVERY_BOUND``). Works on any fleet backend; a fault the backend
cannot model is a skipped row."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from . import checks
from .fleet import CLIENT_ID, FaultNotSupported, Fleet
from .report import Results
from .waiting import wait_for

RECOVERY_BOUND = 15.0
FAULTS = ("restart", "pause", "stop", "loss", "partition")


async def run(fleet: Fleet, args: argparse.Namespace, results: Results) -> int:
    """Random faults on the relay carrying the client's stream (``args.faults``, ``args.duration``,
    ``args.seed``); one results row per fault; 1 if the stream did not come back within
    ``RECOVERY_BOUND`` after one of them."""
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
                return checks.resumed_at(h, t0) or checks.flowing_since(h, t0)

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
