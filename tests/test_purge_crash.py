"""Crash safety: the purge is killed with SIGKILL (a real process kill, in a subprocess with
its own SparkSession) after writing files but before committing, and after committing but
before the audit entry. A rerun must leave the table exactly as an uninterrupted run, erase
the orphans, and the audit log must say what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from consentgate import audit, erasure, lake, purge
from consentgate.config import Config, load_config
from tests.test_purge import AS_OF, build, decide, expected_after

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


def test_kill_before_commit_then_rerun(spark: SparkSession, tmp_path: Path) -> None:
    config, path, conf = setup(spark, tmp_path)
    expected = expected_after(lake.read_table(spark, path)).localCheckpoint()
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")}

    run_killed(conf, "before_commit")

    # Killed after writing: the table did not move, the written files are orphans.
    assert lake.table_version(path) == 0
    orphans = {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")} - on_disk
    assert orphans, "the killed run should have written its rewrite files"

    result = purge.run_purge(spark, config, as_of=AS_OF, deciders={"emb": decide})
    emb = result["datasets"]["emb"]
    assert emb["rows_deleted"] == 9 and emb["recovered"] == 1
    assert_df_equality(
        lake.read_table(spark, path), expected, ignore_row_order=True, allow_nan_equality=True
    )
    receipt = result["erasure"]["datasets"]["emb"]
    assert receipt["result"] == "verified"
    assert receipt["orphans_removed"] >= len(orphans)
    assert not any((path / o).exists() for o in orphans)
    # Every Parquet file left on disk is active: nothing of the crash survives.
    active = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    assert {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")} == active
    recovery = audit.events(spark, config, kind="recovery")
    assert [e["payload"]["event"] for e in recovery] == ["attempt_not_committed"]
    assert recovery[0]["run_id"] == "purge-crashed"
    assert audit.verify_chain(spark, config)["ok"]


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
    assert lake.table_version(path) == 1 + 2  # vacuum start/end only: no second rewrite
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
