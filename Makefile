# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-fault lint bench bench-quick bench-gen bench-cluster services system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	bash deploy/local-services.sh

# Debian packages the tests need, installed only when missing: iproute2 (`ip netns`) for
# the cluster test whose two processes talk over a veth pair.
system-deps:
	@command -v ip >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iproute2; }

demo: $(STAMP) services
	$(BIN)/hcp demo

test: $(STAMP) services system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) services
	$(BIN)/python -m pytest -q -m "not fault and not slow"

test-fault: $(STAMP) services
	$(BIN)/python -m pytest -q -m fault

lint: $(STAMP)
	$(BIN)/ruff check .

bench-quick: $(STAMP) services
	$(BIN)/hcp bench --quick

bench: $(STAMP) services
	$(BIN)/hcp bench

bench-cluster: $(STAMP) services
	$(BIN)/python -m tools.bench.cluster

bench-gen: $(STAMP)
	$(BIN)/python -m tools.bench.generation --gpus 5000 --asics 300000 --duration 10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
