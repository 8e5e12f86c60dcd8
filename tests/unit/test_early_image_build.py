"""Which runs start the ``:e2e`` image build at once (``harness.pytest_plugin.pytest_sessionstart``):
those whose paths cover some of ``tests/e2e``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from harness.pytest_plugin import E2E_DIR, _includes

ROOT = Path(__file__).resolve().parents[2]


def _config(*args: str, cwd: Path = ROOT) -> pytest.Config:
    """What ``_includes`` reads of a config: its paths and where pytest was started."""
    return cast(pytest.Config, SimpleNamespace(args=list(args), invocation_params=SimpleNamespace(dir=cwd)))


@pytest.mark.parametrize(
    "args",
    [
        ("tests",),
        ("tests/e2e",),
        ("tests/e2e/test_stack.py::test_x",),
        ("tests/unit", "tests/e2e/test_images.py"),
        (".",),
    ],
)
def test_a_run_covering_the_e2e_folder_builds_early(args):
    assert _includes(_config(*args), ROOT / E2E_DIR)


@pytest.mark.parametrize("args", [("tests/unit",), ("tests/integration", "tests/sim"), ("tests/unit/test_x.py::t",)])
def test_a_run_without_it_does_not(args):
    assert not _includes(_config(*args), ROOT / E2E_DIR)


def test_relative_paths_are_the_invocation_directorys():
    assert _includes(_config("e2e", cwd=ROOT / "tests"), ROOT / E2E_DIR)
    assert not _includes(_config("unit", cwd=ROOT / "tests"), ROOT / E2E_DIR)
