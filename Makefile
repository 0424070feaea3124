# Everything bootstraps .venv itself from a fresh clone: Python 3.11 and Java 17 are the only prerequisites.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# Delta's JVM jars (jvm/pom.xml), fetched once by Maven; consentgate.spark passes them as spark.jars.
JARS := .jars
JARS_STAMP := $(JARS)/.fetched-$(shell cat jvm/pom.xml | cksum | cut -d' ' -f1)

.PHONY: venv jars jvm-archive all test test-fast test-cluster test-airflow lint typecheck demo airflow bench bench-smoke lock clean java mvn

all: test

java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java 17 is required by Spark but 'java' is not on PATH (install openjdk-17-jre-headless)" >&2; exit 2; }
	@java -version 2>&1 | head -1 | grep -Eq '"(1[7-9]|2[0-9])' || { echo "error: Java 17+ is required by Spark; found: $$(java -version 2>&1 | head -1)" >&2; exit 2; }

mvn:
	@command -v mvn >/dev/null 2>&1 || { echo "error: Maven ('mvn') is required to fetch Delta's jars (jvm/pom.xml) but is not on PATH (install maven)" >&2; exit 2; }

$(JARS_STAMP): jvm/pom.xml
	@$(MAKE) --no-print-directory mvn
	rm -rf $(JARS) && mkdir -p $(JARS)
	mvn -q -B -f jvm/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JARS)
	@ls $(JARS)/delta-spark_*.jar >/dev/null 2>&1 || { echo "error: mvn fetched no delta-spark jar into $(JARS)" >&2; exit 2; }
	touch $@

jars: $(JARS_STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) is required" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# The class-data archive local driver JVMs start from (consentgate.jvm_archive): written once
# per Java + pyspark + Delta jars (about two minutes), a cache every local session then maps.
# Not part of `make test`: the suite starts few JVMs (two workers' sessions, a few children),
# so the two minutes would not come back (measured: 123 s to write, no gain in the tests).
jvm-archive: java $(JARS_STAMP) $(STAMP)
	$(PY) -m consentgate.jvm_archive

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests jobs dags bench
	$(VENV)/bin/ruff check src tests jobs dags bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# `make test` (CI): lint, types, then every test in TEST_WORKERS pytest-xdist workers (one JVM
# per worker across modules; modules sharing a costly session fixture run in one worker, see
# tests/conftest.py), printing each phase's seconds and the 30 slowest tests.
# `--no-compile`: .pyc files are written on first import, only for the modules a run imports.
# `make test-fast`: the tier that needs no JVM and no Airflow DB (marker `fast`, set from the
# fixtures a test uses), for the inner loop; a fast test that reaches for Spark fails loudly.
PHASE = scripts/phase
TEST_WORKERS ?= 2
test: java
	@$(PHASE) jars $(MAKE) --no-print-directory jars
	@$(PHASE) install $(MAKE) --no-print-directory venv
	@$(PHASE) lint $(MAKE) --no-print-directory lint
	@$(PHASE) typecheck $(MAKE) --no-print-directory typecheck
	@$(PHASE) tests $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m fast -p no:cacheprovider $(PYTEST_ARGS)

test-cluster: java $(JARS_STAMP) $(STAMP) jvm-archive
	$(VENV)/bin/pytest -m cluster $(PYTEST_ARGS)

# `make airflow` itself, as a user starts it (tests/test_make_airflow.py): not in `make test`
# (it writes the 2,000-asset demo lake and runs the purge DAG through the scheduler, minutes).
test-airflow: $(STAMP)
	$(VENV)/bin/pytest --airflow-server -m airflow_server -p no:cacheprovider $(PYTEST_ARGS)

demo: java $(JARS_STAMP) $(STAMP) jvm-archive
	$(VENV)/bin/consentgate demo

# The DAGs' Spark tasks run in the pool consentgate_spark (one slot: one local JVM at a time,
# see consentgate.airflow_tasks.spark_pool); it is created before the scheduler starts.
# AIRFLOW_DIR (Airflow's home), DEMO_LAKE (the lake, written once) and AIRFLOW_PORT (the API
# server and UI, on 127.0.0.1) let a second instance run beside the first.
AIRFLOW_DIR ?= $(CURDIR)/.airflow
DEMO_LAKE ?= $(CURDIR)/lake
AIRFLOW_PORT ?= 8080
AIRFLOW_ENV = PATH=$(CURDIR)/$(VENV)/bin:$$PATH CONSENTGATE_CONF=$(DEMO_LAKE)/consentgate.yaml \
	AIRFLOW_HOME=$(AIRFLOW_DIR) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AIRFLOW_PORT)
airflow: java $(JARS_STAMP) $(STAMP) jvm-archive
	@test -f $(DEMO_LAKE)/consentgate.yaml || $(VENV)/bin/consentgate init-demo --lake $(DEMO_LAKE)
	$(AIRFLOW_ENV) $(VENV)/bin/airflow db migrate
	$(AIRFLOW_ENV) $(VENV)/bin/airflow pools set consentgate_spark 1 "consentgate: one Spark JVM at a time"
	$(AIRFLOW_ENV) $(VENV)/bin/airflow standalone

bench: java $(JARS_STAMP) $(STAMP) jvm-archive
	$(PY) bench/run.py $(BENCH_ARGS)

bench-smoke: java $(JARS_STAMP) $(STAMP) jvm-archive
	$(PY) bench/run.py --smoke

# Re-resolve requirements.in into requirements.lock (needs the registries).
lock:
	rm -rf /tmp/consentgate-lock && $(PYTHON) -m venv /tmp/consentgate-lock
	/tmp/consentgate-lock/bin/pip install -q -r requirements.in && /tmp/consentgate-lock/bin/pip check
	/tmp/consentgate-lock/bin/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(VENV) $(JARS) .airflow lake .pytest_cache .mypy_cache .ruff_cache
