"""Any log record at ERROR or above during a test fails that test.

ERROR means a bug in this project; an expected relay loss is WARN or INFO (spec §5). Records are
collected from the root logger across setup, call and teardown; the call phase reports what it saw,
teardown reports what came after.
"""

from __future__ import annotations

import logging

import pytest

ALLOW_MARK = "allow_error_logs"


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.reported = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unreported(self) -> list[logging.LogRecord]:
        fresh = self.records[self.reported :]
        self.reported = len(self.records)
        return fresh


_KEY = pytest.StashKey[_Collector]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{ALLOW_MARK}: the test itself expects ERROR records (tests of this plugin)")


def _describe(records: list[logging.LogRecord]) -> str:
    lines = [f"  {r.levelname} {r.name}: {r.getMessage()}" for r in records[:10]]
    return f"{len(records)} ERROR log record(s) during the test (ERROR means bug):\n" + "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    item.stash[_KEY] = collector
    try:
        yield
    finally:
        root.removeHandler(collector)


def _check(item: pytest.Item, outcome) -> None:
    collector = item.stash.get(_KEY, None)
    if collector is None or item.get_closest_marker(ALLOW_MARK):
        return
    fresh = collector.unreported()
    if fresh and outcome.excinfo is None:
        outcome.force_exception(pytest.fail.Exception(_describe(fresh), pytrace=False))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    outcome = yield
    _check(item, outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem):
    outcome = yield
    _check(item, outcome)
