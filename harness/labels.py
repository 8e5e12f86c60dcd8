"""The labels every Docker object of this project carries, and who owns a session's objects.

The label *values* of a stack are written in ``docker-compose.yml`` (``x-labels``, filled from
variables); this module holds the label *keys* the harness filters on, and the owner token that lets
the sweep (``harness.sweep``) tell a live session from a dead one. No Docker import: the process
backend and the unit tests use it too.
"""

from __future__ import annotations

import os
import socket
import time

PROJECT = "connlib-relays"
PROJECT_LABEL = "org.connlib-relays.project"
STACK_LABEL = "org.connlib-relays.stack"  # a compose project name or a harness stack name
ROLE_LABEL = "org.connlib-relays.role"
SESSION_LABEL = "org.connlib-relays.session"
OWNER_LABEL = "org.connlib-relays.session-owner"  # "<host>:<pid>:<process start ticks>"
CREATED_LABEL = "org.connlib-relays.session-created"  # unix seconds
IMAGE_LABEL = "org.connlib-relays.image"
DIGEST_LABEL = "org.connlib-relays.source-digest"


def process_start_ticks(pid: int) -> str:
    """The process's start time (clock ticks since boot): with the pid, it names a process uniquely."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid)}"


def session_labels(session_id: str) -> dict[str, str]:
    """The labels of one session's objects: project, session id, owner (this process), creation time."""
    return {
        PROJECT_LABEL: PROJECT,
        SESSION_LABEL: session_id,
        OWNER_LABEL: owner_token(),
        CREATED_LABEL: str(int(time.time())),
    }


def session_variables(labels: dict[str, str]) -> dict[str, str]:
    """The same labels as the variables ``docker-compose.yml``'s ``x-labels`` reads them from."""
    return {
        "CONNLIB_SESSION": labels[SESSION_LABEL],
        "CONNLIB_SESSION_OWNER": labels[OWNER_LABEL],
        "CONNLIB_SESSION_CREATED": labels[CREATED_LABEL],
    }
