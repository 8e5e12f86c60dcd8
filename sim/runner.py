"""Running schedules: one run (``run``), a seeded exploration (``explore``), shrinking a failure to
a minimal schedule (``shrink``). A run is a pure function of (schedule, disabled fixes): its
``digest`` (SHA-256 of every datagram, frame and event in order) is the same on every replay.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .faults import install
from .invariants import Checker, install_error_capture
from .schedule import Schedule, random_schedule
from .world import Violation, World

log = logging.getLogger("sim")

ATTRIBUTION_MARGIN = 30.0


@dataclass(frozen=True)
class Result:
    schedule: Schedule
    violation: Violation | None
    digest: str
    cpu_s: float
    trace_items: int

    @property
    def ok(self) -> bool:
        return self.violation is None


def run(
    schedule: Schedule, disabled_fixes: Iterable[str] = (), *, trace: bool = True, ignore: Iterable[str] = ()
) -> Result:
    """One schedule; ``ignore``: violation kinds of known bugs that are noted but do not stop it."""
    started = time.process_time()
    errors = install_error_capture()
    try:
        world = World(
            schedule.seed,
            relays=schedule.relays,
            disabled_fixes=disabled_fixes,
            rate=schedule.rate,
            keepalive=schedule.keepalive_s,
            channel_lifetime=schedule.channel_lifetime_s,
            trace=trace,
        )
        Checker(world, errors, frozenset(ignore)).start()
        install(world, schedule)
        world.run(schedule.duration_s)
    finally:
        logging.getLogger().removeHandler(errors)
    violation = world.violations[0] if world.violations else None
    return Result(schedule, violation, world.digest(), time.process_time() - started, world.trace_items)


def shrink(
    result: Result,
    disabled_fixes: Iterable[str] = (),
    *,
    budget: int = 60,
    attribute: bool = False,
    ignore: Iterable[str] = (),
) -> Result:
    """The smallest schedule (fewest faults, shortest run) that still breaks the same invariant;
    ``ignore``: the kinds the run that found it went past (each attempt goes past them too)."""
    assert result.violation is not None
    fixes, ignored = tuple(disabled_fixes), tuple(ignore)
    kind = result.violation.kind
    best = result

    def fails(candidate: Schedule) -> Result | None:
        attempt = run(candidate, fixes, trace=False, ignore=ignored)
        if attempt.violation is None or attempt.violation.kind != kind:
            return None
        if attribute and fixes and _same_without_fixes(attempt, ignored):
            return None  # shrunk into another bug, one the fixes do not cure
        return attempt

    # Nothing after the violation matters: end the run just after it (the prefix is unchanged).
    cut = replace(best.schedule, duration_s=float(math.ceil(best.violation.at + 1)))  # type: ignore[union-attr]
    cut = replace(cut, faults=tuple(f for f in cut.faults if f.at < cut.duration_s))
    best = fails(cut) or best
    tries, changed = 0, True
    while changed and tries < budget:
        changed = False
        for index in range(len(best.schedule.faults)):
            tries += 1
            attempt = fails(best.schedule.without(index))
            if attempt is not None:
                best, changed = attempt, True
                break
    final = run(best.schedule, fixes, ignore=ignored)  # with the trace, for the digest
    return final if final.violation is not None else best


def explore(
    seed: int,
    count: int,
    disabled_fixes: Iterable[str] = (),
    *,
    duration_s: float = 600.0,
    on_result: Callable[[int, Result], None] | None = None,
    attribute: bool = False,
    exclude: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> tuple[int, Result | None]:
    """Run ``count`` random schedules from ``seed`` on; stop at the first violation.

    ``attribute``: with fixes disabled, only count a violation that the same schedule with every
    fix on does not show (the same kind at the same time): the twin's bug, not a bug of its own.
    """
    fixes = tuple(disabled_fixes)
    for index in range(count):
        schedule = random_schedule(seed + index, duration_s=duration_s, exclude=exclude)
        result = run(schedule, fixes, trace=False, ignore=ignore)
        if on_result is not None:
            on_result(index, result)
        if result.violation is None:
            continue
        if attribute and fixes and _same_without_fixes(result, ignore):
            continue
        return index + 1, result
    return count, None


def _same_without_fixes(result: Result, ignore: Iterable[str] = ()) -> bool:
    """Whether the fixes do not cure this run: with every fix on, something breaks as early."""
    assert result.violation is not None
    baseline = run(result.schedule, (), trace=False, ignore=ignore)
    v = baseline.violation
    return v is not None and v.at < result.violation.at + ATTRIBUTION_MARGIN
