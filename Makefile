# The two commands: `make demo` and `make test`. Each sets up .venv when missing, from the lock files:
# requirements.lock (petridish's own dependencies) for the demo, requirements-dev.lock (with the dev,
# hf and ray extras) for the tests. `make lock` refreshes both after a change to pyproject.toml.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEV     := $(VENV)/.installed-dev
# torch is the local CPU build, installed first and left out of the locks (its hash is this machine's).
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --unsafe-package torch \
              --no-emit-index-url --no-emit-find-links --no-emit-trusted-host -c constraints.txt

.PHONY: demo test install install-dev lock bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first (the local CPU build), then exactly the locked versions, hashes checked, then petridish.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt requirements.lock
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

$(DEV): $(STAMP) requirements-dev.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $(DEV)

install: $(STAMP)

install-dev: $(DEV)

demo: $(STAMP)
	$(BIN)/python -m petridish.demo

# Lint, format and types first (seconds), then the tests.
test: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py --quick

# Resolve pyproject.toml's dependencies anew (newest releases allowed by its ranges) into both locks.
lock: $(BIN)/python
	$(BIN)/pip install --quiet "pip-tools>=7.5"
	$(BIN)/pip-compile $(LOCK_FLAGS) --output-file requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra dev --extra hf --extra ray --output-file requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) petridish-runs .pytest_cache
