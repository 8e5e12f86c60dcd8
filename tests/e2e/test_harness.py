"""The harness itself: checks over a history, the ERROR rule for container output, the CI rule
for a missing engine, cleanup after ``kill -9`` of the runner, and the fault primitives the
scenarios do not exercise (network cut and reconnect, kill and start)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import checks
from harness.docker_fleet import DockerFleet
from harness.docker_session import DockerSession, _reservations
from harness.fleet import CLIENT_ID, StackOptions
from harness.history import EventClock, History, Op, new_history, observe_at
from harness.images import BASE_IMAGE
from harness.labels import OWNER_LABEL, PROJECT_LABEL, SESSION_LABEL, STACK_LABEL, session_labels
from harness.sweep import sweep
from harness.waiting import wait_for, wait_until

from .scenarios import RESUME_BOUND, fault_at, wait_event, wait_resumed

ROOT = Path(__file__).resolve().parents[2]
REMOVAL_BOUND = 10.0  # a stack of five containers and its networks, removed in the background


# ---------------------------------------------------------------------------- checks (no engine)
def _history(ops: list[tuple[float, str, str, dict]]) -> History:
    now = [0.0]
    history = History(clock=lambda: now[0])
    for t, what, target, data in ops:
        now[0] = t
        history.observe(what, target, **data)
    return history


def test_checks_read_gaps_relays_and_percentiles():
    h = _history(
        [
            (1.0, "relay_added", CLIENT_ID, {"relay": "a"}),
            (1.0, "relay_added", CLIENT_ID, {"relay": "b"}),
            (2.0, "connected", CLIENT_ID, {"relay": "a"}),
            (5.0, "gap", CLIENT_ID, {"duration_s": 2.5}),  # 2.5 → 5.0
            (5.1, "relay_removed", CLIENT_ID, {"relay": "a", "reason": "replaced (new credentials or address)"}),
            (5.2, "connected", CLIENT_ID, {"relay": "b"}),
            (9.0, "gap", CLIENT_ID, {"duration_s": 0.5}),  # 8.5 → 9.0
        ]
    )
    assert checks.carrying_relay(h, CLIENT_ID) == "b"
    assert checks.known_relays(h, CLIENT_ID) == {"b"}
    assert checks.known_relays(h, CLIENT_ID, before=5.0) == {"a", "b"}
    assert checks.resumed_at(h, 3.0) == 5.0 and checks.resumed_at(h, 6.0) == 9.0 and checks.resumed_at(h, 9.5) is None
    assert checks.longest_gap(h, 3.0) == 2.5 and checks.longest_gap(h, 6.0) == 0.5
    assert checks.outage_at(h, 4.0) == checks.Gap(2.5, 5.0) and checks.outage_at(h, 6.0) is None
    assert [op.t for op in checks.removals(h, CLIENT_ID, "a", reason="replaced")] == [5.1]
    assert checks.removals(h, CLIENT_ID, "a", reason="no response") == []
    assert checks.p95([1.0, 2.0, 3.0]) == 3.0 and checks.percentile(range(1, 101), 95) == 95


def test_event_clock_places_a_line_at_its_own_time():
    history = new_history()
    clock = history.clock
    assert isinstance(clock, EventClock)
    wall = time.time() - 5.0  # happened five seconds ago, read only now
    observe_at(history, {"event": "gap", "id": CLIENT_ID, "ts": wall, "duration_s": 1.0})
    assert abs(history.ops[-1].t - (time.monotonic() - 5.0)) < 0.05
    history.observe("later")
    assert history.ops[-1].t > history.ops[-2].t + 4.9


# ---------------------------------------------------------------------------- plugin rules (no engine)
@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    return pytester


def test_error_line_from_a_container_fails_the_test_in_its_call_phase(inner: pytest.Pytester):
    inner.makepyfile(
        textwrap.dedent("""
        import logging
        from harness.pytest_plugin import FLEET_KEY

        class Fleet:  # stands in for a stack whose relay wrote an ERROR line
            def collect_errors(self):
                logging.getLogger("harness.container").error("relay-1: 2026-01-01 00:00:00,000 ERROR x: boom")
                return ["boom"]

        def test_with_stack(request):
            request.node.stash[FLEET_KEY] = Fleet()
    """)
    )
    result = inner.runpytest_subprocess(
        "-p", "tests.plugins.no_errors", "-p", "harness.pytest_plugin", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ERROR log record(s) during the test*", "*relay-1*boom*"])
    assert "test_with_stack FAILED" in result.stdout.str() or "FAILED test_" in result.stdout.str()


@pytest.mark.parametrize("ci, outcome", [("true", "failed"), ("", "skipped")])
def test_missing_docker_engine_fails_in_ci_and_skips_elsewhere(
    inner: pytest.Pytester, monkeypatch, ci: str, outcome: str
):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{inner.path}/no-such-docker.sock")
    monkeypatch.setenv("CI", ci)
    inner.makepyfile("def test_needs_engine(docker_client):\n    pass\n")
    result = inner.runpytest_subprocess("-p", "harness.pytest_plugin", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(**{("errors" if outcome == "failed" else outcome): 1})
    result.stdout.fnmatch_lines(["*no Docker engine*"])


# ---------------------------------------------------------------------------- the engine
def _session_objects(client, session: str) -> list[str]:
    filters = {"label": [f"{PROJECT_LABEL}=connlib-relays", f"{SESSION_LABEL}={session}"]}
    return [c.name for c in client.containers.list(all=True, filters=filters)] + [
        n.name for n in client.networks.list(filters=filters)
    ]


@pytest.mark.docker
def test_free_subnets_of_two_workers_of_one_session_do_not_overlap(docker_client):
    """Each xdist worker has its own DockerSession with the run's one id, so the same cursor: two
    compose stacks made at once were handed the same /24s ("Pool overlaps" on the second ``up``)."""
    workers = [DockerSession(docker_client, images={}, session_id="c0ffee" + "0" * 26) for _ in range(2)]
    first, second = (set(w.free_subnets(3)) for w in workers)
    assert len(first) == len(second) == 3 and not first & second


@pytest.mark.docker
def test_a_harness_network_does_not_take_a_subnet_a_compose_stack_has_reserved(docker_client):
    """A compose stack's subnets are reserved before its ``up`` creates them; a harness stack of another
    worker, creating its networks meanwhile, took one of them (``make up`` failed with "Pool overlaps"
    in a run of the e2e suite on three workers)."""
    compose, harness = (DockerSession(docker_client, images={}, session_id="c0ffee" + "1" * 26) for _ in range(2))
    compose.free_subnets(3)
    with _reservations() as held:  # under the lock: another worker may be rewriting the file
        reserved = dict(held)  # this one's and any other worker's on the host
    network, subnet = harness.create_network("clr-c0ffee11-reserved", internal=True, labels={})
    try:
        assert str(subnet) not in reserved, (subnet, reserved)
    finally:
        network.remove()


@pytest.mark.docker
def test_deferred_stack_removal_returns_at_once_and_the_session_end_waits_for_it(docker_client, base_image, caplog):
    """The e2e session removes a stopped stack in the background; its end removes the rest only
    after that removal is done (two removals of one container at once: 409s and warnings)."""
    session = DockerSession(docker_client, images={}, deferred_removal=True)
    stacks = ("clr-removal-a", "clr-removal-b")
    for stack in stacks:
        network, _ = session.create_network(f"{stack}-net", internal=True, labels={STACK_LABEL: stack})
        for i in range(3):
            docker_client.containers.run(
                base_image,
                ["sleep", "600"],
                detach=True,
                network=network.name,
                labels={**session.labels, STACK_LABEL: stack},
                name=f"{stack}-{session.id[:6]}-{i}",
            )
    t0 = time.monotonic()
    session.remove_stack(stacks[0])
    queued_s = time.monotonic() - t0
    with caplog.at_level(logging.WARNING, logger="harness.sweep"):
        session.remove_all()
    assert _session_objects(docker_client, session.id) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert queued_s < 0.5, f"remove_stack took {queued_s:.2f} s: it waited for the removal"


@pytest.mark.docker
def test_two_sweeps_of_one_dead_session_at_once_both_succeed(docker_client, e2e_images):
    """Side by side, every worker's first Docker call sweeps: two of them meet the same dead session
    and remove its containers at once. A container the other one removed between our listing and
    our look at it must not fail the sweep (it did, 404, and with it every Docker test of a run)."""
    session = f"dead-{os.getpid()}"
    labels = {**session_labels(session), OWNER_LABEL: f"{socket.gethostname()}:1:0"}  # pid 1, not its start: dead
    for i in range(6):
        docker_client.containers.create(BASE_IMAGE, ["sleep", "600"], name=f"clr-{session}-{i}", labels=labels)
    other = f"{session}-other"  # another dead session the sweeps meet (as the kill -9 test leaves one)
    other_labels = {**session_labels(other), OWNER_LABEL: labels[OWNER_LABEL]}
    for i in range(2):
        docker_client.containers.create(BASE_IMAGE, ["sleep", "600"], name=f"clr-{other}-{i}", labels=other_labels)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(sweep, docker_client)
        removed_meanwhile = 0
        while not first.done():  # the other worker, sweeping while the first one removes
            removed_meanwhile += sweep(docker_client).removed_by_session.get(session, 0)
        # At most 6 of ours (no container counted twice): a third sweeper may take some, another
        # worker's `python -m harness` (the schedule replay, make up) sweeping dead sessions as it
        # starts; other dead sessions met meanwhile (the kill -9 test's, on the other worker) are theirs
        assert first.result().removed_by_session.get(session, 0) + removed_meanwhile <= 6
    assert _session_objects(docker_client, session) == [] and _session_objects(docker_client, other) == []


@pytest.mark.docker
def test_kill_9_of_pytest_leaves_nothing_after_the_next_run_starts(docker_client, e2e_images, tmp_path: Path):
    marker = tmp_path / "session-id"
    (tmp_path / "test_hold.py").write_text(
        textwrap.dedent(f"""
        import pathlib, threading

        def test_hold(docker_session):
            net, _ = docker_session.create_network("clr-" + docker_session.id[:8] + "-hold", internal=True, labels={{}})
            docker_session.client.containers.run({BASE_IMAGE!r}, ["sleep", "600"], detach=True,
                name="clr-" + docker_session.id[:8] + "-hold", labels=docker_session.labels, network=net.name)
            pathlib.Path({str(marker)!r}).write_text(docker_session.id)
            threading.Event().wait(600)  # the outer test kills this run long before
    """)
    )
    (tmp_path / "test_next.py").write_text("def test_next_run_starts(docker_client):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "harness.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tmp_path),
    ]
    victim = subprocess.Popen(
        [*command, str(tmp_path / "test_hold.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def created() -> bool:
            assert victim.poll() is None, "the victim run ended before creating its resources"
            return marker.exists()

        wait_until(created, 60, "the victim run to create its resources", 0.1)
        session = marker.read_text()
        assert len(_session_objects(docker_client, session)) == 2
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    assert len(_session_objects(docker_client, session)) == 2, "kill -9: nobody cleaned up (as expected)"
    result = subprocess.run(
        [*command, str(tmp_path / "test_next.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _session_objects(docker_client, session) == [], "the next run's sweep left the dead session's objects"


@pytest.mark.allow_error_logs
@pytest.mark.docker
async def test_container_output_reaches_the_history_and_the_error_rule(docker_session, e2e_images, caplog):
    history = new_history()
    fleet = DockerFleet(history, StackOptions(), session=docker_session)
    script = (
        'echo \'{"event": "probe", "id": "x-1", "ts": 1.5}\'; '
        'echo "2026-01-01 00:00:00,000 WARNING connlib.node: Disconnecting from relay; test" >&2; '
        'echo "2026-01-01 00:00:00,001 ERROR connlib.test: injected failure" >&2'
    )
    container = docker_session.client.containers.create(
        e2e_images["peer"],
        entrypoint=["/bin/sh", "-c", script],
        labels=docker_session.labels,
        name=f"clr-{docker_session.id[:8]}-echo",
        network_disabled=True,
    )
    try:
        await asyncio.to_thread(container.start)
        fleet.follow(container, "echo-1")  # a log stream follows from the container's first line
        await asyncio.to_thread(container.wait, timeout=30)

        def error_logged() -> list[Op]:
            fleet.drain()
            return history.select("error_log")

        await wait_for(error_logged, 10, "the ERROR line")
    finally:
        await asyncio.to_thread(container.remove, force=True)
    assert history.first("probe", target="x-1") is not None
    assert [op.data["message"] for op in history.select("log", target="echo-1")] == ["Disconnecting from relay; test"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "injected failure" in r.getMessage()]
    assert errors, "an ERROR line on a container's stderr must become an ERROR record (which fails the test)"


@pytest.mark.backends("docker")
@pytest.mark.stack(relays=3, portal={"relays_per_client": 3})
async def test_fault_primitives_kill_start_cut_reconnect(stack, relay, client, gateway, figures):
    """harness: kill/start a relay, cut/reconnect the client's network"""
    h = stack.history
    assert relay.id == client.carrying_relay() and relay.name in stack.relay_names
    idle = sorted(client.known_relays() - {relay.id, gateway.carrying_relay()})[0]
    name = await stack.relay_name(idle)
    before = (await stack.secret_fingerprints())[name]
    t0 = time.monotonic()
    await stack.kill_relay(name)  # SIGKILL: the agent says no goodbye; its socket dies with it
    offline = await wait_for(lambda: h.first("relay_offline", kind="portal", target=idle, after=t0), 5, "relay offline")
    await stack.start_relay(name)
    assert (await stack.secret_fingerprints())[name] != before, "a started relay container has a new secret"
    figures["kill_to_offline_s"] = offline.t - t0

    t1 = time.monotonic()
    await stack.cut(CLIENT_ID, "client-net")
    try:
        await wait_event(stack, "path_lost", CLIENT_ID, t1, 8, "the client to lose its path")
    finally:
        await stack.reconnect(CLIENT_ID, "client-net")
    back = fault_at(stack, "reconnect", CLIENT_ID, t1)
    resumed = await wait_resumed(stack, back, RESUME_BOUND + 10, "the stream after the reconnect")
    figures.update(gap_s=checks.longest_gap(h, t1), resumed_s=resumed - back)
    assert figures["gap_s"] >= 3.5, "the cut did not stop the stream"


@pytest.mark.backends("docker")
async def test_new_stack_replaces_the_tests_stack_and_removes_the_old_one(stack, new_stack, docker_client):
    """What scenario 9 plays its second attempt on: the old stack gone, the new one streaming."""
    old = stack.name
    t0 = time.monotonic()
    fresh = await new_stack()
    assert fresh is not stack and fresh.name != old
    # the old stack's removal runs in the background (DockerSession's deferred_removal)
    await wait_for(
        lambda: not docker_client.containers.list(all=True, filters={"label": f"{STACK_LABEL}={old}"}),
        REMOVAL_BOUND,
        "the old stack's removal",
    )
    await wait_for(lambda: checks.flowing_since(fresh.history, t0), RESUME_BOUND + 10, "the new stack's stream")
