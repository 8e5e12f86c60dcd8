"""The issue-9 bounds the Docker scenarios assert, on hand-made histories: the no-zombie check
over the peers' ``relays`` reports and the peak request rate of ``harness.request_meter``."""

from __future__ import annotations

from harness import checks
from harness.history import History
from harness.request_meter import RelayRate


def history_of(reports: list[tuple[float, list[str], list[str]]]) -> History:
    clock = iter(t for t, _, _ in reports)
    history = History(clock=lambda: next(clock))
    for _, held, usable in reports:
        history.observe("relays", "client-1", held=held, usable=usable)
    return history


def test_a_relay_held_without_an_allocation_past_the_bound_is_a_zombie():
    reports = [(float(t), ["r1", "r2"], ["r2"]) for t in range(0, 18)]
    (zombie,) = checks.zombies(history_of(reports), "client-1", after=-1.0)
    assert (zombie.relay, zombie.since, zombie.until) == ("r1", 0.0, 17.0)


def test_a_relay_allocated_or_given_up_within_the_bound_is_not_a_zombie():
    allocated = [(float(t), ["r1"], [] if t < 10 else ["r1"]) for t in range(0, 30)]
    freed: list[tuple[float, list[str], list[str]]] = [(float(t), ["r1"] if t < 14 else [], []) for t in range(30)]
    flapping = [(float(t), ["r1"], ["r1"] if t % 10 == 0 else []) for t in range(0, 30)]
    for reports in (allocated, freed, flapping):
        assert checks.zombies(history_of(reports), "client-1", after=-1.0) == []


def test_the_peak_rate_is_the_busiest_window_not_one_burst():
    rate = RelayRate([(0.0, 0), (1.0, 12), (2.0, 0), (3.0, 0), (4.0, 0), (5.0, 30), (6.0, 30), (7.0, 30)])
    assert rate.total == 102
    assert rate.peak(3.0) == 30.0  # 5..8 s
    assert RelayRate([(0.0, 0), (1.0, 12), (2.0, 0), (3.0, 0)]).peak(3.0) == 4.0
