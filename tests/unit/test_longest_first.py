"""The suite's order (``tests/plugins/longest_first.py``): a real pytest run of a small tree, through
pytester, with a durations file; and ``--store-durations`` writing one."""

from __future__ import annotations

import json

import pytest

TREE = {
    "test_fast.py": "def test_a(): pass\ndef test_b(): pass\n",
    "test_slow.py": "def test_c(): pass\ndef test_d(): pass\n",
    "test_docker_long.py": "import pytest\n@pytest.mark.docker\ndef test_e(): pass\ndef test_f(): pass\n",
    "test_docker_short.py": "import pytest\npytestmark = pytest.mark.docker\ndef test_g(): pass\n",
    "test_unknown.py": "def test_h(): pass\n",
    "test_many.py": "".join(f"def test_m{i}(): pass\n" for i in range(4)),
}
DURATIONS = {
    "test_fast.py::test_a": 0.1,
    "test_fast.py::test_b": 0.1,
    "test_slow.py::test_c": 0.1,
    "test_slow.py::test_d": 30.0,  # the file's total decides, not the test's place in it
    "test_docker_long.py::test_e": 100.0,
    "test_docker_short.py::test_g": 1.0,
    **{f"test_many.py::test_m{i}": 10.0 for i in range(4)},  # 40 s in all, but four jobs of 10 s
}


@pytest.fixture
def tree(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest('pytest_plugins = ["tests.plugins.longest_first"]\n')
    pytester.makepyfile(**{name.removesuffix(".py"): text for name, text in TREE.items()})
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    docker: needs Docker\n    xdist_group: a group\n"
    )
    (pytester.path / "durations.json").write_text(json.dumps(DURATIONS))
    return pytester


def collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q", "--durations-file", "durations.json", *args)
    return [line for line in result.outlines if "::" in line]


def test_files_with_the_longest_job_first_docker_files_last_file_order_kept(tree: pytest.Pytester) -> None:
    assert collected(tree) == [
        "test_slow.py::test_c",  # one job of 30 s: before four of 10 s (40 s in all)
        "test_slow.py::test_d",
        *(f"test_many.py::test_m{i}" for i in range(4)),
        "test_unknown.py::test_h",  # unknown: 0.5 s
        "test_fast.py::test_a",  # 0.2 s
        "test_fast.py::test_b",
        "test_docker_long.py::test_e",  # a docker test in the file: the file goes after the others
        "test_docker_long.py::test_f",
        "test_docker_short.py::test_g",
    ]


def test_a_group_is_one_job(tree: pytest.Pytester) -> None:
    tree.makepyfile(
        test_grouped="import pytest\npytestmark = pytest.mark.xdist_group('g')\n"
        + "".join(f"def test_g{i}(): pass\n" for i in range(4))
    )
    (tree.path / "durations.json").write_text(
        json.dumps({**DURATIONS, **{f"test_grouped.py::test_g{i}": 10.0 for i in range(4)}})
    )
    order = collected(tree)
    assert order[:4] == [f"test_grouped.py::test_g{i}" for i in range(4)]  # one job of 40 s: first


def test_without_a_durations_file_the_files_with_more_tests_come_first(tree: pytest.Pytester) -> None:
    (tree.path / "durations.json").unlink()
    order = collected(tree)
    assert [t.split("::")[0] for t in order[:4]] == ["test_many.py"] * 4  # the most tests, all 0.5 s
    assert order[-1] == "test_docker_short.py::test_g"


def test_store_durations_merges_what_ran_into_the_file(tree: pytest.Pytester) -> None:
    tree.makepyfile(test_sleepy="import time\ndef test_z(): time.sleep(0.2)\n")
    result = tree.runpytest("--durations-file", "durations.json", "--store-durations", "test_sleepy.py")
    result.assert_outcomes(passed=1)
    stored = json.loads((tree.path / "durations.json").read_text())
    assert 0.2 <= stored.pop("test_sleepy.py::test_z") < 5
    assert stored == DURATIONS  # the tests this run did not run keep their figures
