"""JUnit XML for a results folder: one ``testcase`` per scenario, its figures as properties.

CI systems show JUnit XML in their test views; this file is what a run's ``summary.json`` says in
that form. Verdicts (``harness.pytest_plugin``, the chaos CLI): ``passed``/``xfailed``/``recovered``
pass, ``skipped…`` is ``skipped``, anything else (``FAILED``, ``ERROR (setup)``…) is a ``failure`` with the
verdict as its message.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SUITE_NAME = "connlib-relays e2e"
PASSING = frozenset({"passed", "xfailed", "recovered"})


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def junit_xml(rows: Iterable[Mapping[str, Any]], wall_s: float = 0.0) -> bytes:
    """``rows`` as ``summary.json`` holds them (nodeid, scenario, backend, figures, verdict, duration_s)."""
    suite = ET.Element("testsuite", name=SUITE_NAME)
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    for row in rows:
        nodeid = str(row.get("nodeid", ""))
        module, _, name = nodeid.rpartition("::")
        case = ET.SubElement(
            suite,
            "testcase",
            classname=module.replace("/", ".").removesuffix(".py") or SUITE_NAME,
            name=str(row.get("scenario") or name or nodeid),
            time=f"{float(row.get('duration_s') or 0.0):.3f}",
        )
        properties = ET.SubElement(case, "properties")
        ET.SubElement(properties, "property", name="backend", value=str(row.get("backend", "")))
        for key, value in (row.get("figures") or {}).items():
            ET.SubElement(properties, "property", name=str(key), value=_text(value))
        verdict = str(row.get("verdict", "not run"))
        counts["tests"] += 1
        if verdict in PASSING:
            continue
        if verdict.startswith("skipped"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=verdict)
        else:
            counts["failures"] += 1
            reason = str(row.get("reason") or "")
            failure = ET.SubElement(case, "failure", message=(reason or verdict)[:500], type="verdict")
            failure.text = f"{verdict}: {reason}" if reason else verdict
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{wall_s:.3f}")
    ET.indent(suite)
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)


def write(folder: Path, rows: Iterable[Mapping[str, Any]], wall_s: float = 0.0) -> Path:
    path = folder / "junit.xml"
    path.write_bytes(junit_xml(rows, wall_s))
    return path
