"""The suite's order: test files that take longest first, the ones that need Docker after the rest.

Side by side (``make test``: pytest-xdist, ``--dist loadgroup --no-loadscope-reorder``) the workers
take tests in collection order as they free up, so the run ends when the worker that drew the last
long test finishes it: in pytest's alphabetical order the e2e schedule replay (30 s) came last and
one worker ran ~45 s after the other had nothing left. Files are ordered by their longest job
(a test, or an ``xdist_group``'s tests, which one worker runs in a row), longest first: longest
processing time first, at the file's grain so that module-scoped fixtures are still set up once per
worker (inside a file the order stays the file's). By the longest job, not the file's total: a file
of twenty 15 s scenarios is twenty jobs that spread over both workers, while a file with one 40 s
test handed out last keeps one worker busy 40 s alone (a run ordered by totals ended so, 60 s apart).

Files with a test marked ``docker`` come after all the others: on a fresh machine the images are
built first (minutes: ``harness.pytest_plugin`` starts that build in the background when the run
starts), and the other suites keep both workers busy meanwhile instead of waiting on the build lock.

The durations are ``tests/durations.json`` (``--durations-file``: test id → seconds of setup, call
and teardown), written by a run with ``--store-durations`` (``make durations``); a test it does not
know counts ``UNKNOWN_S``. The order only decides how soon the suite ends, never what it runs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from tests.plugins.xdist_groups import group_of

DURATIONS = Path(__file__).resolve().parents[1] / "durations.json"
UNKNOWN_S = 0.5
PRECISION = 2  # decimals kept in the file: the order needs no more, and diffs stay small


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-durations",
        action="store_true",
        help="write the tests' durations into the durations file (merged with the tests this run did not run)",
    )
    parser.addoption(
        "--durations-file",
        type=Path,
        default=DURATIONS,
        help=f"the durations the order comes from (default {DURATIONS.parent.name}/{DURATIONS.name})",
    )


def bare_id(nodeid: str) -> str:
    """A test's id without xdist's ``@group`` suffix (``tests/plugins/xdist_groups.py``)."""
    head, sep, tail = nodeid.rpartition("::")
    return f"{head}{sep}{tail.split('@', 1)[0]}" if sep else nodeid


def load(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def ordered(items: list[pytest.Item], durations: dict[str, float]) -> list[pytest.Item]:
    """``items`` by file: files without a ``docker`` test first, then by their longest job (a test,
    or all the tests of one ``xdist_group``, which one worker runs in a row), longest first, then
    by total; ties and the tests inside a file keep the collection's order."""
    jobs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    docker: dict[str, bool] = defaultdict(bool)
    for item in items:
        file = item.nodeid.split("::", 1)[0]
        job = group_of(item) or item.nodeid
        jobs[file][job] += durations.get(bare_id(item.nodeid), UNKNOWN_S)
        docker[file] |= item.get_closest_marker("docker") is not None
    longest = {file: max(times.values()) for file, times in jobs.items()}
    total = {file: sum(times.values()) for file, times in jobs.items()}
    position = {id(item): i for i, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[bool, float, float, int]:
        file = item.nodeid.split("::", 1)[0]
        return docker[file], -longest[file], -total[file], position[id(item)]

    return sorted(items, key=key)


@pytest.hookimpl(trylast=True)  # after the hooks that mark tests ``docker`` (harness.pytest_plugin)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = ordered(items, load(config.getoption("--durations-file")))


class _Recorder:
    """Sums each test's phases as the reports arrive (on the xdist controller: every worker's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.measured: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.measured[bare_id(report.nodeid)] += report.duration

    def pytest_sessionfinish(self) -> None:
        if self.measured:
            merged = {**load(self.path), **{k: round(v, PRECISION) for k, v in self.measured.items()}}
            self.path.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--store-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(config.getoption("--durations-file")), "longest-first-recorder")
