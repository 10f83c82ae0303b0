# The two commands: `make serve` and `make test`. Each does its own set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test lint typecheck pytest bench bench-smoke soak schema sysdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# System packages the tests need (Debian): headless Chromium for the web demo tests.
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# `make serve [HOST=127.0.0.1] [PORT=8000]`. The set-up's build chatter goes to a log that is
# shown only if it fails; the gateway prints the page to open.
serve:
	@$(MAKE) -s -q $(STAMP) 2>/dev/null || echo "installing into $(VENV) (about a minute the first time)..."
	@log=$$(mktemp); \
	  if ! $(MAKE) -s --no-print-directory $(STAMP) >"$$log" 2>&1; then cat "$$log"; rm -f "$$log"; exit 1; fi; \
	  rm -f "$$log"
	@$(BIN)/ospark serve --host $(HOST) --port $(PORT)

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

# Soak and chaos against real `ospark serve` processes (not part of `make test`):
# `make soak SOAK_SECONDS=600`. Prints a table; exits 1 on any loss or unbounded growth.
SOAK_SECONDS ?= 60
soak: $(STAMP)
	$(BIN)/python -m soak --duration $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
