"""pytest plugin of the chaos harness: fixtures ``stack``, ``relay``, ``client``, ``gateway``,
``history``, ``figures``; marker ``stack(**StackOptions)``; backend selection; results folder.

    pytest tests/e2e                      # Docker backend (default; what CI runs)
    pytest tests/e2e --fleet process      # the same scenarios on coturn processes + in-process peers
    pytest tests/e2e --e2e-images existing  # use `make images`' :latest tags instead of building :e2e

Backends: ``--fleet docker|process`` (or ``E2E_FLEET``). Tests that use ``stack`` get the ``docker``
marker (``coturn`` for the process backend), so ``-m 'not docker'`` leaves them out. Without a Docker
engine they skip, except under ``CI=true``, where a missing engine is a failure.

A Docker run first sweeps the leftovers of dead sessions (``harness.sweep``), then makes sure the
``:e2e`` images match the tree (``harness.images``). Every stack is removed at its teardown, and the
whole session's resources at the end of the run.

ERROR lines from the stack's processes are logged again at ERROR before the test's ERROR rule
(``tests/plugins/no_errors.py``) looks, so that they fail the test in its call phase.

Each test's history goes to ``results/<run>/history/``; what a test puts into ``figures`` becomes a
row of the summary table printed at the end of the run (``harness.report``).

Side by side (pytest-xdist, ``-n N``; what ``make e2e`` does): every worker is a session of its own
(its own id, labels, subnets and sweep owner, so one worker's teardown never touches another's
stacks), the image build is serialised by ``harness.images``' lock, and every worker writes into the
controller's results folder: its histories as they come, its rows at its end (``rows/<worker>.json``),
which the controller reads into the one summary table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import docker
import pytest

from . import checks
from .coturn import turnserver_path
from .docker_engine import DockerUnavailable, connect
from .docker_fleet import DockerFleet
from .docker_session import DockerSession
from .fleet import CLIENT_ID, GATEWAY_ID, Fleet, StackOptions
from .history import History, new_history
from .images import E2E_TAG, MODES, ImagesUnavailable, ensure_base, ensure_images
from .process_fleet import ProcessFleet
from .report import Results, Row
from .sweep import sweep

log = logging.getLogger("harness.pytest_plugin")

FLEET_KEY = pytest.StashKey[Fleet]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
RESULTS_KEY = pytest.StashKey[Results]()
SESSION_KEY = pytest.StashKey[str]()
BACKENDS = ("docker", "process")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(f"{message}; CI must run the e2e tests, not skip them", pytrace=False)
    pytest.skip(message)


# ---------------------------------------------------------------------------- options and markers
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("e2e", "connlib-relays chaos harness")
    group.addoption(
        "--fleet",
        choices=BACKENDS,
        default=os.environ.get("E2E_FLEET", "docker"),
        help="backend of the `stack` fixture (default docker; env E2E_FLEET)",
    )
    group.addoption(
        "--e2e-images",
        choices=MODES,
        default=os.environ.get("E2E_IMAGES", "auto"),
        help="auto: build connlib-relays/*:e2e when the tree changed; existing: use :latest",
    )
    group.addoption(
        "--e2e-results",
        default=os.environ.get("E2E_RESULTS", "results"),
        help="folder for histories and summaries (default results/)",
    )
    group.addoption(
        "--e2e-repeats",
        type=int,
        default=int(os.environ.get("E2E_REPEATS", "3")),
        help="fault repetitions in the scenarios cheap enough to repeat (p95; default 3)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack(**options): harness.fleet.StackOptions of the `stack` fixture")
    config.addinivalue_line("markers", "backends(*names): fleet backends this test can run on (default: both)")
    # pytest-xdist's own marker, named here too so that a serial run with `-p no:xdist` still knows it
    config.addinivalue_line("markers", "xdist_group(name): side by side, the tests of one group share a worker")
    config.stash[SESSION_KEY] = uuid.uuid4().hex  # per process: an xdist worker is a Docker session of its own
    logging.getLogger("urllib3").setLevel(logging.INFO)  # docker-py's HTTP chatter buries the test's own records
    root = Path(config.getoption("--e2e-results"))
    if not root.is_absolute():
        root = Path(config.rootpath) / root
    results = config.stash[RESULTS_KEY] = Results(root, config.stash[SESSION_KEY])
    shared = _worker_input(config).get(RESULTS_DIR_INPUT)
    if shared:
        results.dir = Path(shared)  # a worker writes into its controller's run folder


RESULTS_DIR_INPUT = "connlib_results_dir"


def _worker_input(config: pytest.Config) -> dict[str, Any]:
    """What the xdist controller handed this worker (empty outside a worker)."""
    return getattr(config, "workerinput", {})


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: every worker writes into this run's results folder."""
    node.workerinput[RESULTS_DIR_INPUT] = str(node.config.stash[RESULTS_KEY].dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backend = config.getoption("--fleet")
    for item in items:
        if "stack" not in getattr(item, "fixturenames", ()):
            continue
        item.add_marker(pytest.mark.docker if backend == "docker" else pytest.mark.coturn)
        allowed = item.get_closest_marker("backends")
        if allowed is not None and backend not in allowed.args:
            item.add_marker(
                pytest.mark.skip(reason=f"needs the {' or '.join(allowed.args)} backend (this run: {backend})")
            )


# ---------------------------------------------------------------------------- the images, early
def pytest_sessionstart(session: pytest.Session) -> None:
    """A run that includes the e2e folder starts the ``:e2e`` image build at once, in a background
    thread of the controller (of the one process of a serial run): on a fresh machine it takes
    minutes (the base's debootstrap, three images), and the suites that need no Docker run meanwhile
    (``tests/plugins/longest_first.py`` puts them first). The ``e2e_images`` fixture waits for it on
    the build lock and finds the images current; if this build fails, the fixture builds again and
    reports the failure. Only ``auto`` (``build`` would build twice; ``existing`` builds nothing)."""
    config = session.config
    if _worker_input(config) or config.getoption("--fleet") != "docker" or config.getoption("--e2e-images") != "auto":
        return
    if not _includes(config, Path(config.rootpath) / E2E_DIR):
        return
    threading.Thread(target=_build_early, name="e2e-images", daemon=True).start()


E2E_DIR = Path("tests", "e2e")


def _includes(config: pytest.Config, folder: Path) -> bool:
    """Whether the run's paths (its arguments, else ``testpaths``) cover some of ``folder``."""
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve()
        if path == folder or folder in path.parents or path in folder.parents:
            return True
    return False


def _build_early() -> None:
    try:
        client = connect(timeout=600)
    except DockerUnavailable:
        return  # the Docker tests skip (or fail under CI) in their own fixtures
    try:
        ensure_images(client, E2E_TAG, "auto")
    except Exception as exc:  # the fixture builds again and reports it; a warning here, not a second report
        log.warning("Early image build failed error=%s: %s", type(exc).__name__, exc)
    finally:
        client.close()


# ---------------------------------------------------------------------------- Docker session
@pytest.fixture(scope="session")
def fleet_backend(pytestconfig: pytest.Config) -> str:
    return str(pytestconfig.getoption("--fleet"))


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A docker-py client; the leftovers of dead sessions are swept first."""
    try:
        client = connect(timeout=120)
    except DockerUnavailable as exc:
        _unavailable(str(exc))
    report = sweep(client)
    log.info("%s", report)
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_session(docker_client: docker.DockerClient, pytestconfig: pytest.Config) -> Iterator[DockerSession]:
    """This run's labelled Docker resources; all removed at the end of the run."""
    # A stack's removal runs while the next test's stack starts (the run's end waits for it)
    session = DockerSession(docker_client, images={}, session_id=pytestconfig.stash[SESSION_KEY], deferred_removal=True)
    yield session
    session.remove_all()


@pytest.fixture(scope="session")
def e2e_images(docker_session: DockerSession, pytestconfig: pytest.Config) -> dict[str, str]:
    """The images the stacks run, built from this tree if stale (``:e2e``; ``existing``: ``:latest``)."""
    mode = pytestconfig.getoption("--e2e-images")
    try:
        docker_session.images = ensure_images(docker_session.client, "latest" if mode == "existing" else E2E_TAG, mode)
    except ImagesUnavailable as exc:
        pytest.fail(f"e2e images: {exc}", pytrace=False)  # a broken image build is a bug, never a skip
    return docker_session.images


@pytest.fixture(scope="session")
def base_image(docker_session: DockerSession) -> str:
    """The id of the project's base image (``images/base.sh``: bootstrapped if missing, and after
    any image build in progress, on the build lock), for tests that run bare containers."""
    try:
        return ensure_base(docker_session.client).id
    except ImagesUnavailable as exc:
        pytest.fail(f"base image: {exc}", pytrace=False)


# ---------------------------------------------------------------------------- the stack
@pytest.fixture
def history() -> History:
    return new_history()


@pytest.fixture
def figures(request: pytest.FixtureRequest, fleet_backend: str) -> dict[str, Any]:
    """Fill it with the test's measured figures: they become its row of the summary table."""
    results = request.config.stash[RESULTS_KEY]
    return results.row(request.node.nodeid, _scenario_name(request.node), fleet_backend).figures


def _scenario_name(item: pytest.Item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    first = doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""
    return first or item.name


def _stack_options(request: pytest.FixtureRequest) -> StackOptions:
    kwargs: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("stack"))):  # closest marker wins
        kwargs.update(marker.kwargs)
    return StackOptions(**kwargs)


@pytest.fixture
def _fleet_factory(request: pytest.FixtureRequest, fleet_backend: str, history: History) -> Callable[[], Fleet]:
    options = _stack_options(request)
    if fleet_backend == "docker":
        session = request.getfixturevalue("docker_session")
        request.getfixturevalue("e2e_images")
        return lambda: DockerFleet(history, options, session=session)
    if turnserver_path() is None:
        _unavailable("turnserver not installed (Debian package 'coturn'): the process fleet needs it")
    return lambda: ProcessFleet(history, options)


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, _fleet_factory: Callable[[], Fleet], history: History
) -> AsyncIterator[Fleet]:
    """A started stack (portal, relays, gateway, client streaming through a relay)."""
    results = request.config.stash[RESULTS_KEY]
    request.node.stash[FLEET_KEY] = _fleet_factory()
    try:
        await request.node.stash[FLEET_KEY].start()
        yield request.node.stash[FLEET_KEY]
    finally:
        fleet = request.node.stash[FLEET_KEY]  # the test's last stack (see new_stack)
        logs = fleet.container_logs() if not _passed(request.node) else {}
        try:
            await fleet.stop()
        finally:
            results.write_history(request.node.nodeid, history)
            if logs:
                results.write_logs(request.node.nodeid, logs)


@pytest.fixture
def new_stack(
    request: pytest.FixtureRequest, stack: Fleet, _fleet_factory: Callable[[], Fleet]
) -> Callable[[], Awaitable[Fleet]]:
    """Replaces the test's stack by a new one with the same options (the old one stopped and removed
    first, its ERROR lines counted as ever): for a scenario whose set-up the run missed and which its
    own stack cannot set up again. The test's teardown, error check and logs follow the new stack."""

    async def replace() -> Fleet:
        await request.node.stash[FLEET_KEY].stop()
        request.node.stash[FLEET_KEY] = _fleet_factory()
        await request.node.stash[FLEET_KEY].start()
        return request.node.stash[FLEET_KEY]

    return replace


def _passed(item: pytest.Item) -> bool:
    reports = item.stash.get(REPORTS_KEY, {})
    return bool(reports) and all(r.passed for r in reports.values())


class PeerHandle:
    """A client or gateway of the stack, seen through the history."""

    def __init__(self, fleet: Fleet, peer_id: str) -> None:
        self.fleet = fleet
        self.id = peer_id

    def carrying_relay(self) -> str | None:
        return checks.carrying_relay(self.fleet.history, self.id)

    def known_relays(self) -> set[str]:
        return checks.known_relays(self.fleet.history, self.id)

    def partitioned(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.fleet.partitioned(self.id)

    async def partition(self, seconds: float | None = None) -> None:
        await self.fleet.partition(self.id, seconds)

    async def heal(self) -> None:
        await self.fleet.heal(self.id)


class RelayHandle:
    """One relay of the stack, by name, with its faults."""

    def __init__(self, fleet: Fleet, name: str, rid: str) -> None:
        self.fleet, self.name, self.id = fleet, name, rid

    def __getattr__(self, fault: str) -> Callable[..., Awaitable[Any]]:  # restart, stop, kill, udp_loss, ...
        method = getattr(self.fleet, f"{fault}_relay", None) or getattr(self.fleet, fault)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await method(self.name, *args, **kwargs)

        return call


@pytest.fixture
def client(stack: Fleet) -> PeerHandle:
    return PeerHandle(stack, CLIENT_ID)


@pytest.fixture
def gateway(stack: Fleet) -> PeerHandle:
    return PeerHandle(stack, GATEWAY_ID)


@pytest.fixture
async def relay(stack: Fleet) -> RelayHandle:
    """The relay carrying the client's stream."""
    rid = checks.carrying_relay(stack.history, CLIENT_ID)
    assert rid is not None, "the client's stream runs through no relay"
    return RelayHandle(stack, await stack.relay_name(rid), rid)


# ---------------------------------------------------------------------------- hooks
@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item):
    yield
    fleet = item.stash.get(FLEET_KEY, None)
    if fleet is not None:
        fleet.collect_errors()  # logs them at ERROR: the ERROR rule, which looks next, fails the test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(REPORTS_KEY, {})[report.when] = report
    results = item.config.stash[RESULTS_KEY]
    row = results.rows.get(item.nodeid)
    if row is None:
        return
    if report.when == "teardown" and row.verdict == "not run":
        # A row the fixture's teardown made (it wrote the history): the call's outcome decides.
        call_report = item.stash[REPORTS_KEY].get("call")
        if call_report is not None:
            _verdict(row, call_report)
    _verdict(row, report)
    row.duration_s = round(row.duration_s + report.duration, 2)


def _verdict(row: Row, report: pytest.TestReport) -> None:
    if report.failed:
        row.verdict = "FAILED" if report.when == "call" else f"ERROR ({report.when})"
        crash = getattr(report.longrepr, "reprcrash", None)
        row.reason = str(crash.message if crash is not None else report.longrepr or "")[:2000]
    elif report.skipped and report.when != "teardown":
        row.verdict = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.when == "call" and report.passed:
        row.verdict = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """xdist worker: its rows, for the controller's table (its own terminal summary is not shown)."""
    worker = _worker_input(session.config).get("workerid")
    results = session.config.stash.get(RESULTS_KEY, None)
    if worker is None or results is None or not results.rows:
        return
    path = results.dir / "rows" / f"{worker}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(row) for row in results.rows.values()], default=str))


def _collect_worker_rows(results: Results) -> None:
    for path in sorted((results.dir / "rows").glob("*.json")):
        for data in json.loads(path.read_text()):
            results.rows[data["nodeid"]] = Row(**data)
        path.unlink()
    with contextlib.suppress(OSError):
        (results.dir / "rows").rmdir()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, None)
    if results is None or _worker_input(config):
        return
    _collect_worker_rows(results)
    if not results.rows:
        return
    table = results.finish()
    if table:
        terminalreporter.write_sep("=", "e2e scenarios: measured figures")
        terminalreporter.write_line(table)
    terminalreporter.write_line(f"e2e results: {results.dir}")
