"""The ERROR-log rule itself must be able to fail a test."""

from pathlib import Path

import pytest

PLUGIN_CONFTEST = 'pytest_plugins = ["tests.plugins.no_errors"]\n'
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _plugin_importable(monkeypatch):
    # A subprocess, so that the inner test's ERROR records do not reach this test's own collector.
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def test_error_record_fails_the_test(pytester):
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(
        """
        import logging
        def test_logs_error():
            logging.getLogger("connlib.x").error("boom rid=1")
        def test_logs_warning():
            logging.getLogger("connlib.x").warning("Disconnecting from relay; gone rid=1")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*1 ERROR log record(s) during the test*", "*boom rid=1*"])


def test_error_in_teardown_fails_the_test(pytester):
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(
        """
        import logging, pytest
        @pytest.fixture
        def noisy():
            yield
            logging.getLogger("connlib.y").critical("late boom")
        def test_ok(noisy):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*late boom*"])
