"""The layout's rules, checked on the source: pure protocol cores, no import cycles.

- ``connlib/core/`` is sans-IO: no sockets, asyncio, clock, OS randomness, threads or processes.
  Randomness comes from a ``random.Random`` passed in (or seeded by the caller), so a run can be
  replayed byte for byte.
- The project's import graph (module-level imports between its own modules) has no cycle, and no
  project module imports another project module inside a function (the usual way to hide one).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("connlib", "fake_portal", "harness", "bench", "sim")
CORE = ROOT / "connlib" / "core"

FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "time",
    "datetime",
    "os",
    "secrets",
    "threading",
    "subprocess",
    "multiprocessing",
    "websockets",
    "urllib",
    "http",
    "uuid",
}
ALLOWED_RANDOM = {"Random"}  # the type of the rng passed in; never the module's shared state


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"


def _imports(name: str, path: Path, *, top_level: bool) -> list[tuple[str, int]]:
    """Imported module names (absolute), with their line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes: Sequence[ast.AST]
    if top_level:
        nodes = tree.body
    else:  # everything below the module's own statements; `if TYPE_CHECKING:` imports are types only
        nodes = [n for stmt in tree.body if not _is_type_checking(stmt) for n in ast.walk(stmt) if n is not stmt]
    found: list[tuple[str, int]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_cores_do_no_io_and_draw_no_os_randomness():
    problems = []
    for path in sorted(CORE.glob("*.py")):
        name = "connlib.core." + path.stem
        for module, line in _imports(name, path, top_level=True) + _imports(name, path, top_level=False):
            if module.split(".")[0] in FORBIDDEN_IN_CORE:
                problems.append(f"{path.name}:{line} imports {module}")
            if module.startswith("connlib.") and not module.startswith("connlib.core"):
                problems.append(f"{path.name}:{line} imports {module} (cores import only cores)")
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr not in ALLOWED_RANDOM
            ):
                problems.append(f"{path.name}:{node.lineno} uses random.{node.attr} (pass a seeded rng)")
    assert not problems, "\n".join(problems)


def test_core_rule_catches_a_forbidden_import(tmp_path):
    """The check above can fail: a core module that reads the clock is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom ..aio import driver\n")
    found = [m for m, _ in _imports("connlib.core.bad", bad, top_level=True)]
    assert "time" in found and "connlib.aio.driver" in found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, _ in _imports(name, path, top_level=True):
            # `from pkg import mod` names a module; `from mod import func` names mod itself
            target = module if module in modules else module.rpartition(".")[0]
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ importing its own modules is not a cycle of the layout
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_check_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_level_imports_of_project_modules(package):
    modules = _modules()
    problems = []
    for name, path in sorted(modules.items()):
        if not name.startswith(package):
            continue
        for module, line in _imports(name, path, top_level=False):
            if module.split(".")[0] in PACKAGES:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} inside a function")
    assert not problems, "\n".join(problems)


def test_cli_policies_are_the_tunnels():
    """cli.py names the policies without importing the tunnel (start-up time); they must agree."""
    from connlib.app import cli
    from connlib.core import tunnel

    assert cli.POLICIES == (tunnel.POLICY_RELAY_ONLY, tunnel.POLICY_ALL)
