"""``python -m connlib allocate`` as a user runs it, against a real coturn."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.coturn import free_udp_port

REPO = Path(__file__).resolve().parents[2]


def allocate(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "connlib", "allocate", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )
    return result, time.monotonic() - started


@pytest.mark.coturn
def test_prints_one_json_line_and_exits_0(coturn):
    username, password = coturn.credentials()
    result, _ = allocate("--relay", f"127.0.0.1:{coturn.port}", "--username", username, "--password", password)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    out = json.loads(line)
    assert out["relay"] == f"127.0.0.1:{coturn.port}"
    assert out["srflx"].startswith("127.0.0.1:")
    assert len(out["relayed"]) == 1 and out["relayed"][0].startswith("127.0.0.1:")
    assert out["lifetime"] == 600
    assert result.stderr == ""


@pytest.mark.coturn
def test_invalid_credentials_exit_2_with_one_line(coturn):
    username, _ = coturn.credentials()
    result, _ = allocate("--relay", f"127.0.0.1:{coturn.port}", "--username", username, "--password", "wrong")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "authentication" in lines[0] and "Traceback" not in result.stderr


def test_no_answer_exits_3_after_the_backoff():
    port = free_udp_port()  # nothing listens there
    result, elapsed = allocate("--relay", f"127.0.0.1:{port}", "--username", "1:x", "--password", "p", "--timeout", "2")
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1 and "no response" in result.stderr
    assert 1.9 <= elapsed < 6


@pytest.mark.parametrize(
    "args",
    [
        ("--relay", "nonsense", "--username", "u", "--password", "p"),
        ("--relay", "127.0.0.1:99999", "--username", "u", "--password", "p"),
        ("--relay", "127.0.0.1:3478"),
        ("--relay", "127.0.0.1:3478", "--username", "u", "--password", "p", "--timeout", "soon"),
    ],
)
def test_bad_arguments_are_a_usage_error(args):
    result, _ = allocate(*args)
    assert result.returncode == 64
    assert "error" in result.stderr and "Traceback" not in result.stderr
