"""The stack's one definition, ``docker-compose.yml``, is what the Docker backend creates (no engine
needed): a change in the file shows in the containers and networks the backend would make, and the
harness's per-stack values reach them through the file's variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from harness.docker_fleet import create_kwargs, plan
from harness.fleet import CLIENT_ID, GATEWAY_ID, StackOptions
from harness.labels import ROLE_LABEL, SESSION_LABEL, STACK_LABEL
from harness.topology import COMPOSE_FILE, Port, TopologyError, duration_s, interpolate, load, peer_routes

VARIABLES = {
    "COMPOSE_PROJECT_NAME": "clr-test-1",
    "CONNLIB_SESSION": "s1",
    "CONNLIB_NET_CLIENT": "10.213.1",
    "CONNLIB_NET_GATEWAY": "10.213.2",
    "CONNLIB_NET_RELAY": "10.213.3",
    "IMAGE_TAG": "e2e",
    "PORTAL_TOKEN": "t0k",
    "PORTAL_ADMIN_PUBLISH": "127.0.0.1:",
    "CLIENT_ID": CLIENT_ID,
    "GATEWAY_ID": GATEWAY_ID,
    "CLIENT_RATE": "25.0",
    "CLIENT_DISABLE_FIXES": "probe",
}


def test_interpolation_follows_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d} ${EMPTY-d} ${UNSET-d} $SET $$SET ${UNSET}", env) == (
        "x d d  d x $SET "
    )
    assert duration_s("2s") == 2.0 and duration_s("1m30s") == 90.0 and duration_s("500ms") == 0.5
    assert Port.parse("127.0.0.1::8080") == Port(8080, "tcp", "127.0.0.1", None)
    assert Port.parse("127.0.0.1:18080:8080") == Port(8080, "tcp", "127.0.0.1", 18080)
    assert Port.parse("3478/udp") == Port(3478, "udp", "", None)
    with pytest.raises(TopologyError):
        duration_s("soon")


def test_the_files_peer_routes_are_the_derived_ones():
    """The file writes PEER_ROUTES by hand for `docker compose`; the harness derives them when it
    scales the relays: both must say the same."""
    topology = load({})
    for peer in (*topology.by_role("client"), *topology.by_role("gateway")):
        written = [r.strip() for r in peer.environment["PEER_ROUTES"].split(",")]
        assert written == peer_routes(topology, peer), peer.name


def test_the_backend_creates_what_the_file_says_with_the_stacks_values():
    stack = plan(VARIABLES, StackOptions(count=7, portal={"relays_per_client": 3}))
    assert {k: str(n.subnet) for k, n in stack.networks.items()} == {
        "client-net": "10.213.1.0/24",
        "gateway-net": "10.213.2.0/24",
        "relay-net": "10.213.3.0/24",
    }
    assert stack.networks["relay-net"].internal and not stack.networks["client-net"].internal
    assert stack.networks["client-net"].subnet_variable == "CONNLIB_NET_CLIENT"

    client = create_kwargs(stack.services["client"], "clr-test-1-client-net")
    assert client["image"] == "connlib-relays/peer:e2e"
    assert client["environment"]["CONNLIB_TEST_DISABLE_FIXES"] == "probe"
    assert client["environment"]["PEER_ROUTES"] == (
        "10.213.3.11/32 via 10.213.1.11, 10.213.3.12/32 via 10.213.1.12, unreachable default"
    )
    command = client["command"]
    assert isinstance(command, list)
    assert {f"--id={CLIENT_ID}", f"--connect={GATEWAY_ID}", "--rate=25.0", "--token=t0k"} <= set(command)
    assert command[-2:] == ["--count", "7"]  # an option the file has no variable for, added on top
    assert client["labels"] == {  # the file's x-labels, filled with the session's values
        "org.connlib-relays.project": "connlib-relays",
        STACK_LABEL: "clr-test-1",
        SESSION_LABEL: "s1",
        "org.connlib-relays.session-owner": "",
        "org.connlib-relays.session-created": "",
        ROLE_LABEL: "client",
    }
    assert stack.services["client"].addresses == {"client-net": "10.213.1.20"}
    assert stack.services["relay-2"].addresses["relay-net"] == "10.213.3.12"
    assert stack.services["relay-1"].environment["RELAY_SUBNET"] == "10.213.3.0/24"

    portal = create_kwargs(stack.services["portal"], "n")
    assert portal["ports"] == {"4000/tcp": ("127.0.0.1", 14000), "8080/tcp": ("127.0.0.1", None)}
    assert portal["command"][-2:] == ["--relays-per-client", "3"]
    no_check = create_kwargs(stack.services["portal"], "n", healthcheck=False)["healthcheck"]
    assert no_check == {"test": ["NONE"]}  # the harness's: the image's HEALTHCHECK off too
    health = stack.services["portal"].healthcheck
    assert health is not None and health["test"][:2] == ["CMD", "/usr/bin/python3"]
    assert (health["interval"], health["timeout"], health["retries"], health["start_period"]) == (2e9, 2e9, 3, 10e9)


def test_more_relays_than_the_file_repeat_its_last_one():
    stack = plan(VARIABLES, StackOptions(relays=3))
    relay3 = stack.services["relay-3"]
    assert [s.name for s in stack.relays] == ["relay-1", "relay-2", "relay-3"]
    assert relay3.addresses == {"client-net": "10.213.1.13", "gateway-net": "10.213.2.13", "relay-net": "10.213.3.13"}
    assert relay3.environment["RELAY_NAME"] == "relay-3" and relay3.hostname == "relay-3"
    assert (
        stack.services["gateway"]
        .environment["PEER_ROUTES"]
        .endswith("10.213.3.13/32 via 10.213.2.13, unreachable default")
    )
    assert "relay-3" in stack.services["client"].depends_on
    assert [s.name for s in plan(VARIABLES, StackOptions(relays=1)).relays] == ["relay-1"]


def test_a_change_in_the_file_is_a_change_in_what_the_backend_creates(tmp_path: Path):
    """One place: edit the definition (a host number, a port, an environment variable, a subnet's
    variable, a capability) and the backend's plan follows, with no code change."""
    text = COMPOSE_FILE.read_text()
    edits = [
        ("ipv4_address: ${CONNLIB_NET_CLIENT:-172.31.231}.20", "ipv4_address: ${CONNLIB_NET_CLIENT:-172.31.231}.42"),
        ("--admin=0.0.0.0:8080", "--admin=0.0.0.0:9090"),
        ('"${PORTAL_ADMIN_PUBLISH:-127.0.0.1:18080}:8080"', '"${PORTAL_ADMIN_PUBLISH:-127.0.0.1:18080}:9090"'),
        ("      RELAY_NAME: relay-1\n", "      RELAY_NAME: relay-1\n      TURN_EXTRA: verbose\n"),
        ("subnet: ${CONNLIB_NET_RELAY:-172.31.233}.0/24", "subnet: ${CONNLIB_NET_RELAYS:-172.31.233}.0/24"),
    ]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    edited = tmp_path / "docker-compose.yml"
    edited.write_text(text)

    stack = plan({**VARIABLES, "CONNLIB_NET_RELAYS": "10.213.9"}, StackOptions(), path=edited)
    assert stack.services["client"].addresses["client-net"] == "10.213.1.42"
    assert stack.services["portal"].option("--admin") == "0.0.0.0:9090"
    assert "9090/tcp" in create_kwargs(stack.services["portal"], "n")["ports"]
    assert stack.services["relay-1"].environment["TURN_EXTRA"] == "verbose"
    assert "TURN_EXTRA" not in stack.services["relay-2"].environment
    assert stack.networks["relay-net"].subnet == ipaddress.IPv4Network("10.213.9.0/24")
    assert stack.networks["relay-net"].subnet_variable == "CONNLIB_NET_RELAYS"


def test_virtual_clients_reach_the_client_container_and_size_the_relays():
    stack = plan(VARIABLES, StackOptions(clients=300))
    client = stack.services["client"].command or []
    assert client[-2:] == ["--clients", "300"]
    assert "--clients" not in (stack.services["gateway"].command or [])
    for relay in stack.relays:
        assert int(relay.environment["MAX_PORT"]) - int(relay.environment["MIN_PORT"]) + 1 >= 2 * 301
    single = plan(VARIABLES, StackOptions())
    assert "--clients" not in (single.services["client"].command or [])
    assert all("MAX_PORT" not in r.environment for r in single.relays)
