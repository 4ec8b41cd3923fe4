# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-fault test-browser lint bench bench-quick bench-frames bench-gen timescaledb \
	bench-api services system-deps console-assets dashboards bench-cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	bash deploy/local-services.sh

# Debian packages the tests run for real: prometheus + promtool (dashboard queries, rule
# tests, `promtool check metrics`), prometheus-alertmanager (amtool check-config),
# iproute2 (`ip netns`: the cluster test whose two processes talk over a veth pair),
# Chromium (the console's browser tests; Playwright cannot download browsers here) and npm
# (the console's libraries), stunnel4 (Kafka over TLS in tests/integration/test_tls.py).
# Installs only what is missing: a no-op on a machine that has them.
SYSTEM_TOOLS := prometheus:prometheus promtool:prometheus amtool:prometheus-alertmanager \
	ip:iproute2 chromium:chromium npm:npm stunnel4:stunnel4
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $$(echo $$missing | tr ' ' '\n' | sort -u); \
	fi

# Regenerate deploy/grafana/dashboards/*.json from tools/dashboards.
dashboards: $(STAMP)
	$(BIN)/python -m tools.dashboards

# The console's browser libraries (Alpine.js, uPlot), pinned by package-lock.json; npm runs
# only when node_modules is missing or older than the lockfile.
CONSOLE := api/console
$(CONSOLE)/node_modules/.package-lock.json: $(CONSOLE)/package-lock.json $(CONSOLE)/package.json
	npm ci --prefix $(CONSOLE) --no-audit --no-fund
	touch $@

console-assets: system-deps $(CONSOLE)/node_modules/.package-lock.json

demo: $(STAMP) services console-assets
	$(BIN)/hcp demo

# TimescaleDB 2.17.2 from ../shared/vendor, built once per machine into a private copy of
# PostgreSQL 15 (the system server on 5432 is left as it is), and its own cluster on 5433.
TSDB_PORT ?= 5433
timescaledb:
	HCP_TSDB_PORT=$(TSDB_PORT) bash deploy/timescaledb.sh start

# Everything on the plain PostgreSQL server, then the PostgreSQL test set (marker `pg`) again
# on TimescaleDB; each pass checks its server is the flavour it claims.
test: $(STAMP) services system-deps console-assets timescaledb
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not timescaledb"
	HCP_TEST_PG_FLAVOUR=timescaledb \
	  HCP_TEST_PG_ADMIN_DSN=postgresql://postgres@127.0.0.1:$(TSDB_PORT)/postgres \
	  $(BIN)/python -m pytest -q -m "pg and not plain_pg"

test-browser: $(STAMP) services system-deps console-assets
	$(BIN)/python -m pytest -q -m browser

test-fast: $(STAMP) services system-deps console-assets
	$(BIN)/python -m pytest -q -m "not fault and not slow and not browser and not timescaledb"

test-fault: $(STAMP) services system-deps
	$(BIN)/python -m pytest -q -m fault

lint: $(STAMP)
	$(BIN)/ruff check .

bench-quick: $(STAMP) services
	$(BIN)/hcp bench --quick

bench: $(STAMP) services
	$(BIN)/hcp bench

bench-cluster: $(STAMP) services
	$(BIN)/python -m tools.bench.cluster

bench-frames: $(STAMP) services
	$(BIN)/hcp bench --frames-only --out bench-results/frames.json

# `hcp bench api` drives the API with Debian's wrk (installed when missing, as above).
bench-api: $(STAMP) services
	$(MAKE) system-deps SYSTEM_TOOLS=wrk:wrk
	$(BIN)/hcp bench api

bench-gen: $(STAMP)
	$(BIN)/python -m tools.bench.generation --gpus 5000 --asics 300000 --duration 10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
