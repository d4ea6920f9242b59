# The two set-up commands: `make run` (the end-to-end demo) and `make test` (the whole suite).
# `make bench` measures this worker against the Node original (not part of `make test`).
# Python packages are installed from the lock files in requirements/ (hashes checked); `make lock` refreshes
# them from pyproject.toml's ranges, `make test-latest` runs the suite on the newest bullmq and redis.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# npm bullmq and the SQL clients of the interop suite (tests/interop), installed from its lock file.
NODE_DIR := tests/interop
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: install run test lint unit docs docs-serve screenshots bench profile soak lock test-latest clean

# The locked packages, then the project itself (editable, no dependency of its own resolved again).
define install_locked
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --require-hashes -r $(2)
	$(1)/bin/python -m pip install --quiet --no-deps -e .
endef

$(STAMP): pyproject.toml requirements/dev.txt
	$(call install_locked,$(VENV),requirements/dev.txt)
	touch $(STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	elif [ "$$CI" = true ]; then \
		echo "make: Node.js and npm are needed for the interop suite ($(NODE_DIR)), and CI must run it" >&2; exit 1; \
	else \
		echo "make: Node.js or npm is missing: the interop suite ($(NODE_DIR)) will be skipped"; \
	fi

# The virtualenv .venv alone (README's "Try it by hand"); run and test make it too.
install: $(STAMP)

run: $(STAMP)
	$(BIN)/kpi-export demo

# Debian packages some tests need (Prometheus, Chromium, …): installed as root, else those tests skip.
test: $(STAMP) $(NODE_STAMP) lint
	tests/install-packages
	$(BIN)/pytest

# The layers (pyproject.toml's [tool.importlinter]) and a ceiling on cyclomatic complexity at its worst of
# today: rank C (11-20) for a function, B on average for a module, A for the package.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench soak docs/hooks
	$(BIN)/ruff format --check src tests bench soak docs/hooks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/xenon --max-absolute C --max-modules B --max-average A src

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# The documentation site (mkdocs.yml): built strictly into site/ (a broken link or anchor fails it; make test
# builds it too), or served at http://127.0.0.1:8000 while you edit.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The bull-board pictures of the dashboards page (docs/), taken by the test that reads bull-board in Chromium.
screenshots: $(STAMP) $(NODE_STAMP)
	BULL_BOARD_SCREENSHOTS=$(CURDIR)/docs $(BIN)/pytest tests/interop/test_bull_board.py

# BENCH_ARGS: e.g. --quick while developing, or --jobs 20000 --repeat 5 (python -m bench --help).
BENCH_STAMP := $(VENV)/.bench-installed
NODE_BASELINE := bench/node-baseline
NODE_WORKER := $(NODE_BASELINE)/dist/worker.js

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(call install_locked,$(VENV),requirements/bench.txt)
	touch $(BENCH_STAMP)

# Prisma 7 needs no engine at run time; `prisma generate` only checks that this path exists.
$(NODE_WORKER): $(NODE_BASELINE)/package-lock.json $(NODE_BASELINE)/src/worker.ts $(NODE_BASELINE)/src/noop-worker.ts $(NODE_BASELINE)/prisma/schema.prisma
	cd $(NODE_BASELINE) && npm ci --no-audit --no-fund --loglevel=error
	cd $(NODE_BASELINE) && PRISMA_SCHEMA_ENGINE_BINARY="$$(command -v node)" npx prisma generate
	cd $(NODE_BASELINE) && npx tsc -p .

bench: $(BENCH_STAMP) $(NODE_WORKER)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Where the worker's CPU goes on a backlog (py-spy); PROFILE_ARGS: e.g. --jobs 20000 --idle.
profile: $(BENCH_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bench.profile $(PROFILE_ARGS)

# The production shape under a fault every 30 s for SOAK_MINUTES (60) at SOAK_RATE jobs/s (300), and its ledger;
# the report (soak.md, soak.json, soak.png) goes to docs/soak/. Not part of `make test`, which runs 3 minutes of it.
soak: $(BENCH_STAMP) $(NODE_STAMP)
	tests/install-packages
	$(BIN)/python -m soak $(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES)) $(if $(SOAK_RATE),--rate $(SOAK_RATE))

# The lock files, from pyproject.toml: runtime (the Docker image), dev (make test, make run, CI) and bench; and
# build (the build backend the image builds the package with, from requirements/build.in).
# Pins already there are kept while pyproject.toml allows them; LOCK_ARGS=--upgrade takes the newest releases
# in range, LOCK_ARGS="--upgrade-package bullmq" one package's. uv runs from a venv of its own.
UV_VERSION := 0.13.9
TOOLS := .venv-tools
LOCK := $(TOOLS)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--quiet --custom-compile-command "make lock" $(LOCK_ARGS)

lock:
	test -x $(TOOLS)/bin/uv || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION); }
	$(LOCK) -o requirements/runtime.txt
	$(LOCK) --extra dev -o requirements/dev.txt
	$(LOCK) --extra dev --extra bench -o requirements/bench.txt
	$(TOOLS)/bin/uv pip compile requirements/build.in --universal --python-version 3.11 --generate-hashes \
		--quiet --custom-compile-command "make lock" $(LOCK_ARGS) -o requirements/build.txt

# The whole suite against the newest bullmq and redis on PyPI, whatever pyproject.toml allows (not in CI):
# an upstream release that breaks the adapter (tests/unit/test_bullmq_compat.py first) is seen before anyone
# upgrades. Its own venv, so that .venv keeps the locked versions.
LATEST := .venv-latest

test-latest: $(NODE_STAMP)
	$(call install_locked,$(LATEST),requirements/dev.txt)
	$(LATEST)/bin/python -m pip install --quiet --upgrade bullmq 'redis[hiredis]'
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(bullmq|redis|hiredis) '
	$(LATEST)/bin/ruff check src tests bench
	$(LATEST)/bin/mypy
	KPI_TEST_LATEST=1 $(LATEST)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) $(LATEST) site .demo .pytest_cache .mypy_cache .ruff_cache $(NODE_DIR)/node_modules $(NODE_BASELINE)/node_modules \
		$(NODE_BASELINE)/dist
