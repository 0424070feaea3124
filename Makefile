# Everything bootstraps .venv itself from a fresh clone: Python 3.11 and Java 17 are the only prerequisites.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv all test lint typecheck demo airflow bench bench-smoke lock clean java

all: test

java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java 17 is required by Spark but 'java' is not on PATH (install openjdk-17-jre-headless)" >&2; exit 2; }
	@java -version 2>&1 | head -1 | grep -Eq '"(1[7-9]|2[0-9])' || { echo "error: Java 17+ is required by Spark; found: $$(java -version 2>&1 | head -1)" >&2; exit 2; }

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) is required" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests jobs dags bench
	$(VENV)/bin/ruff check src tests jobs dags bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: java $(STAMP) lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: java $(STAMP)
	$(VENV)/bin/consentgate demo

airflow: java $(STAMP)
	@test -f lake/consentgate.yaml || $(VENV)/bin/consentgate init-demo --lake lake
	CONSENTGATE_CONF=$(CURDIR)/lake/consentgate.yaml \
	AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	  AIRFLOW__API__HOST=127.0.0.1 $(VENV)/bin/airflow standalone

bench: java $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-smoke: java $(STAMP)
	$(PY) bench/run.py --smoke

# Re-resolve requirements.in into requirements.lock (needs the registries).
lock:
	rm -rf /tmp/consentgate-lock && $(PYTHON) -m venv /tmp/consentgate-lock
	/tmp/consentgate-lock/bin/pip install -q -r requirements.in && /tmp/consentgate-lock/bin/pip check
	/tmp/consentgate-lock/bin/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(VENV) .airflow lake .pytest_cache .mypy_cache .ruff_cache
