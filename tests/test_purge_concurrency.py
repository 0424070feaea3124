"""The purge against a real concurrent writer committing between our plan and our commit.

The other writer runs in its own thread and commits through delta-spark, exactly as another
job would; it is started from inside the decider (after the purge has pinned the version it
plans from and before it commits) or runs freely beside the purge. Invariants checked every time: appended rows
are never lost, removed rows never come back, no row is duplicated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

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


def compact(spark: SparkSession, path: Path) -> None:
    """delta-spark's OPTIMIZE: every small file (those holding removed rows included) is
    rewritten into one new file and the old ones removed, in one commit."""
    before = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    lake.run_sql(
        spark, "OPTIMIZE {table}", path, commit_metadata={"consentgate.operation": "compaction"}
    )
    after = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
    assert not before & after


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


def test_compaction_before_our_commit_is_absorbed(spark: SparkSession, tmp_path: Path) -> None:
    """delta-spark's MERGE reads the table as it is when it runs: a compaction committed after
    we decided (our decided files are gone) is no conflict, the removed keys are found in the
    compacted file, and the re-check after our commit finds nothing more to remove."""
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    original = lake.read_table(spark, path).localCheckpoint()

    result = purge.purge_dataset(
        spark,
        config,
        "emb",
        as_of=AS_OF,
        run_id="purge-k",
        decide=once(lambda: compact(spark, path)),
    )
    assert result["conflicts"] == 0
    assert len(result["commits"]) == 1
    after = lake.read_table(spark, path)
    assert_df_equality(
        after, expected_after(original), ignore_row_order=True, allow_nan_equality=True
    )
    assert_no_duplicates(after)
    history = [h.get("consentgate.operation") for h in lake.history(path)]
    assert history[:2] == [purge.OPERATION, "compaction"]


def test_concurrent_appends_during_the_purge_are_never_lost(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A real second writer appends three times while the purge runs (some of its rows belong
    to the revoked asset). Whatever the interleaving — delta-spark refusing our MERGE with a
    typed conflict, or committing it between appends — no appended row of a granted asset is
    lost, no removed row comes back, no row is doubled, and every conflict is audited."""
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    original = lake.read_table(spark, path).localCheckpoint()
    batches = [rows(spark, range(100 + 10 * i, 110 + 10 * i), files=1) for i in range(3)]
    done = threading.Event()

    def appender() -> None:
        for batch in batches:
            lake.write_table(batch, path, mode="append")
        done.set()

    worker = threading.Thread(target=appender)
    worker.start()
    try:
        result = purge.purge_dataset(
            spark, config, "emb", as_of=AS_OF, run_id="purge-s", decide=decide, max_retries=8
        )
    finally:
        worker.join()
    # Appends that landed after our last check are the next night's work: purge once more.
    purge.purge_dataset(spark, config, "emb", as_of=AS_OF, run_id="purge-s2", decide=decide)
    after = lake.read_table(spark, path)
    everything = original
    for batch in batches:
        everything = everything.unionByName(batch)
    assert_df_equality(
        after, expected_after(everything), ignore_row_order=True, allow_nan_equality=True
    )
    assert_no_duplicates(after)
    conflicts = [
        e
        for e in audit.events(spark, config, kind="purge")
        if e["payload"].get("event") == "conflict"
    ]
    assert len(conflicts) == result["conflicts"]


def test_rows_still_to_remove_after_the_retries_fail_clearly(
    spark: SparkSession, tmp_path: Path
) -> None:
    """With no retry allowed, rows of the revoked asset appended between our decision and our
    commit are still to remove after the one pass: the purge says so instead of claiming done."""
    config = make_config(tmp_path / "lake")
    path = build(spark, config)
    appended = rows(spark, range(100, 110), files=1)  # asset-1 rows among them: 101, 106

    def append() -> None:
        lake.write_table(appended, path, mode="append")

    with pytest.raises(ConflictError, match="dataset emb: still 2 rows to remove"):
        purge.purge_dataset(
            spark, config, "emb", as_of=AS_OF, run_id="purge-x", decide=once(append), max_retries=0
        )
    assert_no_duplicates(lake.read_table(spark, path))
