"""The purge against a real concurrent writer committing between our plan and our commit.

The other writer runs in its own thread and commits through the lake layer (delta-rs), exactly
as another job would; it is started from inside the decider, i.e. after the purge has pinned
the version it plans from and before it commits. Invariants checked every time: appended rows
are never lost, removed rows never come back, no row is duplicated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import audit, lake, purge
from consentgate.errors import ConflictError
from tests.test_purge import AS_OF, build, decide, expected_after, make_config, rows


def in_thread(action: Callable[[], None]) -> None:
    """Run ``action`` in another thread and wait: a real second writer, committed before we go
    on (so the interleaving is deterministic)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


def compact_files_holding_removed_rows(spark: SparkSession, path: Path) -> None:
    """A compaction of exactly the files the purge is rewriting: all their rows (the removed
    ones included) rewritten into one new file, the old ones removed, in one commit."""
    version = lake.table_version(path)
    frame = lake.read_table(spark, path, version=version, with_file=True)
    victims = sorted(
        r["_file"]
        for r in frame.where(F.col("asset_id").isin("asset-1") | (F.col("id") == "7"))
        .select("_file")
        .distinct()
        .collect()
    )
    compacted = frame.where(F.col("_file").isin(*victims)).drop("_file").coalesce(1)
    written = lake.write_files(compacted, path)
    lake.replace_files(
        path,
        read_version=version,
        remove=victims,
        add=written,
        commit_metadata={"consentgate.operation": "compaction"},
    )


def once(action: Callable[[], None]) -> Callable[[DataFrame], DataFrame]:
    """A decider that lets the concurrent writer commit the first time the purge plans."""
    fired: list[bool] = []

    def decider(frame: DataFrame) -> DataFrame:
        if not fired:
            fired.append(True)
            in_thread(action)
        return decide(frame)

    return decider


def assert_no_duplicates(frame: DataFrame) -> None:
    assert frame.count() == frame.select("id").distinct().count()


def test_concurrent_append_is_kept_and_its_revoked_rows_purged(
    spark: SparkSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    appended = rows(spark, range(100, 110), files=1)  # asset-1 rows among them: 101, 106

    def append() -> None:
        lake.write_table(appended, path, mode="append")

    original = lake.read_table(spark, path).localCheckpoint()
    result = purge.purge_dataset(
        spark, config, "emb", as_of=AS_OF, run_id="purge-c", decide=once(append)
    )
    after = lake.read_table(spark, path)
    expected = expected_after(original.unionByName(appended))
    assert_df_equality(after, expected, ignore_row_order=True, allow_nan_equality=True)
    assert_no_duplicates(after)
    # Our first commit landed after the append, so the purge planned once more and removed
    # the appended rows of the revoked asset in the same run.
    assert len(result["commits"]) == 2
    assert result["rows_deleted"] == 11
    assert result["conflicts"] == 0


def test_compaction_of_our_files_forces_a_replan(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    original = lake.read_table(spark, path).localCheckpoint()
    before_disk = {p for p in path.rglob("*.parquet")}

    result = purge.purge_dataset(
        spark,
        config,
        "emb",
        as_of=AS_OF,
        run_id="purge-k",
        decide=once(lambda: compact_files_holding_removed_rows(spark, path)),
    )
    assert result["conflicts"] == 1
    assert len(result["commits"]) == 1
    after = lake.read_table(spark, path)
    assert_df_equality(
        after, expected_after(original), ignore_row_order=True, allow_nan_equality=True
    )
    assert_no_duplicates(after)
    # The refused attempt's files were deleted at once; what remains on disk is the original
    # files, the compaction's file and our final rewrite.
    history = [h.get("consentgate.operation") for h in lake.history(path)]
    assert history[:2] == [purge.OPERATION, "compaction"]
    new_files = {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")} - {
        p.relative_to(path).as_posix() for p in before_disk
    }

    def active_at(version: int) -> set[str]:
        table = lake.open_table(path, version=version)
        return set(lake.active_files(table).column("path").to_pylist())

    compaction_output = active_at(1) - active_at(0)
    our_output = active_at(2) - active_at(0)
    assert new_files == compaction_output | our_output
    conflict_events = [
        e
        for e in audit.events(spark, config, kind="purge")
        if e["payload"].get("event") == "conflict"
    ]
    assert len(conflict_events) == 1


def test_endless_conflicts_fail_clearly(spark: SparkSession, tmp_path: Path) -> None:
    config = make_config(tmp_path / "lake")
    path = build(spark, config)

    def always(frame: DataFrame) -> DataFrame:
        in_thread(lambda: compact_files_holding_removed_rows(spark, path))
        return decide(frame)

    with pytest.raises(ConflictError, match="dataset emb"):
        purge.purge_dataset(
            spark, config, "emb", as_of=AS_OF, run_id="purge-x", decide=always, max_retries=1
        )
    # Nothing of ours was committed and removed rows are still only in the table, not doubled.
    assert all(h.get("consentgate.operation") != purge.OPERATION for h in lake.history(path))
    assert_no_duplicates(lake.read_table(spark, path))
