# dqlrec: `make run` runs the nightly DAG end to end on the embedded default; `make test` runs the tests.
# Needs only Python 3.11+ and Java 17+; everything else is installed into .venv by these targets.

PYTHON   ?= python3
JAVA     ?=
VENV     := .venv
BIN      := $(CURDIR)/$(VENV)/bin
STAMP    := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PIP      := $(BIN)/python -m pip --quiet --disable-pip-version-check
CHECK    := PYTHON="$(PYTHON)" JAVA="$(JAVA)" $(CURDIR)/.ci/check-prerequisites

# TORCH_BUILD=cpu installs torch's CPU build (no CUDA runtime packages, ~2 GB less) by adding PyTorch's CPU
# wheel index (TORCH_CPU_INDEX, a mirror of it where that one is not reachable) as an extra index;
# TORCH_BUILD=default (the default) installs the pinned torch from the package index as it is.
TORCH_BUILD     ?= default
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(filter $(TORCH_BUILD),cpu default),)
$(error TORCH_BUILD=$(TORCH_BUILD) is not a torch build: use TORCH_BUILD=cpu or TORCH_BUILD=default)
endif
TORCH_INDEX := $(if $(filter cpu,$(TORCH_BUILD)),--extra-index-url $(TORCH_CPU_INDEX))

# Airflow and Spark live entirely inside the project: metadata in var/airflow (SQLite), the
# warehouse in var/warehouse. Nothing is written to the home directory.
export PATH                        := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE     :=
export AIRFLOW_HOME                := $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER  := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM  := 4
export AIRFLOW__LOGGING__LOGGING_LEVEL := WARNING
export AIRFLOW_CONN_SPARK_DEFAULT  ?= {"conn_type": "spark", "host": "local[*]"}
export PYSPARK_PYTHON              := $(BIN)/python
export PYSPARK_DRIVER_PYTHON       := $(BIN)/python

DAG_ID   := dql_recommendations
RUN_DATE ?=
# Training budget of `make run` (train.max_minutes; the nightly default is 30): training runs until
# validation stops improving or this budget is spent, so the demo night stays at about 5 minutes on
# 2 cores. A DQLREC_TRAIN__MAX_MINUTES in the environment wins.
DEMO_TRAIN_MINUTES ?= 3

.PHONY: run test install install-dev prerequisites bench lint generate airflow airflow-stop airflow-status airflow-ui clean-data clean

## install: create .venv and install the pinned runtime requirements and the package (once)
install: $(STAMP)

## install-dev: also install the development pins (tests, lint, benchmarks) of requirements-dev.txt
install-dev: $(DEV_STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(CHECK) versions
	@$(CHECK) venv $(VENV)
	@echo "Installing pinned requirements into $(VENV) (torch build: $(TORCH_BUILD); first time: a few minutes)..."
	@# --no-deps: the lock is complete (see .ci/lock-requirements). The second call lets pip add
	@# the GPU runtime packages a CUDA build of torch needs; a CPU build needs none.
	@$(PIP) install --no-deps --compile $(TORCH_INDEX) -r requirements.txt
	@$(PIP) install --compile $(TORCH_INDEX) torch==$$(sed -n 's/^torch==//p' requirements.txt)
	@$(PIP) install --no-deps --no-build-isolation -e .
	@$(BIN)/python -c "import airflow, pyspark, torch, great_expectations, dql_model" 2>/dev/null \
	  || { echo "install failed: see the pip output above"; exit 1; }
	@touch $(STAMP)

# Depends on the runtime stamp too: a reinstalled runtime lock reinstalls the development pins beside it.
$(DEV_STAMP): requirements-dev.txt $(STAMP)
	@echo "Installing development requirements into $(VENV)..."
	@$(PIP) install --no-deps --compile -r requirements-dev.txt
	@$(BIN)/python -c "import pytest, moto, duckdb" 2>/dev/null \
	  || { echo "install of requirements-dev.txt failed: see the pip output above"; exit 1; }
	@touch $(DEV_STAMP)

## prerequisites: check the Python (3.11+, x86_64 Linux) and Java (17+) that install and run need
prerequisites:
	@$(CHECK) versions

## run: generate the demo shop if the warehouse is empty, then run the nightly DAG once through Airflow
# Progress (each task's start and end, the tasks' [dqlrec] lines) is printed as it happens; Airflow logs
# at INFO for this run because it reports task starts and ends at INFO (dql_model/ops/airflow_log.py).
run: install
	@$(BIN)/dqlrec generate --if-empty
	@$(BIN)/airflow db migrate > var/airflow-migrate.log 2>&1 || { cat var/airflow-migrate.log; exit 1; }
	@date="$(RUN_DATE)"; [ -n "$$date" ] || date=$$($(BIN)/dqlrec demo-date); \
	  date=$$($(BIN)/dqlrec run-date "$$date") || exit 1; \
	  echo "Running DAG $(DAG_ID) for run date $$date (whole log: var/airflow-run.log)"; \
	  DQLREC_TRAIN__MAX_MINUTES="$${DQLREC_TRAIN__MAX_MINUTES:-$(DEMO_TRAIN_MINUTES)}" \
	  AIRFLOW__LOGGING__LOGGING_LEVEL=INFO $(BIN)/python -m dql_model.ops.airflow_log --log var/airflow-run.log \
	    -- $(BIN)/airflow dags test $(DAG_ID) -c "{\"run_date\": \"$$date\"}"; rc=$$?; \
	  if [ $$rc -ne 0 ] || ! $(BIN)/dqlrec summary --run-date $$date; then \
	    echo "The DAG run failed (log: var/airflow-run.log)."; \
	    $(BIN)/dqlrec first-failure var/airflow-run.log \
	      || { echo "No task failure in the log; its last lines:"; tail -40 var/airflow-run.log; }; exit 1; fi

## test: run the test suite
test: install-dev
	@$(BIN)/python -m pytest

## bench: run every benchmark; tables are printed and figures written to var/bench/
bench: install-dev
	@$(BIN)/python -m benchmarks

## lint: ruff over the project
lint: install-dev
	@$(BIN)/ruff check .

## generate: write the demo shop's raw tables into the warehouse (replaces them)
generate: install
	@$(BIN)/dqlrec generate

## airflow: the services on this machine (PostgreSQL, Airflow's four services, Spark standalone) in var/services
airflow: install
	@$(BIN)/dqlrec generate --if-empty
	@$(BIN)/dqlrec services start

## airflow-stop: stop what `make airflow` started (by its PID files)
airflow-stop:
	@$(BIN)/dqlrec services stop

## airflow-status: which of those services run, and their URLs
airflow-status:
	@$(BIN)/dqlrec services status

## airflow-ui: start Airflow standalone (UI on http://localhost:8080) with this project's DAGs
airflow-ui: install
	@$(BIN)/airflow standalone

## clean-data: remove the warehouse, models, exports and Airflow metadata under var/; benchmark
## caches in var/bench (RecBole's venv and its runs, hours of CPU) stay: remove var/bench to drop them
clean-data:
	@if [ -d var ]; then find var -mindepth 1 -maxdepth 1 ! -name bench -exec rm -rf {} +; fi

## clean: also remove the virtual environment
clean: clean-data
	rm -rf $(VENV)
