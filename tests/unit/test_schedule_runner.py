"""``python -m harness chaos --schedule FILE`` refuses, before any stack starts, a schedule it cannot
play on the real stack or cannot read (exit 2, naming why); ``tests/e2e/test_schedule_replay.py`` plays one."""

from __future__ import annotations

import json
from typing import cast

import pytest

from harness.__main__ import main
from harness.docker_fleet import plan
from harness.fleet import Fleet, StackOptions
from harness.schedule_runner import (
    UnplayableSchedule,
    check_playable,
    inject,
    merged_idle_periods,
    stack_settings,
    unplayed_settings,
)
from sim.schedule import Fault, Schedule


def test_a_schedule_with_faults_docker_cannot_play_is_refused_naming_them():
    """Every kind the simulator draws is played; a hand-written quota code coturn is not made to
    answer is refused (as are idle periods of the gateway and fractional channel lifetimes, below)."""
    schedule = Schedule(
        1, 60.0, faults=(Fault(1.0, "relay_reboot", "relay-1"), Fault(2.0, "quota", "relay-2", 9.0, code=500))
    )
    with pytest.raises(UnplayableSchedule, match=r"quota 500 on relay-2: played are \[486, 508\]"):
        check_playable(schedule)
    check_playable(Schedule(1, 60.0, faults=(Fault(1.0, "relay_pause", "relay-2", 3.0),)))


def test_restarts_cuts_black_holes_quotas_address_changes_and_loss_on_a_peer_are_played():
    """``tests/e2e/test_schedule_faults.py`` plays each of them on a real stack."""
    check_playable(
        Schedule(
            1,
            60.0,
            faults=(
                Fault(1.0, "peer_restart", "gateway"),
                Fault(2.0, "portal_restart", "portal", 3.0),
                Fault(3.0, "peer_relay_cut", "client", 5.0, other="relay-2"),
                Fault(4.0, "relay_relay_cut", "relay-1", 5.0, other="relay-1"),
                Fault(5.0, "portal_blackhole", "relay-3", 5.0),
                Fault(6.0, "portal_blackhole", "gateway", 5.0),
                Fault(7.0, "quota", "relay-1", 9.0, code=486),
                Fault(7.5, "quota", "relay-2", 9.0, code=508),
                Fault(8.0, "address_change", "relay-2"),
                Fault(9.0, "loss", "client", 2.0, rate=0.3),
            ),
        )
    )


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(Schedule(1, 60.0, faults=(Fault(2.0, "stream_idle", "gateway", 5.0),)).to_json()),
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


def test_a_clients_idle_periods_are_played_and_only_the_clients():
    idle = Schedule(1, 60.0, faults=(Fault(5.0, "stream_idle", "client", 40.0), Fault(8.0, "relay_reboot", "relay-1")))
    check_playable(idle)
    with pytest.raises(UnplayableSchedule, match="only the client streams"):
        check_playable(Schedule(1, 60.0, faults=(Fault(5.0, "stream_idle", "gateway", 40.0),)))


def test_the_schedules_channel_lifetime_is_every_relays_and_both_peers():
    """coturn's channel-lifetime through each relay's TURN_EXTRA, ``--channel-lifetime`` on both
    peers' command lines: what the Docker backend creates (``plan``, no engine needed)."""
    assert stack_settings(Schedule(1, 60.0)) == {}  # 600 s: the stack's own
    schedule = Schedule(1, 60.0, relays=3, channel_lifetime_s=30.0)
    stack = plan({}, StackOptions(relays=3, **stack_settings(schedule)))
    assert [r.environment.get("TURN_EXTRA") for r in stack.relays] == ["channel-lifetime=30"] * 3
    for peer in ("client", "gateway"):
        (service,) = stack.by_role(peer)
        assert service.option("--channel-lifetime") == "30", service.command
    with pytest.raises(UnplayableSchedule, match="whole seconds"):
        check_playable(Schedule(1, 60.0, channel_lifetime_s=12.5))


def test_the_rate_and_keepalive_the_stack_does_not_play_are_named():
    simulated = Schedule(1, 60.0)  # the simulator's 0.25/s and 2 s keep-alive
    assert unplayed_settings(simulated, 50.0) == (
        "schedule settings not played on the real stack: rate 0.25/s (the stream runs at 50/s); "
        "keepalive_s 2 (connlib's 1 s)"
    )
    assert unplayed_settings(Schedule(1, 60.0, rate=50.0, keepalive_s=1.0), 50.0) is None


def test_overlapping_idle_periods_are_played_as_one_as_the_simulators_client_lives_them():
    reboot = Fault(2.0, "relay_reboot", "relay-1", 1.0)
    first, second, apart = (
        Fault(5.0, "stream_idle", "client", 40.0),
        Fault(30.0, "stream_idle", "client", 40.0),
        Fault(90.0, "stream_idle", "client", 5.0),
    )
    assert merged_idle_periods((reboot, first, second, apart)) == [
        reboot,
        Fault(5.0, "stream_idle", "client", 65.0),  # 5 .. 70: until the later end
        apart,
    ]
    inside = Fault(10.0, "stream_idle", "client", 5.0)
    assert merged_idle_periods((first, inside)) == [first]


async def test_portal_cuts_and_rotations_are_not_played_while_the_portal_is_down(caplog):
    """A portal_restart has the admin API down: its partitions and rotations are skipped (a WARN),
    as the simulator skips a partition of a portal that is down, instead of failing the run."""

    class DownFleet:
        portal_down = True

        def __getattr__(self, name):
            raise AssertionError(f"{name} called while the portal is down")

    for fault in (
        Fault(1.0, "peer_portal_cut", "client", 5.0),
        Fault(1.0, "relay_portal_cut", "relay-1", 5.0),
        Fault(1.0, "rotate_credentials", "relay-2"),
    ):
        assert await inject(cast(Fleet, DownFleet()), fault) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3
