"""The purge against a real concurrent writer committing between our plan and our commit.

The other writer runs in its own thread and commits through delta-spark, exactly as another
job would; it is started from inside the decider (after the purge has pinned the version it
plans from and before it commits) or runs freely beside the purge. Invariants checked every time: appended rows
are never lost, removed rows never come back, no row is duplicated.

The last section runs the production decision (no decider: the run's consent, decided once,
re-located on conflicts); there the other writer commits from purge's test hook
(``purge._TEST_HOOKS``), between our decision and our MERGE.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from consentgate import audit, lake, purge
from consentgate.config import Config, load_config
from consentgate.errors import ConflictError
from tests.lakes import T0
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


# --------------------------------------------------------------------------------------------
# The production decision (no decider): the run's consent decides once, conflicts re-locate.
#
# The other writer commits from purge's test hook (``purge._TEST_HOOKS``, process-local, set
# with monkeypatch, never by production): at ``before_commit`` our decision is made and our
# keys recorded, and our MERGE has not started.

EMB = "track_embeddings"
EMB_DDL = "embedding_id string, asset_id string, derived_at timestamp"


def small_lake_config(conf_path: Path) -> Config:
    """``tests/lakes.py``'s lake (a copy per test): e1 (a1 granted), e2 (a2 revoked), e3 (a3:
    no consent record of its owner)."""
    return load_config(conf_path)


def embedding_ids(spark: SparkSession, path: Path) -> list[str]:
    """The table's keys, sorted, duplicates kept (a doubled row shows)."""
    return sorted(r["embedding_id"] for r in lake.read_table(spark, path).collect())


def append_rows(spark: SparkSession, path: Path, ids_assets: list[tuple[str, str]]) -> None:
    frame = spark.createDataFrame([(k, a, T0) for k, a in ids_assets], EMB_DDL)
    lake.write_table(frame, path, mode="append")


def on_first(
    action: Callable[[], None], *, then: BaseException | None = None
) -> Callable[[str], None]:
    """A purge test hook that runs ``action`` in another thread the first time a purge pass
    reaches it (then raises ``then``, if given); later passes go through untouched."""
    fired: list[str] = []

    def hook(name: str) -> None:
        if fired:
            return
        fired.append(name)
        in_thread(action)
        if then is not None:
            raise then

    return hook


def purge_events(spark: SparkSession, config: Config, event: str | None) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in audit.events(spark, config, kind="purge")
        if e["payload"].get("event") == event
    ]


def test_rows_appended_between_the_run_decision_and_our_merge_are_purged_in_the_same_run(
    spark: SparkSession, small_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our decision is made at v0; another writer appends e4 (a2 revoked), e5 (a1 granted) and
    e6 (a3 no record) after it, before our MERGE starts. delta-spark's MERGE reads the table as
    it runs (v1): no conflict, our commit is v2. The appended file was never decided (not
    covered), so the same run re-locates it and removes e4 and e6 with the run's consent."""
    config = small_lake_config(small_lake)
    path = config.dataset_path(EMB)
    hook = on_first(lambda: append_rows(spark, path, [("e4", "a2"), ("e5", "a1"), ("e6", "a3")]))
    monkeypatch.setitem(purge._TEST_HOOKS, "before_commit", hook)

    result = purge.purge_dataset(spark, config, EMB, as_of=AS_OF, run_id="purge-mid")

    assert embedding_ids(spark, path) == ["e1", "e5"]
    assert result["commits"] == [2, 3]
    assert result["conflicts"] == 0
    assert result["rows_deleted"] == 4
    assert result["reasons"] == {"no_consent_record": 2, "revoked": 2}
    assert result["version_before"] == 0 and result["version_after"] == 3
    committed = purge_events(spark, config, None)
    assert [(e["version_read"], e["version_committed"], e["rows_deleted"]) for e in committed] == [
        (0, 2, 2),
        (2, 3, 2),
    ]


def conflict_of(path: Path) -> ConflictError:
    """What ``lake.merge_delete`` raises when delta-spark refuses our MERGE because a commit
    landed while it ran (a ConcurrentDeleteReadException after a compaction of files it read).
    Such a commit cannot be placed inside delta-spark's MERGE deterministically from Python, so
    the hook lets the other writer commit just before the MERGE and then raises this."""
    return ConflictError(
        f"{path}: a concurrent commit conflicts with ours (ConcurrentDeleteReadException: "
        "This transaction attempted to read one or more files that were deleted by a "
        "concurrent update)"
    )


def test_a_conflict_relocates_through_a_compaction_and_removes_exactly_the_decided_rows(
    spark: SparkSession, small_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After our decision (v0) another writer appends e4 (a2 revoked), e5 (a1 granted), e6 (a3
    no record), compacts every file (our decided files are gone) and a record revoking a1
    arrives; our MERGE is refused. The retry re-locates without evaluating consent again: the
    decided keys are found in the compacted file, the appended rows are decided with the run's
    consent (a1 still granted), and one commit removes exactly e2, e3, e4, e6."""
    from tests.test_purge import _late_revocation_of_a1

    config = small_lake_config(small_lake)
    path = config.dataset_path(EMB)

    def append_compact_revoke() -> None:
        append_rows(spark, path, [("e4", "a2"), ("e5", "a1"), ("e6", "a3")])
        compact(spark, path)
        _late_revocation_of_a1(spark, config)

    hook = on_first(append_compact_revoke, then=conflict_of(path))
    monkeypatch.setitem(purge._TEST_HOOKS, "before_commit", hook)

    result = purge.purge_dataset(spark, config, EMB, as_of=AS_OF, run_id="purge-conflict")

    assert embedding_ids(spark, path) == ["e1", "e5"]
    assert result["conflicts"] == 1
    assert result["commits"] == [3]  # v1 append, v2 compaction, v3 ours
    assert result["rows_deleted"] == 4
    assert result["reasons"] == {"no_consent_record": 2, "revoked": 2}
    [conflict] = purge_events(spark, config, "conflict")
    assert (conflict["version_read"], conflict["table_version_now"]) == (0, 2)
    [committed] = purge_events(spark, config, None)
    assert (committed["version_read"], committed["version_committed"]) == (2, 3)
    assert committed["rows_deleted"] == 4 and committed["attempt"] != conflict["attempt"]
    history = [h.get("consentgate.operation") for h in lake.history(path)]
    assert history[:2] == [purge.OPERATION, "compaction"]
    assert history.count(purge.OPERATION) == 1


def test_max_retries_exhausted_raises_conflict_error_writes_nothing_and_a_rerun_converges(
    spark: SparkSession, small_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every MERGE is refused, each time after the other writer appended one more row of the
    revoked a2. With ``max_retries=1`` (two passes) the purge raises ConflictError naming the
    table and what is still to remove, and writes nothing to the table; the next run, with no
    other writer, removes exactly the rows to remove."""
    config = small_lake_config(small_lake)
    path = config.dataset_path(EMB)
    appended: list[str] = []

    def refuse(name: str) -> None:
        key = f"e{4 + len(appended)}"
        appended.append(key)
        in_thread(lambda: append_rows(spark, path, [(key, "a2")]))
        raise conflict_of(path)

    monkeypatch.setitem(purge._TEST_HOOKS, "before_commit", refuse)
    with pytest.raises(ConflictError) as raised:
        purge.purge_dataset(spark, config, EMB, as_of=AS_OF, run_id="purge-refused", max_retries=1)
    assert type(raised.value) is ConflictError
    assert str(raised.value) == (
        "dataset track_embeddings: still 4 rows to remove after 2 passes against concurrent "
        "writers; giving up (rerun the purge)"
    )
    # Nothing of ours in the table: the other writer's two appends only, every row still there.
    assert appended == ["e4", "e5"]
    assert lake.table_version(path) == 2
    assert purge.OPERATION not in [h.get("consentgate.operation") for h in lake.history(path)]
    assert embedding_ids(spark, path) == ["e1", "e2", "e3", "e4", "e5"]
    assert purge_events(spark, config, None) == []
    assert [c["version_read"] for c in purge_events(spark, config, "conflict")] == [0, 1]

    monkeypatch.delitem(purge._TEST_HOOKS, "before_commit")
    result = purge.purge_dataset(spark, config, EMB, as_of=AS_OF, run_id="purge-rerun")
    assert embedding_ids(spark, path) == ["e1"]
    assert result["rows_deleted"] == 4 and result["commits"] == [3]
    assert result["reasons"] == {"no_consent_record": 1, "revoked": 3}
    assert result["recovered"] == 0  # the refused attempts are audited as conflicts
