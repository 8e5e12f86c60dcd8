"""Under mutation testing (mutmut sets ``MUTANT_UNDER_TEST``) the simulation tests run after the
unit tests a mutant selected: mutmut stops at the first failure (``-x``), so a mutant a
millisecond unit test kills never pays for a simulated world. Outside mutmut the order is
pytest's own."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    items.sort(key=lambda item: "tests/sim/" in item.nodeid.replace("\\", "/"))  # stable: unit first
