"""The example CI pipeline (.github/workflows/e2e.yml) is a valid GitHub Actions workflow that runs
the README's test command, caches the base image where the bootstrap writes it and keeps the reports.

The schema check uses check-jsonschema's vendored copy of the GitHub workflow schema (no network).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workflow_matches_the_github_schema():
    result = _check(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_can_fail(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps: nope\n")
    assert _check(bad).returncode != 0


@pytest.mark.parametrize(
    "needle",
    [
        "run: make test",  # the README's test command
        "path: results/",  # JUnit XML + HTML report + histories
        "if: always()",  # kept when the run fails too
        "BASE_CACHE:",  # the bootstrap writes its tarball where the cache step looks
    ],
)
def test_workflow_runs_the_suite_and_keeps_what_it_needs(needle):
    assert needle in WORKFLOW.read_text()


def test_cache_path_is_where_the_base_bootstrap_writes():
    text = WORKFLOW.read_text()
    assert "BASE_CACHE: ${{ github.workspace }}/.cache/base" in text and "path: .cache/base" in text
    assert "BASE_CACHE" in (ROOT / "images" / "base.sh").read_text()
