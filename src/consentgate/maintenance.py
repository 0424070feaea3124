"""VACUUM that pays only for its work: one listing when something can go, none otherwise.

delta-spark's VACUUM lists every directory of the table and, on a local session, that listing
(plus the state reconstruction it joins against) is most of an erasure's cost. The receipt
needs to say what left the disk and why (a tombstoned file, or an orphan of a killed writer),
which dry runs can tell — but each dry run is a full listing of its own. So:

* **Whether VACUUM can delete anything** is decided in Python from the disk and the log (the
  Spark-free delta-rs reader): VACUUM deletes a file only when no active file references it and
  its modification time is older than the retention cutoff (delta-spark's ``VacuumCommand``:
  ``modificationTime < deleteBeforeTimestamp``, anti-joined with the valid files). When no file
  qualifies, VACUUM is not run: no listing jobs and no ``VACUUM START/END`` commits, so a night
  with nothing to erase leaves the table untouched. The check is one-sided on purpose: a file
  whose tombstone is younger than the window but whose bytes are old makes us *run* VACUUM
  (which then keeps it), never skip a deletion.
* **What went** is the difference of the disk before and after the one VACUUM; a file that went
  is *tombstoned* when the log (JSON commits, checkpoints and their sidecars still on disk)
  holds a ``remove`` action for it, and an *orphan* otherwise. When the log no longer reaches
  back to a tombstone (cleaned up), the file counts as an orphan — as delta-spark's ``LITE``
  mode would refuse, and our former dry-run pair then counted it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from consentgate import lake

#: Delta's safety check refusing a VACUUM retention under 7 days (issue #22 item 6).
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"
#: The Delta log's directory under a table (also what :mod:`consentgate.erasure` skips and scans).
LOG_DIR = "_delta_log"


@dataclass(frozen=True)
class VacuumResult:
    """What a VACUUM deleted: files the log had tombstoned, and files no commit references
    (orphans: a killed writer's uncommitted output), relative to the table; and their bytes
    (sizes taken before VACUUM ran), so a receipt needs no listing of its own."""

    tombstoned: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    bytes_removed: int = 0


def vacuum(
    spark: SparkSession,
    path: str | Path,
    *,
    retention_hours: float,
    commit_metadata: Mapping[str, Any],
) -> VacuumResult:
    """VACUUM (full) with ``retention_hours``: delete tombstoned, ``_change_data/`` and
    unreferenced files older than that; nothing runs when nothing can go (module docstring).
    Its ``VACUUM START``/``VACUUM END`` commits carry ``commit_metadata`` (our run: the
    quiescence certificate tells the night's own commits from others').

    Only file names are compared, on the driver's local disk; no Spark job returns them.
    """
    from delta.tables import DeltaTable

    root = Path(path)
    hours = float(retention_hours)
    cutoff = time.time() - hours * 3600.0
    inactive = inactive_files(root)
    if not any(mtime < cutoff for mtime, _size in inactive.values()):
        return VacuumResult()  # nothing VACUUM could delete: spare its listing and commits
    # Delta refuses a retention under its 7-day default unless its safety check is off; it is
    # turned off for this one call (the erasure window is the contract and is checked by
    # erasure), never for the session, so no other VACUUM run in it escapes the check.
    with (
        lake.commits_tagged(spark, commit_metadata),
        lake.session_setting(spark, RETENTION_CHECK_CONF, "false"),
    ):
        DeltaTable.forPath(spark, str(root)).vacuum(hours)
    gone = sorted(rel for rel in inactive if not (root / rel).exists())
    if not gone:
        return VacuumResult()
    removed = tombstoned_paths(root)
    return VacuumResult(
        tombstoned=tuple(rel for rel in gone if rel in removed),
        orphans=tuple(rel for rel in gone if rel not in removed),
        bytes_removed=sum(inactive[rel][1] for rel in gone),
    )


def inactive_files(root: Path) -> dict[str, tuple[float, int]]:
    """Files VACUUM looks at that no active file of the table is, with their modification
    times and sizes. VACUUM skips hidden names (``_``/``.``) except ``_change_data``."""
    active = {
        unquote(p) for p in lake.active_files(lake.open_table(root)).column("path").to_pylist()
    }
    out: dict[str, tuple[float, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_")) or d == "_change_data"]
        for name in filenames:
            if name.startswith((".", "_")):
                continue
            rel = (rel_dir / name).as_posix()
            if rel not in active:
                stat = (here / name).stat()
                out[rel] = (stat.st_mtime, stat.st_size)
    return out


def tombstoned_paths(root: Path) -> frozenset[str]:
    """Every path a ``remove`` action names in the log files still on disk: JSON commits (and
    JSON checkpoints), Parquet checkpoints and v2-checkpoint sidecars. Relative, unquoted."""
    return frozenset(tombstones(root))


def tombstones(root: Path) -> dict[str, int]:
    """:func:`tombstoned_paths` with each tombstone's ``deletionTimestamp`` (milliseconds; the
    latest when a path was removed more than once, 0 when the action carries none).

    VACUUM deletes a tombstoned file once both its tombstone and its bytes are older than the
    retention (delta-spark's ``VacuumCommand`` keeps unexpired tombstones among the valid files
    and deletes by modification time): :mod:`consentgate.quiescence` reads when that happens.
    """
    found: dict[str, int] = {}
    log_dir = root / LOG_DIR
    if not log_dir.is_dir():
        return found
    for file in sorted(log_dir.rglob("*")):
        if file.name.endswith(".json") and file.is_file():
            removed = _removed_in_json(file)
        elif file.name.endswith(".parquet") and file.is_file():
            removed = _removed_in_parquet(file)
        else:
            continue
        for path, at in removed:
            key = unquote(path)
            found[key] = max(found.get(key, 0), at)
    return found


def _removed_in_json(file: Path) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    with file.open(encoding="utf-8") as lines:
        for line in lines:
            if '"remove"' not in line:
                continue
            action = json.loads(line)
            remove = action.get("remove") if isinstance(action, dict) else None
            if isinstance(remove, dict) and isinstance(remove.get("path"), str):
                out.append((remove["path"], int(remove.get("deletionTimestamp") or 0)))
    return out


def _removed_in_parquet(file: Path) -> list[tuple[str, int]]:
    if "remove" not in pq.read_schema(file).names:
        return []
    column = pq.read_table(file, columns=["remove"]).column("remove")
    return [
        (r["path"], int(r.get("deletionTimestamp") or 0))
        for r in column.to_pylist()
        if r is not None and r.get("path") is not None
    ]


#: Delta's default ``delta.logRetentionDuration``: commits older than this go at a checkpoint.
DEFAULT_LOG_RETENTION_HOURS = 30 * 24.0
_INTERVAL_UNITS: Mapping[str, float] = {
    "week": 168.0,
    "day": 24.0,
    "hour": 1.0,
    "minute": 1 / 60,
    "second": 1 / 3600,
    "millisecond": 1 / 3_600_000,
    "microsecond": 1 / 3_600_000_000,
}


def interval_hours(text: str) -> float:
    """Hours of a Delta interval property (``interval 30 days``, ``2 weeks 1 day``, ``72
    hours``): pairs of a number and a unit (singular or plural), ``interval`` optional.

    Raises:
        ValueError: the text is not such an interval (its text is in the message).
    """
    words = text.strip().lower().split()
    if words[:1] == ["interval"]:
        words = words[1:]
    if not words or len(words) % 2:
        raise ValueError(f"not an interval: {text!r}")
    hours = 0.0
    for number, unit in zip(words[::2], words[1::2], strict=True):
        factor = _INTERVAL_UNITS.get(unit.removesuffix("s"))
        try:
            value = float(number)
        except ValueError:
            factor = None
        if factor is None:
            raise ValueError(f"not an interval: {text!r}")
        hours += value * factor
    return hours


def log_retention_hours(table: lake.LogTable) -> float | None:
    """How long Delta keeps this table's commits (``delta.logRetentionDuration``), in hours;
    None when it never deletes them (``delta.enableExpiredLogCleanup=false``).

    Raises:
        ValueError: the property is not an interval.
    """
    conf = table.metadata().configuration
    if str(conf.get("delta.enableExpiredLogCleanup", "true")).lower() == "false":
        return None
    raw = conf.get("delta.logRetentionDuration")
    return DEFAULT_LOG_RETENTION_HOURS if raw is None else interval_hours(str(raw))
