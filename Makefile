# Every target creates .venv and installs what it needs by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_DIR ?= $(CURDIR)/.serve-data
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev install-bench serve test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[fastapi]'
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

## Install everything and run the whole suite (what CI runs).
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy

typecheck: lint

## Side-by-side benchmarks against the peers named in the issues; prints ratio tables.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .serve-data .pytest_cache .mypy_cache .ruff_cache
