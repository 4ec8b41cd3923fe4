# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-fault lint bench bench-quick bench-gen bench-api services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	bash deploy/local-services.sh

demo: $(STAMP) services
	$(BIN)/hcp demo

test: $(STAMP) services
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

# `hcp bench api` drives the API with wrk (Debian's); installed here when missing.
bench-api: $(STAMP) services
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| (sudo apt-get update -qq && sudo apt-get install -y -qq wrk)
	$(BIN)/hcp bench api

bench-gen: $(STAMP)
	$(BIN)/python -m tools.bench.generation --gpus 5000 --asics 300000 --duration 10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
