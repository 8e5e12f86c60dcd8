# Developer entry points. `make test` is the README's (and CI's) test command.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Side by side (pytest-xdist): TEST_JOBS worker processes, each test scheduled alone except a group
# marked xdist_group (one `make up` stack's module); TEST_JOBS=0 runs serially in one process. The
# Docker scenarios mostly wait on their stacks: on this 2-core machine, quiet, `make e2e` took 267 s
# on two workers and 184-186 s on three; a fresh-clone .ci/run 5:58 on three (README: Tests). On a
# loaded machine three missed relay restarts' set-up more often (the scenarios play such a run again).
# The workers take tests in the order tests/plugins/longest_first.py gives (longest files first, the
# Docker ones last); --no-loadscope-reorder keeps xdist from moving the grouped stack to the front.
TEST_JOBS ?= 3
XDIST = -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder

.PHONY: test unit integration e2e bench lint sim mutation clean venv system-packages durations compiled sim-compiled
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# compat: the checkout on sys.path via a .pth, no import-hook finder (start-up time of every command)
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

# coturn, debootstrap and chromium, installed (as root or with sudo) when missing
system-packages:
	@bash tools/system-packages.sh

test: system-packages $(VENV)/.installed
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(VENV)/.installed
	$(PY) -m pytest tests/integration $(XDIST) $(PYTEST_ARGS)

e2e: $(VENV)/.installed
	$(PY) -m pytest tests/e2e $(XDIST) $(PYTEST_ARGS)

# every suite, recording each test's duration into tests/durations.json (the order of the suite)
durations: system-packages $(VENV)/.installed
	$(PY) -m pytest $(XDIST) --store-durations $(PYTEST_ARGS)

# ruff (lint + format check) and mypy over the project; configuration in pyproject.toml
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# a long simulation run: SEED, COUNT (default 1000 schedules), SIM_ARGS (e.g. --disable-fix probe)
sim: $(VENV)/.installed
	$(PY) -m sim --seed $(or $(SEED),1) --count $(or $(COUNT),1000) $(SIM_ARGS)

# optional: the simulator's hot modules compiled with mypyc into build/compiled/ (never next to the
# sources; rebuilt only when they changed, 2-4 min), and `make sim` on that build (same SEED, COUNT,
# SIM_ARGS; it refuses a build older than the sources). tools/mypyc_build.py says what is compiled and
# what stays Python; tests/sim/test_compiled.py checks the build replays to the interpreted digests.
compiled: $(VENV)/.installed
	$(PY) tools/mypyc_build.py build

sim-compiled: compiled
	$(PY) tools/mypyc_build.py run -m sim --seed $(or $(SEED),1) --count $(or $(COUNT),1000) $(SIM_ARGS)

# mutation testing of connlib's relay handling (allocation.py, node.py) against the unit tests and the
# simulator's fast tests ([tool.mutmut] in pyproject.toml); JOBS workers (default 2, this machine's
# cores); mutmut is a development tool, installed into the venv on first use
mutation: $(VENV)/.installed
	$(PY) -m pip install -q 'mutmut>=3.3'
	$(VENV)/bin/mutmut run --max-children $(or $(JOBS),2)
	$(VENV)/bin/mutmut results

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info mutants

include images/make.mk
