# The two commands: `make serve` and `make test`. Each does its own set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test lint typecheck pytest bench bench-smoke schema sysdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# System packages the tests need (Debian): headless Chromium for the web demo tests, and
# redis-server, which the Redis backend's tests start on a free port (no persistence).
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian redis-server for the Redis backend tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

serve: $(STAMP)
	$(BIN)/ospark serve --host $(HOST) --port $(PORT)

typecheck: $(STAMP)
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check protocol gateway tests
	$(BIN)/ruff format --check protocol gateway tests

pytest: $(STAMP) sysdeps
	$(BIN)/pytest -q

test: typecheck lint pytest

schema: $(STAMP)
	$(BIN)/ospark schema

bench: $(STAMP)
	$(BIN)/python -m gateway.bench

bench-smoke: $(STAMP)
	$(BIN)/python -m gateway.bench --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
