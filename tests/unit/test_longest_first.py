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
}
DURATIONS = {
    "test_fast.py::test_a": 0.1,
    "test_fast.py::test_b": 0.1,
    "test_slow.py::test_c": 0.1,
    "test_slow.py::test_d": 30.0,  # the file's total decides, not the test's place in it
    "test_docker_long.py::test_e": 100.0,
    "test_docker_short.py::test_g": 1.0,
}


@pytest.fixture
def tree(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest('pytest_plugins = ["tests.plugins.longest_first"]\n')
    pytester.makepyfile(**{name.removesuffix(".py"): text for name, text in TREE.items()})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    docker: needs Docker\n")
    (pytester.path / "durations.json").write_text(json.dumps(DURATIONS))
    return pytester


def collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q", "--durations-file", "durations.json", *args)
    return [line for line in result.outlines if "::" in line]


def test_longest_files_first_docker_files_last_file_order_kept(tree: pytest.Pytester) -> None:
    assert collected(tree) == [
        "test_slow.py::test_c",  # 30.1 s
        "test_slow.py::test_d",
        "test_unknown.py::test_h",  # unknown: 0.5 s
        "test_fast.py::test_a",  # 0.2 s
        "test_fast.py::test_b",
        "test_docker_long.py::test_e",  # a docker test in the file: the file goes after the others
        "test_docker_long.py::test_f",
        "test_docker_short.py::test_g",
    ]


def test_without_a_durations_file_the_files_with_more_tests_come_first(tree: pytest.Pytester) -> None:
    (tree.path / "durations.json").unlink()
    order = collected(tree)
    assert [t.split("::")[0] for t in order[:2]] == ["test_fast.py", "test_fast.py"]  # two tests, first of those
    assert order[-1] == "test_docker_short.py::test_g"


def test_store_durations_merges_what_ran_into_the_file(tree: pytest.Pytester) -> None:
    tree.makepyfile(test_sleepy="import time\ndef test_z(): time.sleep(0.2)\n")
    result = tree.runpytest("--durations-file", "durations.json", "--store-durations", "test_sleepy.py")
    result.assert_outcomes(passed=1)
    stored = json.loads((tree.path / "durations.json").read_text())
    assert 0.2 <= stored.pop("test_sleepy.py::test_z") < 5
    assert stored == DURATIONS  # the tests this run did not run keep their figures
