"""The peer image's healthcheck reads the state ``connlib run --status-file`` keeps: healthy while
the portal channel is joined, unhealthy before the first state and after a disconnect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from connlib.app.peer import _write_status

SCRIPT = Path(__file__).resolve().parents[2] / "images" / "peer_health.py"


def _check(path: Path) -> int:
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, timeout=30).returncode


def test_healthy_only_while_joined(tmp_path):
    status = tmp_path / "status.json"
    assert _check(status) == 1  # nothing written yet
    _write_status(str(status), {"portal": "joined", "ts": 1.0})
    assert _check(status) == 0
    _write_status(str(status), {"portal": "disconnected", "ts": 2.0})
    assert _check(status) == 1
    assert not (tmp_path / "status.json.tmp").exists()
