# The two set-up commands: `make run` (the end-to-end demo) and `make test` (the whole suite).
# `make bench` measures this worker against the Node original (not part of `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# npm bullmq and the SQL clients of the interop suite (tests/interop), installed from its lock file.
NODE_DIR := tests/interop
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: run test lint unit bench profile clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	elif [ "$$CI" = true ]; then \
		echo "make: Node.js and npm are needed for the interop suite ($(NODE_DIR)), and CI must run it" >&2; exit 1; \
	else \
		echo "make: Node.js or npm is missing: the interop suite ($(NODE_DIR)) will be skipped"; \
	fi

run: $(STAMP)
	$(BIN)/kpi-export demo

test: $(STAMP) $(NODE_STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# BENCH_ARGS: e.g. --quick while developing, or --jobs 20000 --repeat 5 (python -m bench --help).
BENCH_STAMP := $(VENV)/.bench-installed
NODE_BASELINE := bench/node-baseline
NODE_WORKER := $(NODE_BASELINE)/dist/worker.js

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Prisma 7 needs no engine at run time; `prisma generate` only checks that this path exists.
$(NODE_WORKER): $(NODE_BASELINE)/package-lock.json $(NODE_BASELINE)/src/worker.ts $(NODE_BASELINE)/prisma/schema.prisma
	cd $(NODE_BASELINE) && npm ci --no-audit --no-fund --loglevel=error
	cd $(NODE_BASELINE) && PRISMA_SCHEMA_ENGINE_BINARY="$$(command -v node)" npx prisma generate
	cd $(NODE_BASELINE) && npx tsc -p .

bench: $(BENCH_STAMP) $(NODE_WORKER)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Where the worker's CPU goes on a backlog (py-spy); PROFILE_ARGS: e.g. --jobs 20000 --idle.
profile: $(BENCH_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bench.profile $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache $(NODE_DIR)/node_modules $(NODE_BASELINE)/node_modules \
		$(NODE_BASELINE)/dist
