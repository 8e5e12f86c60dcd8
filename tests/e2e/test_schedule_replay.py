"""A simulator schedule played on the real Docker stack (``python -m harness chaos --schedule FILE``,
the command a person runs to confirm a simulated finding on real coturn): the faults happen when the
schedule says, the run checks the stream and the no-zombie bound after the last heal, and exits 0.
The schedule is shaped like a random one: a channel lifetime shorter than 600 s (the stack's, both
sides) and a client idle period longer than it, whose end is the last heal: the stream must come back
on a new connection after the client's channels lapsed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.fleet import CLIENT_ID
from sim.schedule import Fault, Schedule

from . import support as ts

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCHEDULE = Schedule(
    seed=7,
    duration_s=30.0,
    relays=2,
    faults=(
        Fault(1.0, "relay_reboot", "relay-1", 2.0, new_secret=False),
        Fault(3.0, "peer_portal_cut", "client", 2.0),
        Fault(6.0, "relay_pause", "relay-2", 3.0),
        Fault(9.5, "stream_idle", "client", 11.0),  # past the channel lifetime and the gateway's ICE timeout
        Fault(10.0, "rotate_credentials", "relay-1"),
    ),
    channel_lifetime_s=10.0,  # coturn's minimum useful one: scenario 10's
)


def test_a_simulator_schedule_plays_on_the_docker_stack(tmp_path):
    path = tmp_path / "schedule.json"
    path.write_text(SCHEDULE.dumps())
    done = subprocess.run(
        [sys.executable, "-m", "harness", "chaos", "--schedule", str(path), "--results", str(tmp_path / "results")],
        cwd=ts.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = ts.json_lines(done.stdout)
    summaries = [line for line in lines if line.get("event") == "schedule_done"]
    assert len(summaries) == 1, f"exit {done.returncode}, no one summary line:\n{done.stderr[-3000:]}"
    (summary,) = summaries
    assert done.returncode == 0, f"{summary}\n{done.stderr[-3000:]}"
    assert summary["verdict"] == "passed" and summary["faults"] == 5 and summary["zombies"] == 0
    assert "not played on the real stack: rate 0.25/s" in done.stderr  # the simulator's rate, said once
    (history,) = {path.resolve() for path in (tmp_path / "results").glob("*/history/chaos.jsonl")}  # and latest/
    ops = [json.loads(line) for line in history.read_text().splitlines()]
    played = [(op["what"], op["target"]) for op in ops if op.get("kind") == "fault" and op.get("outcome") == "ok"]
    for what, target in [
        ("restart", "relay-1"),
        ("pause", "relay-2"),
        ("unpause", "relay-2"),
        ("rotate_credentials", "relay-1"),
        ("stream_idle", CLIENT_ID),
        ("stream_resume", CLIENT_ID),
    ]:
        assert (what, target) in played, played
    # The client itself went idle and came back (its own lines), then streamed on a new connection.
    client = [op for op in ops if op.get("kind") == "observe" and op.get("target") == CLIENT_ID]
    (idle,) = [op for op in client if op["what"] == "stream_idle"]
    (resumed,) = [op for op in client if op["what"] == "stream_resumed"]
    assert resumed["t"] - idle["t"] == pytest.approx(11.0, abs=1.0)
    assert [op for op in client if op["what"] == "connected" and op["t"] > resumed["t"]], "no new connection"
    # An echo came back: a gap line (written on the echo that ends it) or a report with more delivered.
    before = max((op for op in client if op["what"] == "stream" and op["t"] <= resumed["t"]), key=lambda op: op["t"])
    after = [op for op in client if op["t"] > resumed["t"]]
    gaps = [op for op in after if op["what"] == "gap"]
    more = [op for op in after if op["what"] == "stream" and op["data"]["delivered"] > before["data"]["delivered"]]
    assert gaps or more, "no echo after the resume"
    # ... and the idle time is no gap: the first one after the resume is measured from it.
    assert all(op["data"]["start"] >= resumed["data"]["ts"] - 0.01 for op in gaps), gaps
    assert summary["gap_s"] < 11.0, "the idle time counted as a gap"
    print(f"\nschedule on Docker: {summary}")
