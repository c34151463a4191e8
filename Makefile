# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# The uv that uv.lock pins (tests/test_lock.py keeps the two equal). pip installs it into the
# fresh venv once; from then on `uv sync` keeps it at the lock's version like any package.
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-stamp
# The project's packages: compiled once by `make env` (PYTHONDONTWRITEBYTECODE would have each
# fresh process compile them again), as the image does.
SOURCE_DIRS := api assets benchmarks jobs observability orchestration resources rotation sensors \
	trading
# Where `make dev` serves the Dagster UI and the MLflow UI (loopback only), and where the links
# in the asset metadata and the MLflow runs written by `make demo` / `make dev` point:
# `make dev DAGSTER_PORT=3100 MLFLOW_PORT=5100`. ETF_DAGSTER_WEBSERVER_URL / ETF_MLFLOW_UI_URL
# in the environment win over both.
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000
# The desk API (`make api API_PORT=8100`), loopback only.
API_PORT ?= 8000
# `make test` runs one pytest-xdist worker per core (at most 4; `make test TEST_WORKERS=0` for one
# process). Modules sharing a session fixture stay on one worker (tests/conftest.py).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: env demo dev mlflow api test lint typecheck services browser proxy bench clean

# Exactly uv.lock (versions and hashes), with the dev extra, into $(VENV); packages the lock
# does not list are removed. --locked refuses a lock that pyproject.toml has moved away from
# (run `$(UV) lock`), so a commit always installs what it locked. --compile-bytecode writes the
# bytecode of every installed module once: uv does not by default, and with
# PYTHONDONTWRITEBYTECODE (the image's, this machine's) every fresh process (each run the daemon
# launches) would compile the ~5,000 modules it imports again (14 s of daily_job, measured).
$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "Python 3.11 or 3.12 is required, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --extra dev \
		--compile-bytecode
	$(PY) -m compileall -q -j 0 $(SOURCE_DIRS)
	$(PY) -m assets.code_version
	touch $(STAMP)

env: $(STAMP)  ## create the virtual environment

demo dev mlflow: export ETF_DAGSTER_WEBSERVER_URL ?= http://127.0.0.1:$(DAGSTER_PORT)
demo dev mlflow: export ETF_MLFLOW_UI_URL ?= http://127.0.0.1:$(MLFLOW_PORT)

demo: env  ## the whole chain on the embedded default (sample market, SQLite instance, embedded PostgreSQL ledger)
	$(PY) -m orchestration.demo

dev: env  ## the Dagster UI (DAGSTER_PORT, default 3000) and the MLflow UI (MLFLOW_PORT, 5000) on the instance of `make demo`
	$(PY) -m orchestration.dev

mlflow: env  ## the MLflow UI alone, one worker (low memory), on MLFLOW_PORT
	$(PY) -m orchestration.dev --mlflow-only

api: env  ## the desk API (docs at /api/v1/docs) on 127.0.0.1:API_PORT, on the ledger of `make demo`
	API_PORT=$(API_PORT) $(PY) -m api

services:  ## start PostgreSQL and Redis if they are down
	bash deploy/ensure-services.sh

browser:  ## Debian's Chromium for the browser tests (installed when missing and allowed)
	bash deploy/ensure-browser.sh

proxy:  ## Debian's nginx for the front-door tests (installed when missing and allowed)
	bash deploy/ensure-proxy.sh

test: env services browser proxy  ## every test, on the real PostgreSQL and Redis
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest ran no tests" >&2; exit 1; fi; \
	exit $$status

lint: env  ## ruff over the repository
	$(VENV)/bin/ruff check .

typecheck: env  ## mypy over the Dagster-free packages ([tool.mypy] in pyproject.toml)
	$(VENV)/bin/mypy

bench: env services  ## wall time and peak memory on ../shared/data
	$(PY) -m benchmarks.backfill
	$(PY) -m benchmarks.search
	$(PY) -m benchmarks.research
	$(PY) -m benchmarks.daily
	$(PY) -m benchmarks.risk

clean:
	rm -rf .etf_home
