"""docker-compose.yml is valid for Compose v2 too: the Compose Specification's JSON schema (check-jsonschema's
vendored copy, no network), which v2 validates against. Debian's docker-compose 1.29 runs it in the e2e
suite (`make up`, `tests/e2e/test_compose_plain.py`); v2 is not installed on this machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=60
    )


def test_the_compose_file_matches_the_compose_specification():
    result = _check(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_can_fail(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  relay:\n    build:\n      context: .\n      target: [relay]\n")
    assert _check(bad).returncode != 0
