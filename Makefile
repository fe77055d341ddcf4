# Switchboard developer tasks. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS_STAMP := tools/node_modules/.installed
PYTEST_ARGS ?=

.PHONY: setup demo run test test-fast lint format typecheck lock bench bench-pipeline bench-quota bench-burst clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(TOOLS_STAMP): tools/package.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	touch $(TOOLS_STAMP)

setup: $(STAMP) $(TOOLS_STAMP)

## The main job: the whole pipeline on this machine with the simulator, end to end.
demo: $(STAMP)
	$(PY) -m devhost demo

run: $(STAMP)
	$(PY) -m devhost run

## Everything CI checks: lint, types, then every test suite.
test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) tools/sizes.py

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: $(STAMP)
	$(PY) -m mypy

## requirements.txt, the lock the Functions build installs: exact versions resolved from
## requirements.in for the Function App's runtime (CPython 3.11 on Linux x86-64). Pins already in
## the lock are kept while requirements.in allows them; `make lock LOCK_ARGS=--upgrade` takes the
## newest versions it allows.
LOCK_ARGS ?=
lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements.in --output-file requirements.txt \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--custom-compile-command "make lock" --quiet $(LOCK_ARGS)

bench-pipeline: $(STAMP)
	$(PY) -m bench.pipeline

bench-quota: $(STAMP)
	$(PY) -m bench.quota

bench-burst: $(STAMP)
	$(PY) -m bench.burst

bench: bench-pipeline bench-quota bench-burst

clean:
	rm -rf .devhost .mypy_cache .ruff_cache .pytest_cache bench/out
