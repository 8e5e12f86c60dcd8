"""``make up``'s readiness: wait until a compose stack of this project is usable, then print where to look.

    python -m harness wait-ready --project connlib-relays [--timeout 120] [--no-traffic]

Phases, each bounded by what is left of ``--timeout`` (``harness.waiting``, polling every 0.5 s):

1. every relay container is ``healthy`` (its STUN Binding healthcheck answers);
2. the portal's admin API lists every relay as online;
3. the client's traffic probe reports datagrams delivered through the relays (its JSON lines on
   stdout);
4. the chaos control service answers (when the stack has one).

A container that exited is a failure at once, with its last log lines. Prints the time each phase took,
the dashboard URL and the chaos API's; exits 1 with a clear message on failure or timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from .docker_engine import DockerUnavailable, connect
from .labels import ROLE_LABEL
from .waiting import NotYet, wait_until

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class Broken(Exception):
    """The stack cannot become ready (not retried)."""


@dataclass
class Stack:
    client: docker.DockerClient
    project: str

    def containers(self) -> list[Container]:
        return self.client.containers.list(
            all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"}, ignore_removed=True
        )

    def by_role(self, role: str) -> list[Container]:
        return sorted((c for c in self.containers() if c.labels.get(ROLE_LABEL) == role), key=lambda c: c.name)

    def service(self, name: str) -> Container | None:
        found = [c for c in self.containers() if c.labels.get(SERVICE_LABEL) == name]
        return found[0] if found else None

    def admin_url(self) -> str:
        return self.published("portal", "8080/tcp")

    def published(self, service: str, port: str) -> str:
        """``http://127.0.0.1:<host port>`` of a service's published ``port``."""
        container = self.service(service)
        if container is None:
            raise Broken(f"no {service} container in project {self.project!r} (is the stack up?)")
        container.reload()
        bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(port) or []
        if not bindings:
            raise NotYet(f"the {service}'s port {port} is not published yet")
        host = bindings[0]["HostIp"] or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{bindings[0]['HostPort']}"


def tail(container: Container, lines: int = 15) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace")
    except docker.errors.APIError as exc:
        text = f"(no logs: {exc})"
    return "\n".join("    " + line for line in text.splitlines())


def check_running(container: Container) -> None:
    container.reload()
    state = container.attrs["State"]
    if state["Status"] in ("exited", "dead"):
        name = container.labels.get(SERVICE_LABEL, container.name)
        raise Broken(f"{name} exited with status {state['ExitCode']}; last log lines:\n{tail(container)}")


def relays_healthy(stack: Stack) -> str:
    relays = stack.by_role("relay")
    if not relays:
        raise Broken(f"no relay containers in project {stack.project!r}")
    waiting = []
    for relay in relays:
        check_running(relay)
        health = relay.attrs["State"].get("Health", {}).get("Status", "none")
        if health != "healthy":
            waiting.append(f"{relay.labels.get(SERVICE_LABEL, relay.name)}={health}")
    if waiting:
        raise NotYet("relays not healthy: " + ", ".join(waiting))
    return f"{len(relays)} relays healthy"


ADMIN_TOKEN_ENV = "PORTAL_ADMIN_TOKEN"  # what the compose file hands the portal (make.mk exports it)


def admin_token() -> str:
    return os.environ.get(ADMIN_TOKEN_ENV) or "connlib-relays-admin"  # the compose file's default


def get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin_token()}"})
    with urllib.request.urlopen(request, timeout=2) as response:  # 127.0.0.1 only: the published admin port
        return json.load(response)


def relays_online(stack: Stack) -> str:
    expected = {c.labels.get(SERVICE_LABEL) for c in stack.by_role("relay")}
    portal = stack.service("portal")
    if portal is not None:
        check_running(portal)
    try:
        relays = get_json(stack.admin_url() + "/api/relays")
    except OSError as exc:
        raise NotYet(f"portal admin API not answering: {exc}") from None
    online = {r.get("name") for r in relays if r.get("online")}
    if not expected <= online:
        raise NotYet(f"relays online at the portal: {sorted(online)}, want {sorted(expected)}")
    return "portal lists " + ", ".join(
        f"{r['name']} ({r['addr']}, secret {r['secret_fingerprint']})" for r in relays if r.get("online")
    )


def stream_lines(container: Container) -> list[dict[str, Any]]:
    out = []
    for raw in container.logs(stdout=True, stderr=False, tail=200).decode(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                pass
    return out


def traffic_flows(stack: Stack) -> str:
    client = stack.service("client")
    if client is None:
        raise Broken("no client container")
    for service in ("gateway", "client"):
        container = stack.service(service)
        if container is not None:
            check_running(container)
    lines = stream_lines(client)
    streams = [line for line in lines if line.get("event") == "stream"]
    if not streams or not streams[-1].get("delivered"):
        last = streams[-1] if streams else "no stream report yet"
        raise NotYet(f"client reports no delivered traffic: {last}")
    last = streams[-1]
    return f"client stream: delivered={last['delivered']} lost={last.get('lost')} via relay {last.get('relay')}"


def wait(name: str, check: Callable[[Stack], str], stack: Stack, deadline: float) -> str:
    started = time.monotonic()
    try:
        result: str = wait_until(lambda: check(stack), max(0.0, deadline - time.monotonic()), name, 0.5, error=Broken)
    except Broken as exc:
        raise Broken(f"{exc} ({time.monotonic() - started:.1f}s)") from None
    print(f"  {name}: {result} ({time.monotonic() - started:.1f}s)", flush=True)
    return result


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--project", default="connlib-relays")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound for all phases together (seconds)")
    ap.add_argument("--no-traffic", action="store_true", help="do not wait for the client's traffic")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.timeout
    try:
        stack = Stack(connect(), args.project)
    except DockerUnavailable as exc:
        print(f"wait-ready: {exc}", file=sys.stderr)
        return 1
    print(f"waiting for stack {args.project!r} (at most {args.timeout:.0f}s)", flush=True)
    try:
        wait("relays healthy", relays_healthy, stack, deadline)
        wait("relays online at the portal", relays_online, stack, deadline)
        if not args.no_traffic:
            wait("traffic through the relays", traffic_flows, stack, deadline)
        url = stack.admin_url()
    except Broken as exc:
        print(f"wait-ready: {exc}", file=sys.stderr)
        return 1
    print(f"stack ready in {time.monotonic() - started:.1f}s")
    print(f"dashboard: {url}/?token={admin_token()}")
    if stack.service("chaos") is not None:
        try:
            chaos = wait_until(lambda: chaos_answers(stack), max(1.0, deadline - time.monotonic()), "chaos", 0.5)
        except (AssertionError, Broken) as exc:
            print(f"wait-ready: the chaos service: {exc}", file=sys.stderr)
            return 1
        print(f"chaos API: {chaos} (Authorization: Bearer <the token above>; {chaos}/openapi.json)")
    return 0


def chaos_answers(stack: Stack) -> str:
    """The chaos control service's URL, once it answers (its health needs no token)."""
    chaos = stack.service("chaos")
    assert chaos is not None
    check_running(chaos)
    url = stack.published("chaos", "8081/tcp")
    try:
        with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
            json.load(response)
    except OSError as exc:
        raise NotYet(f"not answering: {exc}") from None
    return url
