"""The purge machinery on real Spark + Delta tables, with a plain "rows to remove" decider.

The consent/lineage decider is exercised end to end in ``test_erasure.py``'s demo-lake test;
here the decider is a fixed rule so that the expected result is obvious and independent.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import audit, lake, purge
from consentgate.config import Config, parse_config
from consentgate.errors import ConsentgateError
from consentgate.redact import redact_partitions

UTC = dt.UTC
AS_OF = dt.datetime(2026, 6, 1, tzinfo=UTC)
REVOKED = ("asset-1",)


def make_config(root: Path, *, window_hours: int = 0, partitioned: bool = False) -> Config:
    root.mkdir(parents=True, exist_ok=True)
    return parse_config(
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
            "erasure": {"window_hours": window_hours},
        },
        base_dir=root,
        check_paths=False,
    )


def rows(spark: SparkSession, ids: range, *, files: int) -> DataFrame:
    """Rows with awkward values (NaN, -0.0, nulls, binaries, nested) to check bit equality."""
    return (
        spark.range(ids.start, ids.stop)
        .select(
            F.col("id").cast("string").alias("id"),
            F.concat(F.lit("asset-"), (F.col("id") % 5).cast("string")).alias("asset_id"),
            F.when(F.col("id") % 3 == 0, F.lit(float("nan")))
            .when(F.col("id") % 3 == 1, F.lit(-0.0))
            .otherwise(F.col("id") / 7)
            .alias("score"),
            F.array(F.col("id").cast("float"), F.lit(None).cast("float")).alias("vec"),
            F.when(F.col("id") % 4 == 0, F.lit(None))
            .otherwise(F.unhex(F.lit("00ff")))
            .alias("blob"),
            (F.lit(AS_OF) - F.expr("make_interval(0, 0, 0, 0, 0, 0, id)")).alias("derived_at"),
            (F.col("id") % 2).cast("string").alias("bucket"),
        )
        .repartition(files, "id")
    )


def decide(frame: DataFrame) -> DataFrame:
    """Remove rows of revoked assets, and id 7 for retention (a second reason)."""
    revoked = F.col("asset_id").isin(*REVOKED)
    return frame.where(revoked | (F.col("id") == "7")).select(
        "id",
        F.when(revoked, F.lit("revoked")).otherwise(F.lit("retention_expired")).alias("reason"),
    )


def expected_after(frame: DataFrame) -> DataFrame:
    return frame.where(~F.col("asset_id").isin(*REVOKED) & (F.col("id") != "7"))


def build(spark: SparkSession, config: Config, *, partition_by: tuple[str, ...] = ()) -> Path:
    path = config.dataset_path("emb")
    lake.write_table(rows(spark, range(40), files=4), path, partition_by=partition_by)
    return path


def purge_emb(spark: SparkSession, config: Config, **kwargs: Any) -> dict[str, Any]:
    return purge.purge_dataset(
        spark, config, "emb", as_of=AS_OF, run_id="purge-test", decide=decide, **kwargs
    )


@pytest.mark.parametrize("partition_by", [(), ("bucket",)])
def test_purge_removes_exactly_and_keeps_rest_bit_for_bit(
    spark: SparkSession, tmp_path: Path, partition_by: tuple[str, ...]
) -> None:
    config = make_config(tmp_path / "lake")
    path = build(spark, config, partition_by=partition_by)
    before = lake.read_table(spark, path)
    before_files = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    holding = {
        r["_file"]
        for r in lake.read_table(spark, path, with_file=True)
        .where(F.col("asset_id").isin(*REVOKED) | (F.col("id") == "7"))
        .select("_file")
        .distinct()
        .collect()
    }
    expected = expected_after(before).localCheckpoint()

    result = purge_emb(spark, config)

    assert result["rows_before"] == 40
    assert result["rows_deleted"] == 9  # 8 rows of asset-1, plus id 7
    assert result["reasons"] == {"retention_expired": 1, "revoked": 8}
    assert result["rows_after"] == 31
    assert result["version_before"] == 0 and result["version_after"] == 1
    assert result["files_rewritten"] == len(holding)
    after = lake.read_table(spark, path)
    # Bit-for-bit: NaN, -0.0, binaries and nested nulls compare exactly (chispa compares rows).
    assert_df_equality(after, expected, ignore_row_order=True, allow_nan_equality=True)
    neg_zero = after.where(F.col("score") == 0.0).select(F.expr("cast(score as string)"))
    assert {r[0] for r in neg_zero.collect()} <= {"-0.0"}
    after_files = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    assert before_files - after_files == holding  # only files holding removed rows were touched
    commit = lake.history(path)[0]
    assert commit["consentgate.run"] == "purge-test"
    assert commit["consentgate.reasons"] == {"retention_expired": 1, "revoked": 8}
    # MERGE against the key digests: the log records the join condition, never a key.
    assert "asset-1" not in json.dumps(commit["operationParameters"])
    assert "asset-1" not in json.dumps(commit)
    events = audit.events(spark, config, kind="purge")
    assert events[-1]["payload"]["rows_deleted"] == 9
    assert events[-1]["payload"]["dataset"] == "emb"


def test_second_purge_commits_nothing(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    purge_emb(spark, config)
    version = lake.table_version(path)
    entries = audit.verify_chain(spark, config)["entries"]
    again = purge_emb(spark, config)
    assert again["rows_deleted"] == 0
    assert again["files_rewritten"] == 0
    assert again["commits"] == []
    assert lake.table_version(path) == version
    assert audit.verify_chain(spark, config)["entries"] == entries


def test_dry_run_writes_nothing(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    on_disk = sorted(p for p in path.rglob("*") if p.is_file())
    result = purge_emb(spark, config, dry_run=True)
    assert result["dry_run"] is True
    assert result["rows_deleted"] == 9
    assert result["plan"]["reasons"] == {"retention_expired": 1, "revoked": 8}
    assert result["plan"]["files_affected"] == result["files_rewritten"] > 0
    assert sorted(p for p in path.rglob("*") if p.is_file()) == on_disk
    assert lake.table_version(path) == 0
    assert not audit.audit_path(config).exists()


def test_a_plan_shows_no_partition_value(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #23 item 5: a table partitioned by its asset id would print one raw id per file
    into a dry run's plan (CLI JSON, Airflow XComs); the plan digests partition values."""
    config = make_config(tmp_path / "lake")
    path = build(spark, config, partition_by=("asset_id",))
    result = purge_emb(spark, config, dry_run=True)
    files = result["plan"]["files"]
    assert files and all(re.match(r"asset_id=sha256:[0-9a-f]{12}/part-", f) for f in files)
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")}
    assert set(files) <= {redact_partitions(p) for p in on_disk}
    assert "asset-" not in json.dumps(result)


def test_null_keys_are_removed_when_decided(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake")
    path = config.dataset_path("emb")
    frame = spark.createDataFrame(
        [(None, "asset-0"), ("1", "asset-0"), (None, "asset-2")], "id string, asset_id string"
    )
    lake.write_table(frame.coalesce(1), path)

    def no_lineage(rows_: DataFrame) -> DataFrame:
        return rows_.where(F.col("id").isNull()).select("id", F.lit("no_lineage").alias("reason"))

    result = purge.purge_dataset(spark, config, "emb", as_of=AS_OF, run_id="r", decide=no_lineage)
    assert result["rows_deleted"] == 2
    assert [r.id for r in lake.read_table(spark, path).collect()] == ["1"]


def test_unknown_dataset_is_named(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake")
    build(spark, config)
    # The contract's bad-input error (exit 2), not any exception: a bare KeyError('nope')
    # would be a traceback with the wrong exit code (issue #26 item 5).
    with pytest.raises(ConsentgateError, match="dataset 'nope': not configured") as raised:
        purge.purge_dataset(spark, config, "nope", as_of=AS_OF, decide=decide)
    assert raised.value.exit_code == 2


def test_run_purge_reports_every_dataset(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake", window_hours=0)
    build(spark, config)
    result = purge.run_purge(spark, config, as_of=AS_OF, deciders={"emb": decide})
    emb = result["datasets"]["emb"]
    for field in ("rows_before", "rows_deleted", "rows_after", "version_before", "version_after"):
        assert field in emb
    assert emb["reasons"] == {"retention_expired": 1, "revoked": 8}
    assert result["erasure"]["ok"] is True
    assert result["erasure"]["datasets"]["emb"]["result"] == "verified"
    assert result["erasure"]["datasets"]["emb"]["keys_checked"] == 9
    kinds = [e["kind"] for e in audit.events(spark, config)]
    assert kinds == ["purge", "erasure", "purge"]
    assert audit.verify_chain(spark, config)["ok"]


# --------------------------------------------------------------------------------------------
# The run's own decisions (consent + lineage decided once), on a lake with consent tables


def _small_lake(conf_path: Path) -> Config:
    """``tests/lakes.py``'s lake (the ``small_lake`` fixture's copy): e1 (a1 granted), e2 (a2
    revoked), e3 (a3: not the owner's record, so no consent record)."""
    from consentgate.config import load_config

    return load_config(conf_path)


def _late_revocation_of_a1(spark: SparkSession, config: Config) -> None:
    """A record revoking a1, captured before ``AS_OF`` but landing after the run decided: it
    belongs to the next run, so it proves the run does not evaluate consent again."""
    from tests.lakes import RECORDS_DDL, T0

    late = [
        (
            "r9",
            "u1",
            "a1",
            "recommendation",
            "revoked",
            "2026-03",
            None,
            T0 + dt.timedelta(days=2),
            None,
        )
    ]
    lake.write_table(
        spark.createDataFrame(late, RECORDS_DDL),
        config.table_path("consent_records"),
        mode="append",
    )


def _keys(spark: SparkSession, path: Path) -> set[str]:
    return {r["embedding_id"] for r in lake.read_table(spark, path).collect()}


def test_run_decisions_relocate_appended_rows_without_deciding_consent_again(
    spark: SparkSession, tmp_path: Path, small_lake: Path
) -> None:
    from tests.lakes import T0

    config = _small_lake(small_lake)
    path = config.dataset_path("track_embeddings")
    run = purge.decide_run(spark, config, as_of=AS_OF)
    try:
        decided = run.tables["track_embeddings"]
        assert decided.plan.reasons == {"no_consent_record": 1, "revoked": 1}
        assert decided.plan.version == 0
        # Another writer appends rows (one of a revoked asset) after the run decided.
        appended = spark.createDataFrame(
            [("e4", "a2", T0), ("e5", "a1", T0)],
            "embedding_id string, asset_id string, derived_at timestamp",
        )
        lake.write_table(appended, path, mode="append")
        _late_revocation_of_a1(spark, config)

        result = purge.purge_dataset(
            spark, config, "track_embeddings", as_of=AS_OF, run_id="purge-run", run=run
        )
    finally:
        run.release()
    # e4 was decided with the run's consent (a2 revoked); e1/e5 keep the run's grant of a1.
    assert _keys(spark, path) == {"e1", "e5"}
    assert result["rows_deleted"] == 3
    assert result["reasons"] == {"no_consent_record": 1, "revoked": 2}
    assert result["version_before"] == 1 and len(result["commits"]) == 1
    commit = lake.history(path)[0]
    # No raw id as a value anywhere in the commit (ids this short occur inside hex digests).
    assert not any(f'"{raw}"' in json.dumps(commit) for raw in ("a1", "a2", "e2", "e4"))


def test_materialised_plan_is_what_a_task_in_another_process_purges_with(
    spark: SparkSession, tmp_path: Path, small_lake: Path
) -> None:
    from tests.test_purge_concurrency import in_thread

    config = _small_lake(small_lake)
    path = config.dataset_path("track_embeddings")
    on_disk = sorted(p for p in path.rglob("*") if p.is_file())

    plan = purge.plan_purge(spark, config, as_of=AS_OF, run_id="purge-airflow")

    assert plan.datasets["track_embeddings"].reasons == {"no_consent_record": 1, "revoked": 1}
    assert sorted(p for p in path.rglob("*") if p.is_file()) == on_disk  # planning wrote no data
    root = purge.run_dir(config, "purge-airflow")
    assert (root / "plan.json").is_file()
    # Work tables hold digests only: no raw asset id or key is at rest under purge_runs/.
    for table in ("consent", "located"):
        for row in lake.read_table(spark, root / table).collect():
            digest = row["asset_id"] if table == "consent" else row["key_sha256"]
            assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")

    # Meanwhile: a compaction rewrites every file (so every row is re-located through the
    # hashed consent of the plan) and a late record arrives (which the plan must not see).
    def compact() -> None:
        before = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
        lake.run_sql(spark, "OPTIMIZE {table}", path, commit_metadata={})
        after = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
        assert not before & after  # every file was rewritten

    in_thread(compact)
    _late_revocation_of_a1(spark, config)

    result = purge.purge_dataset(
        spark, config, "track_embeddings", as_of=AS_OF, run_id="purge-airflow"
    )
    assert _keys(spark, path) == {"e1"}
    assert result["rows_deleted"] == 2 and result["reasons"] == {
        "no_consent_record": 1,
        "revoked": 1,
    }
    # Another as_of is another run: its plan is not reused.
    assert purge.load_run(spark, config, "purge-airflow", as_of=AS_OF + dt.timedelta(1)) is None
    purge.discard_run(config, "purge-airflow")
    assert not root.exists()


def test_every_table_loads_its_own_decision_from_the_runs_one_work_table(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A run's located rows are materialised as one work table (one write, one commit naming
    the run only); each table's loaded decision is exactly what ``decide_run`` decided for it
    in process (same located rows, plan and decided files), and loading one table never
    returns another table's rows (a snapshot shares its dataset's keys, not its files)."""
    from consentgate.config import load_config
    from consentgate.gate import run_gate

    config = load_config(_lake_with_moderation(spark, tmp_path / "lake"))
    for use_case, model in (("recommendation", "m1"), ("moderation", "m2")):
        run_gate(spark, config, use_case=use_case, model_version=model, as_of=AS_OF)
    _late_revocation_of_a1(spark, config)  # e1 now goes, from the dataset and its snapshot

    run = purge.decide_run(spark, config, as_of=AS_OF)
    try:
        decided = {
            name: (d.plan, d.covered, sorted(tuple(r) for r in d.located.collect()))
            for name, d in run.tables.items()
        }
        purge.materialise(spark, config, run, "purge-shared")
    finally:
        run.release()

    assert sorted(decided) == [
        "mod_embeddings",
        "snapshot/m1/track_embeddings",
        "snapshot/m2/mod_embeddings",
        "track_embeddings",
    ]
    assert not decided["snapshot/m2/mod_embeddings"][2]  # a table with nothing to remove
    assert len([name for name, (_, _, rows) in decided.items() if rows]) == 3
    root = purge.run_dir(config, "purge-shared")
    assert sorted(p.name for p in root.iterdir()) == ["consent", "located", "plan.json"]
    (commit,) = lake.history(root / "located")  # every table's rows in one write
    assert commit["consentgate.run"] == "purge-shared" and "consentgate.dataset" not in commit
    state = json.loads((root / "plan.json").read_text())
    ids = {name: entry["table_id"] for name, entry in state["tables"].items()}
    assert sorted(ids) == sorted(decided) and len(set(ids.values())) == len(ids)
    stored = lake.read_table(spark, root / "located").collect()
    assert {r["table_id"] for r in stored} == {
        ids[n] for n, (_, _, rows) in decided.items() if rows
    }
    assert len(stored) == sum(len(rows) for _, _, rows in decided.values())

    for name, (plan, covered, rows) in decided.items():
        loaded = purge.load_decision(spark, config, "purge-shared", name, as_of=AS_OF)
        assert set(loaded.tables) == {name} and not loaded.failed
        one = loaded.tables[name]
        assert sorted(tuple(r) for r in one.located.collect()) == rows, name
        assert one.plan == plan and one.covered == covered, name
        assert sorted(one.located.columns) == sorted(purge.LOCATED_COLUMNS)
    # The snapshot of track_embeddings removes e1 too (same key digest), from its own files.
    key = {r[0] for r in decided["track_embeddings"][2]} & {
        r[0] for r in decided["snapshot/m1/track_embeddings"][2]
    }
    assert len(key) == 1
    whole = purge.load_run(spark, config, "purge-shared", as_of=AS_OF)
    assert whole is not None and sorted(whole.tables) == sorted(decided)
    # A plan in another format (one work table per table, before) is never guessed at.
    del state["format"]
    (root / "plan.json").write_text(json.dumps(state))
    with pytest.raises(
        purge.DecisionMissing,
        match=r"^dataset mod_embeddings: purge run purge-shared: .* another format",
    ):
        purge.load_decision(spark, config, "purge-shared", "mod_embeddings", as_of=AS_OF)
    purge.discard_run(config, "purge-shared")
    assert not root.exists()


# --------------------------------------------------------------------------------------------
# Issue #12: one bad table never stops the others


def _lake_with_moderation(spark: SparkSession, root: Path) -> Path:
    """``tests/lakes.py``'s lake plus a second use case, ``moderation`` (a1 and a3 granted),
    and its dataset ``mod_embeddings`` (k1 -> a1, k2 -> a2, k3 -> a3). Returns the conf."""
    import yaml

    from tests.lakes import T0, write_small_lake

    def record(rid: str, user: str, asset: str, use_case: str, status: str) -> tuple[Any, ...]:
        return (rid, user, asset, use_case, status, "2026-03", None, T0, None)

    records = [
        record("r1", "u1", "a1", "recommendation", "granted"),
        record("r2", "u2", "a2", "recommendation", "granted"),
        (
            "r3",
            "u2",
            "a2",
            "recommendation",
            "revoked",
            "2026-03",
            None,
            T0 + dt.timedelta(1),
            None,
        ),
        record("r4", "u9", "a3", "recommendation", "granted"),
        record("r5", "u1", "a1", "moderation", "granted"),
        record("r6", "u3", "a3", "moderation", "granted"),
    ]
    conf_path = write_small_lake(spark, root, records=records)
    lake.write_table(
        spark.createDataFrame(
            [("k1", "a1", T0), ("k2", "a2", T0), ("k3", "a3", T0)],
            "embedding_id string, asset_id string, derived_at timestamp",
        ),
        root / "derived" / "mod_embeddings",
    )
    conf = yaml.safe_load(conf_path.read_text())
    conf["use_cases"]["moderation"] = {"accepted_policy_versions": ["2026-03"]}
    conf["datasets"]["mod_embeddings"] = {
        "path": "derived/mod_embeddings",
        "use_case": "moderation",
        "key": "embedding_id",
        "asset_column": "asset_id",
    }
    conf_path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return conf_path


def test_snapshot_of_a_use_case_no_longer_configured_is_purged_entirely(
    spark: SparkSession, tmp_path: Path
) -> None:
    import yaml

    from consentgate.config import load_config
    from consentgate.gate import run_gate

    conf_path = _lake_with_moderation(spark, tmp_path / "lake")
    config = load_config(conf_path)
    published = run_gate(spark, config, use_case="moderation", model_version="m1", as_of=AS_OF)
    snapshot = "snapshot/m1/mod_embeddings"
    snap_path = Path(published["snapshots"][snapshot])
    assert _keys(spark, snap_path) == {"k1", "k3"}
    # The operator drops the use case (and its dataset) from the config; the snapshot stays
    # registered, and nothing grants its use case any more.
    conf = yaml.safe_load(conf_path.read_text())
    del conf["use_cases"]["moderation"]
    del conf["datasets"]["mod_embeddings"]
    conf_path.write_text(yaml.safe_dump(conf, sort_keys=False))
    config = load_config(conf_path)
    assert snapshot in purge.targets(config)

    # One table on its own (an Airflow mapped task): no KeyError, every row goes.
    alone = purge.purge_dataset(spark, config, snapshot, as_of=AS_OF, dry_run=True)
    assert alone["reasons"] == {purge.USE_CASE_NOT_CONFIGURED: 2}

    result = purge.run_purge(spark, config, as_of=AS_OF)

    assert result["ok"] is True and result["failed"] == {}
    assert _keys(spark, snap_path) == set()
    snap = result["datasets"][snapshot]
    assert snap["rows_deleted"] == 2 and snap["rows_after"] == 0
    assert snap["reasons"] == {purge.USE_CASE_NOT_CONFIGURED: 2}
    # the other tables are purged as usual
    assert _keys(spark, config.dataset_path("track_embeddings")) == {"e1"}
    assert result["datasets"]["track_embeddings"]["reasons"] == {
        "no_consent_record": 1,
        "revoked": 1,
    }
    assert result["erasure"]["ok"] is True
    assert result["erasure"]["datasets"][snapshot]["result"] == "verified"
    assert result["erasure"]["datasets"][snapshot]["keys_checked"] == 2
    commit = next(
        h for h in lake.history(snap_path) if h.get("consentgate.operation") == purge.OPERATION
    )
    assert commit["consentgate.reasons"] == {purge.USE_CASE_NOT_CONFIGURED: 2}
    assert json.loads(commit["consentgate.policy"])["configured"] is False
    assert not any(f'"{raw}"' in json.dumps(commit) for raw in ("a1", "a3", "k1", "k3"))
    entry = audit.events(spark, config, kind="purge")[-1]
    assert entry["payload"]["datasets"][snapshot]["reasons"] == {purge.USE_CASE_NOT_CONFIGURED: 2}
    assert "failed" not in entry["payload"]


@pytest.mark.parametrize("damage", ["corrupt_data_file", "missing_table"])
def test_one_bad_table_is_named_and_every_other_one_is_purged_and_erased(
    spark: SparkSession, tmp_path: Path, damage: str
) -> None:
    import shutil

    from consentgate.config import load_config

    root = tmp_path / "lake"
    config = load_config(_lake_with_moderation(spark, root))
    broken = config.dataset_path("mod_embeddings")
    good = config.dataset_path("track_embeddings")
    if damage == "corrupt_data_file":
        # a truncated file in the log: its footer is garbage, as after a torn copy
        data = lake.active_files(lake.open_table(broken)).column("path").to_pylist()[0]
        (broken / data).write_bytes(b"PAR1" + b"\x00garbage" * 16)
    else:
        shutil.rmtree(broken)
    version = lake.table_version(broken) if damage == "corrupt_data_file" else None

    with pytest.raises(purge.PurgeFailed) as raised:
        purge.run_purge(spark, config, as_of=AS_OF)

    assert raised.value.exit_code == 1
    assert "mod_embeddings" in str(raised.value)
    result = raised.value.result
    assert result["ok"] is False
    assert list(result["failed"]) == ["mod_embeddings"]
    message = result["failed"]["mod_embeddings"]
    assert message.startswith("dataset mod_embeddings")
    if damage == "corrupt_data_file":
        assert "reading data file part-" in message
        assert str(root) not in message and "file:" not in message  # a file name, no path
        assert lake.table_version(broken) == version  # nothing committed to the bad table
    # every other table was purged and erased
    assert _keys(spark, good) == {"e1"}
    assert result["datasets"]["track_embeddings"]["rows_deleted"] == 2
    assert "mod_embeddings" not in result["datasets"]
    assert set(result["erasure"]["datasets"]) == {"track_embeddings"}
    assert result["erasure"]["datasets"]["track_embeddings"]["result"] == "verified"
    # the run is audited, naming the failed table
    entry = audit.events(spark, config, kind="purge")[-1]
    # the audit refuses UUID-shaped values (possible raw ids): a data file's name is redacted
    assert entry["payload"]["failed"] == {"mod_embeddings": purge.redact_uuids(message)}
    assert set(entry["payload"]["datasets"]) == {"track_embeddings"}
    assert audit.verify_chain(spark, config)["ok"]


def test_dag_purge_tasks_load_the_runs_decision_and_never_decide_again(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #21 item 2, the nightly DAG's steps without Airflow: ``decide_purge`` decides
    every table once and materialises the decisions (removing a killed run's leftovers); each
    ``purge_dataset`` only loads its table's: a table decide could not decide fails with
    decide's message, a retry loads the same decision, and with no decision the task fails
    naming the table and the run instead of deciding on its own."""
    import shutil

    from consentgate import airflow_tasks
    from consentgate.config import load_config
    from consentgate.runtime import iso

    config = load_config(_lake_with_moderation(spark, tmp_path / "lake"))
    shutil.rmtree(config.dataset_path("mod_embeddings"))  # gone after the config was checked
    killed = purge.run_dir(config, "purge-killed")  # a run killed before its audit_summary
    (killed / "located").mkdir(parents=True)
    as_of = iso(AS_OF)

    decided = airflow_tasks.step_decide_purge(spark, config, as_of=as_of, run_id="purge-dag")

    assert decided["targets"] == ["track_embeddings", "mod_embeddings"]  # the failed one too
    tables = decided["plan"]["tables"]
    assert tables["mod_embeddings"]["error"].startswith("dataset mod_embeddings: ")
    assert tables["track_embeddings"]["rows_deleted"] == 2
    assert not killed.exists() and (purge.run_dir(config, "purge-dag") / "plan.json").is_file()

    def no_second_decision(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a purge task decided again: {kwargs.get('names')}")

    monkeypatch.setattr(purge, "decide_run", no_second_decision)

    def task(name: str) -> dict[str, Any]:
        return airflow_tasks.step_purge_dataset(
            spark, config, name=name, as_of=as_of, run_id="purge-dag"
        )

    good = config.dataset_path("track_embeddings")
    first = task("track_embeddings")
    assert first["rows_deleted"] == 2 and _keys(spark, good) == {"e1"}
    retried = task("track_embeddings")  # the same decision: nothing more to remove
    assert retried["rows_deleted"] == 0 and retried["commits"] == []
    with pytest.raises(purge.DecideFailed) as failed:
        task("mod_embeddings")
    assert str(failed.value) == tables["mod_embeddings"]["error"]
    purge.discard_run(config, "purge-dag")
    with pytest.raises(
        purge.DecisionMissing, match=r"^dataset track_embeddings: purge run purge-dag has no"
    ):
        task("track_embeddings")


def test_table_failure_names_the_table_and_file_never_the_path() -> None:
    from consentgate.errors import TableError

    spark_error = RuntimeError(
        "An error occurred while calling o12.collectToPython.\n: org.apache.spark."
        "SparkException: [FAILED_READ_FILE.NO_HINT] Encountered error while reading file "
        "file:///lake/derived/t/asset_id=secret-asset/part-00001-0a1b.c000.snappy.parquet. "
        "SQLSTATE: KD001"
    )
    failure = purge.table_failure("snapshot/m1/t", spark_error, doing="deciding")
    assert isinstance(failure, purge.TableFailure)
    assert str(failure) == (
        "dataset snapshot/m1/t: deciding failed reading data file "
        "part-00001-0a1b.c000.snappy.parquet (FAILED_READ_FILE.NO_HINT; details in the Spark log)"
    )
    ours = purge.table_failure("t", TableError("/lake/t: not a Delta table"), doing="opening")
    assert (
        isinstance(ours, TableError)
        and str(ours) == "dataset t: opening: /lake/t: not a Delta table"
    )
    named = TableError("dataset t: key column 'k' is not in table /lake/t")
    assert purge.table_failure("t", named, doing="opening") is named
    assert (
        purge.redact_uuids("file part-00001-1b4e28ba-2fa1-11d2-883f-0016d3cca427.c000.parquet")
        == "file part-00001-<uuid>.c000.parquet"
    )
