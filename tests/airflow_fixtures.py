"""Fixtures for the Airflow tests: a migrated metadata DB, a small demo lake, DAG runs, a cluster.

A pytest plugin of ``tests/conftest.py``: every test module sees these fixtures.

Airflow reads ``AIRFLOW_HOME`` when first imported, so nothing here imports Airflow at module
level: ``tests/conftest.py`` configures the process before collection (SQLite DB under the
run's temp dir, our ``dags/`` only, no task retries) and :func:`airflow_home` migrates it.

The expensive things are built once per session: the pristine demo lake (:func:`pristine_lake`,
copied for each test that writes) and the local-mode gate + purge runs (:func:`local_runs`),
which both the local tests and the cluster test (same results required) read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from consentgate.airflow_tasks import CONF_ENV

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
#: Small, so each Spark step is dominated by fixed costs, not data.
LAKE_ASSETS = 80
LAKE_SEED = 11
#: Every run evaluates at the demo's fixed clock, so local and cluster runs are comparable.
AS_OF = "2026-11-01T00:00:00Z"
MODEL_VERSION = "m1"
USE_CASE = "generative_training"


@pytest.fixture(scope="session")
def airflow_db(request: pytest.FixtureRequest) -> Path:
    """This process's Airflow home (configured by ``tests/conftest.py`` before any import of
    Airflow), with its SQLite metadata DB migrated once per test session."""
    from consentgate.story import prepare_airflow
    from tests.conftest import airflow_home_dir

    home = airflow_home_dir(request.config)
    prepare_airflow(home, dags_dir=DAGS, quiet=True)
    return home


@pytest.fixture(scope="session")
def airflow_home(airflow_db: Path, jvm: None) -> Path:
    """:func:`airflow_db` for tests that run DAGs: their tasks run Spark steps in process."""
    return airflow_db


@contextlib.contextmanager
def conf_env(conf: Path) -> Iterator[None]:
    """Point the DAGs at ``conf`` (env ``CONSENTGATE_CONF``) for the duration."""
    before = os.environ.get(CONF_ENV)
    os.environ[CONF_ENV] = str(conf)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CONF_ENV, None)
        else:
            os.environ[CONF_ENV] = before


@pytest.fixture(scope="session")
def pristine_lake(tmp_path_factory: pytest.TempPathFactory, jvm: None) -> Path:
    """A small demo lake; never written by tests (use :func:`copy_lake`)."""
    from consentgate.demo import init_demo
    from tests.conftest import spark_session

    root = tmp_path_factory.mktemp("pristine") / "lake"
    init_demo(spark_session(), root, assets=LAKE_ASSETS, seed=LAKE_SEED)
    return root


def copy_lake(pristine: Path, target: Path, *, conf: dict[str, Any] | None = None) -> Path:
    """Copy the lake (Delta logs hold relative paths) and return its conf, amended by ``conf``."""
    shutil.copytree(pristine, target)
    conf_path = target / "consentgate.yaml"
    if conf:
        data = yaml.safe_load(conf_path.read_text())
        for key, value in conf.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        conf_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return conf_path


def write_conf(conf_path: Path, name: str, **overrides: Any) -> Path:
    """A sibling conf of the same lake with top-level keys overridden."""
    data = yaml.safe_load(conf_path.read_text())
    data.update(overrides)
    target = conf_path.parent / name
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@dataclass
class Runs:
    """A gate run and then a nightly purge on one lake.

    ``purge_decisions`` lists, per call of :func:`consentgate.purge.decide_run` during the
    purge run (the tasks run in this process), the tables it decided (None: every target).
    """

    conf: Path
    gate: Any
    purge: Any
    purge_decisions: list[list[str] | None]
    #: The next night, answered from the quiescence certificate the purge wrote (it changed
    #: the lake only by its own commits: ``consentgate.quiescence``).
    quiet: Any = None
    #: What Airflow itself logged at ERROR or above during the runs (:func:`airflow_errors`),
    #: e.g. the SDK client's "XCom not found" (issue #24 item 3).
    airflow_errors: list[dict[str, Any]] = field(default_factory=list)
    #: The OpenLineage events of all three runs, from the file transport the demo uses
    #: (:func:`consentgate.airflow_lineage.events_to_file`).
    lineage_events: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def airflow_errors() -> Iterator[list[dict[str, Any]]]:
    """What Airflow logs at ERROR or above while open (structlog's capture: under pytest
    Airflow does not cache its loggers, so every logger of a ``dag.test()`` run reaches it),
    as structlog event dicts (``event``, ``logger``, ``task_id``, ...), filled in when the
    block ends."""
    import airflow.models.dagbag  # noqa: F401  (Airflow configures structlog when imported)
    import structlog.testing

    errors: list[dict[str, Any]] = []
    with structlog.testing.capture_logs() as logged:
        yield errors
    errors += [e for e in logged if e.get("log_level") in ("error", "critical")]


def gate_then_purge(conf: Path) -> Runs:
    """Gate ``m1`` for generative training, then the nightly purge (which covers the snapshot),
    counting the purge run's consent decisions through the real ``decide_run`` and keeping
    what Airflow logged at ERROR (:func:`airflow_errors`)."""
    from consentgate import purge as purge_module
    from consentgate.airflow_lineage import events_to_file
    from consentgate.story import run_dag

    decisions: list[list[str] | None] = []
    real_decide_run = purge_module.decide_run

    def counting_decide_run(*args: Any, **kwargs: Any) -> Any:
        names = kwargs.get("names")
        decisions.append(None if names is None else [str(n) for n in names])
        return real_decide_run(*args, **kwargs)

    events_path = conf.parent.parent / "openlineage" / "events.jsonl"
    with (
        conf_env(conf),
        airflow_errors() as errors,
        events_to_file(events_path) as events_file,
    ):
        assert events_file == events_path, "an OpenLineage transport is configured outside"
        gate = run_dag(
            "consentgate_pretraining_gate",
            run_conf={"use_case": USE_CASE, "model_version": MODEL_VERSION, "as_of": AS_OF},
            dags_dir=DAGS,
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(purge_module, "decide_run", counting_decide_run)
            purge = run_dag("consentgate_nightly_purge", run_conf={"as_of": AS_OF}, dags_dir=DAGS)
        quiet = run_dag("consentgate_nightly_purge", run_conf={"as_of": AS_OF}, dags_dir=DAGS)
    return Runs(
        conf=conf,
        gate=gate,
        purge=purge,
        purge_decisions=decisions,
        quiet=quiet,
        airflow_errors=errors,
        lineage_events=[json.loads(line) for line in events_path.read_text().splitlines()],
    )


def openlineage_task_runs(outcome: Any) -> dict[tuple[str, int], tuple[str, str]]:
    """Per (task id, map index) of a finished DAG run: the OpenLineage run id the Airflow
    OpenLineage provider gives that task instance, and the one it gives the DAG run, computed
    here from the metadata DB with the provider's own adapter (not through our code)."""
    from airflow.models.dagrun import DagRun
    from airflow.providers.openlineage.plugins.adapter import OpenLineageAdapter
    from airflow.utils.session import create_session

    with create_session() as session:
        (dag_run,) = DagRun.find(dag_id=outcome.dag_id, run_id=outcome.run_id, session=session)
        logical_date = dag_run.logical_date or dag_run.run_after
        root = OpenLineageAdapter.build_dag_run_id(
            dag_id=outcome.dag_id, logical_date=logical_date, clear_number=dag_run.clear_number
        )
        return {
            (ti.task_id, ti.map_index): (
                OpenLineageAdapter.build_task_instance_run_id(
                    dag_id=outcome.dag_id,
                    task_id=ti.task_id,
                    try_number=ti.try_number,
                    logical_date=logical_date,
                    map_index=ti.map_index,
                ),
                root,
            )
            for ti in dag_run.get_task_instances(session=session)
        }


@pytest.fixture(scope="session")
def local_runs(
    airflow_home: Path, pristine_lake: Path, tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    """The gate and purge DAGs in ``local`` mode on a copy of the pristine lake."""
    conf = copy_lake(pristine_lake, tmp_path_factory.mktemp("local") / "lake")
    return gate_then_purge(conf)


# --------------------------------------------------------------------------------------------
# A Spark standalone cluster on 127.0.0.1, from the pyspark distribution


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SparkCluster:
    """A running standalone master and its workers."""

    master_url: str
    webui: str
    processes: list[subprocess.Popen[bytes]]
    logs: Path

    def state(self) -> dict[str, Any]:
        """The master's JSON status (workers, running and completed applications)."""
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=10) as response:
            value: dict[str, Any] = json.loads(response.read())
        return value


def _wait(predicate: Any, *, timeout: float, what: str, cluster_logs: Path) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    tails = []
    for log in sorted(cluster_logs.glob("*.log")):
        tails.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    raise TimeoutError(f"{what} not ready after {timeout}s ({last})\n" + "\n".join(tails))


@contextlib.contextmanager
def spark_standalone_cluster(
    root: Path, *, workers: int = 2, cores: int = 1, memory: str = "1g", timeout: float = 180
) -> Iterator[SparkCluster]:
    """Start a master and ``workers`` workers from pyspark's ``spark-class``; always stop them.

    Each process runs in its own session so that stopping it (SIGTERM, then SIGKILL after a
    bounded wait) also reaches the executors a worker launched.
    """
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port, ui = free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(logs),
        "SPARK_LOCAL_DIRS": str(root / "local"),
        "SPARK_DAEMON_MEMORY": "256m",
    }
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        log = (logs / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [str(spark_class), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )

    cluster = SparkCluster(
        master_url=f"spark://127.0.0.1:{port}",
        webui=f"http://127.0.0.1:{ui}",
        processes=processes,
        logs=logs,
    )
    try:
        start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
        )
        _wait(
            lambda: cluster.state().get("status") == "ALIVE",
            timeout=timeout,
            what="spark master",
            cluster_logs=logs,
        )
        for i in range(workers):
            work = root / f"worker-{i}"
            work.mkdir(parents=True, exist_ok=True)
            start(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                cluster.master_url,
                "--host",
                "127.0.0.1",
                "--webui-port",
                str(free_port()),
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--work-dir",
                str(work),
            )
        _wait(
            lambda: int(cluster.state().get("aliveworkers", 0)) >= workers,
            timeout=timeout,
            what=f"{workers} spark workers",
            cluster_logs=logs,
        )
        yield cluster
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
