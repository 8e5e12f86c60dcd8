"""The 508 fault's capacity holder (``harness.container_faults.HOLD_CAPACITY``), run on this host
against a real coturn: it holds every relay port and frees them at SIGTERM, and when it cannot
allocate it says why instead of dying silently (a timed-out ALLOCATE under load once left the fault
waiting 15 s for a holder that was gone)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import container_faults as cf
from harness.coturn import Coturn
from harness.waiting import wait_until

IMAGES = Path(__file__).resolve().parents[2] / "images"
sys.path.insert(0, str(IMAGES))
import turn_probe as tp  # noqa: E402  (the relay image's own probe, as the holder imports it)

BOUND_S = 10.0


def _status(path: Path) -> int | None:
    done = subprocess.run(cf.hold_status_command(str(path)), capture_output=True)
    return cf.hold_status(done.returncode, done.stdout)


def _wait_status(path: Path, holder: subprocess.Popen) -> int:
    def said() -> tuple[int] | None:
        held = _status(path)
        if held is None and holder.poll() is not None:
            raise AssertionError(f"the holder exited ({holder.returncode}) and said nothing")
        return None if held is None else (held,)  # a count of 0 is an answer too

    return wait_until(said, BOUND_S, "the holder's word")[0]


def _start(tmp_path: Path, port: int, secret: str, limit: int, **kwargs) -> tuple[subprocess.Popen, Path]:
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    path = tmp_path / "capacity-hold"
    script = cf.hold_capacity_script(
        port, limit, path=str(path), probe_dir=str(IMAGES), secret_file=str(secret_file), **kwargs
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    return holder, path


def _allocate(server: Coturn) -> str:
    username, password = server.credentials()
    client = tp.TurnClient(server.addr, username, password, timeout=0.3)
    try:
        client.allocate()
        return "allocated"
    except tp.ProbeError as exc:
        return str(exc)
    finally:
        client.close()


def test_holder_holds_every_port_then_frees_them(coturn_factory, tmp_path):
    server = coturn_factory(name="relay-hold", relay_port_count=4)
    holder, path = _start(tmp_path, server.port, server.secret, limit=10)
    try:
        assert _wait_status(path, holder) == 4
        assert _allocate(server).startswith("error 508")
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(BOUND_S) == 0
        assert _status(path) is None
        # coturn frees a port ~1 s after its deletion
        wait_until(lambda: _allocate(server) == "allocated", BOUND_S, "a freed port allocated", interval=0.2)
    finally:
        holder.kill()
        holder.wait()


def test_holder_that_cannot_allocate_says_why(tmp_path):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a relay that answers nothing
    silent.bind(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        holder, path = _start(tmp_path, silent.getsockname()[1], "secret", limit=4, give_up=0.5, timeout=0.1)
        try:
            with pytest.raises(cf.HolderFailed, match="no answer from 127.0.0.1"):
                _wait_status(path, holder)
            assert holder.wait(BOUND_S) == 1
            assert time.monotonic() - started < BOUND_S
            assert holder.stderr is not None and holder.stderr.read() == b""  # a clean exit, no traceback
        finally:
            holder.kill()
            holder.wait()
    finally:
        silent.close()
