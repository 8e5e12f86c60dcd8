"""The harness's one way to reach the Docker engine (docker-py; never the docker CLI)."""

from __future__ import annotations

import docker


class DockerUnavailable(RuntimeError):
    """No Docker engine answers."""


def connect(timeout: float = 60) -> docker.DockerClient:
    """A docker-py client whose engine answered a ping; :class:`DockerUnavailable` otherwise."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:  # docker-py raises DockerException, requests' errors or OSError: all mean "no engine"
        raise DockerUnavailable(f"no Docker engine: {type(exc).__name__}: {exc}") from exc
    return client
