"""The optional mypyc build (``make compiled``, ``tools/mypyc_build.py``) behaves as the interpreted code:
the same replay (digest, trace length, verdict, schedule) and the same log text for a handful of seeds,
one with a fix off.

Skipped when there is no build; a build older than the sources fails (rebuild it: ``make compiled``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mypyc_build", ROOT / "tools" / "mypyc_build.py")
assert _spec is not None and _spec.loader is not None
mypyc_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mypyc_build)

# (seed, --disable-fix names): every fix on, and one off (a schedule through the code it guards)
CASES = [(1, []), (2, []), (3, []), (4, []), (5, []), (6, []), (7, ["probe"])]

# Runs the CLI's replay for each case and prints its JSON line; with "compiled", first makes sure the
# hot modules really are extension modules (a run of the copy's .py files would prove nothing).
# Every log record (DEBUG and up) is compared too: a compiled module that kept a value under another
# type (an IntEnum as a plain int, say) shows in the text long before it shows in a digest.
_SCRIPT = """
import contextlib, hashlib, io, json, logging, sys
import connlib.core.allocation, connlib.core.tunnel, fake_portal.core, sim.cli, sim.world
if sys.argv[1] == "compiled":
    for module in (connlib.core.allocation, connlib.core.tunnel, fake_portal.core, sim.world):
        if not module.__file__.endswith((".so", ".pyd")):
            sys.exit("not compiled: " + module.__file__)
records = io.StringIO()
handler = logging.StreamHandler(records)
handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.DEBUG)
for seed, disabled in json.loads(sys.argv[2]):
    out = io.StringIO()
    records.seek(0)
    records.truncate()
    with contextlib.redirect_stdout(out):
        sim.cli.main(["--seed", str(seed), "--replay", *[f"--disable-fix={name}" for name in disabled]])
    replay = json.loads(out.getvalue())
    replay["log_sha256"] = hashlib.sha256(records.getvalue().encode()).hexdigest()
    replay["log_lines"] = records.getvalue().count("\\n")
    print(json.dumps(replay, sort_keys=True))
"""


def _replays(mode: str, path: str) -> list[dict]:
    # -P: neither the working directory nor the checkout goes ahead of PYTHONPATH
    done = subprocess.run(
        [sys.executable, "-P", "-c", _SCRIPT, mode, json.dumps(CASES)],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_compiled_build_replays_as_the_interpreted_code():
    build = mypyc_build.BUILD
    if not (build / mypyc_build.HASH_FILE).exists():
        pytest.skip(f"no compiled build in {build} (optional: make compiled)")
    reason = mypyc_build.stale_reason(build)
    assert reason is None, reason
    compiled = _replays("compiled", os.pathsep.join([str(build), str(ROOT)]))
    interpreted = _replays("interpreted", str(ROOT))
    assert len(compiled) == len(interpreted) == len(CASES)
    for case, ours, theirs in zip(CASES, compiled, interpreted, strict=True):
        assert theirs["log_lines"] > 100  # the records were caught
        assert ours == theirs, f"{case}: compiled {ours} != interpreted {theirs}"
