"""Physical erasure and its proof; and the whole purge on a small demo lake, checked against an
independent (pure-Python) computation of which rows must survive."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from consentgate import audit, erasure, erasure_proof, errors, lake, maintenance, purge, verifier
from consentgate.config import Config, ErasureConfig, load_config
from tests.demo_expectations import (
    DEMO_RULES,
    DEMO_TABLES,
    expected_survivors,
    snapshot_tables,
)
from tests.test_purge import AS_OF, build, decide, make_config


def purge_emb(spark: SparkSession, config: Config) -> dict[str, Any]:
    return purge.purge_dataset(spark, config, "emb", as_of=AS_OF, run_id="p", decide=decide)


def test_window_zero_erases_and_verifies(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake", window_hours=0)
    path = build(spark, config)
    purge_emb(spark, config)
    tombstoned = set(lake.active_files(lake.open_table(path, version=0)).column("path").to_pylist())
    tombstoned -= set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    assert all((path / rel).exists() for rel in tombstoned)

    result = erasure.erase_and_verify(spark, config, run_id="e")
    receipt = result["datasets"]["emb"]
    assert result["ok"] and receipt["result"] == "verified"
    assert receipt["tombstoned_removed"] == len(tombstoned)
    assert receipt["bytes_removed"] > 0
    assert receipt["keys_checked"] == 9
    assert not any((path / rel).exists() for rel in tombstoned)
    assert receipt["files_scanned"] == len(erasure_proof.physical_parquet_files(path))
    logged = audit.events(spark, config, kind="erasure")[-1]["payload"]
    assert logged["result"] == "verified" and logged["keys_checked"] == 9
    # Idempotent: nothing left to vacuum, nothing committed.
    version = lake.table_version(path)
    again = erasure.erase_and_verify(spark, config, run_id="e2")
    assert again["ok"] and again["datasets"]["emb"]["files_removed"] == 0
    assert lake.table_version(path) == version


def test_inside_window_nothing_is_erased(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake", window_hours=168)
    path = build(spark, config)
    purge_emb(spark, config)
    before = erasure_proof.physical_parquet_files(path)
    receipt = erasure.erase_and_verify(spark, config, run_id="e")["datasets"]["emb"]
    assert receipt["files_removed"] == 0
    assert receipt["attempts_pending"] == 1 and receipt["keys_checked"] == 0
    assert receipt["result"] == "verified"
    assert erasure_proof.physical_parquet_files(path) == before


def test_verification_catches_a_surviving_copy(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake", window_hours=0)
    path = build(spark, config)
    original = lake.active_files(lake.open_table(path)).column("path").to_pylist()
    stash = tmp_path / "stash"
    stash.mkdir()
    for i, rel in enumerate(original):
        shutil.copy(path / rel, stash / f"{i}.parquet")
    purge_emb(spark, config)
    erasure.erase_and_verify(spark, config, run_id="e")
    # A copy of old data reappears under the table (a backup restored by hand, say) in a
    # directory vacuum never looks into (names starting with "_" are skipped by Delta's
    # vacuum); it is not in the log, so only reading the disk can find it ...
    (path / "_restored").mkdir()
    for file in stash.iterdir():
        shutil.copy(file, path / "_restored" / file.name)
    receipt = erasure.erase_and_verify(spark, config, run_id="e2")["datasets"]["emb"]
    assert all((path / "_restored" / f.name).exists() for f in stash.iterdir())
    # ... and the verifier names the files (never the keys) and fails.
    assert receipt["result"] == "failed"
    assert receipt["files_with_removed_keys"]
    assert all(f.startswith("_restored/") for f in receipt["files_with_removed_keys"])
    logged = audit.events(spark, config, kind="erasure")[-1]["payload"]
    assert logged["result"] == "failed" and logged["files_with_removed_keys"] >= 1


# --------------------------------------------------------------------------------------------
# End to end on a demo lake


@pytest.mark.slow
def test_demo_lake_revocations_flow_through_every_derivative(
    spark: SparkSession, pristine_lake: Path, tmp_path: Path
) -> None:
    """On a copy of the run's 80-asset demo lake (``tests/airflow_fixtures.pristine_lake``).

    Which rows must survive is computed independently (``tests/demo_expectations.py``): the
    tables, their keys and the snapshots' lineage written out by hand, consent by the
    reference model, sources by a hand-written walk of the lineage edges; never with the
    registry's or the purge's own mapping of tables, keys or lineage.
    """
    from consentgate.demo import DEMO_NOW
    from consentgate.gate import run_gate
    from tests.airflow_fixtures import copy_lake

    root = tmp_path / "lake"
    config = load_config(copy_lake(pristine_lake, root))
    config = config.model_copy(update={"erasure": ErasureConfig(window_hours=0)})
    as_of = DEMO_NOW
    gated = run_gate(spark, config, use_case="generative_training", model_version="m1", as_of=as_of)
    assert gated["snapshots"], gated

    # Revoke a set of granted assets for every use case (records appended by their owners).
    records_path = config.table_path("consent_records")
    assets_df = lake.read_table(spark, config.table_path("assets"))
    # Six assets by id that did not train m1, plus one that did: m1's snapshots lose rows
    # and keep others (so a wrong lineage for snapshot rows, removing them all, shows).
    from consentgate.gate import explain_model

    m1_assets = [a["asset_id"] for a in explain_model(spark, config, model_version="m1")["assets"]]
    assert len(m1_assets) >= 2
    victims = (
        assets_df.where(F.col("deleted_at").isNull() & ~F.col("asset_id").isin(m1_assets))
        .orderBy("asset_id")
        .limit(6)
        .unionByName(assets_df.where(F.col("asset_id").isin(m1_assets[:1])))
        .distinct()
    )
    revoked_at = as_of - dt.timedelta(hours=1)
    revocations = (
        victims.crossJoin(
            spark.createDataFrame([(u,) for u in config.use_cases], "use_case string")
        )
        .select(
            F.expr("uuid()").alias("id"),
            F.col("owner_user_id").alias("user_id"),
            "asset_id",
            "use_case",
            F.lit("revoked").alias("consent_status"),
            F.lit("2026-03").alias("policy_version"),
            F.lit(None).cast("string").alias("jurisdiction"),
            F.lit(revoked_at).cast("timestamp").alias("captured_at"),
            F.lit(None).cast("timestamp").alias("revoked_at"),
        )
        .localCheckpoint()
    )
    existing = lake.read_table(spark, records_path)
    lake.write_table(revocations.select(*existing.columns), records_path, mode="append")
    victim_ids = {r.asset_id for r in victims.collect()}

    # Every table the purge must cover: the five datasets and m1's two snapshots.
    tables = {**DEMO_TABLES, **snapshot_tables("m1", ("gen_shards", "stems"))}
    names = list(tables)
    assert set(purge.targets(config)) == set(names)
    before = {n: lake.read_table(spark, root / t.path).localCheckpoint() for n, t in tables.items()}
    expected = expected_survivors(spark, root, tables, before, rules=DEMO_RULES, as_of=as_of)
    for name in ("snapshot/m1/stems", "snapshot/m1/gen_shards"):
        assert expected[name], name  # rows reached through lineage survive in the snapshot

    result = purge.run_purge(spark, config, as_of=as_of)

    assert result["erasure"]["ok"], result["erasure"]
    assert set(result["datasets"]) == set(names)
    for name, table in tables.items():
        path = root / table.path
        after = lake.read_table(spark, path)
        key = table.key
        # Survivors are exactly the independently computed keys, bit for bit equal to before.
        keep = spark.createDataFrame([(k,) for k in expected[name]], "_k string")
        want = before[name].join(keep, F.col(key).cast("string") == F.col("_k"), "left_semi")
        assert_df_equality(
            after, want, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True
        )
        stats = result["datasets"][name]
        assert stats["rows_after"] == len(expected[name]) == after.count(), name
        assert stats["rows_before"] - stats["rows_deleted"] == stats["rows_after"], name
        if stats["rows_deleted"]:
            commit = next(
                h for h in lake.history(path) if h.get("consentgate.operation") == purge.OPERATION
            )
            assert commit["consentgate.run"] == result["run_id"]
            assert not any(v in str(commit) for v in victim_ids)
        receipt = result["erasure"]["datasets"][name]
        assert receipt["result"] == "verified", (name, receipt)
        assert receipt["keys_checked"] == stats["rows_deleted"] or stats["rows_deleted"] == 0
    # The revoked assets' rows left the 2-hop chain stems -> stem_embeddings -> gen_shards.
    for name in ("stems", "stem_embeddings", "gen_shards"):
        assert result["datasets"][name]["rows_deleted"] > 0, name
    kinds = {e["kind"] for e in audit.events(spark, config)}
    assert {"gate", "purge", "erasure"} <= kinds
    assert audit.verify_chain(spark, config)["ok"]

    # Idempotent: the night changed the lake only by its own commits, so it certified the lake
    # it left (consentgate.quiescence); without the certificate a second purge decides again
    # and commits nothing to any table.
    from consentgate import quiescence

    certificate = quiescence.load(config)
    assert certificate is not None and certificate["run_id"] == result["run_id"]
    quiescence.discard(config)
    versions = {n: lake.table_version(root / t.path) for n, t in tables.items()}
    again = purge.run_purge(spark, config, as_of=as_of)
    assert "unchanged_since" not in again
    for name, table in tables.items():
        assert again["datasets"][name]["rows_deleted"] == 0
        assert lake.table_version(root / table.path) == versions[name]
    certificate = quiescence.load(config)
    assert certificate is not None and set(certificate["tables"]) == set(names)

    # The m1 manifest still verifies: the snapshot files its purge erased are reported as
    # erased (removed by a purge commit in the snapshot's own history), not as tampering.
    from consentgate.manifest import verify_manifest

    verified = verify_manifest(gated["manifest_path"])
    assert verified["ok"], verified["problems"]
    snapshot_deleted = sum(
        result["datasets"][n]["rows_deleted"] for n in names if n.startswith("snapshot/m1/")
    )
    assert snapshot_deleted > 0
    assert verified["erased"], "purged snapshot files must be listed as erased"
    recorded = json.loads(Path(gated["manifest_path"]).read_text())["snapshots"]
    assert {e["dataset"] for e in verified["erased"]} <= set(recorded)


def test_our_own_merge_text_is_not_a_removed_key(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #22 item 4: a bigint-keyed table of ours (no statistics) with row 256 purged.
    The purge's MERGE predicate says ``sha2(..., 256)`` and ``'k:'``: read as text it held the
    removed key, the log was "cleaned" (history deleted) and the check could not pass. Parsed,
    our own commits name no id: the table verifies and keeps its history."""
    config = make_config(tmp_path / "lake", window_hours=0)
    path = config.dataset_path("emb")
    frame = spark.range(250, 262).select(
        F.col("id"), F.concat(F.lit("asset-"), (F.col("id") % 3).cast("string")).alias("asset_id")
    )
    lake.write_table(frame.repartition(2), path)

    def drop_256(rows: Any) -> Any:
        return rows.where(F.col("id") == 256).select("id", F.lit("revoked").alias("reason"))

    done = purge.purge_dataset(spark, config, "emb", as_of=AS_OF, run_id="p", decide=drop_256)
    assert done["rows_deleted"] == 1
    receipt = erasure.erase_and_verify(spark, config, run_id="e")["datasets"]["emb"]
    assert receipt["result"] == "verified", receipt
    assert receipt["keys_checked"] == 1 and receipt["files_removed"] > 0
    assert receipt["log_cleaned"] is False
    assert lake.read_table(spark, path, version=0).count() == 12  # time travel still works
    assert 256 not in {r["id"] for r in lake.read_table(spark, path).collect()}


def test_a_window_beyond_the_tables_log_retention_is_no_proof(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Issue #22 item 1: Delta deletes commits older than ``delta.logRetentionDuration``;
    with a longer erasure window the record of a purge could go before its erasure is due,
    and the check would have nothing to prove. The receipt fails, naming the table."""
    config = make_config(tmp_path / "lake", window_hours=168)
    path = build(spark, config)
    short = {
        "delta.logRetentionDuration": "interval 3 days",
        "delta.deletedFileRetentionDuration": "interval 2 days",  # Delta: not above the log's
    }
    lake.set_properties(spark, path, short, commit_metadata={})
    purge_emb(spark, config)
    receipt = erasure.erase_and_verify(spark, config, run_id="e")["datasets"]["emb"]
    assert receipt["result"] == "failed" and receipt["attempts_pending"] == 1
    (problem,) = receipt["problems"]
    assert "dataset emb" in problem and str(path) in problem and "72 hours" in problem, problem
    # Below the retention, the same table is fine (nothing due yet, nothing to prove).
    lake.set_properties(
        spark, path, {"delta.logRetentionDuration": "interval 8 days"}, commit_metadata={}
    )
    receipt = erasure.erase_and_verify(spark, config, run_id="e2")["datasets"]["emb"]
    assert receipt["result"] == "verified" and receipt["problems"] == []


def test_erasure_waits_for_the_tables_lock(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #22 item 7: erasure takes the lock a purge or backfill of the table holds, so
    no removal commits between its REORG, VACUUM and log cleanup."""
    import threading

    config = make_config(tmp_path / "lake", window_hours=0)
    path = build(spark, config)
    purge_emb(spark, config)
    version = lake.table_version(path)
    done: dict[str, Any] = {}
    erasing = threading.Thread(
        target=lambda: done.update(erasure.erase_and_verify(spark, config, run_id="e"))
    )
    with purge.table_lock(config, "emb"):  # as a purge of the table holds it
        erasing.start()
        erasing.join(timeout=3)
        assert erasing.is_alive() and not done  # waiting, not erasing
        assert lake.table_version(path) == version
    erasing.join(timeout=300)
    assert done["datasets"]["emb"]["result"] == "verified"
    assert lake.table_version(path) > version  # its VACUUM committed once the lock was free


def test_deletion_vectors_are_purged_on_the_purge_night(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Issue #22 item 5: on a deletion-vector table the REORG runs the night the purge
    commits, not once its window has passed: the files holding the hidden rows are
    tombstoned at once, so the window's VACUUM deletes them (waiting tombstoned them only
    after the window, and took a second one)."""
    from tests.test_purge import rows

    config = make_config(tmp_path / "lake", window_hours=1)
    path = config.dataset_path("emb")
    dv = {"delta.enableDeletionVectors": "true"}
    lake.write_table(rows(spark, range(40), files=4), path, configuration=dv)
    assert purge_emb(spark, config)["deletion_vectors_added"] > 0
    hiding = set(verifier.deletion_vector_masks(lake.open_table(path)))
    assert hiding
    started = dt.datetime.now(dt.UTC).timestamp() * 1000 - 1000

    receipt = erasure.erase_and_verify(spark, config, run_id="e")["datasets"]["emb"]
    assert receipt["attempts_pending"] == 1 and receipt["attempts_erased"] == 0
    assert receipt["files_reorganised"] == len(hiding)
    assert receipt["files_removed"] == 0 and receipt["result"] == "verified"  # not due yet
    assert verifier.deletion_vector_masks(lake.open_table(path)) == {}  # no row hidden now
    tombstones = maintenance.tombstones(path)
    assert all(tombstones.get(rel, 0) >= started for rel in hiding), (hiding, tombstones)
    # The next night inside the window: nothing to rewrite, nothing committed.
    version = lake.table_version(path)
    again = erasure.erase_and_verify(spark, config, run_id="e2")["datasets"]["emb"]
    assert again["files_reorganised"] == 0 and lake.table_version(path) == version


def test_committed_purge_without_keys_is_no_proof(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #12: a purge committed but its removed keys cannot be read (key table missing,
    or holding nothing for it): the check would compare against nothing, so it fails."""
    config = make_config(tmp_path / "lake", window_hours=0)
    build(spark, config)
    purge_emb(spark, config)
    keys = purge.key_table_path(config, "emb")
    assert lake.is_table(keys)
    shutil.rmtree(keys)

    result = erasure.erase_and_verify(spark, config, run_id="e")
    receipt = result["datasets"]["emb"]
    assert not result["ok"] and receipt["result"] == "failed"
    assert receipt["attempts_erased"] == 1 and receipt["keys_checked"] == 0
    assert receipt["files_with_removed_keys"] == []
    (problem,) = receipt["problems"]
    assert "dataset emb" in problem and str(keys) in problem and "missing" in problem, problem
    logged = audit.events(spark, config, kind="erasure")[-1]["payload"]
    assert logged["result"] == "failed" and logged["problems"] == receipt["problems"]

    # A key table that holds nothing for the committed attempt is no evidence either.
    lake.write_table(
        spark.createDataFrame(
            [],
            "key_sha256 string, reason string, attempt string, run_id string, "
            "recorded_at timestamp",
        ),
        keys,
    )
    receipt = erasure.erase_and_verify(spark, config, run_id="e2")["datasets"]["emb"]
    assert receipt["result"] == "failed" and receipt["keys_checked"] == 0
    (problem,) = receipt["problems"]
    assert "dataset emb" in problem and "holds no key for 1 of them" in problem, problem

    # A whole purge run whose erasure does not verify fails (exit 1), with every table's
    # result, instead of returning ok: false with exit 0.
    with pytest.raises(purge.PurgeFailed) as raised:
        purge.run_purge(spark, config, as_of=AS_OF, deciders={"emb": decide})
    assert raised.value.exit_code == 1
    assert "erasure did not verify for emb" in str(raised.value)
    assert raised.value.result["ok"] is False and raised.value.result["failed"] == {}
    assert raised.value.result["erasure"]["datasets"]["emb"]["result"] == "failed"


def test_one_table_raising_keeps_the_others_receipts(
    spark: SparkSession, pristine_small_lake: Path, tmp_path: Path
) -> None:
    """The receipts of a run are written in one audit append: a table whose erasure raises (a
    file on disk that cannot be read) is named, every other table is still erased, and its
    receipt is recorded, chained, before the error propagates."""
    import yaml

    from tests.lakes import copy_small_lake

    root = tmp_path / "lake"
    conf_path = copy_small_lake(pristine_small_lake, root)
    data = yaml.safe_load(conf_path.read_text())
    base = data["datasets"]["track_embeddings"]
    shutil.copytree(root / base["path"], root / "derived" / "copy")
    data["datasets"] = {"broken": base, "copy": {**base, "path": "derived/copy"}}
    conf_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(conf_path)
    purge.run_purge(spark, config, as_of=dt.datetime(2026, 6, 1, tzinfo=dt.UTC), erase=False)
    copy = root / "derived" / "copy"
    tombstoned = set(lake.active_files(lake.open_table(copy, version=0)).column("path").to_pylist())
    tombstoned -= set(lake.active_files(lake.open_table(copy)).column("path").to_pylist())
    assert tombstoned and all((copy / rel).exists() for rel in tombstoned)
    (root / base["path"] / "_restored").mkdir()
    (root / base["path"] / "_restored" / "part-0.parquet").write_bytes(b"not parquet")
    entries = audit.verify_chain(spark, config)["entries"]

    with pytest.raises(errors.TableError, match="dataset broken: cannot read the files on disk"):
        erasure.erase_and_verify(spark, config, run_id="e")

    assert not any((copy / rel).exists() for rel in tombstoned)
    (logged,) = audit.events(spark, config, kind="erasure")
    assert logged["run_id"] == "e" and logged["payload"]["dataset"] == "copy"
    assert logged["payload"]["result"] == "verified" and logged["payload"]["keys_checked"] == 2
    chain = audit.verify_chain(spark, config)
    assert chain["ok"] and chain["entries"] == entries + 1

    # The nightly path (each table on its own) names the failure and returns the others.
    erased, failed = purge.erase_tables(spark, config, run_id="e2", names=["broken", "copy"])
    assert set(failed) == {"broken"} and "cannot read the files on disk" in str(failed["broken"])
    assert set(erased["datasets"]) == {"copy"} and erased["ok"] is False
    assert erased["datasets"]["copy"]["result"] == "verified"
    last = audit.events(spark, config, kind="erasure")[-1]
    assert last["run_id"] == "e2" and last["payload"]["dataset"] == "copy"
    assert audit.verify_chain(spark, config)["ok"]
