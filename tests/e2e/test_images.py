"""The relay/portal/peer images: built without a registry, cached, and a relay container that is a
real coturn with REST credentials and a fresh secret at every start (issue 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import docker
import docker.errors
import docker.types
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from harness import images
from harness.docker_session import DockerSession
from harness.labels import PROJECT, PROJECT_LABEL, STACK_LABEL
from harness.pytest_plugin import in_ci
from harness.sweep import remove_stack
from harness.waiting import wait_until

from . import support as ts

pytestmark = [pytest.mark.docker]

STOP_BOUND_S = 3.0  # docker stop of a relay (SIGTERM → agent leaves, turnserver stops)
EXIT_BOUND_S = 3.0  # turnserver killed → container exited
HEALTHY_BOUND_S = 15.0


@pytest.fixture(scope="module")
def docker_env(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The engine (swept by the harness's ``docker_client``), with ``make images`` done once."""
    ts.make("images")
    return docker_client


Labels = dict[str, str]


@pytest.fixture
def relay_net(
    docker_env: docker.DockerClient, docker_session: DockerSession
) -> Iterator[tuple[docker.DockerClient, Network, Labels]]:
    """A network of its own (a free /24 of the harness's pool) for one test; everything on it is
    removed afterwards, and by the next run's sweep if this one is killed."""
    stack = docker_session.new_stack_name()
    labels = ts.stack_labels(docker_session.labels, stack)
    network, _ = docker_session.create_network(stack, internal=True, labels=labels)
    try:
        yield docker_env, network, labels
    finally:
        remove_stack(docker_env, docker_session.id, stack)


def start_relay(client: docker.DockerClient, network: Network, labels: Labels, **env: str) -> Container:
    container = client.containers.run(
        ts.image("relay"),
        detach=True,
        name=f"{labels[STACK_LABEL]}-relay",
        network=network.name,
        labels=labels,
        environment={"RELAY_NAME": "relay-t", "PORTAL_URL": "", **env},
    )
    wait_until(
        lambda: _health(container) == "healthy",
        HEALTHY_BOUND_S,
        "the relay's STUN healthcheck",
        0.2,
        retry_on=ts.DOCKER_ERRORS,
    )
    return container


def _health(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"].get("Health", {}).get("Status", "none"))


def _ip(container: Container, network: Network) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])


def _secret(container: Container) -> str:
    def read() -> str:
        code, out = ts.exec_text(container, ["cat", "/run/relay/secret"])
        return out.strip() if code == 0 else ""

    secret: str = wait_until(read, 10, "the relay's secret file", 0.2, retry_on=ts.DOCKER_ERRORS)
    return secret


def _allocate(
    client: docker.DockerClient, network: Network, labels: Labels, server: str, secret: str
) -> tuple[int, dict]:
    code, lines = ts.run_probe(client, network.name, ["allocate", "--server", server, "--secret", secret], labels)
    return code, lines[-1] if lines else {}


def test_images_exist_and_a_second_build_is_cached(docker_env: docker.DockerClient) -> None:
    client = docker_env
    for name in ("base", "relay", "portal", "peer", "chaos"):
        ref = "connlib-relays/base:bookworm" if name == "base" else ts.image(name)
        img = client.images.get(ref)
        assert img.labels.get(PROJECT_LABEL) == PROJECT, ref
    ts.make("images")  # absorbs a source edit made while the fixture built (a busy work tree)
    started = time.monotonic()
    ts.make("images")
    cached = time.monotonic() - started
    print(f"\ncached `make images`: {cached:.1f}s")
    assert cached < 20, f"a second `make images` should reuse everything, took {cached:.1f}s"


def test_a_look_that_finds_everything_current_takes_no_build_lock(
    docker_env: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another checkout's or session's build may hold the host's build lock for minutes (its own
    tags): a run whose base and images are current must not wait for it (both e2e workers and the
    make-up fixture did, 2+ minutes, on this machine)."""
    tag = ts.image("relay").rpartition(":")[2]
    images.ensure_images(docker_env, tag, "auto")  # current (a source edit made meanwhile is built here)

    def no_lock(*args: object, **kwargs: object) -> None:
        raise AssertionError("took the host's build lock though everything was current")

    monkeypatch.setattr(images, "build_lock", no_lock)
    assert images.ensure_images(docker_env, tag, "auto")["relay"] == ts.image("relay")
    assert images.ensure_base(docker_env).id == docker_env.images.get(images.BASE_IMAGE).id


@pytest.mark.skipif(
    not in_ci() and os.environ.get("BASE_FROM_SCRATCH") != "1",
    reason="rebuilds the base image from nothing (debootstrap, ~75 s): runs in CI or with BASE_FROM_SCRATCH=1",
)
def test_base_image_builds_from_nothing_without_a_registry(docker_env: docker.DockerClient, tmp_path) -> None:
    """The path a machine without a registry takes: pull fails → debootstrap → docker import."""
    client = docker_env
    tag = f"connlib-relays-pytest-{os.getpid()}/base:bookworm"
    env = {**os.environ, "BASE_IMAGE": tag, "BASE_CACHE": str(tmp_path), "BASE_FORCE": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(ts.ROOT / "images" / "base.sh")], env=env, capture_output=True, text=True, timeout=900
        )
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr[-3000:]
        print(f"\nbase image from nothing: {took:.0f}s\n{proc.stderr}")
        out = client.containers.run(
            tag,
            ["sh", "-c", "turnserver --version; python3 --version; python3 -m venv /tmp/v && echo venv-ok"],
            remove=True,
            network_mode="none",
            labels={PROJECT_LABEL: PROJECT},
        ).decode()
        assert "4.6.1" in out and "Python 3.11" in out and "venv-ok" in out, out
        # a second run reuses the image (seconds, no debootstrap)
        started = time.monotonic()
        again = subprocess.run(
            ["bash", str(ts.ROOT / "images" / "base.sh")],
            env={**env, "BASE_FORCE": "0"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0 and "up to date" in again.stderr, again.stderr
        assert time.monotonic() - started < 5
    finally:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass  # the build failed before tagging
        shutil.rmtree(tmp_path, ignore_errors=True)  # the 140 MB root file system tarball


def test_relay_allocates_with_rest_credentials_and_renders_its_config(relay_net):
    client, network, label = relay_net
    relay = start_relay(client, network, label)
    ip = _ip(relay, network)
    secret = _secret(relay)
    assert len(secret) == 64 and int(secret, 16) >= 0, "32 random bytes, hex"

    code, got = _allocate(client, network, label, f"{ip}:3478", secret)
    assert code == 0, got
    relayed_ip, relayed_port = got["relayed"].rsplit(":", 1)
    assert relayed_ip == ip  # relay-ip = the relay's address on its (only) network
    assert 49160 <= int(relayed_port) <= 49200

    code, got = _allocate(client, network, label, f"{ip}:3478", "0" * 64)
    assert code == 1 and "authentication failed" in got["error"], got

    code, conf = ts.exec_text(relay, ["cat", "/run/relay/turnserver.conf"])
    assert code == 0
    lines = {line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")}
    for expected in (
        "realm=firezone",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        "listening-port=3478",
        f"relay-ip={ip}",
        "min-port=49160",
        "max-port=49200",
        "no-tls",
        "no-dtls",
        "fingerprint",
        "cli-ip=127.0.0.1",  # the quota fault's CLI, on loopback only
        "log-file=stdout",
    ):
        assert expected in lines, f"{expected!r} missing from the rendered turnserver.conf"
    logs = relay.logs().decode()
    assert secret not in logs, "the secret must never be logged"
    assert "turnserver ready" in logs


def test_relayed_data_flows_between_two_allocations(relay_net):
    """Two allocations on one relay exchange data through it (the relay-to-relay path in miniature)."""
    client, network, label = relay_net
    relay = start_relay(client, network, label)
    ip, secret = _ip(relay, network), _secret(relay)
    echo = client.containers.run(
        ts.image("peer"),
        entrypoint=["/usr/bin/python3", ts.PROBE],
        command=["echo", "--server", f"{ip}:3478", "--secret", secret, "--permit", ip, "--wait", "15"],
        network=network.name,
        labels=label,
        detach=True,
    )

    def echo_address() -> str:
        lines = ts.json_lines(echo.logs(stdout=True, stderr=False).decode())
        return next((line["relayed"] for line in lines if line.get("event") == "allocated"), "")

    peer = wait_until(echo_address, 10, "the echo side's allocation", 0.2, retry_on=ts.DOCKER_ERRORS)
    code, lines = ts.run_probe(
        client,
        network.name,
        ["send", "--server", f"{ip}:3478", "--secret", secret, "--peer", peer, "--count", "5"],
        label,
    )
    assert code == 0, lines
    assert lines[-1]["echoed"] == 5, lines[-1]


def test_restart_gives_a_new_secret_and_old_credentials_stop_working(relay_net):
    client, network, label = relay_net
    relay = start_relay(client, network, label)
    ip = _ip(relay, network)
    old = _secret(relay)
    relay.restart(timeout=5)
    wait_until(
        lambda: _health(relay) == "healthy", HEALTHY_BOUND_S, "healthy after restart", 0.2, retry_on=ts.DOCKER_ERRORS
    )
    new = _secret(relay)
    assert new != old
    assert _ip(relay, network) == ip
    assert _allocate(client, network, label, f"{ip}:3478", old)[0] == 1
    assert _allocate(client, network, label, f"{ip}:3478", new)[0] == 0


def test_stop_is_clean_and_fast(relay_net):
    client, network, label = relay_net
    relay = start_relay(client, network, label)
    started = time.monotonic()
    relay.stop(timeout=10)
    took = time.monotonic() - started
    relay.reload()
    print(f"\ndocker stop of a relay: {took:.2f}s")
    assert relay.attrs["State"]["ExitCode"] == 0, relay.logs()[-2000:]
    assert took < STOP_BOUND_S
    assert "relay stopped" in relay.logs().decode()


def test_container_exits_when_turnserver_dies(relay_net):
    client, network, label = relay_net
    relay = start_relay(client, network, label)
    code, _ = ts.exec_text(relay, ["pkill", "-KILL", "-x", "turnserver"])
    assert code == 0
    started = time.monotonic()

    def exited() -> bool:
        relay.reload()
        return relay.attrs["State"]["Status"] == "exited"

    wait_until(
        exited, EXIT_BOUND_S, "the relay container to exit after turnserver died", 0.1, retry_on=ts.DOCKER_ERRORS
    )
    print(f"\ncontainer exited {time.monotonic() - started:.2f}s after turnserver was killed")
    assert relay.attrs["State"]["ExitCode"] != 0
    assert "turnserver exited on its own" in relay.logs().decode()


def test_relay_image_carries_the_tools_the_harness_needs(relay_net):
    """iptables (UDP loss via `statistic`), iproute2 and coturn 4.6.1 are in the relay image."""
    client, network, label = relay_net
    out = client.containers.run(
        ts.image("relay"),
        entrypoint=["/bin/sh", "-c"],
        command=["turnserver --version; iptables --version; ip -V; tini --version"],
        labels=label,
        network=network.name,
        remove=True,
    ).decode()
    assert "4.6.1" in out and "iptables" in out and "iproute2" in out and "tini" in out
