"""An optional mypyc build of the simulator's hot modules (``make compiled``, ``make sim-compiled``).

The packages the simulator runs (``connlib``, ``fake_portal``, ``sim``) are copied into
``build/compiled/`` and the modules of :data:`MODULES` compiled there with mypyc; the rest stay
Python in the copy. Nothing is written next to the sources, so a stale extension module can never
shadow an edited ``.py`` in the interpreted tree. The copy records a hash of the sources it was made
from (``SOURCE_HASH``); ``run`` and ``check`` refuse a build whose hash no longer matches the tree.

    python tools/mypyc_build.py build [--force]   # (re)build when the sources changed (2-4 min)
    python tools/mypyc_build.py check             # exit 0 if the build is current, 1 if stale or missing
    python tools/mypyc_build.py run ARGS...       # python ARGS with the compiled build first on the path
                                                  # (e.g. run -m sim --seed 1 --count 1000)

Same behaviour, checked: ``tests/sim/test_compiled.py`` compares the compiled build's replay digests
with the interpreted code's (skipped when there is no build).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "compiled"
HASH_FILE = "SOURCE_HASH"
PACKAGES = ("connlib", "fake_portal", "sim")

# Compiled: what a simulator run spends its time in. Left interpreted (imported as Python from the copy):
# - connlib/core/sansio.py: its Protocol class sits under the module's own ``TYPE_CHECKING`` (kept so the
#   cores do not import ``typing`` at start-up), which mypy treats as true, and mypyc rejects a class
#   defined inside an ``if`` ("Nested class definitions not supported");
# - connlib/core/logfmt.py: ``__repr__ = __str__`` in a class body is not supported by native classes
#   (``kv(...)`` fails at run time with KeyError '__str__');
# - connlib/app/lines.py: a subclass sets the ``ClassVar`` ``_RENAMES`` without repeating the annotation,
#   which mypyc takes for a dataclass field with a mutable default (ValueError at import);
# - fake_portal/eventlog.py: ``_Patched`` subclasses ``tuple`` ("Inheriting from most builtin types is
#   unimplemented");
# - fake_portal/relays.py: a dataclass field with ``init=False`` and a default after a
#   ``cached_property``: the native class leaves ``_identity`` undefined (AttributeError);
# - connlib/core/stun.py: ``Message.method`` is ``Method | int``, which mypy simplifies to ``int`` (``Method``
#   is an ``IntEnum``): a native class would keep a decoded ``Method.ALLOCATE`` as a plain 3
#   (``method_name`` then logs ``0x003``; test_stun_codec.py found it);
# - connlib/core/messages.py: its payload dataclasses take what the JSON holds and check it in
#   ``__post_init__`` (a relay id of 7 is a MessageError); a native class checks the annotations first and
#   raises TypeError (tests/unit/test_messages.py, test_fake_portal_hostile.py found it);
# - the CLI entry points, package ``__init__``s, and everything the simulator does not import.
MODULES = (
    "connlib/app/session.py",
    "connlib/app/stream.py",
    "connlib/core/addr.py",
    "connlib/core/allocation.py",
    "connlib/core/backoff.py",
    "connlib/core/candidate.py",
    "connlib/core/credentials.py",
    "connlib/core/fixes.py",
    "connlib/core/ice.py",
    "connlib/core/node.py",
    "connlib/core/phoenix.py",
    "connlib/core/relay.py",
    "connlib/core/tunnel.py",
    "fake_portal/config.py",
    "fake_portal/core.py",
    "fake_portal/identity.py",
    "sim/actors.py",
    "sim/cli.py",
    "sim/faults.py",
    "sim/invariants.py",
    "sim/net.py",
    "sim/relay.py",
    "sim/runner.py",
    "sim/schedule.py",
    "sim/world.py",
)


def _sources(root: Path) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def source_hash(root: Path = ROOT) -> str:
    """What a build depends on: every source file of the packages, the module list, mypy and Python."""
    import mypy.version

    digest = hashlib.sha256()
    for line in (*MODULES, mypy.version.__version__, sys.version):
        digest.update(line.encode() + b"\0")
    for path in _sources(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def stale_reason(build: Path = BUILD) -> str | None:
    """Why the build in ``build`` cannot be used (missing, unfinished, older than the sources), or None."""
    recorded = build / HASH_FILE
    if not recorded.exists():
        return f"no compiled build in {build} (make compiled)"
    if recorded.read_text().strip() != source_hash():
        return f"the compiled build in {build} is stale: the sources changed since it was made (make compiled)"
    return None


def build(force: bool = False) -> int:
    if not force and stale_reason() is None:
        print(f"{BUILD}: current")
        return 0
    wanted = source_hash()
    if BUILD.exists():
        shutil.rmtree(BUILD)
    BUILD.mkdir(parents=True)
    for path in _sources(ROOT):
        target = BUILD / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    # setuptools and mypyc take their paths relative to the working directory: build in the copy.
    script = (
        "from mypyc.build import mypycify\n"
        "from setuptools import setup\n"
        f"setup(name='connlib-relays-compiled', ext_modules=mypycify({list(MODULES)!r}, opt_level='3'),"
        " script_args=['build_ext', '--inplace'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=BUILD)
    if done.returncode != 0:
        return done.returncode
    shutil.rmtree(BUILD / "build", ignore_errors=True)  # setuptools' intermediate objects
    if source_hash() != wanted:  # edited while it built: record nothing, so it is rebuilt
        print("the sources changed during the build; run it again", file=sys.stderr)
        return 1
    (BUILD / HASH_FILE).write_text(wanted + "\n")
    print(f"{BUILD}: built {len(MODULES)} modules")
    return 0


def environment() -> dict[str, str]:
    """The environment of a process that imports the compiled build first, then the checkout (bench, tests)."""
    path = os.pathsep.join([str(BUILD), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "check", "run"):
        print(__doc__, file=sys.stderr)
        return 64
    command, rest = argv[0], argv[1:]
    if command == "build":
        return build(force="--force" in rest)
    reason = stale_reason()
    if command == "check":
        print(reason or f"{BUILD}: current")
        return 1 if reason else 0
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    # -P: no working directory (or script directory) ahead of PYTHONPATH, where it would bring back
    # the interpreted packages of a run from the checkout.
    return subprocess.run([sys.executable, "-P", *rest], env=environment()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
