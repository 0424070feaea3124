"""Crash safety: the purge is killed with SIGKILL (a real process kill, in a subprocess with
its own SparkSession) after recording its keys but before its MERGE commits, and after the
commit but before the audit entry. A rerun must leave the table exactly as an uninterrupted
run, erase what a killed writer left on disk, and the audit log must say what happened.

The same two crash points with the production plan (the nightly DAG's steps: the run's
decision materialised once by ``decide_purge``, and the table's ``purge_dataset`` task, retried,
loading it) are killed in process by purge's test hook (:class:`Killed`): seconds instead of a
JVM per crash.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from consentgate import audit, erasure, lake, purge
from consentgate.config import Config, load_config
from consentgate.runtime import iso
from tests.test_purge import AS_OF, build, decide, expected_after
from tests.test_purge_concurrency import EMB, append_rows, embedding_ids, small_lake_config

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    from consentgate.config import load_config
    from consentgate.purge import purge_dataset
    from consentgate.spark import get_spark
    from tests.test_purge import AS_OF, decide

    spark = get_spark(master="local[1]", conf={"spark.ui.enabled": "false",
                      "spark.sql.shuffle.partitions": "2", "spark.driver.memory": "1g"})
    config = load_config(sys.argv[1])
    purge_dataset(spark, config, "emb", as_of=AS_OF, run_id="purge-crashed", decide=decide)
    print("finished without crashing")
    """
)


def write_conf(root: Path) -> Path:
    conf = root / "consentgate.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "lake_root": str(root),
                "use_cases": {"recommendation": {"accepted_policy_versions": ["2026-03"]}},
                "datasets": {
                    "emb": {
                        "path": "derived/emb",
                        "use_case": "recommendation",
                        "key": "id",
                        "asset_column": "asset_id",
                    }
                },
                "erasure": {"window_hours": 0},
            }
        )
    )
    return conf


def run_killed(conf: Path, point: str) -> None:
    env = {**os.environ, purge.CRASH_ENV: point, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(conf)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr[-3000:])


def setup(spark: SparkSession, tmp_path: Path) -> tuple[Config, Path, Path]:
    root = tmp_path / "lake"
    for table in ("consent_records", "assets", "lineage"):  # unused by the fixed decider
        (root / table).mkdir(parents=True)
    conf = write_conf(root)
    config = load_config(conf, check_paths=False)
    path = build(spark, config)
    return config, path, conf


def plant_orphan(path: Path) -> str:
    """What a writer killed mid-write leaves: a Parquet file in the table directory that no
    commit references (here a copy of an active file, so it holds rows to be removed), old
    enough for the window."""
    active = lake.active_files(lake.open_table(path)).column("path").to_pylist()
    orphan = "part-00000-killed-writer-c000.snappy.parquet"
    shutil.copy(path / active[0], path / orphan)
    old = time.time() - 3600
    os.utime(path / orphan, (old, old))
    return orphan


@pytest.mark.slow
def test_kill_before_commit_then_rerun(spark: SparkSession, tmp_path: Path) -> None:
    config, path, conf = setup(spark, tmp_path)
    expected = expected_after(lake.read_table(spark, path)).localCheckpoint()

    run_killed(conf, "before_commit")

    # Killed before the MERGE committed: the table did not move.
    assert lake.table_version(path) == 0
    orphan = plant_orphan(path)

    result = purge.run_purge(spark, config, as_of=AS_OF, deciders={"emb": decide})
    emb = result["datasets"]["emb"]
    assert emb["rows_deleted"] == 9 and emb["recovered"] == 1
    assert_df_equality(
        lake.read_table(spark, path), expected, ignore_row_order=True, allow_nan_equality=True
    )
    receipt = result["erasure"]["datasets"]["emb"]
    assert receipt["result"] == "verified"
    assert receipt["orphans_removed"] >= 1
    assert not (path / orphan).exists()
    # Every Parquet file left on disk is active: nothing of the crash survives.
    active = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    assert {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")} == active
    recovery = audit.events(spark, config, kind="recovery")
    assert [e["payload"]["event"] for e in recovery] == ["attempt_not_committed"]
    assert recovery[0]["run_id"] == "purge-crashed"
    assert audit.verify_chain(spark, config)["ok"]


@pytest.mark.slow
def test_kill_after_commit_then_rerun(spark: SparkSession, tmp_path: Path) -> None:
    config, path, conf = setup(spark, tmp_path)
    expected = expected_after(lake.read_table(spark, path)).localCheckpoint()

    run_killed(conf, "after_commit")

    # Killed after the commit: the purge is done in the table, but the audit log has no entry.
    assert lake.table_version(path) == 1
    assert audit.events(spark, config, kind="purge") == []

    result = purge.run_purge(spark, config, as_of=AS_OF, deciders={"emb": decide})
    emb = result["datasets"]["emb"]
    assert emb["rows_deleted"] == 0 and emb["commits"] == [] and emb["recovered"] == 1
    # Erasure's commits only (vacuum start/end): no second MERGE.
    assert lake.table_version(path) == 1 + 2
    assert [h["operation"] for h in lake.history(path)].count("MERGE") <= 1
    assert_df_equality(
        lake.read_table(spark, path), expected, ignore_row_order=True, allow_nan_equality=True
    )
    recovery = audit.events(spark, config, kind="recovery")
    assert len(recovery) == 1
    payload = recovery[0]["payload"]
    assert payload["event"] == "committed_without_audit"
    assert payload["version_committed"] == 1
    assert payload["rows_deleted"] == 9
    assert payload["reasons"] == {"retention_expired": 1, "revoked": 8}
    receipt = result["erasure"]["datasets"]["emb"]
    assert receipt["result"] == "verified" and receipt["keys_checked"] == 9
    assert erasure.erase_and_verify(spark, config, run_id="again")["ok"]
    assert audit.verify_chain(spark, config)["ok"]


# --------------------------------------------------------------------------------------------
# The production plan (no decider), killed in process


class Killed(BaseException):
    """SIGKILL, in process: raised by purge's test hook at a crash point, it is no Exception,
    so nothing of the purge catches it. What still runs on the way out (``finally`` blocks)
    only releases cached frames and the table lock, as the kernel does for a killed process:
    nothing is written to the lake, the key table or the audit log."""


def kill(name: str) -> None:
    raise Killed(name)


def dag_task(spark: SparkSession, config: Config) -> dict[str, Any]:
    """The nightly DAG's mapped ``purge_dataset`` task for the table: it loads the run's
    decision, never deciding on its own."""
    from consentgate import airflow_tasks

    return airflow_tasks.step_purge_dataset(
        spark, config, name=EMB, as_of=iso(AS_OF), run_id="purge-nightly"
    )


def killed_task(
    spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The DAG's way: the run is decided and materialised once (the ``decide`` task's step),
    then the table's task purges from that decision and is killed at ``point``."""
    from consentgate import airflow_tasks

    airflow_tasks.step_decide_purge(spark, config, as_of=iso(AS_OF), run_id="purge-nightly")
    monkeypatch.setitem(purge._TEST_HOOKS, point, kill)
    with pytest.raises(Killed):
        dag_task(spark, config)
    monkeypatch.delitem(purge._TEST_HOOKS, point)


def test_production_plan_killed_before_commit_then_the_retried_task_converges(
    spark: SparkSession, small_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed with its keys recorded and no commit; before the retry another writer appends e4
    (a2 revoked) and e5 (a1 granted). The retried task purges from the run's materialised plan
    (decided at v0): the appended file is re-located with the plan's consent, one commit
    removes e2, e3 and e4, and the killed attempt is recorded as not committed."""
    config = small_lake_config(small_lake)
    path = config.dataset_path(EMB)
    killed_task(spark, config, monkeypatch, "before_commit")
    assert lake.table_version(path) == 0
    assert embedding_ids(spark, path) == ["e1", "e2", "e3"]
    append_rows(spark, path, [("e4", "a2"), ("e5", "a1")])

    result = dag_task(spark, config)

    assert embedding_ids(spark, path) == ["e1", "e5"]
    assert result["rows_deleted"] == 3 and result["commits"] == [2]
    assert result["reasons"] == {"no_consent_record": 1, "revoked": 2}
    assert result["recovered"] == 1
    [recovery] = audit.events(spark, config, kind="recovery")
    assert recovery["payload"]["event"] == "attempt_not_committed"
    assert recovery["run_id"] == "purge-nightly"
    assert audit.verify_chain(spark, config)["ok"]


def test_production_plan_killed_after_commit_then_the_retried_task_commits_nothing_more(
    spark: SparkSession, small_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its MERGE committed (v1) and before its audit entry. The retried task's
    plan is still the one decided at v0: re-locating it finds its decided files rewritten and
    only our own commit's output uncovered, decides that, and finds nothing to remove: no
    second MERGE, and the commit is recorded as committed without audit."""
    config = small_lake_config(small_lake)
    path = config.dataset_path(EMB)
    killed_task(spark, config, monkeypatch, "after_commit")
    assert lake.table_version(path) == 1
    assert audit.events(spark, config, kind="purge") == []
    assert embedding_ids(spark, path) == ["e1"]

    result = dag_task(spark, config)

    assert result["rows_deleted"] == 0 and result["commits"] == [] and result["recovered"] == 1
    assert lake.table_version(path) == 1
    assert embedding_ids(spark, path) == ["e1"]
    [recovery] = audit.events(spark, config, kind="recovery")
    payload = recovery["payload"]
    assert payload["event"] == "committed_without_audit"
    assert payload["version_committed"] == 1 and payload["rows_deleted"] == 2
    assert payload["reasons"] == {"no_consent_record": 1, "revoked": 1}
    assert audit.verify_chain(spark, config)["ok"]
