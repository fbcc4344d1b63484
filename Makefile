# PODI — `make run` starts the whole platform, `make test` lints (ruff, import-linter contracts,
# deptry) and runs the test suite.
# Both create .venv from pyproject.toml (pinned by constraints.txt) when it is missing or stale.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.podi-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint format check-migrations lock bench clean browser fleet-tools

$(STAMP): pyproject.toml constraints.txt tools/pyproject_deps.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing dependencies into $(VENV) (first run takes a minute)…"
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python tools/pyproject_deps.py dev > $(VENV)/requirements.txt
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -r $(VENV)/requirements.txt
	@touch $@

run: $(STAMP)
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python manage.py up --host $(HOST) --port $(PORT)

test: $(STAMP) lint check-migrations browser fleet-tools
	PODI_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The console's browser tests drive Debian's Chromium through Playwright (never `playwright install`).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || [ "$$(id -u)" != 0 ] || \
		(apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))
	@test -x $(CHROMIUM) || { echo "Chromium is missing for the browser tests: run 'sudo apt-get install -y chromium' (or set CHROMIUM=/path/to/chromium) and run make test again." >&2; exit 1; }

# The fleet test (PostgreSQL configuration only) builds hosts in network namespaces behind Debian's
# nginx; iproute2, util-linux (setpriv), PostgreSQL's initdb and redis-server come with the machine.
fleet-tools:
	@case "$$DATABASE_URL" in postgres*) \
		command -v nginx >/dev/null || [ "$$(id -u)" != 0 ] || \
			(apt-get install -y -q nginx || (apt-get update -q && apt-get install -y -q nginx)); \
		command -v nginx >/dev/null || { echo "nginx is missing for the fleet test: run 'sudo apt-get install -y nginx' and run make test again." >&2; exit 1; } ;; \
	esac

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/deptry .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check-migrations: $(STAMP)
	$(BIN)/python manage.py makemigrations --check --dry-run

# Re-pin constraints.txt after changing dependencies in pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(PYTHON) tools/pyproject_deps.py dev > .lock-venv/requirements.txt
	.lock-venv/bin/python -m pip install --quiet -r .lock-venv/requirements.txt
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt
	rm -rf .lock-venv

# Every bench (not part of `make test`), then issue #13's targets table with this run's figures.
# Each bench makes its own PostgreSQL databases (BENCH_PG_ADMIN_URL or DATABASE_URL's server,
# default postgres://postgres@127.0.0.1:5432/postgres) and Redis prefix and removes them; the
# peer bench runs once on PostgreSQL + Redis and once on the embedded defaults. A bench that
# fails does not stop the others; the table shows its figures as missing. JSON: bench/results/.
BENCH_SINCE := $(shell date -u +%Y%m%dT%H%M%SZ)
bench: $(STAMP)
	-$(BIN)/python bench/wallet_bench.py
	-$(BIN)/python bench/tasks_bench.py
	-$(BIN)/python bench/ws_fanout.py
	-$(BIN)/python bench/http_cost.py
	-$(BIN)/python bench/peer.py --config postgres
	-$(BIN)/python bench/peer.py --config embedded
	$(BIN)/python bench/summary.py --since $(BENCH_SINCE)

clean:
	rm -rf $(VENV) var
