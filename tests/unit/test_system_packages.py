"""tools/system-packages.sh: what `make test` installs on a fresh machine, checked with a fake apt-get.

The script looks the commands up on PATH; here PATH holds only stand-ins (bash, coreutils and a
recording `apt-get`), so it sees a machine without coturn, debootstrap and chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "system-packages.sh"
TOOLS = ("bash", "id", "env")


def _fake_path(tmp_path: Path, present: tuple[str, ...] = ()) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, tool
        (bin_dir / tool).symlink_to(real)
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for name in ("apt-get", *present):
        target = bin_dir / name
        if not target.exists():
            target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return bin_dir


def _run(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "bash", str(SCRIPT)],
        env={"PATH": str(bin_dir), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the install branch runs as root here (sudo is not faked)")
def test_missing_packages_are_named_and_installed(tmp_path):
    bin_dir = _fake_path(tmp_path, present=("debootstrap",))
    result = _run(bin_dir)
    assert result.returncode == 0, result.stderr
    assert "installing" in result.stdout and "coturn" in result.stdout and "chromium" in result.stdout
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("update")
    assert calls[1].split()[-2:] in (["coturn", "chromium"], ["chromium", "coturn"])
    assert "debootstrap" not in calls[1]


def test_nothing_happens_when_everything_is_there(tmp_path):
    bin_dir = _fake_path(tmp_path, present=("turnserver", "debootstrap", "chromium"))
    result = _run(bin_dir)
    assert result.returncode == 0 and result.stdout == ""
    assert not (tmp_path / "apt.log").exists()


def test_skip_switch(tmp_path):
    bin_dir = _fake_path(tmp_path)
    assert _run(bin_dir, SKIP_SYSTEM_PACKAGES="1").returncode == 0
    assert not (tmp_path / "apt.log").exists()
