"""The command line's contract: --json, exit statuses, and messages that name the culprit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner
from pyspark.sql import SparkSession

from consentgate import lake
from consentgate.cli import main
from tests.lakes import write_small_lake


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_evaluate_json_summary_and_table(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path)
    out = tmp_path / "decisions"
    code, stdout, _ = run(
        "evaluate",
        "--conf",
        str(conf),
        "--use-case",
        "recommendation",
        "--as-of",
        "2026-06-01T00:00:00Z",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["assets"] == 3
    assert summary["granted"] == 1
    assert summary["reasons"] == {"granted": 1, "revoked": 1, "no_consent_record": 1}
    assert summary["ignored_records"]["not_owner"] == 1
    assert summary["output"] == str(out)
    rows = {r.asset_id: r for r in lake.read_table(spark, out).collect()}
    assert rows["a1"].decision == "granted" and rows["a1"].consent_record_id == "r1"
    assert rows["a2"].reason == "revoked"
    assert set(lake.read_table(spark, out).columns) >= {
        "asset_id",
        "use_case",
        "decision",
        "reason",
        "consent_record_id",
        "policy_version",
        "jurisdiction",
    }


def test_as_of_before_revocation_grants(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path)
    code, stdout, _ = run(
        "evaluate",
        "--conf",
        str(conf),
        "--use-case",
        "recommendation",
        "--as-of",
        "2026-01-01T12:00:00+00:00",
        "--json",
    )
    assert code == 0
    assert json.loads(stdout)["granted"] == 2


def test_human_output_shows_reasons(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path)
    code, stdout, _ = run("evaluate", "--conf", str(conf), "--use-case", "recommendation")
    assert code == 0
    assert "no_consent_record" in stdout and "revoked" in stdout


def test_unknown_config_key_exits_2_naming_it(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path, conf={"bogus_key": 1})
    code, stdout, stderr = run("evaluate", "--conf", str(conf), "--use-case", "x", "--json")
    assert code == 2
    assert "bogus_key: unknown key" in json.loads(stdout)["error"]
    assert "bogus_key" in stderr


def test_missing_dataset_path_exits_2(spark: SparkSession, tmp_path: Path) -> None:
    conf_path = write_small_lake(spark, tmp_path)
    conf = yaml.safe_load(conf_path.read_text())
    conf["datasets"]["track_embeddings"]["path"] = "derived/nope"
    conf_path.write_text(yaml.safe_dump(conf))
    code, _, stderr = run("evaluate", "--conf", str(conf_path), "--use-case", "recommendation")
    assert code == 2
    assert "datasets.track_embeddings.path" in stderr


def test_unknown_use_case_exits_2(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path)
    code, _, stderr = run("evaluate", "--conf", str(conf), "--use-case", "generative_training")
    assert code == 2
    assert "generative_training" in stderr


def test_mistyped_column_exits_2_naming_table_and_column(
    spark: SparkSession, tmp_path: Path
) -> None:
    conf = write_small_lake(spark, tmp_path)
    bad = spark.createDataFrame(
        [("a9", "u9", "US", "2026-01-01", None)],
        "asset_id string, owner_user_id string, jurisdiction string, created_at string, "
        "deleted_at timestamp",
    )
    shutil.rmtree(tmp_path / "assets")
    lake.write_table(bad, tmp_path / "assets")
    code, _, stderr = run("evaluate", "--conf", str(conf), "--use-case", "recommendation")
    assert code == 2
    assert "assets" in stderr and "created_at" in stderr


def test_bad_as_of_exits_2(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path)
    code, _, stderr = run(
        "evaluate", "--conf", str(conf), "--use-case", "recommendation", "--as-of", "yesterday"
    )
    assert code == 2
    assert "--as-of" in stderr


def test_missing_conf_file_exits_2(tmp_path: Path) -> None:
    code, _, stderr = run("evaluate", "--conf", str(tmp_path / "none.yaml"), "--use-case", "x")
    assert code == 2
    assert "none.yaml" in stderr


def test_inventory_reads_only_the_log(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path)
    code, stdout, _ = run("inventory", "--conf", str(conf), "--json")
    assert code == 0
    tables = json.loads(stdout)["tables"]
    assert tables["assets"]["rows"] == 3
    assert tables["track_embeddings"]["version"] == 0


def test_init_demo_json_then_inventory_agree(spark: SparkSession, tmp_path: Path) -> None:
    lake_dir = tmp_path / "demo"
    code, stdout, _ = run("init-demo", "--lake", str(lake_dir), "--assets", "40", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert Path(summary["conf_path"]) == lake_dir / "consentgate.yaml"
    assert summary["rows"]["assets"] == 40
    code, stdout, _ = run("inventory", "--conf", summary["conf_path"], "--json")
    assert code == 0
    tables = json.loads(stdout)["tables"]
    assert {name: t["rows"] for name, t in tables.items()} == summary["rows"]
    # A second init into the same directory is refused: the lake is never overwritten.
    code, _, stderr = run("init-demo", "--lake", str(lake_dir), "--assets", "40")
    assert code == 2
    assert "not empty" in stderr
