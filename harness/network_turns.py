"""The containers of one stack leave its networks one at a time.

Docker Engine 20.10 before 20.10.27 (Debian bookworm's ``docker.io`` is 20.10.24) deadlocks for good
when a container leaves a network (``sbLeave`` locks the network, then the network controller) while
the endpoint of another container on the same network is deleted (``processEndpointDelete`` locks
the controller, then the network): moby/moby#46661, fixed by moby/libnetwork#2679. From then on every
API call that touches a network (inspect, logs, start, remove) and the embedded DNS of every
container hang until dockerd is restarted. Seen in a fresh-clone CI rehearsal here: one stack's
containers removed at once (eight at a time) beside relay restarts in two other stacks; the whole
suite hung in Docker calls, and dockerd's goroutine dump showed exactly that pair of locks held.

This process cannot mend the engine; it takes turns. Every call that stops, kills or removes a
container holds its stack's lock (:func:`turn`) until the engine shows the container off its networks
(:func:`off_networks`). A start only joins (``sbJoin`` takes no network lock before the controller's)
and needs no turn. A restart takes none either, on purpose: "every relay restarted at once" is a
scenario (the portal must see them all go and come back within its debounce), and in turns the
second relay came back after the first one's presence had gone out (seen: scenario 5 failed its
precondition three times). What is left is two relays' leaves in the same few milliseconds, a few
times a run, against a stack teardown's six or seven at once every time. Stacks have networks of
their own, so different stacks still run side by side; only one process's calls take turns (the
chaos service in a ``make up`` stack is the only caller there).
"""

from __future__ import annotations

import threading

from docker.models.containers import Container

from .labels import STACK_LABEL
from .waiting import wait_until

OFF_NETWORKS_S = 10.0  # the engine takes a stopped container off its networks within ms (measured)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def stack_of(container: Container) -> str:
    """The stack whose networks ``container`` is on ("" for a container without our label: all such
    share one turn)."""
    return (container.labels or {}).get(STACK_LABEL, "")


def turn(container: Container) -> threading.Lock:
    """``container``'s stack's turn (``with turn(c):``): no other container of its stack leaves a
    network through this process while it is held."""
    with _locks_guard:
        return _locks.setdefault(stack_of(container), threading.Lock())


def off_networks(container: Container) -> bool:
    """Does the engine show ``container`` on no network (every endpoint of it deleted)?"""
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"] or {}
    return not any(network.get("EndpointID") for network in networks.values())


def wait_off_networks(container: Container) -> None:
    """Until the engine has taken a stopped ``container`` off its networks (bounded)."""
    wait_until(lambda: off_networks(container), OFF_NETWORKS_S, f"{container.name} off its networks")


def restart(container: Container, stop_timeout: int) -> None:
    """No turn (see the module's docstring): restarts issued at once overlap."""
    container.restart(timeout=stop_timeout)


def stop(container: Container, stop_timeout: int) -> None:
    with turn(container):
        container.stop(timeout=stop_timeout)
        wait_off_networks(container)


def kill(container: Container, wait_timeout: int) -> None:
    """SIGKILL, then until the container has exited and left its networks (bounded)."""
    with turn(container):
        container.kill()
        container.wait(timeout=wait_timeout)
        wait_off_networks(container)


def remove(container: Container) -> None:
    """Forced removal (its anonymous volumes too); the engine takes it off its networks before it
    answers."""
    with turn(container):
        container.remove(force=True, v=True)
