"""``python -m harness chaos --schedule FILE`` refuses, before any stack starts, a schedule it cannot
play on the real stack or cannot read (exit 2, naming why); ``tests/e2e/test_schedule_replay.py`` plays one."""

from __future__ import annotations

import json

import pytest

from harness.__main__ import main
from harness.schedule_runner import UnplayableSchedule, check_playable
from sim.schedule import Fault, Schedule


def test_a_schedule_with_faults_docker_cannot_play_is_refused_naming_them():
    schedule = Schedule(1, 60.0, faults=(Fault(1.0, "relay_reboot", "relay-1"), Fault(2.0, "portal_restart", "", 3.0)))
    with pytest.raises(UnplayableSchedule, match="portal_restart"):
        check_playable(schedule)
    with pytest.raises(UnplayableSchedule, match="only loss on a relay"):
        check_playable(Schedule(1, 60.0, faults=(Fault(1.0, "loss", "client", 2.0, rate=0.3),)))
    check_playable(Schedule(1, 60.0, faults=(Fault(1.0, "relay_pause", "relay-2", 3.0),)))


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(Schedule(1, 60.0, faults=(Fault(2.0, "peer_restart", "client", 1.0),)).to_json()),
        '{"version": 9, "faults": []}',
        "not json",
    ],
    ids=["unplayable", "version", "syntax"],
)
def test_the_cli_refuses_before_starting_a_stack(tmp_path, capsys, text):
    path = tmp_path / "schedule.json"
    path.write_text(text)
    assert main(["chaos", "--schedule", str(path), "--results", str(tmp_path / "results")]) == 2
    assert f"--schedule {path}" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # nothing ran
