# kmdagster: `make dev` runs the product locally, `make test` runs the test suite,
# `make bench` runs the benchmark (minutes; see docs/performance.md), `make soak` the soak
# test (minutes; see docs/reliability.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev test test-fast test-pythons lint check bench soak screenshots

$(BIN)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

dev: install
	$(BIN)/python -m kmdagster_dev.dev

# A clean environment holding kmdagster as a user installs it (no dev extras, not
# editable) and dg: the test of the Component in a dg project runs in it (tests never
# reach PyPI, so it is made here).
COMPONENT_VENV := .venv-component
$(COMPONENT_VENV)/.installed: pyproject.toml setup.py $(shell find kmdagster -name '*.py')
	rm -rf $(COMPONENT_VENV)
	$(PYTHON) -m venv $(COMPONENT_VENV)
	$(COMPONENT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPONENT_VENV)/bin/python -m pip install --quiet . 'dagster-dg-cli>=1.13,<1.14'
	rm -rf build
	touch $@

# One pytest worker per core: most tests wait on servers and subprocesses, so two
# workers on two cores halve the suite's time; each worker starts its own servers.
test: install $(COMPONENT_VENV)/.installed
	$(BIN)/pytest -q -p no:cacheprovider -n auto --durations=25

# The tests without the slow, end-to-end and browser ones (markers in pyproject.toml):
# a few minutes on two cores, for the edit-test loop.
test-fast: install
	$(BIN)/pytest -q -p no:cacheprovider -n auto -m "not slow and not e2e and not browser"

# The fast lane on the lowest and highest Python the package claims (3.10, 3.13).
test-pythons: install
	bash .ci/pythons

screenshots: install  # docs/screenshots/ from the browser test (needs the system chromium)
	KMDAGSTER_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q -p no:cacheprovider \
		kmdagster_tests/test_browser.py

# The dlt comparison runs in its own environment: dlt pins its own botocore.
.venv-dlt/bin/python:
	$(PYTHON) -m venv .venv-dlt
	.venv-dlt/bin/python -m pip install --quiet 'dlt[duckdb,s3,parquet]>=1.20,<2'

# The soak test: minutes of a busy bucket under dagster dev (SOAK_MINUTES, default 10).
soak: install
	$(BIN)/python -m kmdagster_dev.soak --minutes $(or $(SOAK_MINUTES),10)

bench: install .venv-dlt/bin/python
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.lake --docs
	$(BIN)/python -m benchmarks.compressed
	$(BIN)/python -m benchmarks.partitions
	$(BIN)/python -m benchmarks.history
	$(BIN)/python -m benchmarks.history --instance postgres --files 200 --ways catch_up,backfill
	$(BIN)/python -m benchmarks.many_sources

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

check: lint test
