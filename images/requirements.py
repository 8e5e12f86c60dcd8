"""Print requirement lines from pyproject.toml, for the image build (images/Dockerfile).

``requirements.py PYPROJECT build``: the project's dependencies and its build requirements (the
project is installed without build isolation); ``requirements.py PYPROJECT EXTRA``: that extra's
requirements, self-references left out. Standard library only: it runs with the base image's python3.
"""

import sys
import tomllib


def requirements(pyproject: str, what: str) -> list[str]:
    with open(pyproject, "rb") as f:
        meta = tomllib.load(f)
    project = meta["project"]
    if what == "build":
        return [*project["dependencies"], *meta["build-system"]["requires"]]
    extra = project.get("optional-dependencies", {}).get(what)
    if extra is None:
        raise SystemExit(f"requirements.py: no extra {what!r} in {pyproject}")
    return [r for r in extra if not r.startswith(project["name"] + "[")]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: requirements.py PYPROJECT build|EXTRA")
    print("\n".join(requirements(sys.argv[1], sys.argv[2])))
