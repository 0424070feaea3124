"""Physical erasure after a purge, and the proof that it happened.

A purge removes rows *logically*: no Delta reader sees them in the new version, but their
bytes stay on disk — in the old data files (copy-on-write), in the still-active files behind a
deletion vector, in ``_change_data/`` files when change data feed is on, and in the Delta log
(file statistics, partition values) — so that time travel keeps working for
``erasure.window_hours``. After the window everything must go. Per table this module, all
through delta-spark:

1. **REORG TABLE ... APPLY (PURGE)** when the table has deletion vectors and a committed purge
   is older than the window: files carrying deletion vectors are rewritten without the hidden
   rows (idempotent: no commit when no file has a vector).
2. **VACUUM** (full) with ``retention = window``: tombstoned files, ``_change_data/`` files and
   unreferenced files (orphans of a killed writer) older than the window leave the disk. When
   no file could go (every file active or younger than the window), VACUUM is not run at all:
   no listing, no commit (:mod:`consentgate.maintenance`).
3. **Verifies**: every Parquet file physically present under the table (data files and
   ``_change_data/``; by the key's *physical* column name, so column mapping is honoured) and
   every file under ``_delta_log/`` (JSON commits, checkpoints, ``.crc``: partition values,
   statistics and operation parameters) and every ``name=value`` directory name are hashed the
   way :func:`consentgate.purge.key_digest` hashes keys and joined — in Spark, never collected —
   with the hashed removed keys of every committed purge attempt older than the window. Any
   match fails the receipt, naming the file (never the key). Attempts still inside the window
   are reported as pending. No evidence is not proof: when committed purges are due but no
   removed key of theirs can be read (the key table is missing or unreadable, or holds nothing
   for some of them), the receipt fails and says why.
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

With ``window_hours: 0`` the purge and the erasure happen in one run; delta-spark's log cleanup
works at minute granularity, so log files written in the current minute survive until the next
run (and are reported by the check, never silently passed).

Known limit: the check looks for the removed rows' *keys*; an asset id that is a partition
value of a table keyed otherwise is removed with the log cleanup, but not checked by digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from consentgate import audit, lake, maintenance
from consentgate.config import Config
from consentgate.errors import TableError, foreign_cause
from consentgate.logs import step
from consentgate.purge import (
    OPERATION,
    key_digest,
    key_table_path,
    target_path,
    targets,
)
from consentgate.redact import redact_partitions
from consentgate.runtime import iso, new_run_id, now_utc
from consentgate.spark import spark_work

log = logging.getLogger(__name__)


def physical_parquet_files(root: Path) -> list[str]:
    """Every ``*.parquet`` file under a table directory outside the Delta log (data files and
    ``_change_data/``), relative to the table."""
    return [rel for rel in _physical_files(root) if rel.endswith(".parquet")]


def _physical_files(root: Path) -> list[str]:
    """Every file under a table directory outside ``_delta_log``, relative, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if not rel_dir.parts:
            dirnames[:] = [d for d in dirnames if d != maintenance.LOG_DIR]
        out.extend((rel_dir / filename).as_posix() for filename in filenames)
    return sorted(out)


def _log_files(root: Path) -> list[Path]:
    """Every file under ``_delta_log`` (commits, checkpoints, ``.crc``, sidecars)."""
    log = root / maintenance.LOG_DIR
    return sorted(p for p in log.rglob("*") if p.is_file()) if log.is_dir() else []


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
    if reorg and "deletionVectors" in (table.protocol().reader_features or ()):
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


#: The parts of a log action that can hold a row's values: partition values, per-column
#: statistics, and operation parameters (another writer's ``DELETE`` predicate, say).
_VALUE_SECTIONS = r'"(?:partitionValues|minValues|maxValues|operationParameters)":(\{[^}]*\})'


def _hashed_tokens(frame: DataFrame, column: str) -> DataFrame:
    """What a log file could leak of a key, hashed as keys are, one row per token with
    ``file``: every quoted string ('single' or "double"), and every number, inside the
    sections of :data:`_VALUE_SECTIONS`. Elsewhere (sizes, counts, metrics, timestamps) there
    are no row values, and matching there would only give false alarms on numeric keys."""
    text = F.regexp_replace(F.col(column), r"\\\"", '"')
    sections = F.concat_ws(" ", F.regexp_extract_all(text, F.lit(_VALUE_SECTIONS), 1))
    doubled = F.regexp_extract_all(sections, F.lit(r'"([^"]*)"'), 1)
    single = F.regexp_extract_all(sections, F.lit(r"'([^']*)'"), 1)
    numbers = F.regexp_extract_all(sections, F.lit(r"[:,\[]\s*(-?[0-9]+)"), 1)
    token = F.explode(F.array_union(F.array_union(doubled, single), numbers)).alias("token")
    exploded = frame.select("file", token)
    return exploded.select("file", key_digest(F.col("token")).alias("key_sha256"))


def _log_scan(spark: SparkSession, path: Path) -> DataFrame | None:
    """``file, key_sha256`` of every token in the log's files and the directory names."""
    files = _log_files(path)
    parts: list[DataFrame] = []
    texts = [str(p) for p in files if not p.name.endswith(".parquet")]
    if texts:
        raw = spark.read.text(texts).select(
            F.col("_metadata.file_path").alias("file"), F.col("value")
        )
        parts.append(_hashed_tokens(raw, "value"))
    checkpoints = [str(p) for p in files if p.name.endswith(".parquet")]
    if checkpoints:
        raw = spark.read.parquet(*checkpoints)
        parts.append(
            _hashed_tokens(
                raw.select(
                    F.col("_metadata.file_path").alias("file"),
                    F.to_json(F.struct(*[F.col(f"`{c}`") for c in raw.columns])).alias("value"),
                ),
                "value",
            )
        )
    directories = sorted(
        {
            (rel_dir, part.split("=", 1)[1])
            for rel in _physical_files(path)
            for rel_dir in [rel.rsplit("/", 1)[0]]
            if "/" in rel
            for part in rel_dir.split("/")
            if "=" in part
        }
    )
    if directories:
        raw = spark.createDataFrame(
            [(str(path / d), unquote(v)) for d, v in directories], "file string, value string"
        )
        parts.append(raw.select("file", key_digest(F.col("value")).alias("key_sha256")))
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def verify_erased(
    spark: SparkSession,
    config: Config,
    name: str,
    path: Path,
    *,
    key: str,
    attempts: Sequence[str],
) -> dict[str, Any]:
    """Prove that nothing under ``path`` holds a key removed by ``attempts``: no Parquet file
    on disk (data and ``_change_data/``), no file of the Delta log, no directory name.

    Every attempt in ``attempts`` is a committed purge, and a purge records its hashed keys
    before it commits (:func:`consentgate.purge.purge_table`): an attempt without keys in the
    key table means the evidence is gone, and the check would prove nothing about its rows.

    Returns:
        ``files_scanned, rows_scanned, log_files_scanned, keys_checked,
        files_with_removed_keys[]`` (paths relative to the table, partition values digested:
        :func:`consentgate.redact.redact_partitions`; never a key) and
        ``problems[]``: why the check could not be made (no evidence for committed purges).

    Raises:
        TableError: a file cannot be read (named).
    """
    table = lake.open_table(path)
    schema = lake.spark_schema(table)
    if key not in schema.fieldNames():
        raise TableError(f"dataset {name}: key column {key!r} is not in table {path}")
    field = schema[key]
    physical = str(field.metadata.get("delta.columnMapping.physicalName", key))
    stored_in_files = key not in lake.partition_columns(table)
    keys_path = key_table_path(config, name)
    files = physical_parquet_files(path)
    logs = _log_files(path)
    empty: dict[str, Any] = {
        "files_scanned": len(files),
        "rows_scanned": 0,
        "log_files_scanned": len(logs),
        "keys_checked": 0,
        "files_with_removed_keys": [],
        "problems": [],
    }
    if not attempts:
        return empty

    def no_evidence(why: str) -> dict[str, Any]:
        return {
            **empty,
            "problems": [
                f"dataset {name}: {len(set(attempts))} committed purge attempt(s) are due for "
                f"erasure but {why}; nothing to check the table against, so its erasure is "
                "not proven"
            ],
        }

    if not lake.is_table(keys_path):
        return no_evidence(f"the removed-key table {keys_path} is missing")
    # Which attempts have keys, and how many keys: one aggregation (one pass over the key
    # table) rather than a distinct-collect and a count of its own each.
    try:
        keys = lake.read_table(spark, keys_path).where(F.col("attempt").isin(sorted(set(attempts))))
        evidence = keys.agg(
            F.collect_set("attempt").alias("attempts"),
            F.count_distinct("key_sha256").alias("keys"),
        ).first()
    except Exception as exc:  # an unreadable key table is missing evidence, not a crash
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return no_evidence(f"the removed-key table {keys_path} cannot be read ({first})")
    with_keys = {str(a) for a in evidence["attempts"]} if evidence is not None else set()
    missing = len(set(attempts) - with_keys)
    if missing:
        return no_evidence(f"the removed-key table {keys_path} holds no key for {missing} of them")
    keys_checked = int(evidence["keys"]) if evidence is not None else 0
    if keys_checked == 0:
        return no_evidence(f"the removed-key table {keys_path} holds no key for them")
    # Every scan (the Parquet files' keys, the log's tokens, the directory names) in one
    # union, joined once with the removed keys; the same pass counts the rows read from the
    # Parquet files (``_row``) and collects the files where a removed key turned up.
    try:
        scans: list[DataFrame] = []
        if files and stored_in_files:
            read_schema = StructType([StructField(physical, field.dataType, True)])
            on_disk = (
                spark.read.schema(read_schema)
                .parquet(*[str(path / rel) for rel in files])
                .select(
                    F.col("_metadata.file_path").alias("file"),
                    key_digest(F.col(f"`{physical}`")).alias("key_sha256"),
                )
            )
            scans.append(on_disk.withColumn("_row", F.lit(1)))
        in_log = _log_scan(spark, path)
        if in_log is not None:
            scans.append(in_log.withColumn("_row", F.lit(0)))
        hits: list[str] = []
        rows_scanned = 0
        if scans:
            scan = scans[0]
            for other in scans[1:]:
                scan = scan.unionByName(other)
            removed = keys.select("key_sha256").distinct().withColumn("_removed", F.lit(True))
            found = (
                scan.join(F.broadcast(removed), "key_sha256", "left")
                .agg(
                    F.sum("_row").alias("rows"),
                    F.collect_set(F.when(F.col("_removed"), F.col("file"))).alias("files"),
                )
                .first()
            )
            if found is not None:
                rows_scanned = int(found["rows"] or 0)
                hits = [str(f) for f in found["files"]]
    except Exception as exc:
        raise TableError(
            f"dataset {name}: cannot read the files on disk ({foreign_cause(exc)}; "
            "details in the Spark log)"
        ) from None
    root = path.resolve().as_posix().rstrip("/") + "/"
    # Partition values digested: a table partitioned by an id column (issue #23 item 5).
    relative = sorted(
        {redact_partitions(unquote(h.split(root, 1)[1]) if root in h else h) for h in hits}
    )
    return {
        "files_scanned": len(files),
        "rows_scanned": int(rows_scanned),
        "log_files_scanned": len(logs),
        "keys_checked": int(keys_checked),
        "files_with_removed_keys": relative,
        "problems": [],
    }


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
    with spark_work(spark, "erase") as ran:
        dataset = targets(config)[name]
        path = target_path(config, name, dataset)
        window = config.erasure.window_hours
        instant = now or now_utc()
        old, pending = _erasable_attempts(path, cutoff=instant - dt.timedelta(hours=window))
        vacuumed = _vacuum(spark, path, window_hours=window, run_id=run_id, reorg=bool(old))
        checked = verify_erased(spark, config, name, path, key=dataset.key, attempts=old)
        log_cleaned = False
        if any(f.startswith(maintenance.LOG_DIR + "/") for f in checked["files_with_removed_keys"]):
            # Removed keys are still in the log (statistics or partition values of a table we did
            # not create): clean the log, then prove again.
            _clean_log(spark, path, window_hours=window, run_id=run_id)
            log_cleaned = True
            checked = verify_erased(spark, config, name, path, key=dataset.key, attempts=old)
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
