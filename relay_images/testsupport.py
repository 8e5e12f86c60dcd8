"""Helpers for the Docker tests of the images and the compose stack (tests/e2e/test_images.py,
tests/e2e/test_stack.py). docker-py only; ``make`` for what users run themselves (images, up, down).

Everything a test creates carries ``org.connlib-relays.stack=pytest-<pid>-…``; :func:`sweep_dead`
removes what sessions that died (kill -9) left behind, without touching a live session's objects.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_LABEL = "org.connlib-relays.project"
STACK_LABEL = "org.connlib-relays.stack"
IMAGE_PREFIX = os.environ.get("IMAGE_PREFIX", "connlib-relays")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "latest")
PROBE = "/opt/connlib-relays/turn_probe.py"
_SESSION_RE = re.compile(r"^pytest-(\d+)-")


def image(name: str) -> str:
    return f"{IMAGE_PREFIX}/{name}:{IMAGE_TAG}"


def docker_client():  # a docker.DockerClient, imported lazily
    """A docker-py client; no engine: skip, except in CI (CI=true) where it is a failure."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        message = f"no usable Docker engine: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: Docker tests must run)")
        pytest.skip(message)
    return client


def session_label(kind: str) -> str:
    return f"pytest-{os.getpid()}-{kind}-{uuid.uuid4().hex[:6]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead(client) -> int:
    """Remove containers and networks of earlier pytest sessions whose process is gone."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": STACK_LABEL}):
        match = _SESSION_RE.match(container.labels.get(STACK_LABEL, ""))
        if match and not _pid_alive(int(match.group(1))):
            container.remove(force=True)
            removed += 1
    for network in client.networks.list(filters={"label": STACK_LABEL}):
        match = _SESSION_RE.match(network.attrs.get("Labels", {}).get(STACK_LABEL, ""))
        if match and not _pid_alive(int(match.group(1))):
            network.remove()
            removed += 1
    return removed


def used_subnets(client) -> list[ipaddress.IPv4Network]:
    nets = []
    for network in client.networks.list(greedy=True):
        for cfg in (network.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                nets.append(ipaddress.ip_network(cfg["Subnet"]))
            except (KeyError, ValueError):
                pass
    return nets


def free_prefixes(client, count: int, first: int = 200) -> list[str]:
    """``count`` unused ``172.31.N`` /24 prefixes (N from ``first`` up), for networks of one test."""
    used = used_subnets(client)
    found = []
    for n in range(first, 255):
        candidate = ipaddress.ip_network(f"172.31.{n}.0/24")
        if not any(candidate.overlaps(u) for u in used if u.version == 4):
            found.append(f"172.31.{n}")
            if len(found) == count:
                return found
    raise RuntimeError("no free 172.31.x.0/24 subnets left for the test networks")


def make(*targets: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``make TARGET...`` at the repository root; the top-level Makefile may or may not include
    relay_images/make.mk yet."""
    includes = "include relay_images/make.mk" in (ROOT / "Makefile").read_text()
    files = [] if includes else ["-f", "Makefile", "-f", "relay_images/make.mk"]
    proc = subprocess.run(
        ["make", "--no-print-directory", *files, *targets],
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


_images_built = False


def build_images() -> float:
    """``make images`` once per test session; returns the seconds it took (0 when already done)."""
    global _images_built
    if _images_built:
        return 0.0
    started = time.monotonic()
    make("images")
    _images_built = True
    return time.monotonic() - started


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def run_probe(client, network: str, args: list[str], label: str, timeout: float = 30) -> tuple[int, list[dict]]:
    """Run turn_probe.py in a one-off container (peer image) on ``network``; (exit code, JSON lines)."""
    container = client.containers.run(
        image("peer"),
        entrypoint=["/usr/bin/python3", PROBE],
        command=args,
        network=network,
        labels={PROJECT_LABEL: "connlib-relays", STACK_LABEL: label},
        detach=True,
    )
    try:
        status = container.wait(timeout=timeout)
        return status["StatusCode"], json_lines(container.logs(stdout=True, stderr=False).decode())
    finally:
        container.remove(force=True)


def exec_text(container, cmd: list[str]) -> tuple[int, str]:
    code, output = container.exec_run(cmd)
    return code, output.decode(errors="replace")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
    )
