# The README's two promises: `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLOPS_HOME ?= $(CURDIR)/.mlops
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test test-fast dev mlflow-ui bench clean down bench-serving

# Re-install only when setup.py changes. The bytecode is compiled at install on purpose: with
# PYTHONDONTWRITEBYTECODE=1, as on this project's machines, nothing compiled on import is kept, and
# every process (each Ray worker, each `cli run`) would compile what it imports. uv installs the
# same versions as pip (setup.py's pins; checked with `pip freeze` on both) in about 2 minutes
# instead of 5.6 on 2 cores: it compiles the 37,600 files on every core. Where uv cannot reach an
# index (it reads no pip.conf), pip does the install instead.
UV_VERSION := 0.13.9
# make test's lanes (pytest-xdist workers): the modules marked second_lane run beside all the
# others; TEST_LANES=0 runs everything in one process.
TEST_LANES ?= 2
$(VENV)/.installed: setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --disable-pip-version-check -q 'uv==$(UV_VERSION)' || true
	@if [ -x $(BIN)/uv ] && $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -q -e '.[dev]'; then \
	  echo "installed with uv $(UV_VERSION)"; \
	else \
	  echo "uv unavailable or failed: installing with pip"; \
	  $(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'; \
	fi
	@touch $@

install: $(VENV)/.installed
	@mkdir -p $(DAGSTER_HOME)

run: install ## materialize the whole asset graph for MLOPS_TARGET (default local)
	@scripts/setup_prometheus.sh
	@# A Docker-compatible engine for container_image (Podman on Debian as root); without
	@# one the asset records a labelled skip that says how to get one.
	@bash scripts/setup_podman.sh || echo "make run: no container engine; container_image will be skipped (see above)"
	$(BIN)/python -m mlops_assets.cli run

test: install ## the whole suite in two lanes, each cheapest tier first (unit, service, stack); stops after a failing tier
	@scripts/setup_prometheus.sh || echo 'without prometheus/promtool the monitoring tests fail' >&2
	@scripts/setup_postgres.sh || echo 'without a PostgreSQL server the PostgreSQL-state tests fail' >&2
	$(BIN)/python -m pytest mlops_assets_tests -n $(TEST_LANES) $(PYTEST_ARGS)

test-fast: install ## the unit tier only: no servers, no root, well under a minute
	$(BIN)/python -m pytest mlops_assets_tests -m unit $(PYTEST_ARGS)

dev: install ## Dagster UI on http://127.0.0.1:3000 with this project loaded
	$(BIN)/python -m mlops_assets.cli dev -h 127.0.0.1 -p 3000 -w workspace.yaml

mlflow-ui: install ## MLflow UI on http://127.0.0.1:5000 for the local tracking store (MLFLOW_TRACKING_URI if set)
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(MLOPS_HOME)/mlflow/mlflow.db}"

down: install ## stop the prediction API and the Ray instance that `make run` started
	$(BIN)/python -m mlops_assets.cli down

bench-serving: install ## prediction API vs bare FastAPI vs `mlflow models serve`, with wrk (docs/performance.md)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/serving_bench.py

.PHONY: dashboards
dashboards: install ## re-render grafana_dashboards/ (dashboards, provisioning, Prometheus config, rules, rule tests, Alertmanager config)
	$(BIN)/python -m mlops_assets.monitoring.render --out grafana_dashboards

bench: install ## benchmarks (docs/performance.md): the ML phase, then the whole graph (root: image builds)
	$(BIN)/python bench/ml_phase.py
	@bash scripts/setup_podman.sh || echo "bench: no container engine; the whole-graph benchmark needs one" >&2
	$(BIN)/python bench/whole_graph.py

clean: ## stop what `make run` started, then remove the state folder and the virtual environment
	@if test -x $(BIN)/python; then $(BIN)/python -m mlops_assets.cli down || true; fi
	rm -rf $(MLOPS_HOME) $(VENV) *.egg-info
