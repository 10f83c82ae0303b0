# The two commands: `make serve` and `make test`. Each does its own set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test lint typecheck pytest bench bench-smoke soak schema sysdeps nodedeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# System packages the tests need (Debian): headless Chromium for the web demo tests, and
# bubblewrap (`bwrap`) for the code tool's sandbox, and
# redis-server, which the Redis backend's tests start on a free port (no persistence), and
# redis-cli, which joins three of them into a Redis Cluster for the Cluster tests.
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "installing Debian bubblewrap for the code tool's sandbox"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian redis-server for the Redis backend tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-cli >/dev/null 2>&1 || { \
	  echo "installing Debian redis-tools (redis-cli) for the Redis Cluster tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; }

# `make serve [HOST=127.0.0.1] [PORT=8000]`. The set-up's build chatter goes to a log that is
# shown only if it fails; the gateway prints the page to open. It runs the demo config with the
# reading and code tools, whose servers start as `python -m …`: the virtualenv's python comes
# first on PATH (as in an activated virtualenv).
serve:
	@$(MAKE) -s -q $(STAMP) 2>/dev/null || echo "installing into $(VENV) (about a minute the first time)..."
	@log=$$(mktemp); \
	  if ! $(MAKE) -s --no-print-directory $(STAMP) >"$$log" 2>&1; then cat "$$log"; rm -f "$$log"; exit 1; fi; \
	  rm -f "$$log"
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/ospark serve --host $(HOST) --port $(PORT) \
	  --config gateway/configs/demo-tools.yaml

typecheck: $(STAMP)
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check protocol gateway bench tests
	$(BIN)/ruff format --check protocol gateway bench tests

# The official AG-UI client (npm) for the AG-UI adapter's tests, pinned by its package-lock.
NODE_TESTS := tests/adapters/node
nodedeps: $(NODE_TESTS)/node_modules/.package-lock.json
$(NODE_TESTS)/node_modules/.package-lock.json: $(NODE_TESTS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian nodejs and npm for the AG-UI client tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	cd $(NODE_TESTS) && npm ci --no-audit --no-fund --loglevel=error

pytest: $(STAMP) sysdeps nodedeps
	$(BIN)/pytest -q

test: typecheck lint pytest

schema: $(STAMP)
	$(BIN)/ospark schema

# The benchmarks are not part of the package: bench/ runs from the checkout. They start their
# own redis-server (the Redis-mode rows), which sysdeps installs when missing.
# `make bench BENCH_ARGS="--quick"` or `BENCH_ARGS="--only capacity,redis"` for part of it.
BENCH_ARGS ?=
bench: $(STAMP) sysdeps
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: $(STAMP) sysdeps
	$(BIN)/python -m bench --smoke

# Soak and chaos against real `ospark serve` processes (not part of `make test`):
# `make soak SOAK_SECONDS=600`. Prints a table; exits 1 on any loss or unbounded growth.
SOAK_SECONDS ?= 60
soak: $(STAMP)
	$(BIN)/python -m soak --duration $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
