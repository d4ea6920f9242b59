# The two set-up commands: `make run` (the end-to-end demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# npm bullmq and the SQL clients of the interop suite (tests/interop), installed from its lock file.
NODE_DIR := tests/interop
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: run test lint unit clean

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
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache $(NODE_DIR)/node_modules
