"""Helpers of the tests that drive the images and the compose stack the way a user does
(tests/e2e/test_images.py, tests/e2e/test_stack.py): ``make`` targets, one-off probe containers,
JSON lines. Labels, sweep, Docker client, bounded waits and the CI rule are the harness's
(``harness.labels``, ``harness.sweep`` through the ``docker_client`` fixture, ``harness.waiting``,
``harness.pytest_plugin.in_ci``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from harness.labels import STACK_LABEL

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PREFIX = os.environ.get("IMAGE_PREFIX", "connlib-relays")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "latest")
PROBE = "/opt/connlib-relays/turn_probe.py"
DOCKER_ERRORS = (OSError, docker.errors.APIError)
"""What a poll of a container or of the admin API may raise while the thing is coming up."""


def image(name: str) -> str:
    """The tag ``make images`` gives image ``name`` (``make`` is what these tests run)."""
    return f"{IMAGE_PREFIX}/{name}:{IMAGE_TAG}"


def make(*targets: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``make TARGET...`` at the repository root; AssertionError with its output if it fails."""
    proc = subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"make {' '.join(targets)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def run_probe(
    client: docker.DockerClient,
    network: str,
    args: list[str],
    labels: dict[str, str],
    timeout: float = 30,
) -> tuple[int, list[dict[str, Any]]]:
    """Run turn_probe.py in a one-off container (peer image) on ``network``; (exit code, JSON lines)."""
    container = client.containers.run(
        image("peer"), entrypoint=["/usr/bin/python3", PROBE], command=args, network=network, labels=labels, detach=True
    )
    try:
        status = container.wait(timeout=timeout)
        return status["StatusCode"], json_lines(container.logs(stdout=True, stderr=False).decode())
    finally:
        container.remove(force=True)


def exec_text(container: Container, cmd: list[str]) -> tuple[int, str]:
    code, output = container.exec_run(cmd)
    return code, output.decode(errors="replace")


def stack_labels(session_labels: dict[str, str], stack: str) -> dict[str, str]:
    """A test's objects: the session's labels (swept after kill -9) and its own stack name."""
    return {**session_labels, STACK_LABEL: stack}


@contextlib.contextmanager
def network_churn(client: docker.DockerClient, labels: dict[str, str], name: str) -> Iterator[list[int]]:
    """Create and remove a labelled bridge network, over and over, until the block ends: Docker rebuilds
    its iptables rules (bridge isolation included) at each, the moment another stack starts or stops.
    Yields a one-element list: how many networks came and went."""
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        while not stop.is_set():
            network = client.networks.create(f"{name}-churn-{churned[0]}", driver="bridge", labels=labels)
            network.remove()
            churned[0] += 1

    thread = threading.Thread(target=churn, name="network-churn", daemon=True)
    thread.start()
    try:
        yield churned
    finally:
        stop.set()
        thread.join(timeout=30)
