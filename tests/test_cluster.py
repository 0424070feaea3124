"""The purge and gate DAGs in ``spark-submit`` mode on a real Spark standalone cluster.

Our proof that the jobs run on a distributed engine, not only in local mode: a master and two
workers are started on 127.0.0.1 from the pyspark distribution, the Airflow connection
``spark_default`` points at the master (env ``AIRFLOW_CONN_SPARK_DEFAULT``), every Spark step
is submitted by ``SparkSubmitOperator`` as ``jobs/<step>.py`` with the package shipped as a
zip in ``--py-files``, and the results must equal the local-mode runs on the same lake.

Small on purpose (the machine is shared): one core and 1 GB per worker, 512 MB executors and
driver, bounded waits, and the cluster is always shut down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tests.airflow_fixtures import (
    MODEL_VERSION,
    Runs,
    SparkCluster,
    airflow_home,
    comparable,
    copy_lake,
    gate_then_purge,
    local_runs,
    pristine_lake,
    spark_standalone_cluster,
)

__all__ = ["airflow_home", "local_runs", "pristine_lake"]

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
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    with spark_standalone_cluster(
        tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_runs(
    cluster: SparkCluster,
    airflow_home: Path,
    pristine_lake: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    conf = copy_lake(
        pristine_lake,
        tmp_path_factory.mktemp("cluster-lake") / "lake",
        conf={"airflow": {"mode": "spark-submit"}, "spark": {"conf": CLUSTER_SPARK_CONF}},
    )
    before = os.environ.get("AIRFLOW_CONN_SPARK_DEFAULT")
    os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = cluster.master_url
    try:
        yield gate_then_purge(conf)
    finally:
        if before is None:
            os.environ.pop("AIRFLOW_CONN_SPARK_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = before


def test_dags_run_on_the_cluster_and_match_local_mode(
    spark: SparkSession, cluster: SparkCluster, cluster_runs: Runs, local_runs: Runs
) -> None:
    from consentgate.manifest import verify_manifest

    assert cluster_runs.gate.ok, cluster_runs.gate.task_states
    assert cluster_runs.purge.ok, cluster_runs.purge.task_states
    assert comparable(cluster_runs) == comparable(local_runs)
    published = cluster_runs.gate.results["verify"]
    assert published["verification"]["ok"] is True
    assert verify_manifest(Path(published["manifest_path"]))["ok"] is True
    assert [e["name"] for e in cluster_runs.gate.asset_events] == [
        f"consentgate/snapshot/{MODEL_VERSION}"
    ]


def test_every_spark_step_was_a_cluster_application(
    cluster: SparkCluster, cluster_runs: Runs
) -> None:
    state = cluster.state()
    assert int(state["aliveworkers"]) == 2
    apps = state.get("completedapps", []) + state.get("activeapps", [])
    names = sorted(app["name"] for app in apps)
    datasets = len(cluster_runs.purge.results["purge_dataset"])
    snapshots = len(cluster_runs.gate.results["snapshot"])
    expected = sorted(
        ["consentgate-gate_prepare", "consentgate-gate_publish", "consentgate-gate_verify"]
        + ["consentgate-gate_snapshot"] * snapshots
        + ["consentgate-evaluate", "consentgate-erase", "consentgate-audit_summary"]
        + ["consentgate-purge_dataset"] * datasets
    )
    assert names == expected
    assert all(app["state"] == "FINISHED" for app in apps)
    # each application got executors on both workers: two cores, one per worker
    assert all(int(app["cores"]) == 2 for app in apps)
