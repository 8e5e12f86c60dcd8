"""A simulator schedule played on the real Docker stack (``python -m harness chaos --schedule FILE``,
the command a person runs to confirm a simulated finding on real coturn): the faults happen when the
schedule says, the run checks the stream and the no-zombie bound after the last heal, and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
        Fault(10.0, "rotate_credentials", "relay-1"),
    ),
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
    (summary,) = [line for line in lines if line.get("event") == "schedule_done"]
    assert done.returncode == 0, f"{summary}\n{done.stderr[-3000:]}"
    assert summary["verdict"] == "passed" and summary["faults"] == 4 and summary["zombies"] == 0
    history = (tmp_path / "results").glob("*/history/chaos.jsonl")
    ops = [json.loads(line) for file in history for line in file.read_text().splitlines()]
    played = [(op["what"], op["target"]) for op in ops if op.get("kind") == "fault" and op.get("outcome") == "invoke"]
    for what, target in [
        ("restart", "relay-1"),
        ("pause", "relay-2"),
        ("unpause", "relay-2"),
        ("rotate_credentials", "relay-1"),
    ]:
        assert (what, target) in played, played
    print(f"\nschedule on Docker: {summary}")
