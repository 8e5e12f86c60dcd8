"""Fixtures that start real coturn processes and always clean them up."""

from __future__ import annotations

import os

import pytest

from harness.coturn import Coturn, turnserver_path


def _require_turnserver() -> None:
    if turnserver_path() is None:
        message = "turnserver not installed (Debian package 'coturn')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the coturn tests, not skip them", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def coturn_factory():
    """Call it to get a started ``Coturn``; every one is stopped at teardown, pass or fail."""
    _require_turnserver()
    started: list[Coturn] = []

    def make(**kwargs) -> Coturn:
        server = Coturn(**kwargs)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.close()


@pytest.fixture
def coturn(coturn_factory) -> Coturn:
    return coturn_factory(name="relay-a")
