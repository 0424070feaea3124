"""The jobs on a real Spark standalone cluster, in two spark-submit applications.

Our proof that the job entry points run on a distributed engine, not only in local mode: a
master and two workers are started on 127.0.0.1 from the pyspark distribution, the Airflow
connection ``spark_default`` points at the master (env ``AIRFLOW_CONN_SPARK_DEFAULT``), and
every application goes through ``SparkSubmitOperator`` (:func:`~consentgate.airflow_tasks.
submit_step`) as ``jobs/<step>.py``, with the package shipped as a zip in ``--py-files`` and
Delta's jars in ``--jars``. Its results must equal local mode's on the same pristine lake.

Two applications on one copy of the pristine lake, because each costs a driver's and two
executors' start-up and a minute or two on a 2-core machine:

1. ``jobs/gate.py``, the whole gate (allowlist, both snapshots, manifest, registry, audit,
   re-verification), submitted with ``submit_step`` as an Airflow task would;
2. ``jobs/backfill.py``, submitted by the ``consentgate_policy_backfill`` DAG in
   ``airflow.mode: spark-submit`` (``dry_run`` false) on the lake (1) just gated: the path DAG
   task -> ``run_step`` -> ``SparkSubmitOperator`` -> job -> result file -> XCom. A backfill
   is the impact report and then the whole purge (:func:`~consentgate.purge.run_backfill`
   calls :func:`~consentgate.purge.run_purge`): every dataset and both snapshots, erasure and
   its verification, audit.

Both are compared with the gate and nightly purge *DAGs* in local mode on the same lake at the
same instant (the session fixture :func:`local_runs`, which ``test_airflow_runs`` reads too,
so in the whole suite it costs nothing here): allowlist, exclusions, snapshot rows and content
roots, per-table rows and reasons, erasure receipts, the tables that changed; and the
backfill's impact must have read the registry entry (1) published.

Departures from earlier modules, on purpose. The module used to submit about 15 applications,
one per DAG step (25-47 minutes), then three: the gate, the nightly purge (``jobs/purge.py``)
and the backfill on a second, ungated lake (5:19 of the suite's 37:24, measured 2026-12-07 at
load average about 2). The purge application ran the same ``run_purge`` the backfill runs,
through the same ``submit_step``, zip, jars and ``job_main``, with other arguments; the
backfill on the gated lake now covers what both did (snapshots included) and the impact
report besides. The per-step job scripts the gate and purge DAGs submit in spark-submit mode
(``gate_prepare``, ``gate_snapshot``, ``purge_dataset``, ``erase``, ...) share everything with
these two but their arguments; those arrive as JSON either way (XComs in local mode,
``--args-file`` here), and the DAGs' split of the work (one task per step and per table) is
what the comparison with the local DAGs holds the whole flows to. The DAGs' task shapes are
covered in local mode by ``test_airflow_runs``.

Small on purpose (the machine is shared): one core and 1 GB per worker, 512 MB executors and
driver, bounded waits, and the cluster is always shut down.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from tests.airflow_fixtures import (
    AS_OF,
    DAGS,
    MODEL_VERSION,
    USE_CASE,
    Runs,
    SparkCluster,
    conf_env,
    copy_lake,
    openlineage_task_runs,
    spark_standalone_cluster,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: Small executors and driver; two cores in all, one executor per worker.
CLUSTER_SPARK_CONF = {
    "spark.executor.memory": "512m",
    "spark.executor.cores": "1",
    "spark.cores.max": "2",
    "spark.driver.memory": "512m",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    # Delta's defaults are sized for big tables: every VACUUM repartitions its file list into
    # parallelPartitionDiscovery.parallelism (10,000) tasks and every snapshot is rebuilt in 50
    # partitions. The erase step of one nightly purge on this tiny lake ran 101,000 tasks for
    # 11 minutes (and each purge_dataset 2.5 minutes) before these two settings.
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.adaptive.enabled": "false",
    # As in the local test session (tests/conftest.py): no Java generated and compiled per
    # query. On a cluster every executor JVM compiles each stage's code again, cold; on a few
    # hundred rows that costs more than it saves, and the results are the same.
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}

#: The applications this module submits, by the name ``submit_step`` gives them.
APPLICATIONS = ["consentgate-backfill", "consentgate-gate"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    with spark_standalone_cluster(
        tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g"
    ) as running:
        yield running


@contextlib.contextmanager
def spark_connection(master_url: str) -> Iterator[None]:
    """Point Airflow's ``spark_default`` connection at ``master_url`` for the duration."""
    before = os.environ.get("AIRFLOW_CONN_SPARK_DEFAULT")
    os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = master_url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AIRFLOW_CONN_SPARK_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = before


def cluster_lake(pristine: Path, target: Path) -> Path:
    """A copy of the pristine lake whose conf submits to the cluster with the small settings."""
    from consentgate.config import load_config

    conf = copy_lake(
        pristine,
        target,
        conf={"airflow": {"mode": "spark-submit"}, "spark": {"conf": CLUSTER_SPARK_CONF}},
    )
    spark_conf = load_config(conf).spark.conf
    # what keeps VACUUM and snapshot rebuilds from running thousands of tasks (see above)
    assert spark_conf["spark.sql.sources.parallelPartitionDiscovery.parallelism"] == "4"
    assert spark_conf["spark.databricks.delta.snapshotPartitions"] == "2"
    return conf


@dataclass
class Flows:
    """The whole gate (one application), then the backfill DAG's run on the gated lake."""

    conf: Path
    gate: dict[str, Any]
    backfill: Any
    #: The backfill run's OpenLineage events (the file transport the demo uses): sent by the
    #: job's driver, a child of spark-submit, nested under the DAG task that submitted it.
    lineage_events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def cluster_flows(
    cluster: SparkCluster,
    airflow_home: Path,
    pristine_lake: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Flows:
    """Application 1: ``submit_step`` as a task calls it, with an empty context (it uses the
    context only for the task id; ``SparkSubmitOperator`` in client mode reads it only when
    OpenLineage injection is configured, which it is not here). Application 2: the backfill
    DAG in spark-submit mode (its only Spark task) on the same lake."""
    from consentgate.airflow_lineage import events_to_file
    from consentgate.airflow_tasks import submit_step
    from consentgate.config import load_config
    from consentgate.story import run_dag

    conf = cluster_lake(pristine_lake, tmp_path_factory.mktemp("cluster-flows") / "lake")
    config = load_config(conf)
    gate_args = {"use_case": USE_CASE, "model_version": MODEL_VERSION, "as_of": AS_OF}
    with spark_connection(cluster.master_url):
        gate = submit_step("gate", config, {**gate_args, "datasets": None}, {})
        events = conf.parent.parent / "openlineage" / "events.jsonl"
        with conf_env(conf), events_to_file(events):
            backfill = run_dag(
                "consentgate_policy_backfill",
                run_conf={"as_of": AS_OF, "dry_run": False},
                dags_dir=DAGS,
            )
    lineage = [json.loads(line) for line in events.read_text().splitlines()]
    return Flows(conf=conf, gate=gate, backfill=backfill, lineage_events=lineage)


# --------------------------------------------------------------------------------------------
# What must not depend on where the jobs ran


def gate_facts(published: Mapping[str, Any]) -> dict[str, Any]:
    """A published gate run's mode-independent facts, the snapshots' from its manifest."""
    from consentgate.manifest import load_manifest

    manifest = load_manifest(Path(published["manifest_path"]))
    snapshots = {
        name: {"rows": snap.get("rows"), "content_root": snap.get("content_merkle_root")}
        for name, snap in sorted((manifest.get("snapshots") or {}).items())
    }
    return {
        "model_version": published["model_version"],
        "use_case": published["use_case"],
        "allowlist_assets": published["allowlist_assets"],
        "allowlist_root": published["allowlist_root"],
        "snapshot_rows": published["snapshot_rows"],
        "exclusions": published["exclusions"],
        "snapshots": snapshots,
        "verified": published["verification"]["ok"],
    }


def table_facts(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per table: rows before, deleted and after, and the deletions by reason."""
    keys = ("rows_before", "rows_deleted", "rows_after", "reasons")
    return {name: {k: r[k] for k in keys} for name, r in sorted(results.items())}


def local_tables(runs: Runs) -> dict[str, Any]:
    """The local nightly purge's per-table results (one mapped task each)."""
    return table_facts({r["name"]: r for r in runs.purge.results["purge_dataset"]})


def receipts(erasure: Mapping[str, Any]) -> dict[str, Any]:
    """Each table's erasure receipt (``verified`` or why not)."""
    return {name: r.get("result") for name, r in sorted(erasure.get("datasets", {}).items())}


def changed(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The Asset names of the tables a purge changed (the DAGs emit one event each)."""
    return sorted(f"consentgate/dataset/{n}" for n, r in results.items() if r["rows_deleted"])


# --------------------------------------------------------------------------------------------


def test_whole_gate_on_the_cluster_matches_the_local_dag(
    spark: SparkSession, cluster_flows: Flows, local_runs: Runs
) -> None:
    from consentgate import audit
    from consentgate.config import load_config
    from consentgate.manifest import verify_manifest

    assert local_runs.gate.ok, local_runs.gate.task_states
    gate = cluster_flows.gate
    assert gate_facts(gate) == gate_facts(local_runs.gate.results["verify"])
    assert verify_manifest(Path(gate["manifest_path"]))["ok"] is True  # outside the cluster too
    # the cluster's driver appended the gate's audit entry
    config = load_config(cluster_flows.conf)
    assert audit.events(spark, config, kind="gate")[-1]["run_id"] == gate["run_id"]


def test_backfill_dag_submits_its_job_and_matches_the_local_purge(
    spark: SparkSession, cluster_flows: Flows, local_runs: Runs
) -> None:
    from consentgate import audit
    from consentgate.config import load_config

    assert local_runs.purge.ok, local_runs.purge.task_states
    backfill = cluster_flows.backfill
    assert backfill.ok, backfill.task_states
    assert set(backfill.task_states) == {"validate", "backfill", "report"}
    report = backfill.results["report"]
    assert report["dry_run"] is False
    result = report["result"]  # the job's result file, become the backfill task's XCom
    assert result["ok"] is True and result["failed"] == {} and result["dry_run"] is False
    # the impact read the registry the cluster's gate wrote: one run, and at the gate's own
    # instant none of its allowlisted assets has lost consent
    assert result["impact"]["runs_checked"] == 1 and result["impact"]["runs"] == []
    assert report["affected_runs"] == 0
    # every dataset and both snapshots, with the same rows and reasons as one task per table
    assert table_facts(result["datasets"]) == local_tables(local_runs)
    assert any(r["rows_deleted"] for r in result["datasets"].values())  # a real purge
    assert result["erasure"]["ok"] is True
    local_receipts = receipts(local_runs.purge.results["erase_and_verify"])
    assert receipts(result["erasure"]) == local_receipts
    # the report task announced each changed table, as the local purge did
    announced = sorted(e["name"] for e in backfill.asset_events)
    assert announced == changed(result["datasets"])
    assert announced == sorted(e["name"] for e in local_runs.purge.asset_events)
    # the cluster's drivers appended the gate's and the backfill's audit entries, chained
    config = load_config(cluster_flows.conf)
    assert audit.events(spark, config, kind="gate")[-1]["run_id"] == cluster_flows.gate["run_id"]
    assert audit.events(spark, config, kind="backfill")[-1]["run_id"] == result["run_id"]
    assert audit.verify_chain(spark, config)["ok"] is True


def test_the_submitted_job_sends_its_events_nested_under_the_submitting_task(
    cluster_flows: Flows,
) -> None:
    """Issue #25 item 1: the task hands its OpenLineage run to the spark-submit child
    (``OPENLINEAGE_CONTEXT``), whose driver sends the backfill's START and COMPLETE with it as
    parent, valid OpenLineage with our facet."""
    from tests.test_openlineage_events import check_event

    events = cluster_flows.lineage_events
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("consentgate.backfill", "START"),
        ("consentgate.backfill", "COMPLETE"),
    ]
    expected = openlineage_task_runs(cluster_flows.backfill)["backfill", -1]
    for event in events:
        parent = event["run"]["facets"]["parent"]
        assert parent["job"]["name"] == "consentgate_policy_backfill.backfill"
        assert (parent["run"]["runId"], parent["root"]["run"]["runId"]) == expected
        check_event(event)
    tables = {o["name"] for o in events[1]["outputs"]}
    result = cluster_flows.backfill.results["report"]["result"]
    assert len(tables) == len(result["datasets"])


def test_each_job_was_one_cluster_application_on_both_workers(
    cluster: SparkCluster, cluster_flows: Flows
) -> None:
    state = cluster.state()
    assert int(state["aliveworkers"]) == 2
    apps = state.get("completedapps", []) + state.get("activeapps", [])
    assert sorted(app["name"] for app in apps) == APPLICATIONS
    assert all(app["state"] == "FINISHED" for app in apps)
    # each application got executors on both workers: two cores, one per worker
    assert all(int(app["cores"]) == 2 for app in apps)
