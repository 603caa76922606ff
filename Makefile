# customer-ai developer tasks. `make test` and `make demo` create .venv on first use
# (and re-install only when pyproject.toml, setup.py or requirements.lock change), with
# the versions requirements.lock pins: those CI passed with (stream/worker/compat.py).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: venv native test test-fast lint typecheck demo dev-up dev-down clean

venv: $(STAMP)

# -c: every dependency at its locked version; --build-constraint: the build of the
# compiled core (mypy, setuptools) too. CUSTOMER_AI_REQUIRE_NATIVE=1 in the environment
# makes a core that does not compile fail the install (.ci/run sets it).
PIP_LOCKED := -c requirements.lock --build-constraint requirements.lock

$(STAMP): pyproject.toml setup.py requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  echo "'$(PYTHON) -m venv' failed; trying virtualenv" >&2; \
	  $(PYTHON) -m virtualenv $(VENV) || { \
	    echo "cannot create $(VENV): install the venv module (Debian/Ubuntu: apt-get install python3-venv) or 'pip install virtualenv'" >&2; \
	    exit 1; }; }
	$(BIN)/python -m pip install -c requirements.lock pip
	$(BIN)/python -m pip install $(PIP_LOCKED) -e '.[dev]'
	@touch $@

# Rebuild the compiled core (mypyc) after editing a module of models/ that setup.py
# compiles; until then that module's Python source runs (slower; models/__init__.py).
native: venv
	$(BIN)/python -m pip install $(PIP_LOCKED) --no-deps -e .

test: venv
	$(BIN)/python -m pytest -q -ra -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

# The pure core's tests (tests/models) and the layout rules, without servers: not the
# learning-quality run (test_learning.py), the property-based fuzzing (test_fuzz.py), the
# compiled core's replay in child processes (test_native.py) nor the worker processes
# of test_config_errors.py. `make test` runs everything.
FAST_SKIP := not test_compiled_core_replays and not test_worker_with_a_bad_config

test-fast: venv
	$(BIN)/python -m pytest -q -ra -p no:cacheprovider -m "not integration and not slow" \
	  --ignore=tests/models/test_learning.py --ignore=tests/models/test_fuzz.py \
	  -k "$(FAST_SKIP)" tests/models tests/test_layout.py $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

# mypy over stream/ and models/ ([tool.mypy] in pyproject.toml); .ci/run runs it
typecheck: venv
	$(BIN)/mypy

demo: venv
	$(BIN)/customer-ai demo

dev-up: venv
	$(BIN)/customer-ai dev up

dev-down: venv
	$(BIN)/customer-ai dev down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache out models/_native_sources.py
	find . -name '*.so' -not -path './.venv/*' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
