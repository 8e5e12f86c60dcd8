"""``python -m connlib run`` as a container runs it: ``docker stop`` sends SIGTERM, and the peer
ends as its stream's end does (``Peer.stop``: its allocations are deleted, see
``test_coturn_allocation.py::test_a_released_allocation_frees_the_5_tuple_for_the_next_process``)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.coturn import free_udp_port
from harness.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def lone_gateway(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A ``connlib run`` gateway whose portal nobody serves (it keeps retrying), once it has started,
    and its log; killed at the end if it still runs."""
    log = tmp_path / "peer.log"
    portal = f"ws://127.0.0.1:{free_udp_port()}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "connlib", "run", "--role=gateway", f"--portal={portal}", "--token=t"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_until(lambda: "Peer started" in log.read_text(), 20, "the peer to start", 0.05)
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_ends_the_peer_through_its_stop(tmp_path: Path):
    with lone_gateway(tmp_path) as (proc, log):
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    text = log.read_text()
    assert code == 0, f"exit {code} (a negative code: killed by the signal, no stop ran)\n{text}"
    assert "Peer stopped" in text, text


def test_sigusr1_and_sigusr2_reach_the_peers_idle_and_resume(tmp_path: Path):
    """The signals the harness idles and resumes a client with (``harness.docker_faults``) are the
    peer's, not their default action (exit): a gateway, which has no stream, says so and runs on."""
    with lone_gateway(tmp_path) as (proc, log):
        proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: "Not going idle" in log.read_text(), 10, "the idle request's WARN", 0.05)
        proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: "Not resuming" in log.read_text(), 10, "the resume request's WARN", 0.05)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    assert code == 0, log.read_text()
