"""The command line's contract: --json, exit statuses, and messages that name the culprit."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pyspark.sql import SparkSession

from consentgate import lake
from consentgate.cli import main, render_human
from tests.lakes import T0, copy_small_lake, write_small_lake


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_evaluate_json_summary_and_table(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
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


def test_as_of_before_revocation_grants(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
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


def test_human_output_shows_reasons(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
    code, stdout, _ = run("evaluate", "--conf", str(conf), "--use-case", "recommendation")
    assert code == 0
    assert "no_consent_record" in stdout and "revoked" in stdout


def test_unknown_config_key_exits_2_naming_it(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path, conf={"bogus_key": 1})
    code, stdout, stderr = run("evaluate", "--conf", str(conf), "--use-case", "x", "--json")
    assert code == 2
    assert "bogus_key: unknown key" in json.loads(stdout)["error"]
    assert "bogus_key" in stderr


def test_missing_dataset_path_exits_2(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf_path = copy_small_lake(pristine_small_lake, tmp_path)
    conf = yaml.safe_load(conf_path.read_text())
    conf["datasets"]["track_embeddings"]["path"] = "derived/nope"
    conf_path.write_text(yaml.safe_dump(conf))
    code, _, stderr = run("evaluate", "--conf", str(conf_path), "--use-case", "recommendation")
    assert code == 2
    assert "datasets.track_embeddings.path" in stderr


def test_unknown_use_case_exits_2(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
    code, _, stderr = run("evaluate", "--conf", str(conf), "--use-case", "generative_training")
    assert code == 2
    assert "generative_training" in stderr


def test_mistyped_column_exits_2_naming_table_and_column(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
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


def test_bad_as_of_exits_2(spark: SparkSession, tmp_path: Path, pristine_small_lake: Path) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
    code, _, stderr = run(
        "evaluate", "--conf", str(conf), "--use-case", "recommendation", "--as-of", "yesterday"
    )
    assert code == 2
    assert "--as-of" in stderr


def test_missing_conf_file_exits_2(tmp_path: Path) -> None:
    code, _, stderr = run("evaluate", "--conf", str(tmp_path / "none.yaml"), "--use-case", "x")
    assert code == 2
    assert "none.yaml" in stderr


def test_inventory_reads_only_the_log(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path)
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


# --------------------------------------------------------------------------------------------
# Bad arguments fail before any JVM starts (issue #15, item 4). The command runs in a child
# process where Java cannot start at all (no java on PATH, JAVA_HOME pointing nowhere): a check
# that ran only after asking for Spark would die there with PySpark's gateway error instead of
# exiting 2 with a message naming the argument. The control test proves the environment does
# stop Spark.

CONF = {
    "lake_root": ".",
    "use_cases": {"recommendation": {"accepted_policy_versions": ["2026-03"]}},
    "datasets": {
        "track_embeddings": {
            "path": "derived/track_embeddings",
            "use_case": "recommendation",
            "key": "embedding_id",
            "asset_column": "asset_id",
        }
    },
}


def _bare_lake(root: Path, **conf: Any) -> Path:
    """A lake whose configured paths exist (empty directories, no Spark needed)."""
    for table in ("consent_records", "assets", "lineage", "derived/track_embeddings"):
        (root / table).mkdir(parents=True)
    path = root / "consentgate.yaml"
    path.write_text(yaml.safe_dump({**CONF, **conf}))
    return path


def run_without_java(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    empty_bin = tmp_path / "empty-bin"
    jars = tmp_path / "jars"
    empty_bin.mkdir(exist_ok=True)
    jars.mkdir(exist_ok=True)
    # A stand-in jar, so that consentgate's own jar check passes and Spark really is launched.
    (jars / "delta-spark_2.13-0.0.0.jar").touch()
    # No java at all, so no JVM can start: pyspark's own SPARK_HOME (not the fast tier's
    # guard, tests/conftest.py) so that spark-submit really runs and finds no java.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYSPARK_GATEWAY") and k != "SPARK_HOME"
    }
    env.update(PATH=str(empty_bin), JAVA_HOME=str(tmp_path / "no-java"), CONSENTGATE_JARS=str(jars))
    return subprocess.run(
        [sys.executable, "-c", "from consentgate.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_control_spark_cannot_start_without_java(tmp_path: Path) -> None:
    conf = _bare_lake(tmp_path)
    done = run_without_java(tmp_path, "audit", "verify", "--conf", str(conf))
    assert done.returncode not in (0, 2)
    assert "JAVA_GATEWAY_EXITED" in done.stderr


def test_unknown_use_case_on_gate_fails_before_spark_starts(tmp_path: Path) -> None:
    conf = _bare_lake(tmp_path)
    done = run_without_java(
        tmp_path,
        "gate",
        "--conf",
        str(conf),
        "--use-case",
        "generative_training",
        "--model-version",
        "m1",
        "--json",
    )
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error == "--use-case: 'generative_training' is not configured (known: recommendation)"
    assert "generative_training" in done.stderr
    assert "JAVA" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["gate", "--use-case", "recomendation", "--model-version", "m1"],
            "--use-case: 'recomendation' is not configured (known: recommendation); "
            "did you mean 'recommendation'?",
        ),
        (
            ["gate", "--use-case", "recommendation", "--model-version", "../m1"],
            "--model-version: '../m1' must match",
        ),
        (
            ["gate", "--use-case", "recommendation", "--model-version", "m1", "--datasets", "x"],
            "--datasets: 'x' is not a configured dataset",
        ),
        (
            ["gate", "--use-case", "recommendation", "--model-version", "m1", "--as-of", "soon"],
            "--as-of: 'soon' is not an ISO-8601 instant",
        ),
        (["evaluate", "--use-case", "nope"], "--use-case: 'nope' is not configured"),
        (["evaluate", "--use-case", "recommendation", "--out", "."], "--out: . already exists"),
        (["purge", "--as-of", "yesterday"], "--as-of: 'yesterday' is not an ISO-8601 instant"),
        (["backfill", "--as-of", "yesterday"], "--as-of: 'yesterday' is not an ISO-8601"),
        (["impact", "--as-of", "yesterday"], "--as-of: 'yesterday' is not an ISO-8601"),
        (["explain-model", "a/b"], "MODEL_VERSION: 'a/b' must match"),
        (["explain-model", "m9"], "MODEL_VERSION: 'm9' is not in the registry"),
        (["prove", "--manifest", "m.json", "--asset", "  "], "--asset: an asset id is required"),
        (["prove", "--manifest", "m.json", "--asset", "a1"], "--manifest: file m.json does not"),
        # issue #12: an id no allowlist can hold (not canonical, DESIGN rule 2) is bad input
        (["prove", "--manifest", "m.json", "--asset", "A1"], "--asset: the asset id is not in"),
        (["prove", "--manifest", "m.json", "--asset", " a1"], "(surrounding whitespace)"),
    ],
)
def test_bad_arguments_fail_before_spark_starts(
    tmp_path: Path, args: list[str], message: str
) -> None:
    conf = _bare_lake(tmp_path / "lake")
    done = run_without_java(tmp_path, *args, "--conf", str(conf), "--json")
    assert done.returncode == 2, done.stderr
    assert message in json.loads(done.stdout)["error"]
    assert "Traceback" not in done.stderr


def test_every_config_problem_is_reported_before_spark_starts(tmp_path: Path) -> None:
    conf = _bare_lake(tmp_path, lake_rooot=".", erasure={"window_hour": 0})
    text = conf.read_text().replace("lake_root: .\n", "")
    conf.write_text(text)
    done = run_without_java(tmp_path, "purge", "--conf", str(conf))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"consentgate: 3 problems in {conf.resolve()}:"
    # One line each, grouped by top-level key in the file's order, a missing key first.
    assert lines[1:] == [
        "  lake_root: required key is missing",
        "  erasure.window_hour: unknown key; did you mean 'window_hours'?",
        "  lake_rooot: unknown key; did you mean 'lake_root'?",
    ]


def test_gate_back_dated_as_of_exits_2_naming_the_later_changes(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    """Issue #12: r3 revokes a2 on 2026-01-02; a gate cut at noon the day before would ignore
    it, so it is refused as bad input (exit 2) and nothing is written."""
    conf = copy_small_lake(pristine_small_lake, tmp_path)
    code, stdout, stderr = run(
        "gate",
        "--conf",
        str(conf),
        "--use-case",
        "recommendation",
        "--model-version",
        "m1",
        "--as-of",
        "2026-01-01T12:00:00Z",
        "--json",
    )
    assert code == 2, (stdout, stderr)
    error = json.loads(stdout)["error"]
    assert "--as-of" in error and "1 later change(s)" in error, error
    assert "--as-of" in stderr
    state = tmp_path / "_consentgate"
    assert not (state / "snapshots").exists() and not (state / "allowlists").exists()


# --------------------------------------------------------------------------------------------
# Human output (issue #15 item 3): plain aligned text, every value whole, --json unchanged

LONG_DIR = "/lake/" + "/".join(["a-rather-long-directory-name"] * 4)


def test_human_output_is_plain_aligned_text_with_whole_values() -> None:
    result = {
        "ok": False,
        "manifest": f"{LONG_DIR}/manifest.json",
        "manifest_sha256": None,
        "problems": [f"manifest {LONG_DIR}/manifest.json: no datasheet recorded"],
        "erased": [],
        "checked": {"files": 12, "snapshots": 2},
        "tables": {
            "assets": {"rows": 2000, "version": 3},
            "consent_records": {"rows": 41, "version": 12},
        },
        "proof": {"kind": "inclusion", "leaf": {"index": 5, "path": ["ab" * 32, "cd" * 32]}},
    }
    assert render_human(result, title="verify").splitlines() == [
        "verify",
        "ok               false",
        f"manifest         {LONG_DIR}/manifest.json",
        "manifest_sha256  -",
        "erased           none",
        "",
        "problems:",
        f"  manifest {LONG_DIR}/manifest.json: no datasheet recorded",
        "",
        "checked:",
        "  files      12",
        "  snapshots  2",
        "",
        "tables:",
        "  name             rows  version",
        "  assets           2000  3",
        "  consent_records  41    12",
        "",
        "proof:",
        "  kind  inclusion",
        "  leaf:",
        "    index  5",
        "    path:",
        "      " + "ab" * 32,
        "      " + "cd" * 32,
    ]


def test_human_verify_output_to_a_pipe_is_whole_and_json_is_unchanged(tmp_path: Path) -> None:
    """Spark-free: ``verify`` of a bogus manifest under a long path, stdout piped."""
    run_dir = tmp_path / "lake" / "_consentgate" / "manifests" / ("gate-" + "x" * 80)
    run_dir.mkdir(parents=True)
    manifest = run_dir / "manifest.json"
    manifest.write_text(json.dumps({"run_id": "r1", "model_version": "m1"}))
    human = run_without_java(tmp_path, "verify", str(manifest))
    as_json = run_without_java(tmp_path, "verify", str(manifest), "--json")
    assert human.returncode == as_json.returncode == 1, human.stderr + as_json.stderr
    report = json.loads(as_json.stdout)
    assert as_json.stdout == json.dumps(report, sort_keys=True, default=str) + "\n"
    lines = human.stdout.splitlines()
    assert lines[0] == "verify"
    assert f"manifest         {manifest}" in lines
    assert len(report["problems"]) >= 2
    for problem in report["problems"]:  # each on one line, path and all
        assert f"  {problem}" in lines
    assert "problems:" in lines  # a list under its key, not JSON in a table cell
    assert not {"…", "│", "┃", "╇"} & set(human.stdout)


def test_error_message_to_a_pipe_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "a-rather-long-directory-name" / ("gate-" + "x" * 80) / "manifest.json"
    done = run_without_java(tmp_path, "verify", str(missing))
    assert done.returncode == 2
    assert done.stderr == f"consentgate: MANIFEST: {missing} does not exist\n"


# --------------------------------------------------------------------------------------------
# prove (issue #12 item 12): exclusion proofs disclose no other creator's data


def test_prove_exclusion_discloses_no_other_creators_data(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A real gate over four granted assets; proofs for an excluded, an unknown and a
    not-UUID-shaped asset name none of the allowlisted assets' ids, record ids, capture times
    or jurisdictions, yet check against the manifest's root alone."""
    granted = [f"creator-asset-{i}" for i in range(1, 5)]
    assets = [(a, f"u-{a}", "FR", T0, None) for a in [*granted, "creator-asset-5"]]
    records: list[tuple[Any, ...]] = [
        (f"rec-{a}", f"u-{a}", a, "recommendation", "granted", "2026-03", f"JUR-{i}", T0, None)
        for i, a in enumerate(granted)
    ]
    records.append(
        (
            "rec-5",
            "u-creator-asset-5",
            "creator-asset-5",
            "recommendation",
            "denied",
            "2026-03",
            None,
            T0,
            None,
        )
    )
    conf = write_small_lake(spark, tmp_path, assets=assets, records=records)
    code, stdout, stderr = run(
        "gate", "--conf", str(conf), "--use-case", "recommendation", "--model-version", "m1",
        "--as-of", "2026-06-01T00:00:00Z", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    manifest = json.loads(stdout)["manifest_path"]
    secrets = [
        *granted,
        *(f"rec-{a}" for a in granted),
        *(f"JUR-{i}" for i in range(len(granted))),
        "FR",
        "2026-01-01T00:00:00",
    ]
    hexed = [s.encode().hex() for s in secrets]
    for probe in ("creator-asset-5", "zz", "not-a-uuid"):
        out = tmp_path / f"proof-{probe}.json"
        code, stdout, stderr = run(
            "prove", "--conf", str(conf), "--manifest", manifest, "--asset", probe,
            "--out", str(out), "--json",
        )  # fmt: skip
        assert code == 0, stderr
        result = json.loads(stdout)
        assert result["included"] is False
        text = stdout + out.read_text()
        leaked = [s for s in secrets if s in text] + [h for h in hexed if h in text]
        assert not leaked, (probe, leaked)
        code, stdout, stderr = run("verify-proof", str(out), "--manifest", manifest, "--json")
        assert code == 0, stderr
        assert json.loads(stdout)["ok"] is True

    # an inclusion proof reveals the asset's own entry, and only its own
    out = tmp_path / "proof-2.json"
    code, stdout, stderr = run(
        "prove", "--conf", str(conf), "--manifest", manifest, "--asset", "creator-asset-2",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    proof = json.loads(out.read_text())
    assert proof["included"] is True
    assert proof["leaf"]["record"]["consent_record_id"] == "rec-creator-asset-2"
    own = {"creator-asset-2", "rec-creator-asset-2", "JUR-1", "2026-01-01T00:00:00"}
    others = [s for s in secrets if s not in own and s in stdout]
    assert not others
    code, stdout, _ = run("verify-proof", str(out), "--manifest", manifest, "--json")
    assert code == 0 and json.loads(stdout)["ok"] is True


def test_prove_refuses_bad_ids_and_pre_scheme_manifests(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    """Issue #12: a non-canonical id exits 2 (nothing printed about the lake), and a manifest
    from before allowlist scheme 2 gets no proof (its tree would disclose neighbours)."""
    from consentgate.manifest import load_manifest, write_manifest

    conf = copy_small_lake(pristine_small_lake, tmp_path)
    code, stdout, stderr = run(
        "gate", "--conf", str(conf), "--use-case", "recommendation", "--model-version", "m1",
        "--as-of", "2026-06-01T00:00:00Z", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    manifest = json.loads(stdout)["manifest_path"]
    for bad in ("A1", "a1 ", "\u00a0a1"):
        code, stdout, _ = run(
            "prove", "--conf", str(conf), "--manifest", manifest, "--asset", bad, "--json"
        )
        assert code == 2
        assert "not in canonical form" in json.loads(stdout)["error"]
    code, stdout, stderr = run(
        "prove", "--conf", str(conf), "--manifest", manifest, "--asset", "a1", "--json"
    )
    assert code == 0 and json.loads(stdout)["included"] is True, stderr

    old = load_manifest(Path(manifest))
    del old["allowlist"]["scheme"]
    del old["manifest_sha256"]
    Path(manifest).unlink()
    write_manifest(Path(manifest), old)
    code, stdout, _ = run(
        "prove", "--conf", str(conf), "--manifest", manifest, "--asset", "a1", "--json"
    )
    assert code == 2
    assert "predates consentgate-allowlist/2" in json.loads(stdout)["error"]


# --------------------------------------------------------------------------------------------
# Logs (issue #15 item 2): our step lines on stderr, none of the JVM's start-up noise or
# progress bars, stdout exactly the JSON. One real run in a child process (its own JVM, started
# the way a user's is, with no test settings).

JVM_NOISE = (
    "NativeCodeLoader",
    "Using Spark's default log4j profile",
    "Setting default log level",
    "could not bind on port",
    "[Stage",
    # delta-spark's "Vacuum with retention threshold other than 0 hours is ignored" (issue #24)
    "VacuumCommand",
    # a Python warning line: "<file>:<line>: FutureWarning: ..." (issue #24)
    "Warning: ",
    # the JVM's start-up line and VACUUM's console line (consentgate.jvm, issue #24)
    "Using incubator modules",
    "files and directories in a total of",
)


@pytest.mark.slow
def test_purge_logs_its_steps_on_stderr_without_jvm_noise(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Also with an erasure window other than 0 hours, for which VACUUM runs: an orphan file
    (a killed writer's) older than the window is planted, and a day's window is shorter than
    Delta's 7-day default, so the orphan goes only if VACUUM applied our window."""
    conf = write_small_lake(
        spark,
        tmp_path,
        conf={
            "spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": "4"}},
            "erasure": {"window_hours": 24},
        },
    )
    table = tmp_path / "derived" / "track_embeddings"
    orphan = table / "part-99999-killed-writer.snappy.parquet"
    shutil.copy(next(table.glob("*.parquet")), orphan)
    two_days_ago = time.time() - 48 * 3600
    os.utime(orphan, (two_days_ago, two_days_ago))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYSPARK_GATEWAY") and k != "CONSENTGATE_SPARK_LOG4J"
    }
    args = ["purge", "--conf", str(conf), "--as-of", "2026-06-01T00:00:00Z", "--json"]
    done = subprocess.run(
        [sys.executable, "-c", "from consentgate.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 1, done.stdout  # nothing but the one JSON object
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert result["datasets"]["track_embeddings"]["rows_deleted"] == 2  # a2 revoked, a3 no record
    steps = [line.split(" step=", 1)[1] for line in done.stderr.splitlines() if " step=" in line]
    assert [s.split()[0] for s in steps] == [
        "decide",
        "rewrite",
        "erase",
        "erase_receipts",  # the run's erasure receipts, in one audit append
        "purge",
    ], steps
    assert steps[1].startswith("rewrite table=track_embeddings rows=2 files="), steps
    assert steps[2].startswith("erase table=track_embeddings files=1 "), steps  # the orphan
    assert not orphan.exists()
    assert steps[3].startswith("erase_receipts receipts=1 "), steps
    assert all(" INFO consentgate." in line for line in done.stderr.splitlines() if "step=" in line)
    for noise in JVM_NOISE:
        assert noise not in done.stderr, done.stderr[-3000:]
    # Counts only: no asset, user or row id reaches the log.
    words = set(done.stderr.replace("=", " ").split())
    assert words.isdisjoint({"a1", "a2", "a3", "e1", "e2", "e3", "u1", "u2", "u9"})

    # The purge changed the lake only by its own commits, so it certified the lake it left
    # (consentgate.quiescence): the next nights decide nothing, and the command never starts
    # Spark: it succeeds on a machine without java, records the night and says since when the
    # lake is unchanged.
    from consentgate import purge
    from consentgate.config import load_config

    second = purge.run_purge(spark, load_config(conf), as_of=dt.datetime(2026, 6, 2, tzinfo=dt.UTC))
    assert second["datasets"]["track_embeddings"]["rows_deleted"] == 0
    assert second["unchanged_since"]
    (tmp_path / "nojava").mkdir()
    quiet = run_without_java(
        tmp_path / "nojava",
        "purge",
        "--conf",
        str(conf),
        "--as-of",
        "2026-06-02T00:00:00Z",
        "--json",
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    night = json.loads(quiet.stdout)
    assert night["ok"] is True and night["unchanged_since"]
    assert night["datasets"]["track_embeddings"]["rows_deleted"] == 0
    quiet_steps = [
        line.split(" step=", 1)[1].split()[0]
        for line in quiet.stderr.splitlines()
        if " step=" in line
    ]
    assert quiet_steps == ["quiescent", "purge"], quiet.stderr[-3000:]
    assert "JAVA_GATEWAY_EXITED" not in quiet.stderr


def test_a_table_too_wide_for_a_terminal_prints_one_block_per_row() -> None:
    """Issue #24 item 6: the erasure receipts (nineteen columns) read on a 100-column terminal;
    a narrow table stays a table."""
    receipt = {f"column_{i:02d}": i for i in range(12)}
    wide = {"erasure": {"datasets": {"stems": receipt, "track_embeddings": {**receipt, "x": 1}}}}
    lines = render_human(wide, title="purge").splitlines()
    assert max(map(len, lines)) <= 100, lines
    at = lines.index("    stems:")
    assert lines[at + 1 : at + 3] == ["      column_00  0", "      column_01  1"]
    assert "    track_embeddings:" in lines and "      x          1" in lines
    narrow = render_human({"t": {"a": {"rows": 1}, "b": {"rows": 2}}}, title="x").splitlines()
    assert narrow[-3:] == ["  name  rows", "  a     1", "  b     2"]
