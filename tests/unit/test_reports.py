"""The results folder's JUnit XML and HTML report, from a history written the way the harness does."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from harness import html_report
from harness.history import History
from harness.report import Results


def _scenario_history() -> History:
    clock = iter(float(t) for t in range(1000, 2000)).__next__
    history = History(clock=clock)  # 1000, 1001, ... per op
    history.observe("relay_added", "client", relay="relay-1")  # 1000
    for n in range(5):  # 1001..1005
        history.observe("stream", "client", sent=50 * (n + 1), delivered=50 * (n + 1), lost=0)
    history.fault("pause", "relay-1", "invoke")  # 1006
    history.fault("pause", "relay-1", "ok")  # 1007
    history.observe("stream", "client", sent=300, delivered=260, lost=40)  # 1008
    history.observe("path_lost", "client", relay="relay-1")  # 1009
    history.observe("relay_removed", "client", relay="relay-1", reason="no response")  # 1010
    history.observe("migrating", "client", peer="gateway", **{"from": "relay-1", "to": "relay-2"})  # 1011
    history.fault("unpause", "relay-1", "invoke")  # 1012
    history.fault("unpause", "relay-1", "ok")  # 1013
    history.observe("gap", "client", duration_s=5.0)  # 1014: 1009..1014
    history.observe("stream", "client", sent=350, delivered=300, lost=40)  # 1015
    return history


def _results(tmp_path, verdict="passed"):
    results = Results(tmp_path, "session-1234")
    row = results.row("tests/e2e/test_scenarios.py::test_pause", "4. relay paused", "docker")
    row.figures.update(resumed_s=5.3, gap_s=5.0)
    row.verdict, row.duration_s = verdict, 12.5
    results.write_history(row.nodeid, _scenario_history())
    failed = results.row("tests/e2e/test_harness.py::test_selftest", "", "docker")
    failed.verdict, failed.reason = "FAILED", "AssertionError: bug (no probe): relay-2 still held"
    results.finish()
    return results


def test_junit_has_one_testcase_per_scenario_with_its_figures(tmp_path):
    results = _results(tmp_path)
    suite = ET.parse(results.dir / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    pause = cases["4. relay paused"]
    assert pause.get("classname") == "tests.e2e.test_scenarios" and pause.get("time") == "12.500"
    props = {p.get("name"): p.get("value") for p in pause.iter("property")}
    assert props == {"backend": "docker", "resumed_s": "5.300", "gap_s": "5.000"}
    assert pause.find("failure") is None
    failure = cases["test_selftest"].find("failure")
    assert failure is not None and failure.get("message") == "AssertionError: bug (no probe): relay-2 still held"
    assert failure.text == "FAILED: AssertionError: bug (no probe): relay-2 still held"  # what broke, not just that


def test_fault_bands_pair_a_fault_with_the_one_that_undoes_it():
    bands = html_report.fault_bands(_scenario_history().ops)
    assert [(b.what, b.target, b.start, b.end) for b in bands] == [("pause", "relay-1", 1006.0, 1013.0)]


def test_a_fault_never_undone_ends_with_its_own_action():
    history = History(clock=iter([1.0, 3.0, 10.0, 11.5]).__next__)
    history.fault("restart", "relay-2", "invoke")
    history.fault("restart", "relay-2", "ok")
    history.fault("stop", "relay-1", "invoke")
    history.fault("stop", "relay-1", "ok")
    bands = html_report.fault_bands(history.ops)
    assert [(b.what, b.start, b.end) for b in bands] == [("restart", 1.0, 3.0), ("stop", 10.0, 11.5)]


def test_report_draws_bands_stream_gaps_and_relay_events_where_the_history_puts_them(tmp_path):
    results = _results(tmp_path)
    page = (results.dir / "report.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained
    band = re.search(r'<rect class="fault"[^>]*data-what="pause"[^>]*data-start="([\d.]+)" data-end="([\d.]+)"', page)
    assert band and (float(band[1]), float(band[2])) == (6.0, 13.0)  # seconds since the first op
    gap = re.search(r'<rect class="gap"[^>]*data-start="([\d.]+)" data-end="([\d.]+)"', page)
    assert gap and (float(gap[1]), float(gap[2])) == (9.0, 14.0)
    assert page.count('class="lost"') == 1 and page.count('class="delivered"') == 7
    assert "removed relay-1 (no response)" in page and "migrated gateway relay-1 → relay-2" in page
    assert 'class="verdict pass"' in page and 'class="verdict fail"' in page


def test_report_command_rewrites_both_files(tmp_path):
    from harness.__main__ import main

    results = _results(tmp_path)
    (results.dir / "junit.xml").unlink()
    (results.dir / "report.html").unlink()
    assert main(["report", str(results.dir)]) == 0
    assert (results.dir / "junit.xml").exists() and (results.dir / "report.html").exists()
