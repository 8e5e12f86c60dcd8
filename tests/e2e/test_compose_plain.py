"""Issue 12's first entry point, as a new user runs it: plain ``docker compose build`` and
``docker compose up`` in a fresh copy of the repository (tracked files only: no ``images/.cache``, no
venv, nothing ``make`` prepared), with only the base image cached, streams relayed traffic.

The images come out of ``images/Dockerfile`` (multi-stage, the project built inside the build); the
copy's images get their own prefix, so the suite's images are not touched, and are removed after.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from harness.docker_session import DockerSession
from harness.images import BASE_IMAGE
from harness.labels import STACK_LABEL
from harness.sweep import remove_stack
from harness.waiting import wait_until

from . import support as ts

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STREAM_BOUND_S = 90.0  # `compose up` until the client reports relayed echoes (measured ≈ 15 s)


def compose_command() -> list[str]:
    """``docker compose`` (v2) where it exists, else Debian's ``docker-compose`` 1.29 (as ``make`` picks)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return ["docker", "compose"] if v2.returncode == 0 else ["docker-compose"]


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked files (working tree) in ``dest``: what a fresh clone has."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ts.ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ts.ROOT / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.fixture
def plain_stack(docker_client: docker.DockerClient, docker_session: DockerSession, tmp_path) -> Iterator[dict]:
    repo = fresh_copy(tmp_path / "repo")
    project = docker_session.new_stack_name()
    prefixes = [str(s.network_address).rsplit(".", 1)[0] for s in docker_session.free_subnets(3)]
    prefix = f"connlib-plain-{project}"
    env = {
        **docker_session.variables,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "COMPOSE_PROJECT_NAME": project,
        "IMAGE_PREFIX": prefix,
        "BASE_IMAGE": BASE_IMAGE,
        "CONNLIB_NET_CLIENT": prefixes[0],
        "CONNLIB_NET_GATEWAY": prefixes[1],
        "CONNLIB_NET_RELAY": prefixes[2],
        "PORTAL_WS_PUBLISH": "127.0.0.1:",
        "PORTAL_ADMIN_PUBLISH": "127.0.0.1:",
        "CHAOS_PUBLISH": "127.0.0.1:",
    }
    compose = [*compose_command(), "-p", project]

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*compose, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    try:
        yield {"run": run, "project": project, "prefix": prefix, "repo": repo}
    finally:
        subprocess.run([*compose, "down", "--volumes", "--timeout", "5"], cwd=repo, env=env, capture_output=True)
        remove_stack(docker_client, docker_session.id, project)
        for image in docker_client.images.list(name=f"{prefix}/*"):
            try:
                docker_client.images.remove(image.id, force=True)
            except docker.errors.APIError:
                pass


def test_plain_compose_build_and_up_in_a_fresh_copy_streams_traffic(plain_stack, docker_client):
    repo: Path = plain_stack["repo"]
    assert not (repo / "images" / ".cache").exists() and not (repo / ".venv").exists()
    started = time.monotonic()
    plain_stack["run"]("build", timeout=900)
    built = time.monotonic() - started
    plain_stack["run"]("up", "-d", timeout=300)
    label = f"com.docker.compose.project={plain_stack['project']}"

    def client_streams() -> bool:
        found = docker_client.containers.list(filters={"label": [label, "com.docker.compose.service=client"]})
        if not found:
            return False
        lines = ts.json_lines(found[0].logs(stdout=True, stderr=False).decode())
        return any(
            line.get("event") == "stream" and line.get("delivered", 0) > 0 and line.get("connected") for line in lines
        )

    wait_until(client_streams, STREAM_BOUND_S, "relayed echoes in the client's stream", 0.5, retry_on=ts.DOCKER_ERRORS)
    streaming = time.monotonic() - started - built
    running = docker_client.containers.list(filters={"label": [label]})
    assert {c.labels.get("com.docker.compose.service") for c in running} >= {
        "portal",
        "relay-1",
        "relay-2",
        "client",
        "gateway",
        "chaos",
    }
    assert all(c.labels.get(STACK_LABEL) == plain_stack["project"] for c in running)
    print(f"\nplain compose: build {built:.1f}s, up until relayed echoes {streaming:.1f}s")
