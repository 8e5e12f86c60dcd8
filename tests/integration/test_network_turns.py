"""A stack's containers leave its networks one at a time (``harness.network_turns``), on the real
engine: Docker 20.10.24 deadlocks for good when one container leaves a network while another's
endpoint on it is deleted (moby/moby#46661), which a fresh-clone CI rehearsal hit when a stack's
containers were removed eight at a time.

The engine's own event stream is the witness: each container's span, from the engine's first event
of its stop (``kill``) to its last ``disconnect`` from a network, may not overlap another's. Three
stops, kills or removals issued at once from three threads overlapped on the old code (seen).
Restarts are the exception: they still overlap (scenario 5 needs every relay down at once)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from harness import network_turns as nt
from harness import sweep
from harness.docker_session import DockerSession
from harness.labels import PROJECT, PROJECT_LABEL, STACK_LABEL

pytestmark = [pytest.mark.docker]

CONTAINERS = 3
LEAVING = {"kill", "die", "stop", "destroy"}


@pytest.fixture
def stack(
    docker_client: docker.DockerClient, docker_session: DockerSession, base_image: str
) -> Iterator[list[Container]]:
    """Three containers of one stack on two networks of it (as a relay is on the relay and the
    portal networks)."""
    name = f"turns-{uuid.uuid4().hex[:8]}"
    labels = {**docker_session.labels, PROJECT_LABEL: PROJECT, STACK_LABEL: name}
    networks = [
        docker_session.create_network(f"{name}-{k}", internal=True, labels={STACK_LABEL: name})[0] for k in (1, 2)
    ]
    made: list[Container] = []
    try:
        for k in range(CONTAINERS):
            container = docker_client.containers.create(
                base_image,
                ["sleep", "infinity"],
                labels=labels,
                init=True,
                network=networks[0].name,
                stop_signal="SIGKILL",
                name=f"{name}-{k}",
            )
            networks[1].connect(container)
            container.start()
            made.append(container)
        yield made
    finally:
        for container in made:
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
        for network in networks:
            try:
                network.remove()
            except docker.errors.NotFound:
                pass  # the removal test's sweep took it


def _at_once(action: Callable[[Container], object], containers: list[Container]) -> None:
    go = threading.Barrier(len(containers))
    errors: list[BaseException] = []

    def run(container: Container) -> None:
        go.wait()
        try:
            action(container)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _leaving_spans(client: docker.DockerClient, containers: list[Container], since: int) -> list[tuple[int, int, str]]:
    """Per container, (first leaving event, last network disconnect, name), by the engine's clock."""
    names = {c.id: c.name for c in containers}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for event in client.events(since=since, until=int(time.time()) + 1, decode=True):
        at = event["timeNano"]
        if event["Type"] == "container" and event["id"] in names and event["Action"] in LEAVING:
            first.setdefault(event["id"], at)
        elif event["Type"] == "network" and event["Action"] == "disconnect":
            container = event["Actor"]["Attributes"].get("container")
            if container in names:
                last[container] = at
    assert set(last) == set(names), f"every container disconnected: {sorted(names[c] for c in last)}"
    return sorted((first[c], last[c], names[c]) for c in names)


def _assert_one_at_a_time(spans: list[tuple[int, int, str]]) -> None:
    for (_, end, before), (start, _, after) in zip(spans, spans[1:], strict=False):
        assert start > end, f"{after} began to leave {(end - start) / 1e6:.1f} ms before {before} was off its networks"


def test_stops_issued_at_once_leave_the_stacks_networks_one_at_a_time(
    docker_client: docker.DockerClient, stack: list[Container]
) -> None:
    since = int(time.time())
    _at_once(lambda c: nt.stop(c, 0), stack)
    assert all(nt.off_networks(c) for c in stack)
    _assert_one_at_a_time(_leaving_spans(docker_client, stack, since))


def test_kills_issued_at_once_leave_the_stacks_networks_one_at_a_time(
    docker_client: docker.DockerClient, stack: list[Container]
) -> None:
    since = int(time.time())
    _at_once(lambda c: nt.kill(c, 10), stack)
    _assert_one_at_a_time(_leaving_spans(docker_client, stack, since))


def test_restarts_issued_at_once_still_overlap(docker_client: docker.DockerClient, stack: list[Container]) -> None:
    """Scenario 5 restarts every relay at once: the portal must see them all go and come back
    within its debounce, which restarts in turns missed (the spans one after another)."""
    since = int(time.time())
    _at_once(lambda c: nt.restart(c, 0), stack)
    spans = _leaving_spans(docker_client, stack, since)
    assert any(start < end for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False)), spans


def test_a_stacks_removal_takes_its_containers_one_at_a_time(
    docker_client: docker.DockerClient, docker_session: DockerSession, stack: list[Container]
) -> None:
    since = int(time.time())
    removed = sweep.remove_stack(docker_client, docker_session.id, stack[0].labels[STACK_LABEL])
    assert removed == CONTAINERS + 2  # and both networks
    _assert_one_at_a_time(_leaving_spans(docker_client, stack, since))
