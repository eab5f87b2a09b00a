# Every target creates .venv and installs what it needs by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_DIR ?= $(CURDIR)/.serve-data
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev install-bench bench-tools test-tools serve test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[all]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

install: $(VENV)/.dev-installed

## Start the file service on a local directory (./.serve-data) and print its address.
serve: $(VENV)/.serve-installed
	STORAGE_BACKEND=$${STORAGE_BACKEND:-local} STORAGE_BASE_PATH=$${STORAGE_BASE_PATH:-$(SERVE_DIR)} \
	STORAGE_BASE_URL=$${STORAGE_BASE_URL:-http://$(HOST):$(PORT)/files} UNISTORE_AUTH=$${UNISTORE_AUTH:-off} \
	$(BIN)/python -m unistore.service --host $(HOST) --port $(PORT)

## The servers and browser the suite drives (Debian packages; installed when root and missing).
## Each entry is COMMAND:DEBIAN-PACKAGE.
TEST_TOOLS := redis-server:redis-server chromium:chromium clamd:clamav-daemon promtool:prometheus
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	  else echo "missing:$$missing (install them, or run as root); tests needing them fail"; fi; \
	fi

## Install everything and run the whole suite (what CI runs).
test: $(VENV)/.dev-installed test-tools
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy

typecheck: lint

## The service suite's load generator and physical-limit anchor, and the cli and migrate suites' peer
## rclone, and curl for their floor clients (Debian packages; needs root). Their other peer, awscli, is in the [bench] extra.
BENCH_TOOLS := nginx wrk rclone zstd curl
bench-tools:
	@missing=""; for t in $(BENCH_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $$missing \
	  || { apt-get update && apt-get install -y --no-install-recommends $$missing; }; \
	fi

## Side-by-side benchmarks against the peers named in the issues; prints ratio tables.
## make bench BENCH_SUITES="s3 layers" BENCH_ARGS=--quick runs some suites, smaller.
BENCH_SUITES ?= core s3 layers gcs-cloudinary engines service cli encrypt scan memory compress dedup fsspec cdn replicate migrate ui
bench: $(VENV)/.bench-installed $(if $(filter service cli compress migrate fsspec,$(BENCH_SUITES)),bench-tools) $(if $(filter ui,$(BENCH_SUITES)),test-tools)
	@status=0; for suite in $(BENCH_SUITES); do \
	  case $$suite in \
	    core) script=bench/run.py ;; \
	    s3) script=bench/s3/run.py ;; \
	    layers) script=bench/layers.py ;; \
	    gcs-cloudinary) script=bench/gcs_cloudinary.py ;; \
	    engines) script=bench/engines.py ;; \
	    service) script=bench/service.py ;; \
	    cli) script=bench/cli.py ;; \
	    encrypt) script=bench/encrypt.py ;; \
	    scan) script=bench/scan.py ;; \
	    memory) script=bench/memory_put.py ;; \
	    compress) script=bench/compress.py ;; \
	    dedup) script=bench/dedup.py ;; \
	    fsspec) script=bench/fsspec_bench.py ;; \
	    cdn) script=bench/cdn_sign.py ;; \
	    replicate) script=bench/replicate.py ;; \
	    migrate) script=bench/migrate.py ;; \
	    ui) script=bench/ui_upload.py ;; \
	    *) echo "unknown bench suite $$suite (core s3 layers gcs-cloudinary engines service cli encrypt scan memory compress dedup fsspec cdn replicate migrate ui)"; exit 2 ;; \
	  esac; \
	  echo "== bench suite $$suite: $$script $(BENCH_ARGS)"; \
	  $(BIN)/python $$script $(BENCH_ARGS) || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) .serve-data .pytest_cache .mypy_cache .ruff_cache
