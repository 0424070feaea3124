"""Physical erasure after a purge, and the proof that it happened.

A purge removes rows *logically*: the old files are tombstoned in the Delta log and stay on disk
so that readers of older versions (and time travel) keep working for ``erasure.window_hours``.
After the window the files must leave the disk. Per table this module:

1. **Vacuums** with delta-rs in *full* mode with ``retention_hours = window``: tombstoned files
   whose removal is older than the window, and files the log does not know (orphans left by a
   crashed or refused purge, Spark's ``.crc`` side files) whose modification time is older
   than the window. A dry run first lists what would go, so the receipt can say how many bytes
   left; when nothing present on disk would go, no vacuum is committed (idempotent).
2. **Verifies** by reading every Parquet file *physically present* under the table directory
   (outside ``_delta_log``) with Spark over the directory listing, not via the log, hashing the
   key column the way :func:`consentgate.purge.key_digest` does, and joining with the hashed
   removed keys of every committed purge attempt older than the window. Any match is a failure
   naming the file (never the key). Attempts still inside the window are reported as pending.
3. **Receipts**: one ``erasure`` audit entry per table (files and bytes removed, orphans,
   files scanned, keys checked, result).

With ``window_hours: 0`` the purge and the erasure happen in one run.

Known limits (documented in the README): on a shared filesystem, a window of 0 also deletes a
concurrent writer's files that are written but not yet committed; the Delta log's own add
actions keep min/max statistics of the key and asset columns, so a removed id can survive in a
log JSON or checkpoint's *stats* until the log is cleaned (``delta.logRetentionDuration``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deltalake.transaction import CommitProperties
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from consentgate import audit, lake
from consentgate.config import Config
from consentgate.errors import TableError
from consentgate.purge import (
    OPERATION,
    key_digest,
    key_table_path,
    target_path,
    targets,
)
from consentgate.runtime import iso, new_run_id, now_utc

_LOG_DIR = "_delta_log"


def physical_parquet_files(root: Path) -> list[str]:
    """Every ``*.parquet`` file under a table directory, outside the Delta log, relative."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts and rel_dir.parts[0] == _LOG_DIR:
            dirnames[:] = []
            continue
        if not rel_dir.parts:
            dirnames[:] = [d for d in dirnames if d != _LOG_DIR]
        for filename in filenames:
            if filename.endswith(".parquet"):
                out.append((rel_dir / filename).as_posix())
    return sorted(out)


def _erasable_attempts(path: Path, *, cutoff: dt.datetime) -> tuple[list[str], list[str]]:
    """Committed purge attempts of this table: (older than the cutoff, still in the window)."""
    old: list[str] = []
    pending: list[str] = []
    for entry in lake.history(path):
        if entry.get("consentgate.operation") != OPERATION or not entry.get("consentgate.attempt"):
            continue
        at = dt.datetime.fromtimestamp(int(entry["timestamp"]) / 1000, tz=dt.UTC)
        (old if at <= cutoff else pending).append(str(entry["consentgate.attempt"]))
    return old, pending


def _vacuum(path: Path, *, window_hours: int, run_id: str) -> dict[str, Any]:
    table = lake.open_table(path)
    common: dict[str, Any] = {"retention_hours": window_hours, "enforce_retention_duration": False}
    tombstoned = set(table.vacuum(dry_run=True, **common))
    candidates = table.vacuum(dry_run=True, full=True, **common)
    present: dict[str, int] = {}
    for rel in candidates:
        full = Path(rel) if rel.startswith("/") else path / rel
        if full.exists():
            present[rel] = full.stat().st_size
    if not present:
        return {
            "files_removed": 0,
            "bytes_removed": 0,
            "tombstoned_removed": 0,
            "orphans_removed": 0,
        }
    deleted = table.vacuum(
        dry_run=False,
        full=True,
        commit_properties=CommitProperties(custom_metadata={"consentgate.run": run_id}),
        **common,
    )
    gone = [rel for rel in deleted if rel in present]
    return {
        "files_removed": len(gone),
        "bytes_removed": int(sum(present[rel] for rel in gone)),
        "tombstoned_removed": sum(1 for rel in gone if rel in tombstoned),
        "orphans_removed": sum(1 for rel in gone if rel not in tombstoned),
    }


def verify_erased(
    spark: SparkSession,
    config: Config,
    name: str,
    path: Path,
    *,
    key: str,
    attempts: Sequence[str],
) -> dict[str, Any]:
    """Prove that no Parquet file on disk under ``path`` holds a key removed by ``attempts``.

    Returns:
        ``files_scanned, rows_scanned, keys_checked, files_with_removed_keys[]``.

    Raises:
        TableError: the key is a partition column (not stored in the files), or a file cannot
            be read as Parquet (named).
    """
    table = lake.open_table(path)
    if key in table.metadata().partition_columns:
        raise TableError(f"dataset {name}: key {key!r} is a partition column; cannot verify")
    schema = lake.spark_schema(table)
    keys_path = key_table_path(config, name)
    files = physical_parquet_files(path)
    if not attempts or not lake.is_table(keys_path):
        return {
            "files_scanned": len(files),
            "rows_scanned": 0,
            "keys_checked": 0,
            "files_with_removed_keys": [],
        }
    wanted = spark.createDataFrame([(a,) for a in attempts], "attempt string")
    removed = (
        lake.read_table(spark, keys_path)
        .join(F.broadcast(wanted), "attempt")
        .select("key_sha256")
        .distinct()
        .persist()
    )
    try:
        keys_checked = removed.count()
        if not files:
            return {
                "files_scanned": 0,
                "rows_scanned": 0,
                "keys_checked": keys_checked,
                "files_with_removed_keys": [],
            }
        read_schema = StructType([StructField(key, schema[key].dataType, True)])
        try:
            on_disk = (
                spark.read.schema(read_schema)
                .parquet(*[str(path / rel) for rel in files])
                .select(
                    key_digest(F.col(key)).alias("key_sha256"),
                    F.col("_metadata.file_path").alias("file"),
                )
                .persist()
            )
            rows_scanned = on_disk.count()
        except Exception as exc:
            raise TableError(f"dataset {name}: cannot read the files on disk: {exc}") from None
        try:
            hits = [
                r["file"]
                for r in on_disk.join(removed, "key_sha256").select("file").distinct().collect()
            ]
        finally:
            on_disk.unpersist()
    finally:
        removed.unpersist()
    root = path.resolve().as_posix().rstrip("/") + "/"
    relative = sorted(h.split(root, 1)[1] if root in h else h for h in (str(x) for x in hits))
    return {
        "files_scanned": len(files),
        "rows_scanned": int(rows_scanned),
        "keys_checked": int(keys_checked),
        "files_with_removed_keys": relative,
    }


def erase_dataset(
    spark: SparkSession,
    config: Config,
    name: str,
    *,
    run_id: str,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Vacuum one table past the erasure window, verify on disk, and write the receipt.

    Returns:
        The receipt: ``dataset, window_hours, files_removed, bytes_removed, tombstoned_removed,
        orphans_removed, files_scanned, rows_scanned, keys_checked, attempts_erased,
        attempts_pending, files_with_removed_keys[], result`` (``verified`` or ``failed``).
    """
    dataset = targets(config)[name]
    path = target_path(config, name, dataset)
    window = config.erasure.window_hours
    instant = now or now_utc()
    vacuumed = _vacuum(path, window_hours=window, run_id=run_id)
    old, pending = _erasable_attempts(path, cutoff=instant - dt.timedelta(hours=window))
    checked = verify_erased(spark, config, name, path, key=dataset.key, attempts=old)
    ok = not checked["files_with_removed_keys"]
    receipt: dict[str, Any] = {
        "dataset": name,
        "window_hours": window,
        "at": iso(instant),
        **vacuumed,
        **checked,
        "attempts_erased": len(old),
        "attempts_pending": len(pending),
        "result": "verified" if ok else "failed",
    }
    audit_payload = {k: v for k, v in receipt.items() if k != "files_with_removed_keys"}
    audit_payload["files_with_removed_keys"] = len(checked["files_with_removed_keys"])
    audit_payload["files_with_removed_keys_sha256"] = hashlib.sha256(
        "\n".join(checked["files_with_removed_keys"]).encode()
    ).hexdigest()
    audit.append_event(spark, config, kind="erasure", run_id=run_id, payload=audit_payload)
    return receipt


def erase_and_verify(
    spark: SparkSession,
    config: Config,
    *,
    run_id: str | None = None,
    datasets: Sequence[str] | None = None,
    as_of: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Erase and verify every purge target (or ``datasets``).

    ``as_of`` is accepted for symmetry with the other steps but erasure runs on wall-clock
    time: the window is measured from when the removal was committed, as Delta's vacuum does.

    Returns:
        ``{"ok": bool, "datasets": {name: receipt}}``.
    """
    del as_of
    run = run_id or new_run_id("erasure")
    names = list(datasets) if datasets is not None else list(targets(config))
    receipts = {name: erase_dataset(spark, config, name, run_id=run, now=now) for name in names}
    return {
        "ok": all(r["result"] == "verified" for r in receipts.values()),
        "datasets": receipts,
    }
