"""The relay image's secret switch (images/agent.py): a new secret at every start, unless one was
kept for the next start (``agent.py keep-secret``, once) or always (``RELAY_KEEP_SECRET=1``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[2] / "images"
sys.path.insert(0, str(IMAGES))  # agent.py imports its sibling turn_probe.py, as in the image
_spec = importlib.util.spec_from_file_location("relay_agent", IMAGES / "agent.py")
assert _spec is not None and _spec.loader is not None
agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent)


def test_every_start_has_a_new_secret_by_default(tmp_path):
    first, kept = agent.choose_secret(tmp_path, keep=False)
    second, _ = agent.choose_secret(tmp_path, keep=False)
    assert first != second and not kept and len(first) == 64


def test_keep_secret_makes_the_next_start_reuse_it_once(tmp_path):
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    (run / "secret").write_text("ab" * 32 + "\n")
    done = subprocess.run(
        [sys.executable, str(IMAGES / "agent.py"), "keep-secret", "--run-dir", str(run), "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert agent.choose_secret(state, keep=False) == ("ab" * 32, True)
    assert agent.choose_secret(state, keep=False)[0] != "ab" * 32  # once only


def test_keep_secret_without_a_running_relay_fails_clearly(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(IMAGES / "agent.py"),
            "keep-secret",
            "--run-dir",
            str(tmp_path),
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "no running relay secret" in done.stderr


def test_relay_keep_secret_reuses_the_first_secret_at_every_start(tmp_path):
    first, kept = agent.choose_secret(tmp_path, keep=True)
    assert not kept
    assert agent.choose_secret(tmp_path, keep=True) == (first, True)
    assert agent.choose_secret(tmp_path, keep=True) == (first, True)
