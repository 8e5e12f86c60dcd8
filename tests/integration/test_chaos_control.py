"""The chaos control service (``harness.control``) against real containers and a real portal.

Containers from the local base image stand in for a stack: a "relay" and a "client" carrying a
test stack's labels (as ``docker-compose.yml``'s ``x-labels`` makes them), one of another stack, and
one with no label at all; the service runs in-process on 127.0.0.1 with a real ``FakePortal`` as the
portal it partitions peers from. Every refusal is checked to change nothing: not the containers,
not the history.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import docker
import docker.errors
import jsonschema
import pytest
from docker.models.containers import Container
from schemathesis.specs.openapi.definitions import OPENAPI_30

from fake_portal import FakePortal, PortalConfig
from harness import container_faults as cf
from harness.control.actions import UNDO, Controller
from harness.control.api import ControlApi
from harness.control.journal import Journal
from harness.control.openapi import openapi_document
from harness.control.targets import COMPOSE_SERVICE_LABEL, Stack
from harness.docker_session import DockerSession
from harness.labels import PROJECT, PROJECT_LABEL, ROLE_LABEL, STACK_LABEL
from harness.waiting import NotYet, wait_for

pytestmark = [pytest.mark.docker]

TOKEN = "chaos-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNDO_BOUND_S = 10.0  # a timed fault of 0.5-1 s is undone well within this


@pytest.fixture(scope="module")
def containers(
    docker_client: docker.DockerClient, docker_session: DockerSession, base_image: str
) -> Iterator[dict[str, Container]]:
    """relay-1 and client of a test stack, a relay of another stack, and an unlabelled container."""
    image = base_image
    stack = f"chaos-test-{uuid.uuid4().hex[:8]}"
    network, _ = docker_session.create_network(f"{stack}-net", internal=True, labels={STACK_LABEL: stack})
    made: dict[str, Container] = {}

    def run(key: str, labels: dict[str, str], command: list[str], **kwargs: Any) -> None:
        made[key] = docker_client.containers.run(
            image, command, labels=labels, detach=True, init=True, network=network.name, stop_signal="SIGKILL", **kwargs
        )

    ours = {**docker_session.labels, PROJECT_LABEL: PROJECT, STACK_LABEL: stack}
    try:
        run(
            "relay",
            {**ours, ROLE_LABEL: "relay", COMPOSE_SERVICE_LABEL: "relay-1"},
            ["sleep", "infinity"],
            cap_add=["NET_ADMIN"],
            name=f"{stack}-relay-1",
        )
        run(
            "client",
            {**ours, ROLE_LABEL: "client", COMPOSE_SERVICE_LABEL: "client"},
            ["sh", "-c", "exec sleep infinity", "peer", "--id=client-1"],
            name=f"{stack}-client",
        )
        run("portal", {**ours, ROLE_LABEL: "portal", COMPOSE_SERVICE_LABEL: "portal"}, ["sleep", "infinity"])
        run(
            "foreign",
            {**docker_session.labels, PROJECT_LABEL: PROJECT, STACK_LABEL: "another-stack", ROLE_LABEL: "relay"},
            ["sleep", "infinity"],
            name=f"{stack}-other-relay",
        )
        # no label at all: not even the session's (removed below, not by the sweep)
        run("unlabelled", {}, ["sleep", "infinity"], name=f"{stack}-unlabelled")
        yield made
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
        network.remove()


class Service:
    def __init__(
        self, url: str, api: ControlApi, journal: Journal, portal: FakePortal, session: aiohttp.ClientSession
    ) -> None:
        self.url, self.api, self.journal, self.portal, self.http = url, api, journal, portal, session

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.url + path, data=data, headers={**AUTH, **(headers or {})}) as r:
            return r.status, await r.json(content_type=None)

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("POST", path, body)


@pytest.fixture
async def service(containers: dict[str, Container]) -> AsyncIterator[Service]:
    portal = FakePortal(PortalConfig(token="t", admin_token=TOKEN))
    await portal.start()
    client = docker.from_env()
    journal = Journal()
    controller = Controller(Stack(client, containers["relay"].labels[STACK_LABEL]), journal, portal.admin_url, TOKEN)
    api = ControlApi(controller, token=TOKEN, bound="127.0.0.1", hosts=())
    port = await api.serve("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Service(f"http://127.0.0.1:{port}", api, journal, portal, session)
    finally:
        await controller.close()
        await api.stop()
        await portal.stop()
        client.close()


def state(container: Container) -> tuple[str, str]:
    container.reload()
    return container.attrs["State"]["Status"], container.attrs["State"]["StartedAt"]


def rules(container: Container) -> str:
    return container.exec_run(["iptables", "-S"]).output.decode()


async def until_undone(service: Service, fault: dict[str, Any]) -> dict[str, Any]:
    """The undo of ``fault``, once it has finished; it is marked as that undo from the moment it
    appears in the history (a reader polling meanwhile, the dashboard say, never takes it for a fault)."""

    async def undone() -> dict[str, Any]:
        undos = [e for e in service.journal.since(fault["seq"]) if e["action"] == UNDO[fault["action"]]]
        if not undos:
            raise NotYet(f"no undo of #{fault['seq']} yet")
        (undo,) = undos
        assert undo["undo_of"] == fault["seq"], undo
        if undo["outcome"] == "pending":
            raise NotYet(f"the undo of #{fault['seq']} is running")
        return undo

    return await wait_for(undone, UNDO_BOUND_S, f"#{fault['seq']} undone", 0.01)


# ---------------------------------------------------------------------------- refusals
async def test_refuses_a_container_without_the_stacks_labels(service: Service, containers: dict[str, Container]):
    for key in ("unlabelled", "foreign"):
        before = state(containers[key])
        for action in ("restart", "kill", "pause"):
            status, answer = await service.post(f"/api/relays/{containers[key].name}/{action}")
            assert status == 403, answer
            assert "does not carry this stack's labels" in answer["error"]
        status, answer = await service.post(f"/api/relays/{containers[key].id[:12]}/loss", {"probability": 1})
        assert status == 403, answer
        assert state(containers[key]) == before, "a refused action changed the container"
    assert service.journal.last_seq == 0, "a refusal was recorded as an action"


async def test_refuses_the_wrong_role_and_unknown_names(service: Service, containers: dict[str, Container]):
    status, answer = await service.post("/api/relays/portal/restart")
    assert status == 400 and "portal container, not a relay" in answer["error"], answer
    status, answer = await service.post("/api/relays/client/stop")
    assert status == 400, answer
    status, answer = await service.post("/api/peers/relay-1/partition")
    assert status == 400, answer
    status, answer = await service.post("/api/relays/no-such-relay-anywhere/restart")
    assert status == 404 and "relay-1" in answer["error"], answer  # it names what there is
    status, answer = await service.post("/api/peers/client/partition", {"from": "portal-x"})
    assert status == 404, answer
    assert service.journal.last_seq == 0


async def test_token_host_and_origin_are_checked(service: Service):
    status, _ = await service.call("POST", "/api/relays/relay-1/restart", headers={"Authorization": ""})
    assert status == 401
    status, _ = await service.call("POST", "/api/relays/relay-1/restart", headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, _ = await service.call("GET", "/api/history", headers={"Host": "evil.example:8081"})
    assert status == 403
    for header in (
        {"Origin": "http://evil.example"},
        {"Referer": "http://127.0.0.1:1/x"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        status, answer = await service.call("POST", "/api/relays/relay-1/pause", headers=header)
        assert status == 403, (header, answer)
    status, answer = await service.call("GET", "/api/health", headers={"Authorization": ""})
    assert status == 200 and answer["ok"]
    assert service.journal.last_seq == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/relays/relay-1/stop", {"duration_s": -1}),
        ("/api/relays/relay-1/stop", {"duration_s": 0}),
        ("/api/relays/relay-1/stop", {"duration_s": "5"}),
        ("/api/relays/relay-1/pause", {"duration_s": True}),
        ("/api/relays/relay-1/kill", {"duration_s": 1e9}),
        ("/api/relays/relay-1/restart", {"duration_s": 5}),  # nothing to undo: not a field of restart
        ("/api/relays/relay-1/pause", {"seconds": 5}),
        ("/api/relays/relay-1/loss", {}),
        ("/api/relays/relay-1/loss", {"probability": 0}),
        ("/api/relays/relay-1/loss", {"probability": 1.5}),
        ("/api/relays/relay-1/loss", {"probability": float("nan")}),
        ("/api/relays/relay-1/loss", [0.5]),
        ("/api/peers/client/partition", {"from": 3}),
        ("/api/peers/client/heal", {"from": "portal", "duration_s": 2}),
        ("/api/relays/relay 1/restart", None),
        ("/api/relays/-relay/restart", None),
    ],
)
async def test_bad_input_is_a_400_and_changes_nothing(
    service: Service, containers: dict[str, Container], path: str, body: Any
):
    before = state(containers["relay"])
    raw = b"NaN" if body == {"probability": float("nan")} else None
    status, answer = await service.call("POST", path.replace(" ", "%20"), body, raw=raw)
    assert status == 400, answer
    assert "error" in answer
    assert state(containers["relay"]) == before and "statistic" not in rules(containers["relay"])
    assert service.journal.last_seq == 0


async def test_unknown_query_and_route_are_refused(service: Service):
    assert (await service.call("GET", "/api/history?sinse=1"))[0] == 400
    assert (await service.call("GET", "/api/history?limit=0"))[0] == 400
    assert (await service.call("POST", "/api/relays/relay-1/reboot"))[0] == 404
    assert (await service.call("GET", "/api/relays/relay-1/restart"))[0] == 405


# ---------------------------------------------------------------------------- actions
async def test_restart_kill_start_are_done_and_recorded(service: Service, containers: dict[str, Container]):
    relay = containers["relay"]
    _, started = state(relay)
    status, entry = await service.post("/api/relays/relay-1/restart")
    assert status == 200 and entry["outcome"] == "ok" and entry["action"] == "restart", entry
    assert state(relay)[0] == "running" and state(relay)[1] != started
    status, entry = await service.post("/api/relays/relay-1/kill")
    assert status == 200, entry
    assert state(relay)[0] == "exited"
    status, entry = await service.post(f"/api/relays/{relay.name}/start")  # by container name too
    assert status == 200 and entry["target"] == "relay-1", entry
    assert state(relay)[0] == "running"
    status, answer = await service.post("/api/relays/relay-1/unpause")  # not paused: Docker refuses
    assert status == 409 and answer["action"]["outcome"].startswith("failed:"), answer
    status, history = await service.call("GET", "/api/history")
    assert [(e["action"], e["outcome"][:6]) for e in history["actions"]] == [
        ("restart", "ok"),
        ("kill", "ok"),
        ("start", "ok"),
        ("unpause", "failed"),
    ]
    assert history["last_seq"] == 4
    assert (await service.call("GET", "/api/history?since=3"))[1]["actions"][0]["seq"] == 4


async def test_a_timed_pause_and_stop_are_undone(service: Service, containers: dict[str, Container]):
    relay = containers["relay"]
    status, entry = await service.post("/api/relays/relay-1/pause", {"duration_s": 0.5})
    assert status == 200 and entry["end"] is None and entry["until"] is not None, entry
    assert state(relay)[0] == "paused"
    await until_undone(service, entry)
    assert state(relay)[0] == "running"
    status, entry = await service.post("/api/relays/relay-1/stop", {"duration_s": 0.5})
    assert status == 200 and state(relay)[0] == "exited"
    await until_undone(service, entry)
    assert state(relay)[0] == "running"
    actions = service.journal.since(0)
    assert [e["action"] for e in actions] == ["pause", "unpause", "stop", "start"]
    assert actions[0]["end"] is not None and actions[0]["end"] >= actions[0]["until"] - 0.05


async def test_a_pause_reversed_by_hand_is_not_undone_again(service: Service, containers: dict[str, Container]):
    status, _ = await service.post("/api/relays/relay-1/pause", {"duration_s": 0.5})
    assert status == 200
    status, entry = await service.post("/api/relays/relay-1/unpause")
    assert status == 200
    pause = service.journal.since(0)[0]
    assert pause["end"] is not None
    await asyncio.sleep(1.0)  # past the cancelled undo's due time: an observation window
    assert [e["action"] for e in service.journal.since(0)] == ["pause", "unpause"]


async def test_a_reversal_by_hand_under_way_when_the_timed_undo_falls_due_is_not_done_twice(
    service: Service, containers: dict[str, Container], monkeypatch
):
    """The timed undo falls due while the unpause by hand is still running (Docker slowed here to
    make that certain): the undo is the hand's, not a second unpause that fails as 'not paused'."""
    real_unpause = cf.unpause

    def slow_unpause(container: Container) -> None:
        time.sleep(0.6)  # in the operation's thread: the docker call takes this long
        real_unpause(container)

    status, _ = await service.post("/api/relays/relay-1/pause", {"duration_s": 0.3})
    assert status == 200
    monkeypatch.setattr(cf, "unpause", slow_unpause)
    status, entry = await service.post("/api/relays/relay-1/unpause")  # under way past the 0.3 s
    assert status == 200 and entry["outcome"] == "ok", entry
    assert state(containers["relay"])[0] == "running"
    await asyncio.sleep(0.5)  # past the undo's due time: an observation window
    actions = service.journal.since(0)
    assert [(e["action"], e["outcome"]) for e in actions] == [("pause", "ok"), ("unpause", "ok")], actions


async def test_udp_loss_for_a_duration(service: Service, containers: dict[str, Container]):
    relay = containers["relay"]
    status, entry = await service.post("/api/relays/relay-1/loss", {"probability": 0.25, "duration_s": 1})
    assert status == 200, entry
    assert "--probability 0.25" in rules(relay)
    status, answer = await service.post("/api/relays/relay-1/loss", {"probability": 0.5})
    assert status == 409 and "clear-loss first" in answer["error"]

    # The undo's journal entry, once it has finished: the rule goes inside the undo's operation, so
    # the rule gone says nothing of the entry (its result is written after the operation returns).
    undo = await until_undone(service, entry)
    assert undo["result"] == {"rules_removed": 1}, undo
    assert "statistic" not in rules(relay)


async def test_partition_a_peer_from_a_relay_and_heal(service: Service, containers: dict[str, Container]):
    relay, client = containers["relay"], containers["client"]
    client.reload()
    (addr,) = [n["IPAddress"] for n in client.attrs["NetworkSettings"]["Networks"].values()]
    status, entry = await service.post("/api/peers/client-1/partition", {"from": "relay-1"})  # by portal id
    assert status == 200 and entry["result"] == {"rules_added": 2} and entry["target"] == "client", entry
    assert f"-A INPUT -s {addr}/32 -j DROP" in rules(relay) and f"-A OUTPUT -d {addr}/32 -j DROP" in rules(relay)
    status, entry = await service.post("/api/peers/client/heal", {"from": "relay-1"})
    assert status == 200 and entry["result"] == {"rules_removed": 2}, entry
    assert addr not in rules(relay)


async def test_partition_a_peer_from_the_portal_for_a_duration(service: Service):
    status, entry = await service.post("/api/peers/client/partition", {"duration_s": 0.5})
    assert status == 200 and entry["params"] == {"from": "portal", "duration_s": 0.5}, entry
    assert entry["result"]["id"] == "client-1"  # the portal's id of the peer (its --id)

    def portal_events() -> list[dict[str, Any]]:
        return [e for e in service.portal.core.events.since(0) if e["kind"] in ("partition", "heal")]

    async def healed() -> bool:
        if not any(e["kind"] == "heal" and "client-1" in e["ids"] for e in portal_events()):
            raise NotYet(f"portal events: {portal_events()}")
        return True

    await wait_for(healed, UNDO_BOUND_S, "the portal partition undone", 0.1)
    assert portal_events()[0]["kind"] == "partition" and portal_events()[0]["id"] == "client-1"
    assert [e["action"] for e in service.journal.since(0)] == ["partition", "heal"]


async def test_targets_lists_only_this_stacks_relays_and_peers(service: Service, containers: dict[str, Container]):
    status, answer = await service.call("GET", "/api/targets")
    assert status == 200
    assert [t["name"] for t in answer["relays"]] == ["relay-1"]
    assert [(t["name"], t["peer_id"]) for t in answer["peers"]] == [("client", "client-1")]


async def test_the_openapi_document_is_valid_and_lists_every_route(service: Service):
    status, doc = await service.call("GET", "/openapi.json")
    assert status == 200 and doc == json.loads(json.dumps(openapi_document(token=True)))
    jsonschema.Draft4Validator(OPENAPI_30).validate(doc)  # the OpenAPI 3.0 meta-schema
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in service.api.app().router.routes()
        if route.resource is not None and route.resource.canonical != "/openapi.json"
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    assert [e["action"] for e in service.journal.since(0)] == []


def test_the_history_is_bounded_and_keeps_the_newest():
    journal = Journal(capacity=3, clock=lambda: 100.0)
    for n in range(5):
        journal.finish(journal.begin("restart", f"relay-{n}", {}), "ok")
    assert [e["seq"] for e in journal.since(0)] == [3, 4, 5] and journal.last_seq == 5
    assert [e["seq"] for e in journal.since(3)] == [4, 5] and [e["seq"] for e in journal.since(0, 1)] == [5]
    lasting = journal.begin("pause", "relay-1", {"duration_s": 2})
    journal.finish(lasting, "ok", lasting=True, duration=2)
    assert lasting["end"] is None and lasting["until"] == 102.0
    journal.ended(lasting)
    assert lasting["end"] == 100.0


# ---------------------------------------------------------------------------- through the portal
async def test_the_portal_passes_the_dashboards_requests_to_the_chaos_service(
    service: Service, containers: dict[str, Container], unused_tcp_port: int
):
    portal = FakePortal(PortalConfig(token="t", admin_token=TOKEN, chaos_url=service.url))
    down = FakePortal(PortalConfig(token="t", admin_token=TOKEN, chaos_url=f"http://127.0.0.1:{unused_tcp_port}"))
    await portal.start()
    await down.start()
    try:
        via = Service(portal.admin_url + "/api/chaos", service.api, service.journal, portal, service.http)
        status, answer = await via.call("GET", "/targets")
        assert status == 200 and [t["name"] for t in answer["relays"]] == ["relay-1"], answer
        _, started = state(containers["relay"])
        status, entry = await via.post("/relays/relay-1/restart")
        assert status == 200 and entry["action"] == "restart" and state(containers["relay"])[1] != started, entry
        status, answer = await via.call("GET", "/history?since=0&limit=5")
        assert status == 200 and answer["last_seq"] == 1
        status, answer = await via.post("/relays/relay-1/loss", {"probability": 2})  # the chaos service's 400
        assert status == 400 and "probability" in answer["error"]
        status, answer = await via.post(f"/relays/{containers['unlabelled'].name}/kill")  # and its 403
        assert status == 403 and "does not carry this stack's labels" in answer["error"]
        # the portal's own gate comes first: no token, a foreign origin
        status, _ = await via.call("POST", "/relays/relay-1/restart", headers={"Authorization": ""})
        assert status == 401
        status, _ = await via.call("POST", "/relays/relay-1/restart", headers={"Origin": "http://evil.example"})
        assert status == 403
        status, _ = await via.call("GET", "/relays/../../api/health")
        assert status in (400, 404)
        # no chaos service configured; one that does not answer
        no_chaos = Service(service.portal.admin_url + "/api/chaos", service.api, service.journal, portal, service.http)
        assert (await no_chaos.call("GET", "/targets"))[0] == 404
        gone = Service(down.admin_url + "/api/chaos", service.api, service.journal, down, service.http)
        status, answer = await gone.call("GET", "/targets")
        assert status == 502 and "did not answer" in answer["error"]
        assert service.journal.last_seq == 1, "only the restart was an action"
    finally:
        await portal.stop()
        await down.stop()
