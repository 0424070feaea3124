"""Physical erasure after a purge, and the proof that it happened.

A purge removes rows *logically*: no Delta reader sees them in the new version, but their
bytes stay on disk — in the old data files (copy-on-write), in the still-active files behind a
deletion vector, in ``_change_data/`` files when change data feed is on, and in the Delta log
(file statistics, partition values) — so that time travel keeps working for
``erasure.window_hours``. After the window everything must go. Per table this module, all
through delta-spark:

1. **REORG TABLE ... APPLY (PURGE)** as soon as a purge has committed on a table whose
   files carry deletion vectors (the purge's own night, not once the window has passed):
   the files are rewritten without the hidden rows and the originals tombstoned *now*, so
   that step 2 deletes them when the window ends. Waiting for the window first, as before,
   tombstoned them only then and took a second window (issue #22 item 5). Time travel within
   the window still works: the older versions' files stay on disk until VACUUM. Nothing runs
   when no active file has a vector (read from the log, without Spark).
2. **VACUUM** (full) with ``retention = window``: tombstoned files, ``_change_data/`` files and
   unreferenced files (orphans of a killed writer) older than the window leave the disk. When
   no file could go (every file active or younger than the window), VACUUM is not run at all:
   no listing, no commit (:mod:`consentgate.maintenance`).
3. **Verifies** (:func:`consentgate.erasure_proof.verify_erased`): no Parquet file on disk,
   no row value of the Delta log (parsed, truncated statistics included) and no directory
   name holds a key removed by a committed purge older than the window, nor the id of an
   asset no row of the table keeps. Any match fails the receipt, naming the file (never the
   key). Attempts still inside the window are reported as pending. No evidence is not proof:
   when committed purges are due but their removed keys cannot be read, the receipt fails
   and says why.
4. **Log cleanup, when the log still holds a removed key** (statistics or partition values of a
   table consentgate did not create): ``delta.deletedFileRetentionDuration`` is set to the
   window (so the checkpoint does not carry the erased files' tombstones forward), a
   checkpoint is written and every log file before it is deleted with delta-spark's own cleanup (time travel to earlier versions ends: decision, the
   erasure window is the contract and such a log would otherwise keep the ids forever); then
   step 3 again. Tables consentgate creates keep no per-column statistics, so their logs (and
   the time travel that manifest verification relies on) are left alone.
5. **Receipts**: one ``erasure`` audit entry per table, all tables' entries of a run written
   in one append (:func:`consentgate.audit.append_events`) once every table is done; also when
   a table raises or the run is interrupted, so a receipt is never lost.

Each table's steps 1-4 hold the table's lock (:func:`consentgate.purge.table_lock`), the
one its purges and backfills take: no removal commits between the REORG and the log cleanup.

With ``window_hours: 0`` the purge and the erasure happen in one run; delta-spark's log cleanup
works at minute granularity, so log files written in the current minute survive until the next
run (and are reported by the check, never silently passed).

**The window is bounded by the log's retention** (issue #22 item 1): which purges to prove
is read from the table's Delta history, which Delta deletes after
``delta.logRetentionDuration`` (30 days by default). A table whose retention is not longer
than ``erasure.window_hours`` fails its receipt, naming the table and both durations
(:func:`_window_problem`); tables that keep their log (``delta.enableExpiredLogCleanup=false``,
our snapshots) have no bound.

Known limits (issue #22, open): which purges to prove is still read from the table's history
(bounded above); a purge recorded in the key table whose commit is no longer in the history
is not yet a failure of its own. With window 0, VACUUM can still delete another writer's
uncommitted files and the files a running gate reads at its pinned version (Delta's retention
check is off only for the erasure's own VACUUM call: :func:`consentgate.maintenance.vacuum`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from consentgate import audit, lake, maintenance, verifier
from consentgate.config import Config
from consentgate.erasure_proof import verify_erased
from consentgate.logs import step
from consentgate.purge import (
    OPERATION,
    table_lock,
    target_path,
    targets,
)
from consentgate.runtime import iso, new_run_id, now_utc
from consentgate.spark import spark_work

log = logging.getLogger(__name__)


def purge_attempt_commits(path: Path) -> list[tuple[str, int]]:
    """Every committed purge attempt of this table: its attempt id and its commit's timestamp
    (milliseconds since the epoch, as the log has it), newest first. The window of erasure is
    measured from these (:mod:`consentgate.quiescence` reads when the next one ends)."""
    return [
        (str(entry["consentgate.attempt"]), int(entry["timestamp"]))
        for entry in lake.history(path)
        if entry.get("consentgate.operation") == OPERATION and entry.get("consentgate.attempt")
    ]


def _erasable_attempts(path: Path, *, cutoff: dt.datetime) -> tuple[list[str], list[str]]:
    """Committed purge attempts of this table: (older than the cutoff, still in the window)."""
    old: list[str] = []
    pending: list[str] = []
    for attempt, millis in purge_attempt_commits(path):
        at = dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC)
        (old if at <= cutoff else pending).append(attempt)
    return old, pending


def _vacuum(
    spark: SparkSession, path: Path, *, window_hours: int, run_id: str, reorg: bool
) -> dict[str, Any]:
    """Steps 1-2 of the module docstring; returns what left the disk (as VACUUM reports it:
    :func:`consentgate.maintenance.vacuum` lists the table once, so this does not again)."""
    meta = {"consentgate.operation": "consentgate.erasure", "consentgate.run": run_id}
    table = lake.open_table(path)
    reorged = 0
    if reorg and verifier.deletion_vector_masks(table):  # some active file has a vector
        result = lake.run_sql(
            spark, "REORG TABLE {table} APPLY (PURGE)", path, commit_metadata=meta
        )
        reorged = result.metric("numRemovedFiles") if result is not None else 0
    vacuumed = maintenance.vacuum(spark, path, retention_hours=window_hours, commit_metadata=meta)
    _remove_empty_directories(path)
    return {
        "files_removed": len(vacuumed.tombstoned) + len(vacuumed.orphans),
        "bytes_removed": int(vacuumed.bytes_removed),
        "files_reorganised": reorged,
        "tombstoned_removed": len(vacuumed.tombstoned),
        "orphans_removed": len(vacuumed.orphans),
    }


def _clean_log(spark: SparkSession, path: Path, *, window_hours: int, run_id: str) -> None:
    """Step 4: tombstones expire with the window, a checkpoint, every log file before it
    deleted (delta-spark's cleanup).

    A checkpoint keeps the ``remove`` tombstones (path, partition values) of the last
    ``delta.deletedFileRetentionDuration`` (7 days by default): set to the window, the
    tombstones of erased files leave with the old log instead of being copied forward.
    """
    lake.set_properties(
        spark,
        path,
        {"delta.deletedFileRetentionDuration": f"interval {window_hours} hours"},
        commit_metadata={"consentgate.operation": "consentgate.erasure", "consentgate.run": run_id},
    )
    lake.checkpoint_and_clean_log(spark, path)


def _remove_empty_directories(root: Path) -> None:
    """VACUUM deletes files, not always the partition directories they leave empty, whose
    names (``asset_id=<id>``) can hold a purged id: empty directories hold nothing else."""
    for dirpath, _dirnames, _filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        rel = here.relative_to(root)
        if not rel.parts or rel.parts[0] == maintenance.LOG_DIR:
            continue
        if not any(here.iterdir()):
            here.rmdir()


def _window_problem(name: str, path: Path, window: int) -> str | None:
    """Why this table's erasure cannot be proven for ``window`` hours, if it cannot: Delta
    deletes commits older than the table's ``delta.logRetentionDuration`` at its next
    checkpoint, and with them the record of which purges to prove (issue #22 item 1). The
    window must be shorter than that; a table that keeps its log forever has no bound."""
    try:
        retention = maintenance.log_retention_hours(lake.open_table(path))
    except ValueError as exc:
        return (
            f"dataset {name}: the log retention of table {path} cannot be read ({exc}); "
            "whether its purges stay on record for the erasure window is unknown"
        )
    if retention is None or window < retention:
        return None
    return (
        f"dataset {name}: erasure.window_hours={window} is not below the log retention of table "
        f"{path} (delta.logRetentionDuration, {retention:g} hours): Delta may delete the commits "
        "of purges still inside the window, and the erasure could no longer tell which removals "
        "to prove; lower erasure.window_hours or raise the table's delta.logRetentionDuration"
    )


def _erase(
    spark: SparkSession, config: Config, name: str, *, run_id: str, now: dt.datetime | None
) -> tuple[dict[str, Any], audit.Event]:
    """Steps 1-4 of the module docstring for one table: its receipt, and the audit event that
    records it (written by the caller, :func:`erase_each`, with the other tables' events).

    The receipt: ``dataset, window_hours, files_removed, bytes_removed, tombstoned_removed,
    orphans_removed, files_scanned, rows_scanned, keys_checked, attempts_erased,
    attempts_pending, files_with_removed_keys[], problems[], result`` (``verified`` or
    ``failed``: a removed key found, or no removed key to check committed purges against).
    """
    with table_lock(config, name), spark_work(spark, "erase") as ran:
        dataset = targets(config)[name]
        path = target_path(config, name, dataset)
        window = config.erasure.window_hours
        instant = now or now_utc()
        bound = _window_problem(name, path, window)
        old, pending = _erasable_attempts(path, cutoff=instant - dt.timedelta(hours=window))
        vacuumed = _vacuum(
            spark, path, window_hours=window, run_id=run_id, reorg=bool(old or pending)
        )

        def check() -> dict[str, Any]:
            return verify_erased(
                spark,
                config,
                name,
                path,
                key=dataset.key,
                asset_column=dataset.asset_column,
                attempts=old,
            )

        checked = check()
        log_cleaned = False
        if any(f.startswith(maintenance.LOG_DIR + "/") for f in checked["files_with_removed_keys"]):
            # Removed keys are still in the log (statistics or partition values of a table we did
            # not create): clean the log, then prove again.
            _clean_log(spark, path, window_hours=window, run_id=run_id)
            log_cleaned = True
            checked = check()
        if bound is not None:
            checked["problems"] = [bound, *checked["problems"]]
        ok = not checked["files_with_removed_keys"] and not checked["problems"]
        receipt: dict[str, Any] = {
            "dataset": name,
            "window_hours": window,
            "at": iso(instant),
            **vacuumed,
            "log_cleaned": log_cleaned,
            **checked,
            "attempts_erased": len(old),
            "attempts_pending": len(pending),
            "result": "verified" if ok else "failed",
        }
    step(
        log,
        "erase",
        table=name,
        files=receipt.get("files_removed"),
        bytes=receipt.get("bytes_removed"),
        files_scanned=receipt.get("files_scanned"),
        keys_checked=receipt.get("keys_checked"),
        attempts_pending=len(pending),
        verified=ok,
        work=ran,
        level=logging.INFO if ok else logging.WARNING,
    )
    return receipt, audit.Event("erasure", run_id, erasure_audit_payload(receipt), now_utc())


def erasure_audit_payload(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """A receipt as its audit entry records it: the files still holding removed keys as a
    count and a SHA-256 of their names (file names stay in the receipt, out of the log)."""
    files = list(receipt.get("files_with_removed_keys", []))
    payload = {k: v for k, v in receipt.items() if k != "files_with_removed_keys"}
    payload["files_with_removed_keys"] = len(files)
    payload["files_with_removed_keys_sha256"] = hashlib.sha256(
        "\n".join(files).encode()
    ).hexdigest()
    return payload


def erase_each(
    spark: SparkSession,
    config: Config,
    names: Sequence[str],
    *,
    run_id: str,
    now: dt.datetime | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """Erase and verify each of ``names`` on its own, and record every receipt in one audit
    append (one Delta commit instead of one a table; one entry per table, as before).

    A table whose erasure raises (an unreadable file) is returned with its error and never
    stops the others. The receipts are written in a ``finally``: whatever ends the loop (an
    interrupt, a killed task's ``SIGTERM``), the receipts of the tables erased until then are
    recorded before it propagates, so no erasure goes unrecorded. (A process killed outright
    loses them; those tables are then erased already, and the next run's receipt proves it.)

    Returns:
        The receipts by table, and the errors by table (in ``names`` order).
    """
    receipts: dict[str, dict[str, Any]] = {}
    events: list[audit.Event] = []
    failed: dict[str, Exception] = {}
    try:
        for name in names:
            try:
                receipts[name], event = _erase(spark, config, name, run_id=run_id, now=now)
            except Exception as exc:
                failed[name] = exc
                continue
            events.append(event)
    finally:
        with spark_work(spark, "erase_receipts") as ran:
            audit.append_events(spark, config, events)
        step(log, "erase_receipts", receipts=len(events), work=ran)
    return receipts, failed


def erase_and_verify(
    spark: SparkSession,
    config: Config,
    *,
    run_id: str | None = None,
    datasets: Sequence[str] | None = None,
    as_of: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Erase and verify every purge target (or ``datasets``) with :func:`erase_each`.

    ``as_of`` is accepted for symmetry with the other steps but erasure runs on wall-clock
    time: the window is measured from when the removal was committed, as Delta's vacuum does.

    Returns:
        ``{"ok": bool, "datasets": {name: receipt}}``.

    Raises:
        Exception: the first table's error when a table's erasure raised, after every other
            table was erased and every receipt recorded.
    """
    del as_of
    run = run_id or new_run_id("erasure")
    names = list(datasets) if datasets is not None else list(targets(config))
    receipts, failed = erase_each(spark, config, names, run_id=run, now=now)
    if failed:
        raise next(iter(failed.values()))
    return {
        "ok": all(r["result"] == "verified" for r in receipts.values()),
        "datasets": receipts,
    }
