"""The purge: remove every row whose consent no longer holds from every derivative Delta table
and every registered training snapshot, touching only the data files that hold such rows.

Per run, then per table (Airflow maps over the tables; see :func:`plan_purge` and
:func:`purge_dataset`), then :mod:`consentgate.erasure`:

1. **Decide once per run** (:func:`decide_run`): effective consent is evaluated once for every
   configured use case, and the lineage closure is walked once for all lineage-traced tables
   together (stems, stem embeddings, shards and their snapshots share every hop). Each table,
   pinned at its latest version ``v``, is then decided in one pass over its decision columns
   (key, asset column, derived_at, and Spark's ``_metadata.file_path``): Parquet is columnar,
   so embeddings and blobs are never read outside the affected files. The result is, per
   table, the rows to remove *located* in their data files (``key_sha256, _file, reason``), so
   the plan is exact: only files that really hold a removed row are touched, the minimum any
   file-level rewrite can do. Only per-file and per-reason counts reach the driver. In one
   process the located rows stay persisted on the executors; for tasks in other processes
   :func:`plan_purge` with a ``run_id`` materialises them under
   ``state_dir/purge_runs/<run_id>/`` (digests only, never raw ids) as two small Delta work
   tables, the run's consent and every table's located rows in one table tagged with the
   table's id, and ``plan.json`` (per table: its id, plan and decided files; tables it could
   not decide included, with why). Each task loads its table's decision with
   :func:`load_decision` (its id's rows only), which fails (naming the table and the run)
   rather than deciding again when there is none. :func:`discard_run` removes them once the
   run is recorded.
2. **Record keys**: the removed keys, hashed (SHA-256 of ``"k:" + key``; ``"n:"`` for a null
   key), are appended to a key table under ``state_dir/purge_keys/<dataset>`` tagged with the
   attempt id, *before* the commit, so that a crash after the commit can never lose them. The
   erasure verifier only trusts attempts whose commit is in the table's history.
3. **Remove** with one delta-spark ``MERGE INTO t USING <key digests> s ON sha2(t.key) =
   s.key_sha256 WHEN MATCHED THEN DELETE`` (the digests broadcast when few): on a table with
   deletion vectors delta-spark writes vectors and rewrites no data file; otherwise it rewrites
   only the files that hold matched rows, survivors bit-for-bit equal. The log records the
   condition's text, never a key; ``userMetadata`` carries run id, attempt id, counts per
   reason, the use case's policy and ``as_of``. MERGE reads the table as it is when it runs, so
   rows that moved since the decision (a compaction) are still found by key. A concurrent
   commit that conflicts with ours is delta-spark's to detect: its typed exception becomes
   :class:`~consentgate.errors.ConflictError`, the attempt is audited as a conflict and the
   rows are re-located, up to ``max_retries`` times. Re-locating never re-evaluates consent:
   files are immutable, so decided files still active keep their decision, and only files
   added since (a compaction's output, an append) are read and decided with the run's consent.
   When anyone committed between the decision and our commit, the table is re-located once
   more so that appended rows of withdrawn assets are removed in the same run.
4. **Audit**: one ``purge`` entry per committed table (counts, versions, attempt ids, files
   rewritten, deletion vectors written).

Crash safety: a MERGE either commits or leaves nothing visible (files of a killed writer are
orphans, erased by the erasure step once older than the window). A commit without its audit
entry (crash between the two) is found on the next run from the table's history and recorded
as a ``recovery`` entry, as is an attempt that recorded keys but never committed. Purges of one
table are serialised by a per-table ``flock`` so that a running attempt is never mistaken for a
crashed one. For tests, ``CONSENTGATE_PURGE_CRASH_AT=before_commit|after_commit`` kills the
process with SIGKILL at that point, and :data:`_TEST_HOOKS` (process-local callbacks that
production never sets) lets a test act there: another writer commits between our decision and
our MERGE, a conflict, a crash.

Idempotence: a table with nothing to remove gets no commit at all.

Reasons a row is removed (the ``reasons{}`` counts): effective consent's denial reasons
(:data:`consentgate.consent.DENIAL_REASONS`, ``asset_unknown`` for a source asset consent
does not know), ``no_lineage`` (a row whose sources cannot be traced), ``retention_expired``,
and :data:`USE_CASE_NOT_CONFIGURED`: a table (in practice a registered snapshot: a configured
dataset's use case is checked with the config) whose use case is no longer in the config.
Nothing grants an unconfigured use case, so every row of such a table goes, without
evaluating consent or walking lineage for it.

Failures are per table: each table is decided, purged and erased on its own. A table that
cannot be opened or decided (missing, key column absent, an unreadable or corrupt data file)
or whose purge or erasure fails is recorded as failed with a message naming the table (never
a row's value: Spark's own error text is not repeated, only its error class and the data
file's name) while every other table is still purged and erased; :func:`run_purge` then
audits the run, failed tables included, and raises :class:`PurgeFailed` (exit 1) naming them.
:func:`decide_run` decides every table in one Spark job and, should that job fail, decides
table by table to find the culprit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    IntegerType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from consentgate import audit, heads, lake
from consentgate.config import Config, DatasetConfig
from consentgate.errors import (
    CheckFailed,
    ConfigError,
    ConflictError,
    ConsentgateError,
    TableError,
    foreign_cause,
)
from consentgate.lake import LogTable
from consentgate.logs import step
from consentgate.redact import redact_partitions, redact_uuids
from consentgate.removals import audited_attempts, key_table_dir
from consentgate.runtime import iso, new_run_id, now_utc, parse_instant
from consentgate.spark import spark_work
from consentgate.state import file_lock

#: A decider maps a table's rows (its own columns) to the rows to remove: two columns, the
#: row key (any name and type; compared as a string) then ``reason``. The default decision
#: (consent + lineage + retention, :func:`decide_run`) is not a decider: it is made once per
#: run, not per table and pass.
Decider = Callable[[DataFrame], DataFrame]

log = logging.getLogger(__name__)

#: The reason every row of a table whose use case is no longer configured is removed with.
USE_CASE_NOT_CONFIGURED: Final = "use_case_not_configured"

CRASH_ENV: Final = "CONSENTGATE_PURGE_CRASH_AT"
#: Test hooks, process-local: point -> callback, called with the table's name when a purge pass
#: reaches the point. ``before_commit``: keys recorded, MERGE about to run (a ConflictError
#: raised here is handled as delta-spark's refusal of the MERGE: audited, rows re-located,
#: retried); ``after_commit``: MERGE committed, its audit entry not yet written. Nothing in
#: consentgate registers one and no caller can pass one: tests set entries with
#: ``monkeypatch.setitem`` (see tests/test_purge_concurrency.py, tests/test_purge_crash.py).
_TEST_HOOKS: Final[dict[str, Callable[[str], None]]] = {}
OPERATION: Final = "consentgate.purge"
_META_OPERATION: Final = "consentgate.operation"
_META_ATTEMPT: Final = "consentgate.attempt"
_META_RUN: Final = "consentgate.run"
_META_REASONS: Final = "consentgate.reasons"
_META_ROWS: Final = "consentgate.rows_deleted"
_META_DATASET: Final = "consentgate.dataset"

#: Columns of a located removal: the removed row's key digest (:func:`key_digest`), its data
#: file (relative to the table, as in the log) and the reason. One row per removed row.
KEY_SHA: Final = "key_sha256"
#: The SHA-256 of a removed key's first :data:`PREFIX_CHARS` characters (null when the key is
#: no longer than that), and that length: what a truncated string statistic of the key in a
#: Delta log is compared with (:func:`prefix_digest`, :mod:`consentgate.erasure_proof`).
PREFIX_SHA: Final = "prefix_sha256"
PREFIX_CHARS: Final = "prefix_chars"
#: The removed row's asset id (its dataset's ``asset_column``, as stored), hashed whole and
#: by its prefix like the key; null for a table traced through lineage. Erasure proves that
#: an asset no row of the table keeps is gone from the table's files and log (issue #22).
ASSET_SHA: Final = "asset_sha256"
ASSET_PREFIX_SHA: Final = "asset_prefix_sha256"
LOCATED_COLUMNS: Final = (
    KEY_SHA,
    PREFIX_SHA,
    PREFIX_CHARS,
    ASSET_SHA,
    ASSET_PREFIX_SHA,
    "_file",
    "reason",
)
#: How many characters of a string delta-spark keeps in a min/max statistic (default 32).
STATS_PREFIX_CONF: Final = "spark.databricks.io.skipping.stringPrefixLength"
_STATS_PREFIX_DEFAULT: Final = 32
#: Lineage walks give up after this many edges (lineage.source_assets' default).
_MAX_HOPS: Final = 32
#: The synthetic root node of the run's single lineage walk, and the separator between a
#: dataset and a key in its node keys (NUL: in no dataset name).
_ROOT: Final = "__consentgate_purge_roots__"
_SEP: Final = "\x00"
#: What follows a table's index in the run-wide key of a row whose key is null (where a
#: non-null key has :data:`_SEP`): null keys of two tables stay apart, and apart from keys.
_NULL_KEY: Final = "\x01"
_PLAN_FILE: Final = "plan.json"
#: ``plan.json``'s format: 2 since every table's located rows share one work table, 3 since
#: they carry their keys' prefix digests (:data:`PREFIX_SHA`).
_PLAN_FORMAT: Final = 3
#: A run's work tables (under :func:`run_dir`): its consent, and every decided table's
#: located rows tagged with :data:`WORK_ID`.
_CONSENT_TABLE: Final = "consent"
_LOCATED_TABLE: Final = "located"
#: The column of the ``located`` work table naming a row's table: its id in ``plan.json``.
WORK_ID: Final = "table_id"
#: Removed rows per data file of the ``located`` work table (about 100 bytes each).
_WORK_ROWS_PER_FILE: Final = 2_000_000
#: Removed keys broadcast to the rewrite's anti join up to this many (64-byte digests).
_BROADCAST_ROWS: Final = 1_000_000

KEY_TABLE_SCHEMA: Final = StructType(
    [
        StructField("key_sha256", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("attempt", StringType(), False),
        StructField("run_id", StringType(), False),
        StructField("recorded_at", TimestampType(), False),
        # Added for issue #22 (truncated statistics); null in rows recorded before.
        StructField(PREFIX_SHA, StringType(), True),
        StructField(PREFIX_CHARS, IntegerType(), True),
        StructField(ASSET_SHA, StringType(), True),
        StructField(ASSET_PREFIX_SHA, StringType(), True),
    ]
)


# --------------------------------------------------------------------------------------------
# Failures


class PurgeFailed(CheckFailed):
    """Some tables failed (named in the message) while every other one was purged, erased and
    audited; ``result`` is what :func:`run_purge` would have returned (``ok`` false,
    ``failed{name: message}``)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class TableFailure(RuntimeError):
    """A table's Spark work failed for a reason that is not known to be deterministic (an
    unreadable file, a lost executor): retryable. The message names the table and, for a
    data file, only its file name; Spark's own text (which can quote paths holding partition
    values) stays in the Spark log."""


class DecideFailed(ConsentgateError):
    """The run's decide step could not decide this table; the message is the one it recorded
    in the run's work tables (:func:`table_failure`'s: a missing table, a corrupt data file).

    Raised by the table's purge task, which never decides on its own. Not retryable: a retry
    loads the same record; the next run decides again.
    """

    exit_code = 1


class DecisionMissing(ConsentgateError):
    """A purge task found no decision of its run for its table (:func:`load_decision`): the
    run's decide step did not finish, or the run's work tables were already removed. Not
    retryable for the same reason: the remedy is to run the decide step again."""

    exit_code = 1


def table_failure(name: str, exc: BaseException, *, doing: str) -> Exception:
    """What to record, raise and show for table ``name`` whose ``doing`` raised ``exc``.

    A :class:`~consentgate.errors.ConsentgateError` is ours: its message already avoids raw
    ids, and it is kept (prefixed with the table's name when it lacks it). Anything else is
    replaced by a :class:`TableFailure` naming the table, the Spark error class and the data
    file's name, never Spark's text.
    """
    text = str(exc).strip()
    if isinstance(exc, ConsentgateError):
        if f"dataset {name}" in text or f"dataset {name!r}" in text:
            return exc
        try:
            return type(exc)(f"dataset {name}: {doing}: {text}")
        except Exception:  # a subclass with another constructor
            return ConsentgateError(f"dataset {name}: {doing}: {text}")
    cause = foreign_cause(exc)
    cls, _, where = cause.partition(" reading data file ")
    where = f" reading data file {where}" if where else ""
    return TableFailure(f"dataset {name}: {doing} failed{where} ({cls}; details in the Spark log)")


# --------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class FilePlan:
    """One data file that holds rows to remove."""

    path: str
    size_bytes: int
    rows: int
    rows_removed: int


@dataclass(frozen=True)
class DatasetPlan:
    """What a purge of one table at one version would do (counts and file names only)."""

    name: str
    path: str
    version: int
    rows_before: int
    files_total: int
    bytes_total: int
    reasons: dict[str, int]
    files: tuple[FilePlan, ...] = ()

    @property
    def rows_removed(self) -> int:
        return sum(self.reasons.values())

    @property
    def bytes_affected(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "rows_before": self.rows_before,
            "rows_deleted": self.rows_removed,
            "rows_after": self.rows_before - self.rows_removed,
            "reasons": dict(sorted(self.reasons.items())),
            "files_total": self.files_total,
            "bytes_total": self.bytes_total,
            "files_affected": len(self.files),
            "bytes_affected": self.bytes_affected,
            # Partition values digested: a table partitioned by an id column (issue #23 item 5).
            "files": [redact_partitions(f.path) for f in self.files],
        }


@dataclass(frozen=True)
class PurgePlan:
    """The plan over every configured dataset and registered snapshot; ``failed`` names the
    tables that could not be planned, with why."""

    as_of: dt.datetime
    datasets: dict[str, DatasetPlan] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": iso(self.as_of),
            "datasets": {name: plan.to_json() for name, plan in self.datasets.items()},
            "rows_deleted": sum(p.rows_removed for p in self.datasets.values()),
            "files_affected": sum(len(p.files) for p in self.datasets.values()),
            "failed": dict(sorted(self.failed.items())),
        }


# --------------------------------------------------------------------------------------------
# Targets


def targets(config: Config) -> dict[str, DatasetConfig]:
    """Every table the purge covers: configured datasets, then registered snapshots.

    Snapshot names look like ``snapshot/<model_version>/<dataset>`` and their paths are absolute.
    """
    from consentgate.registry import snapshot_datasets

    out = dict(config.datasets)
    for name, dataset in snapshot_datasets(config).items():
        if name in out:
            raise ConsentgateError(f"dataset {name!r} is both configured and a snapshot")
        out[name] = dataset
    return out


def target_path(config: Config, name: str, dataset: DatasetConfig) -> Path:
    """Absolute path of a target table (a configured dataset, or a registered snapshot whose
    registry entry must not point outside the lake: :meth:`Config.resolve`)."""
    key = f"datasets.{name}.path" if name in config.datasets else f"registry entry {name}"
    return config.resolve(dataset.path, key=key)


# --------------------------------------------------------------------------------------------
# Locating rows to remove


def _as_key(column: Column) -> Column:
    """Keys are compared as strings (as lineage does), so any key type works the same way."""
    return column.cast(StringType())


def key_digest(column: Column) -> Column:
    """SHA-256 of a key as stored in the key table: ``"k:" + key``, or ``"n:"`` for null."""
    text = F.when(column.isNull(), F.lit("n:")).otherwise(
        F.concat(F.lit("k:"), column.cast("string"))
    )
    return F.sha2(text, 256)


def stats_prefix_chars(spark: SparkSession) -> int:
    """The session's :data:`STATS_PREFIX_CONF`: the length at which delta-spark truncates a
    string statistic, so the length of the key prefix the key table records.

    Raises:
        ConfigError: the setting is not a positive integer.
    """
    raw = spark.conf.get(STATS_PREFIX_CONF, str(_STATS_PREFIX_DEFAULT))
    try:
        chars = int(str(raw))
    except ValueError:
        chars = 0
    if chars <= 0:
        raise ConfigError(f"Spark setting {STATS_PREFIX_CONF}={raw!r} is not a positive integer")
    return chars


def prefix_hash(column: Column, chars: int) -> Column:
    """SHA-256 of ``"k:"`` and a value's first ``chars`` characters (as text), hashed like
    :func:`key_digest`: the one encoding of a prefix digest, for the removed keys the key
    table records (:func:`prefix_digest`) and the stored values erasure compares with them
    (:mod:`consentgate.erasure_proof`)."""
    return F.sha2(F.concat(F.lit("k:"), F.substring(column.cast("string"), 1, chars)), 256)


def prefix_digest(column: Column, chars: int) -> Column:
    """:func:`prefix_hash` of a key longer than ``chars`` characters (as text); null for a
    shorter key, or a null one.

    delta-spark keeps only a prefix of a long string in a file's min/max statistics (a
    36-character UUID key becomes its first 32 characters, or those and one more character
    for a maximum): the whole key's digest never matches it, this one does.
    """
    return F.when(F.length(column.cast("string")) > F.lit(chars), prefix_hash(column, chars))


def _digests(column: Column, spark: SparkSession, *, asset: Column | None) -> list[Column]:
    """:data:`KEY_SHA`, :data:`PREFIX_SHA` and :data:`PREFIX_CHARS` of a located row's key,
    and :data:`ASSET_SHA`, :data:`ASSET_PREFIX_SHA` of its raw asset id (``asset``, null for
    a table without an asset column)."""
    chars = stats_prefix_chars(spark)
    if asset is None:
        asset = F.lit(None).cast(StringType())
    present = F.when(asset.isNotNull(), key_digest(asset))
    return [
        key_digest(column).alias(KEY_SHA),
        prefix_digest(column, chars).alias(PREFIX_SHA),
        F.lit(chars).cast(IntegerType()).alias(PREFIX_CHARS),
        present.alias(ASSET_SHA),
        prefix_digest(asset, chars).alias(ASSET_PREFIX_SHA),
    ]


def _asset_of(rows: DataFrame, asset_column: str | None) -> Column | None:
    """The raw asset id column of ``rows`` as text, if the table names one and has it."""
    if asset_column is None or asset_column not in rows.columns:
        return None
    return F.col(asset_column).cast(StringType())


def _located(
    rows: DataFrame,
    removals: DataFrame,
    key: str,
    *,
    asset_column: str | None,
    unique: bool = False,
) -> DataFrame:
    """:data:`LOCATED_COLUMNS` of every row of ``rows`` (which carry ``_file``) to remove.

    ``removals`` is a decider's output (the key, any name and type, then ``reason``); a key
    listed twice keeps its smallest reason, unless the caller knows keys are ``unique``. The
    join is null-safe: a removed null key removes the null-key rows (fail closed) instead of
    silently matching nothing. Only removed rows' keys are hashed.
    """
    first = removals.columns[0]
    one_reason = removals.select(_as_key(F.col(first)).alias("_purge_key"), F.col("reason"))
    if not unique:
        one_reason = one_reason.groupBy("_purge_key").agg(F.min("reason").alias("reason"))
    asset = _asset_of(rows, asset_column)
    picked = rows.select(key, "_file", *([] if asset is None else [asset.alias("_asset")]))
    joined = picked.join(one_reason, _as_key(picked[key]).eqNullSafe(one_reason["_purge_key"]))
    return joined.select(
        *_digests(F.col(key), rows.sparkSession, asset=None if asset is None else F.col("_asset")),
        "_file",
        "reason",
    )


def _located_hashed(
    rows: DataFrame, removals: DataFrame, key: str, *, asset_column: str | None
) -> DataFrame:
    """Like :func:`_located`, but ``removals`` are already hashed (``key_sha256, reason``):
    used for the few rows of files added since a decision, matched against earlier ones."""
    one_reason = removals.groupBy(KEY_SHA).agg(F.min("reason").alias("reason"))
    asset = _asset_of(rows, asset_column)
    picked = rows.select(*_digests(F.col(key), rows.sparkSession, asset=asset), "_file")
    return picked.join(one_reason, KEY_SHA).select(*LOCATED_COLUMNS)


def _hashed_removals(removals: DataFrame) -> DataFrame:
    """A decider's output as ``key_sha256, reason``."""
    first = removals.columns[0]
    return removals.select(key_digest(F.col(first)).alias(KEY_SHA), F.col("reason"))


def _summarise(
    name: str,
    path: Path,
    table: LogTable,
    located: DataFrame,
    *,
    counted: Sequence[tuple[str, str, int]] | None = None,
) -> DatasetPlan:
    """Count ``located`` per file and reason (only those counts reach the driver; or take
    them from ``counted``, ``(file, reason, rows)`` already collected with other tables') and
    check that every file it names is active in ``table``'s snapshot."""
    files = lake.active_files(table)
    paths = files.column("path").to_pylist()
    sizes = dict(zip(paths, files.column("size_bytes").to_pylist(), strict=True))
    counts = dict(zip(paths, files.column("num_records").to_pylist(), strict=True))
    per_file: dict[str, int] = {}
    reasons: dict[str, int] = {}
    if counted is None:
        counted = [
            (row["_file"], row["reason"], int(row["count"]))
            for row in located.groupBy("_file", "reason").count().collect()
        ]
    for file, reason, count in counted:
        per_file[file] = per_file.get(file, 0) + count
        reasons[reason] = reasons.get(reason, 0) + count
    unknown = sorted(set(per_file) - set(sizes))
    if unknown:
        shown = [redact_partitions(f) for f in unknown[:3]]  # no partition value (issue #23)
        raise TableError(f"dataset {name}: rows located in files not in the log: {shown}")
    return DatasetPlan(
        name=name,
        path=str(path),
        version=int(table.version()),
        rows_before=int(sum(int(c or 0) for c in counts.values())),
        files_total=len(paths),
        bytes_total=int(sum(int(s) for s in sizes.values())),
        reasons=reasons,
        files=tuple(
            FilePlan(p, int(sizes[p]), int(counts[p] or 0), n) for p, n in sorted(per_file.items())
        ),
    )


def _open_checked(name: str, path: Path, key: str, *, version: int | None = None) -> LogTable:
    table = lake.open_table(path, version=version)
    if key not in lake.spark_schema(table).fieldNames():
        raise TableError(f"dataset {name}: key column {key!r} is not in table {path}")
    return table


def plan_table(
    spark: SparkSession,
    name: str,
    path: Path,
    *,
    key: str,
    asset_column: str | None,
    decide: Decider,
) -> tuple[DatasetPlan, DataFrame]:
    """Plan the purge of one table at its latest version with an explicit decider.

    Returns:
        The plan and a DataFrame (:data:`LOCATED_COLUMNS`) of the rows to remove, persisted
        so that the rewrite does not decide again; the caller unpersists it.

    Raises:
        TableError: the table is missing, unreadable, or lacks the key column.
    """
    table = _open_checked(name, path, key)
    rows = lake.read_table(spark, path, version=int(table.version()), with_file=True)
    located = _located(rows, decide(rows.drop("_file")), key, asset_column=asset_column).persist()
    return _summarise(name, path, table, located), located


# --------------------------------------------------------------------------------------------
# Deciding once per run


@dataclass
class Decided:
    """One table's removals, decided at one version and located in its files.

    Attributes:
        plan: Counts and affected files at ``plan.version``.
        located: :data:`LOCATED_COLUMNS` of the rows to remove (persisted, or the table's
            rows of the run's ``located`` work table).
        covered: The data files whose every row has been decided: the snapshot's files at
            ``plan.version``, later minus files others removed and plus files we wrote. A
            file outside this set (a concurrent append or compaction) is decided on its own.
    """

    plan: DatasetPlan
    located: DataFrame
    covered: frozenset[str]
    #: When decided together with other tables (:func:`_decide_together`): the persisted
    #: frame of all their located rows (``_table`` then :data:`LOCATED_COLUMNS`) and this
    #: table's ``_table`` in it (``located`` is that frame filtered on it). :func:`materialise`
    #: writes that frame once: a union of per-table filters of one cached frame is no good,
    #: Spark matches the cache for the union's first branch only and decides the others again
    #: (on the 80-asset demo lake's 7 tables: 14 more jobs, about 4 s more).
    shared: tuple[DataFrame, int] | None = None


@dataclass
class RunDecisions:
    """A run's decisions: effective consent for every use case, evaluated once, and per table
    the rows to remove, located in its files.

    ``consent`` is what rows appended or rewritten by others during the run are decided with,
    so a conflict re-locates rows but never re-evaluates consent. When loaded from a work
    table its ``asset_id`` holds SHA-256 digests (``hashed_assets``): no raw id is ever at
    rest under ``purge_runs/``.
    """

    as_of: dt.datetime
    consent: DataFrame | None
    hashed_assets: bool
    tables: dict[str, Decided] = field(default_factory=dict)
    #: Tables that could not be opened or decided: the exception to report (and raise when
    #: such a table is purged), see :func:`table_failure`.
    failed: dict[str, Exception] = field(default_factory=dict)
    _owned: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Unpersist everything this run cached (executor memory; nothing on the driver)."""
        for frame in self._owned:
            frame.unpersist()
        self._owned.clear()


def _consent(
    spark: SparkSession, config: Config, as_of: dt.datetime, use_cases: Sequence[str]
) -> DataFrame:
    """Effective consent of every asset for ``use_cases`` (those of the tables being
    decided: all of them for a whole run), in one evaluation.

    No ``extra_asset_ids``: :func:`lineage.row_decisions` already treats an asset missing from
    the consent frame as ``asset_unknown``, so feeding it every derivative's asset ids (one
    more scan of every table) would change no decision.
    """
    from consentgate.consent import effective_consent

    records = lake.read_table(spark, config.table_path("consent_records"))
    assets = lake.read_table(spark, config.table_path("assets"))
    chosen = {u: config.use_cases[u] for u in sorted(set(use_cases))}
    return effective_consent(records, assets, use_cases=chosen, as_of=as_of).select(
        "asset_id", "use_case", "decision", "reason"
    )


def _closure(edges: DataFrame, nodes: DataFrame) -> DataFrame:
    """Source assets of the keys of every lineage-traced table, in one lineage walk.

    ``nodes`` holds ``parent_dataset`` (a lineage dataset ``d``) and ``parent_key`` (a key
    ``k``, a string). Each non-null one gets a synthetic edge from a root node
    ``(ROOT, d + NUL + k)`` to ``(d, k)``; :func:`lineage.source_assets` then walks all of
    them together, so stems, stem embeddings, shards and their snapshots share every hop's
    Spark jobs (a walk through ``stems`` is not repeated per child dataset), and a key shared
    by a dataset and its snapshots is traced once. The extra first hop is why ``max_hops`` is
    one more than the default: fail-closed results (cycle, missing edge, hop bound, each with
    the node where tracing broke) are exactly those of a walk started at ``(d, k)``.

    Returns:
        :data:`lineage.SOURCE_COLUMNS` with ``key`` = ``d + NUL + k``; persisted by the caller.
    """
    from consentgate import lineage

    roots = (
        nodes.where(F.col("parent_key").isNotNull())
        .distinct()
        .select(
            F.lit(_ROOT).alias("child_dataset"),
            F.concat("parent_dataset", F.lit(_SEP), "parent_key").alias("child_key"),
            "parent_dataset",
            "parent_key",
        )
    )
    walk = edges.select(*lineage.LINEAGE_SCHEMA).unionByName(roots)
    return lineage.source_assets(
        _ROOT,
        roots.select(F.col("child_key").alias("key")),
        key="key",
        asset_column=None,
        lineage=walk,
        max_hops=_MAX_HOPS + 1,
    )


def _hash_assets(sources: DataFrame) -> DataFrame:
    return sources.withColumn("asset_id", F.sha2(F.col("asset_id"), 256))


def _decide_rows(
    rows: DataFrame,
    sources: DataFrame,
    consent: DataFrame,
    *,
    name: str,
    dataset: DatasetConfig,
    as_of: dt.datetime,
) -> DataFrame:
    """The rows to remove among ``rows`` (which carry ``_file``), located: consent + lineage +
    retention exactly as gate decides (:func:`lineage.row_decisions`)."""
    from consentgate import lineage

    decisions = lineage.row_decisions(
        rows,
        sources,
        consent,
        key=dataset.key,
        use_case=dataset.use_case,
        retention_days=dataset.retention_days,
        derived_at_column=dataset.derived_at_column,
        as_of=as_of,
        dataset=name,
    )
    removed = decisions.where(~F.col("keep")).select("key", "reason")
    return _located(rows, removed, dataset.key, asset_column=dataset.asset_column, unique=True)


def _direct_sources(
    name: str, dataset: DatasetConfig, rows: DataFrame, edges: DataFrame
) -> DataFrame:
    from consentgate import lineage
    from consentgate.registry import lineage_dataset

    return lineage.source_assets(
        lineage_dataset(name),
        rows,
        key=dataset.key,
        asset_column=dataset.asset_column,
        lineage=edges,
        max_hops=_MAX_HOPS,
    )


def _all_removed(rows: DataFrame, key: str, *, asset_column: str | None) -> DataFrame:
    """Every row of ``rows`` (which carry ``_file``), located, as :data:`USE_CASE_NOT_CONFIGURED`:
    what a table whose use case is no longer configured loses (nothing grants it)."""
    return rows.select(
        *_digests(F.col(key), rows.sparkSession, asset=_asset_of(rows, asset_column)),
        "_file",
        F.lit(USE_CASE_NOT_CONFIGURED).alias("reason"),
    )


def _configured(config: Config, dataset: DatasetConfig) -> bool:
    return dataset.use_case in config.use_cases


@dataclass
class _Pinned:
    """A table opened and checked at its latest version, its decision columns not yet read."""

    dataset: DatasetConfig
    path: Path
    table: LogTable
    rows: DataFrame


def _pin(spark: SparkSession, config: Config, name: str, dataset: DatasetConfig) -> _Pinned:
    path = target_path(config, name, dataset)
    table = _open_checked(name, path, dataset.key)
    rows = lake.read_table(spark, path, version=int(table.version()), with_file=True)
    return _Pinned(dataset=dataset, path=path, table=table, rows=rows)


def _decision_columns(i: int, name: str, one: _Pinned, *, as_of: dt.datetime) -> DataFrame:
    """What deciding table ``i`` reads of its rows, one row per row, in columns shared by
    every table so that all tables are decided as one frame: ``_tkey`` (the table's index and
    the key: unique across tables, never null; a null key gets a marker of its own), ``key``
    (string), ``_file``, ``expired`` (:func:`lineage.expiry` with the table's own retention),
    ``use_case``, ``_direct`` (the table names its asset), ``asset`` (canonical asset id, null
    when the row's is missing or not an id, or for a lineage-traced table) and ``_lineage``
    (the table's lineage dataset), ``_raw_asset`` (the asset id as stored, for the key
    table's record of what erasure must prove gone)."""
    from consentgate import lineage
    from consentgate.consent import canonical_id
    from consentgate.registry import lineage_dataset

    dataset = one.dataset
    traced_as = lineage_dataset(name)
    key = _as_key(F.col(dataset.key))
    expired = lineage.expiry(
        one.rows,
        retention_days=dataset.retention_days,
        derived_at_column=dataset.derived_at_column,
        as_of=as_of,
        dataset=name,
    )
    if dataset.asset_column is None:
        asset = raw_asset = F.lit(None).cast(StringType())
    else:
        lineage.require_column(one.rows, dataset.asset_column, table=traced_as)
        raw_asset = F.col(dataset.asset_column).cast(StringType())
        asset = canonical_id(raw_asset)
    table = F.lit(str(i))
    return one.rows.select(
        F.lit(i).alias("_table"),
        F.when(key.isNull(), F.concat(table, F.lit(_NULL_KEY)))
        .otherwise(F.concat(table, F.lit(_SEP), key))
        .alias("_tkey"),
        key.alias("key"),
        "_file",
        expired.alias("expired"),
        F.lit(dataset.use_case).alias("use_case"),
        F.lit(dataset.asset_column is not None).alias("_direct"),
        asset.alias("asset"),
        raw_asset.alias("_raw_asset"),
        F.lit(traced_as).alias("_lineage"),
    )


def _key_sources(
    per_key: DataFrame, edges: DataFrame, owned: list[DataFrame], *, traced: bool
) -> DataFrame:
    """:data:`lineage.SOURCE_COLUMNS` (keyed by ``_tkey``) and ``use_case`` of every non-null
    key of :func:`_decide_together`'s per-key frame (``traced``: some table is lineage-traced).

    A table naming its asset: the key's distinct asset ids, or, when one of its rows names
    none (null or not an id), the one ``missing_asset`` problem and no asset, as
    :func:`lineage.source_assets` decides in its direct mode. A lineage-traced table: the
    key's rows of the run's one lineage walk (:func:`_closure`, persisted into ``owned``).
    """
    null = F.lit(None).cast(StringType())
    keyed = per_key.where(F.col("key").isNotNull())
    direct = keyed.where(F.col("_direct"))
    missing = direct.where(F.col("missing_asset")).select(
        F.col("_tkey").alias("key"),
        null.alias("asset_id"),
        F.lit("missing_asset").alias("lineage_problem"),
        F.col("_lineage").alias("problem_dataset"),
        F.col("key").alias("problem_key"),
        "use_case",
    )
    named = direct.where(~F.col("missing_asset")).select(
        F.col("_tkey").alias("key"),
        F.explode("assets").alias("asset_id"),
        null.alias("lineage_problem"),
        null.alias("problem_dataset"),
        null.alias("problem_key"),
        "use_case",
    )
    sources = missing.unionByName(named)
    if not traced:
        return sources
    keys = keyed.where(~F.col("_direct"))
    nodes = keys.select(F.col("_lineage").alias("parent_dataset"), F.col("key").alias("parent_key"))
    closure = _closure(edges, nodes).persist()
    owned.append(closure)
    walked = keys.select(
        "_tkey", "use_case", F.concat("_lineage", F.lit(_SEP), "key").alias("_node")
    ).join(closure, F.col("_node") == closure["key"])
    return sources.unionByName(
        walked.select(
            F.col("_tkey").alias("key"),
            "asset_id",
            "lineage_problem",
            "problem_dataset",
            "problem_key",
            "use_case",
        )
    )


def _decide_together(
    config: Config,
    pinned: Mapping[str, _Pinned],
    *,
    consent: DataFrame | None,
    edges: DataFrame | None,
    as_of: dt.datetime,
    owned: list[DataFrame],
) -> dict[str, Decided]:
    """Decide ``pinned`` tables as one frame: every table's decision columns in one union
    (:func:`_decision_columns`; each table's files are scanned once), grouped per key and
    persisted; one lineage walk, one consent join and one :func:`lineage.key_decisions` for
    all of them; one collect of per-(table, file, reason) counts. The plan is the same size
    for one table or fifty, so planning (each Delta scan planned once) and the number of
    Spark jobs no longer grow per table (they did: about nine jobs and a second of planning
    per table when each table was decided by a join of its own).

    Frames this persists are appended to ``owned`` (the caller releases them, also on error).

    Raises:
        Exception: any table failed to be read or decided (Spark's error, or ours).
    """
    from consentgate import lineage

    names = list(pinned)
    parts: list[DataFrame] = []
    columns: list[DataFrame] = []
    traced = False  # some configured table is traced through lineage
    for i, name in enumerate(names):
        one = pinned[name]
        if _configured(config, one.dataset):
            columns.append(_decision_columns(i, name, one, as_of=as_of))
            traced = traced or one.dataset.asset_column is None
        else:
            located = _all_removed(one.rows, one.dataset.key, asset_column=one.dataset.asset_column)
            parts.append(located.select(F.lit(i).alias("_table"), *LOCATED_COLUMNS))
    if columns:
        assert consent is not None and edges is not None  # read whenever one is configured
        rows = columns[0]
        for more in columns[1:]:
            rows = rows.unionByName(more)
        per_key = (
            rows.groupBy("_tkey")
            .agg(
                F.first("_table").alias("_table"),
                F.first("key").alias("key"),
                F.first("use_case").alias("use_case"),
                F.first("_direct").alias("_direct"),
                F.first("_lineage").alias("_lineage"),
                F.max("expired").alias("expired"),
                # one entry per row: a key's rows all go, each from its own file
                F.collect_list(F.struct("_file", "_raw_asset")).alias("_rows"),
                F.collect_set("asset").alias("assets"),
                F.max(F.col("asset").isNull()).alias("missing_asset"),
            )
            .persist()
        )
        owned.append(per_key)
        decided = lineage.key_decisions(
            per_key.select(F.col("_tkey").alias("key"), "expired"),
            _key_sources(per_key, edges, owned, traced=traced),
            consent,
        )
        removed = decided.where(~F.col("keep")).select(F.col("key").alias("_tkey"), "reason")
        parts.append(
            per_key.join(removed, "_tkey")
            .select("_table", "key", F.explode("_rows").alias("_row"), "reason")
            .select(
                "_table",
                *_digests(F.col("key"), per_key.sparkSession, asset=F.col("_row._raw_asset")),
                F.col("_row._file").alias("_file"),
                "reason",
            )
        )
    tagged = parts[0]
    for part in parts[1:]:
        tagged = tagged.unionByName(part)
    tagged = tagged.persist()
    owned.append(tagged)
    counted: dict[int, list[tuple[str, str, int]]] = {i: [] for i in range(len(names))}
    for row in tagged.groupBy("_table", "_file", "reason").count().collect():
        counted[int(row["_table"])].append((row["_file"], row["reason"], int(row["count"])))
    out: dict[str, Decided] = {}
    for i, name in enumerate(names):
        one = pinned[name]
        located = tagged.where(F.col("_table") == F.lit(i)).select(*LOCATED_COLUMNS)
        plan = _summarise(name, one.path, one.table, located, counted=counted[i])
        covered = frozenset(lake.active_files(one.table).column("path").to_pylist())
        out[name] = Decided(plan=plan, located=located, covered=covered, shared=(tagged, i))
    return out


def _release(frames: list[DataFrame]) -> None:
    for frame in frames:
        frame.unpersist()
    frames.clear()


def decide_run(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime,
    names: Sequence[str] | None = None,
) -> RunDecisions:
    """Decide, once for the whole run, which rows of which tables must go.

    Effective consent is evaluated once for every configured use case of the tables; the
    lineage closure once for every lineage-traced table (see :func:`_closure`); then per table
    one pass over its decision columns (key, asset column, derived_at and Spark's file path:
    Parquet is columnar, embeddings and blobs are never read) yields the rows to remove with
    their data file. A table whose use case is no longer configured loses every row
    (:data:`USE_CASE_NOT_CONFIGURED`). Each table is pinned at its current version before
    anything is read, so the closure's keys and the decided rows are the same rows. Only
    per-file and per-reason counts reach the driver; the located rows stay persisted on the
    executors.

    Tables fail on their own: one that cannot be opened (missing, no key column) or decided
    (a corrupt or missing data file, a wrong column type) goes to ``failed`` with a message
    naming it (:func:`table_failure`) and the others are decided. All tables are decided in
    one Spark job; only if that job fails are they decided one by one, to find the culprit.

    Args:
        spark: Session.
        config: The lake.
        as_of: Evaluation instant.
        names: Tables to decide (default every target).

    Raises:
        Exception: the consent or lineage tables cannot be read (no table can be decided).
    """
    with spark_work(spark, "decide") as ran:
        all_targets = targets(config)
        chosen = list(names) if names is not None else list(all_targets)
        run = RunDecisions(as_of=as_of, consent=None, hashed_assets=False)
        if not chosen:  # every table has its own decider: consent is not needed (nor read)
            return run
        try:
            pinned: dict[str, _Pinned] = {}
            for name in chosen:
                try:
                    pinned[name] = _pin(spark, config, name, all_targets[name])
                except Exception as exc:
                    run.failed[name] = table_failure(name, exc, doing="opening the table")
            configured = sorted(
                {p.dataset.use_case for p in pinned.values() if _configured(config, p.dataset)}
            )
            edges: DataFrame | None = None
            if configured:
                run.consent = _consent(spark, config, as_of, configured).persist()
                run._owned.append(run.consent)
                edges = lake.read_table(spark, config.table_path("lineage"))
            if pinned:
                _decide_all(config, run, pinned, edges=edges)
        except BaseException:
            run.release()
            raise
    for failure in run.failed.values():
        log.warning("purge: %s", failure)
    step(log, "decide", tables=len(run.tables), failed=len(run.failed), work=ran)
    return run


def _decide_all(
    config: Config, run: RunDecisions, pinned: Mapping[str, _Pinned], *, edges: DataFrame | None
) -> None:
    """:func:`_decide_together` for every pinned table, else table by table (see
    :func:`decide_run`); fills ``run.tables`` and ``run.failed``."""
    owned: list[DataFrame] = []
    try:
        run.tables.update(
            _decide_together(
                config, pinned, consent=run.consent, edges=edges, as_of=run.as_of, owned=owned
            )
        )
        run._owned.extend(owned)
        return
    except Exception as exc:
        _release(owned)
        # consent or lineage unreadable is no table's failure: every table would fail, so
        # raise (these reads are what the tables share)
        if run.consent is not None:
            run.consent.count()
        if edges is not None:
            edges.count()
        if len(pinned) == 1:
            name = next(iter(pinned))
            run.failed[name] = table_failure(name, exc, doing="deciding the rows to remove")
            return
        log.warning(
            "purge: deciding %d tables together failed; deciding them one by one", len(pinned)
        )
    for name, one in pinned.items():
        owned = []
        try:
            decided = _decide_together(
                config, {name: one}, consent=run.consent, edges=edges, as_of=run.as_of, owned=owned
            )
        except Exception as exc:
            _release(owned)
            run.failed[name] = table_failure(name, exc, doing="deciding the rows to remove")
            continue
        run.tables.update(decided)
        run._owned.extend(owned)


def _relocate(
    spark: SparkSession,
    config: Config,
    name: str,
    dataset: DatasetConfig,
    decided: Decided,
    run: RunDecisions,
) -> tuple[Decided, DataFrame | None]:
    """Bring a decision up to the table's latest version without re-evaluating consent.

    Files are immutable, so rows of files still active are where they were decided; only
    files added since (a concurrent append, a compaction's output) are read, traced through
    the current lineage table and decided with the run's consent, and matched against the
    keys already removed (fail closed should a rewritten row reappear elsewhere).

    Returns:
        The decision at the latest version, and the newly persisted frame to release (or
        None when nothing changed).
    """
    path = target_path(config, name, dataset)
    table = _open_checked(name, path, dataset.key)
    active = lake.active_files(table).column("path").to_pylist()
    if int(table.version()) == decided.plan.version and decided.covered.issuperset(active):
        return decided, None  # every active file decided: nothing moved
    still = {f.path for f in decided.plan.files} & set(active)
    located = decided.located.where(F.col("_file").isin(*sorted(still))) if still else None
    added = sorted(set(active) - decided.covered)
    if added:
        rows = lake.read_table(spark, path, version=int(table.version()), with_file=True)
        rows = rows.where(F.col("_file").isin(*added))
        if not _configured(config, dataset):
            new = _all_removed(rows, dataset.key, asset_column=dataset.asset_column)
        else:
            assert run.consent is not None  # a run that decided this table evaluated consent
            edges = lake.read_table(spark, config.table_path("lineage"))
            sources = _direct_sources(name, dataset, rows, edges)
            if run.hashed_assets:
                sources = _hash_assets(sources)
            fresh = _decide_rows(
                rows, sources, run.consent, name=name, dataset=dataset, as_of=run.as_of
            ).select(KEY_SHA, "reason")
            earlier = decided.located.select(KEY_SHA, "reason")
            new = _located_hashed(
                rows, fresh.unionByName(earlier), dataset.key, asset_column=dataset.asset_column
            )
        located = new if located is None else located.unionByName(new)
    if located is None:
        located = decided.located.where(F.lit(False))
    located = located.persist()
    plan = _summarise(name, path, table, located)
    return Decided(plan=plan, located=located, covered=frozenset(active)), located


# --------------------------------------------------------------------------------------------
# Work tables: a run's decisions shared with purge tasks in other processes


def run_dir(config: Config, run_id: str) -> Path:
    """Where a run's materialised decisions live (``state_dir/purge_runs/<run_id>``)."""
    return config.state_dir / "purge_runs" / _safe(run_id)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in name)


def materialise(spark: SparkSession, config: Config, run: RunDecisions, run_id: str) -> Path:
    """Write a run's decisions as two small Delta work tables so that ``purge_dataset`` tasks
    in other processes (Airflow's mapped tasks) read them instead of deciding again.

    ``consent`` holds the run's effective consent; ``located`` holds every decided table's
    rows to remove (:data:`LOCATED_COLUMNS`) with :data:`WORK_ID`, the table's id in the run
    (``plan.json`` maps names to ids): one write for the whole run however many tables it
    decides (a write per table cost a commit and two Spark jobs each). Its files are few
    (one per :data:`_WORK_ROWS_PER_FILE` removed rows), sorted by id, with Delta statistics
    on the id alone (an integer, never a raw id), so a task reading its table's rows skips
    the others'.
    Its commit metadata names the run only; table names are in ``plan.json``.

    Only digests are written: removed keys as ``key_digest`` and consent's asset ids as
    SHA-256, so nothing under ``purge_runs/`` can outlive an erasure as a raw id. The tables
    that could not be decided are recorded with their failure's message (which names the
    table and never a row's value, see :func:`table_failure`), so that their tasks fail with
    it. The plan (``plan.json``) is written last: a directory without it is an incomplete
    plan, ignored.
    """
    root = run_dir(config, run_id)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    consent = run.consent
    if consent is not None:  # None: every decided table's use case is unconfigured
        if not run.hashed_assets:
            consent = _hash_assets(consent)
        lake.write_table(consent, root / _CONSENT_TABLE, commit_metadata={_META_RUN: run_id})
    tables: dict[str, Any] = {}
    frames: list[DataFrame] = []
    shared: dict[int, tuple[DataFrame, dict[int, int]]] = {}  # id(frame) -> frame, tag -> id
    for i, (name, decided) in enumerate(run.tables.items()):
        if decided.shared is None:
            frames.append(decided.located.select(F.lit(i).alias(WORK_ID), *LOCATED_COLUMNS))
        else:
            frame, tag = decided.shared
            shared.setdefault(id(frame), (frame, {}))[1][tag] = i
        tables[name] = {
            WORK_ID: i,
            "plan": _plan_state(decided.plan),
            "covered": sorted(decided.covered),
        }
    for frame, ids in shared.values():  # one frame when every table was decided together
        work_id = F.create_map(*(F.lit(n) for pair in sorted(ids.items()) for n in pair))
        frames.append(
            frame.where(F.col("_table").isin(*ids)).select(
                work_id[F.col("_table")].alias(WORK_ID), *LOCATED_COLUMNS
            )
        )
    if frames:
        located = frames[0]
        for more in frames[1:]:
            located = located.unionByName(more)
        rows = sum(d.plan.rows_removed for d in run.tables.values())
        files = max(1, -(-rows // _WORK_ROWS_PER_FILE))
        lake.write_table(
            located.coalesce(files).sortWithinPartitions(WORK_ID),
            root / _LOCATED_TABLE,
            commit_metadata={_META_RUN: run_id},
            configuration={"delta.dataSkippingStatsColumns": WORK_ID},
        )
    state = {
        "format": _PLAN_FORMAT,
        "run_id": run_id,
        "as_of": iso(run.as_of),
        "consent": consent is not None,
        "located": bool(frames),
        "tables": tables,
        "failed": {name: str(exc) for name, exc in sorted(run.failed.items())},
    }
    tmp = root / "plan.json.tmp"
    tmp.write_text(json.dumps(state, sort_keys=True))
    tmp.replace(root / _PLAN_FILE)
    return root


def _plan_state(plan: DatasetPlan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "path": plan.path,
        "version": plan.version,
        "rows_before": plan.rows_before,
        "files_total": plan.files_total,
        "bytes_total": plan.bytes_total,
        "reasons": plan.reasons,
        "files": [[f.path, f.size_bytes, f.rows, f.rows_removed] for f in plan.files],
    }


def _plan_from_state(state: Mapping[str, Any]) -> DatasetPlan:
    return DatasetPlan(
        name=str(state["name"]),
        path=str(state["path"]),
        version=int(state["version"]),
        rows_before=int(state["rows_before"]),
        files_total=int(state["files_total"]),
        bytes_total=int(state["bytes_total"]),
        reasons={str(k): int(v) for k, v in state["reasons"].items()},
        files=tuple(FilePlan(str(p), int(s), int(r), int(n)) for p, s, r, n in state["files"]),
    )


def load_run(
    spark: SparkSession,
    config: Config,
    run_id: str,
    *,
    as_of: dt.datetime | None = None,
    names: Sequence[str] | None = None,
) -> RunDecisions | None:
    """A run's materialised decisions, or None if the run has no complete plan (or one made
    for another ``as_of``, which must not be reused).

    Each table's ``located`` is the run's shared ``located`` work table filtered on the
    table's id (lazy: nothing is read until the purge uses it, and then only that id's
    rows). Tables the run could not decide come back in ``failed`` as :class:`DecideFailed`
    with the recorded message. ``names`` limits the tables loaded to those (a purge task
    needs only its own).

    Raises:
        DecisionMissing: the plan was written in another format (by another version of
            consentgate): it is not guessed at; the run's decide step must run again.
    """
    root = run_dir(config, run_id)
    plan_file = root / _PLAN_FILE
    if not plan_file.is_file():
        return None
    state = json.loads(plan_file.read_text())
    if state.get("format") != _PLAN_FORMAT:
        raise DecisionMissing(
            f"purge run {run_id}: its decisions at {root} are in another format (written by "
            "another version of consentgate); run the decide step of the run again"
        )
    instant = parse_instant(state["as_of"])
    if as_of is not None and iso(as_of) != iso(instant):
        return None
    wanted = None if names is None else set(names)
    run = RunDecisions(
        as_of=instant,
        consent=lake.read_table(spark, root / _CONSENT_TABLE) if state["consent"] else None,
        hashed_assets=True,
    )
    chosen = {n: e for n, e in state["tables"].items() if wanted is None or n in wanted}
    if chosen:
        located = lake.read_table(spark, root / _LOCATED_TABLE)
        for name, entry in chosen.items():
            run.tables[name] = Decided(
                plan=_plan_from_state(entry["plan"]),
                located=located.where(F.col(WORK_ID) == F.lit(int(entry[WORK_ID]))).select(
                    *LOCATED_COLUMNS
                ),
                covered=frozenset(entry["covered"]),
            )
    for name, message in state.get("failed", {}).items():
        if wanted is None or name in wanted:
            run.failed[name] = DecideFailed(str(message))
    return run


def load_decision(
    spark: SparkSession, config: Config, run_id: str, name: str, *, as_of: dt.datetime
) -> RunDecisions:
    """Table ``name``'s decision in run ``run_id`` (materialised by :func:`plan_purge`), as the
    run's purge task for that table, in another process, takes it: the run holding only that
    table (and the run's consent, which decides rows others add meanwhile).

    Strict, unlike :func:`purge_dataset` on its own: there is no fallback to deciding here,
    so a run's tables are always purged from the one decision of the run, and a retried task
    loads the same decision as its first attempt.

    Raises:
        DecideFailed: the run's decide step recorded that it could not decide this table
            (the recorded message names the table and why).
        DecisionMissing: the run has no complete decision at ``as_of`` (its decide step did
            not finish, or its work tables were removed, or were written in another format),
            or its decision does not cover the table; the message names the table and the
            run.
    """
    try:
        run = load_run(spark, config, run_id, as_of=as_of, names=[name])
    except DecisionMissing as exc:
        raise DecisionMissing(f"dataset {name}: {exc}") from None
    where = f"{run_dir(config, run_id)} (as_of {iso(as_of)})"
    if run is None:
        raise DecisionMissing(
            f"dataset {name}: purge run {run_id} has no decision at {where}: its decide step "
            "did not finish or its work tables were removed; a purge task never decides on "
            "its own, run the decide step of the run again"
        )
    if name in run.failed:
        raise run.failed[name]
    if name not in run.tables:
        raise DecisionMissing(
            f"dataset {name}: purge run {run_id} did not decide this table ({where}); a "
            "purge task never decides on its own, run the decide step of the run again"
        )
    return run


def discard_run(config: Config, run_id: str) -> None:
    """Remove a run's work tables (call once every table of the run is purged)."""
    shutil.rmtree(run_dir(config, run_id), ignore_errors=True)


def discard_other_runs(config: Config, run_id: str) -> int:
    """Remove the work tables of every run but ``run_id`` (left by runs killed before they
    discarded their own); returns how many runs' directories were removed.

    Only safe where no other run can still be using its work tables: the nightly purge DAG's
    decide step (the DAG has ``max_active_runs=1``; nothing else materialises decisions).
    """
    root = config.state_dir / "purge_runs"
    keep = run_dir(config, run_id).name
    removed = 0
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        if entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def plan_purge(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime | None = None,
    deciders: Mapping[str, Decider] | None = None,
    run_id: str | None = None,
) -> PurgePlan:
    """Plan the purge of every configured dataset and registered snapshot.

    Consent and lineage are decided once for all tables (:func:`decide_run`). With ``run_id``
    the decisions are also materialised under :func:`run_dir` for the run's
    ``purge_dataset`` tasks (which then neither evaluate consent nor walk lineage again);
    without it nothing is written.

    Args:
        spark: Session.
        config: The lake.
        as_of: Evaluation instant (default now, UTC).
        deciders: Override the consent decider per table name (tests and tools); such
            tables are planned with their decider and not materialised (a decider is code,
            which each task applies itself).
        run_id: Materialise the decisions for this run.

    Tables that cannot be planned are in the plan's ``failed`` (name → message), not in its
    ``datasets``; the work tables record them too, so that their purge task fails with that
    message (:func:`load_decision`).
    """
    instant = as_of or now_utc()
    custom = dict(deciders or {})
    all_targets = targets(config)
    names = list(all_targets)
    run = decide_run(spark, config, as_of=instant, names=[n for n in names if n not in custom])
    failed = {name: str(exc) for name, exc in run.failed.items()}
    try:
        out: dict[str, DatasetPlan] = {}
        for name in names:
            if name in failed:
                continue
            if name in custom:
                dataset = all_targets[name]
                try:
                    plan, located = plan_table(
                        spark,
                        name,
                        target_path(config, name, dataset),
                        key=dataset.key,
                        asset_column=dataset.asset_column,
                        decide=custom[name],
                    )
                except Exception as exc:
                    failed[name] = str(table_failure(name, exc, doing="planning"))
                    continue
                located.unpersist()
                out[name] = plan
            else:
                out[name] = run.tables[name].plan
        if run_id is not None:
            materialise(spark, config, run, run_id)
    finally:
        run.release()
    return PurgePlan(as_of=instant, datasets=out, failed=failed)


# --------------------------------------------------------------------------------------------
# Rewriting one table


def key_table_path(config: Config, name: str) -> Path:
    """Where the hashed removed keys of table ``name`` are kept (:func:`consentgate.removals.
    key_table_dir`, which ``verify`` reads without a config)."""
    return key_table_dir(config.lake_root, name)


def _record_keys(
    spark: SparkSession,
    config: Config,
    name: str,
    located: DataFrame,
    *,
    attempt: str,
    run_id: str,
) -> None:
    frame = located.select(
        F.col(KEY_SHA).alias("key_sha256"),
        F.col("reason"),
        F.lit(attempt).alias("attempt"),
        F.lit(run_id).alias("run_id"),
        F.lit(now_utc()).cast("timestamp").alias("recorded_at"),
        F.col(PREFIX_SHA),
        F.col(PREFIX_CHARS),
        F.col(ASSET_SHA),
        F.col(ASSET_PREFIX_SHA),
    ).distinct()
    path = key_table_path(config, name)
    if lake.is_table(path):
        have = set(lake.spark_schema(lake.open_table(path)).names)
        missing = [f for f in KEY_TABLE_SCHEMA.fields if f.name not in have]
        if missing:
            # A key table recorded before the prefix and asset digests (issue #22): the
            # columns are added in one commit; rows recorded before keep nulls there (their
            # keys are compared whole, their assets not at all).
            columns = ", ".join(f"{f.name} {f.dataType.simpleString().upper()}" for f in missing)
            lake.run_sql(
                spark,
                f"ALTER TABLE {{table}} ADD COLUMNS ({columns})",
                path,
                commit_metadata={_META_RUN: run_id, _META_ATTEMPT: attempt},
            )
    lake.write_table(
        frame,
        path,
        mode="append" if lake.is_table(path) else "error",
        commit_metadata={_META_RUN: run_id, _META_ATTEMPT: attempt},
        configuration={"delta.appendOnly": "true"},
    )


def _crash_point(point: str, name: str) -> None:
    """Run the test hook registered for ``point`` (:data:`_TEST_HOOKS`), then kill this
    process with SIGKILL when the crash test asks for it at ``point``."""
    hook = _TEST_HOOKS.get(point)
    if hook is not None:
        hook(name)
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _policy(config: Config, dataset: DatasetConfig) -> str:
    use_case = config.use_cases.get(dataset.use_case)
    rules = (
        {"configured": False}
        if use_case is None
        else use_case.model_dump(mode="json", exclude_none=True)
    )
    body = {"use_case": dataset.use_case, **rules, "retention_days": dataset.retention_days}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@contextmanager
def table_lock(config: Config, name: str) -> Iterator[None]:
    """One purge, backfill or erasure of a table at a time (released by the kernel if the
    process dies): an erasure's REORG, VACUUM and log cleanup see no purge commit between
    them (issue #22 item 7), and a running attempt is never mistaken for a crashed one.
    Not re-entrant: a process holding it must not take it again."""
    with file_lock(config.state_dir / "locks" / (key_table_path(config, name).name + ".lock")):
        yield


def purge_table(
    spark: SparkSession,
    config: Config,
    name: str,
    dataset: DatasetConfig,
    *,
    decide: Decider | None = None,
    decided: Decided | None = None,
    run: RunDecisions | None = None,
    as_of: dt.datetime,
    run_id: str,
    dry_run: bool = False,
    max_retries: int = 3,
) -> dict[str, Any]:
    """Purge one table (see the module docstring for the steps).

    Decisions come either from ``decide`` (an explicit decider, applied to the whole table
    at every pass) or from ``decided`` (the run's decision for this table, made once) with
    ``run`` (whose consent decides rows others add meanwhile); one of the two is required.

    Returns:
        ``rows_before, rows_deleted, rows_after, version_before, version_after, reasons{},
        files_rewritten, bytes_rewritten, bytes_written, commits, attempts, conflicts``
        (plus ``plan`` on a dry run).

    Raises:
        ConflictError: still conflicting after ``max_retries`` re-plans (names the table).
    """
    if decide is None and (decided is None or run is None):
        raise ConsentgateError(f"dataset {name}: purge_table needs a decider or a decision")
    owned: list[DataFrame] = []
    try:
        return _purge_passes(
            spark,
            config,
            name,
            dataset,
            decide=decide,
            decided=decided,
            run=run,
            owned=owned,
            as_of=as_of,
            run_id=run_id,
            dry_run=dry_run,
            max_retries=max_retries,
        )
    finally:
        for frame in owned:
            frame.unpersist()


def _purge_passes(
    spark: SparkSession,
    config: Config,
    name: str,
    dataset: DatasetConfig,
    *,
    decide: Decider | None,
    decided: Decided | None,
    run: RunDecisions | None,
    owned: list[DataFrame],
    as_of: dt.datetime,
    run_id: str,
    dry_run: bool,
    max_retries: int,
) -> dict[str, Any]:
    path = target_path(config, name, dataset)
    key = dataset.key
    reasons: dict[str, int] = {}
    files_rewritten = bytes_rewritten = bytes_written = deletion_vectors = 0
    commits: list[int] = []
    attempts: list[str] = []
    conflicts = 0
    first: DatasetPlan | None = None
    passes = 0
    while True:
        if decide is not None:
            plan, located = plan_table(
                spark, name, path, key=key, asset_column=dataset.asset_column, decide=decide
            )
            owned.append(located)
        else:
            assert decided is not None and run is not None
            decided, fresh = _relocate(spark, config, name, dataset, decided, run)
            if fresh is not None:
                owned.append(fresh)
            plan, located = decided.plan, decided.located
        first = first or plan
        if dry_run:
            return {
                **_result(plan, plan.rows_before - plan.rows_removed, plan.version),
                "dry_run": True,
                "plan": plan.to_json(),
            }
        if not plan.files:
            break
        if passes > max_retries:
            raise ConflictError(
                f"dataset {name}: still {plan.rows_removed} rows to remove after "
                f"{passes} passes against concurrent writers; giving up (rerun the purge)"
            )
        passes += 1
        attempt = uuid.uuid4().hex
        _record_keys(spark, config, name, located, attempt=attempt, run_id=run_id)
        attempts.append(attempt)
        metadata = {
            _META_OPERATION: OPERATION,
            _META_RUN: run_id,
            _META_ATTEMPT: attempt,
            _META_DATASET: name,
            _META_REASONS: dict(sorted(plan.reasons.items())),
            _META_ROWS: plan.rows_removed,
            "consentgate.as_of": iso(as_of),
            "consentgate.policy": _policy(config, dataset),
        }
        removed = located.select(KEY_SHA).distinct()
        if plan.rows_removed <= _BROADCAST_ROWS:
            removed = F.broadcast(removed)
        try:
            _crash_point("before_commit", name)
            result = lake.merge_delete(
                spark,
                path,
                removed,
                condition=key_digest(F.col(f"t.`{key}`")) == F.col(f"s.{KEY_SHA}"),
                commit_metadata=metadata,
            )
        except ConflictError:
            conflicts += 1
            audit.append_event(
                spark,
                config,
                kind="purge",
                run_id=run_id,
                payload={
                    "dataset": name,
                    "attempt": attempt,
                    "event": "conflict",
                    "version_read": plan.version,
                    "table_version_now": lake.table_version(path),
                },
            )
            continue
        _crash_point("after_commit", name)
        files_removed = result.metric("numTargetFilesRemoved")
        dvs_added = result.metric("numTargetDeletionVectorsAdded") + result.metric(
            "numTargetDeletionVectorsUpdated"
        )
        if decided is not None:
            # Every row of the table at our version is decided: files that were decided and
            # are still active keep their decision, and files our commit added are survivors
            # of decided files. Files others added meanwhile are not covered (re-located).
            now_active = set(lake.active_files(lake.open_table(path)).column("path").to_pylist())
            before = set(
                lake.active_files(lake.open_table(path, version=result.version - 1))
                .column("path")
                .to_pylist()
            )
            decided = Decided(
                plan=dataclasses.replace(decided.plan, version=result.version, files=()),
                located=decided.located.where(F.lit(False)),
                covered=(decided.covered & now_active) | (now_active - before),
            )
        commits.append(result.version)
        for reason, count in plan.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        files_rewritten += files_removed
        bytes_rewritten += result.metric("numTargetBytesRemoved")
        bytes_written += result.metric("numTargetBytesAdded")
        deletion_vectors += dvs_added
        audit.append_event(
            spark,
            config,
            kind="purge",
            run_id=run_id,
            payload={
                "dataset": name,
                "attempt": attempt,
                "as_of": iso(as_of),
                "version_read": plan.version,
                "version_committed": result.version,
                "rows_deleted": result.metric("numTargetRowsDeleted"),
                "reasons": dict(sorted(plan.reasons.items())),
                "files_rewritten": files_removed,
                "bytes_rewritten": result.metric("numTargetBytesRemoved"),
                "files_added": result.metric("numTargetFilesAdded"),
                "deletion_vectors_added": dvs_added,
            },
        )
        if result.version == plan.version + 1:
            break  # nobody committed in between: nothing new can hide in the table
    assert first is not None  # the loop plans at least once
    inventory = lake.table_inventory(path)
    out = _result(first, inventory["rows"], inventory["version"])
    out.update(
        rows_deleted=sum(reasons.values()),
        reasons=dict(sorted(reasons.items())),
        files_rewritten=files_rewritten,
        bytes_rewritten=bytes_rewritten,
        bytes_written=bytes_written,
        deletion_vectors_added=deletion_vectors,
        commits=commits,
        attempts=attempts,
        conflicts=conflicts,
    )
    return out


def _result(plan: DatasetPlan, rows_after: int, version_after: int) -> dict[str, Any]:
    return {
        "rows_before": plan.rows_before,
        "rows_deleted": plan.rows_removed,
        "rows_after": rows_after,
        "version_before": plan.version,
        "version_after": version_after,
        "reasons": dict(sorted(plan.reasons.items())),
        "files_rewritten": len(plan.files),
        "bytes_rewritten": plan.bytes_affected,
        "files_total": plan.files_total,
        "bytes_total": plan.bytes_total,
    }


# --------------------------------------------------------------------------------------------
# Recovery: what a crashed run left behind


def _audited_attempts(config: Config, name: str) -> set[str]:
    """Attempts of table ``name`` that have a ``purge`` or ``recovery`` audit entry (read with
    delta-rs by :func:`consentgate.removals.audited_attempts`, which ``verify`` uses too)."""
    return {attempt for table, attempt in audited_attempts(config.lake_root) if table == name}


def reconcile(spark: SparkSession, config: Config, name: str, path: Path) -> list[dict[str, Any]]:
    """Record in the audit log what crashed purges of this table did.

    * a purge commit in the table's history whose attempt has no ``purge``/``recovery`` entry
      (crash between commit and audit) → ``recovery`` entry with the commit's counts;
    * an attempt that recorded keys but never committed (crash or refused commit before the
      commit) → ``recovery`` entry saying the table was left unchanged; its files are orphans
      that the erasure step removes.

    Returns:
        The recovery payloads written.
    """
    known = _audited_attempts(config, name)
    committed: dict[str, dict[str, Any]] = {}
    if lake.is_table(path):
        for entry in lake.history(path):
            if entry.get(_META_OPERATION) == OPERATION and entry.get(_META_ATTEMPT):
                committed[str(entry[_META_ATTEMPT])] = entry
    written: list[dict[str, Any]] = []
    for attempt, entry in sorted(committed.items(), key=lambda kv: int(kv[1]["version"])):
        if attempt in known:
            continue
        payload = {
            "dataset": name,
            "attempt": attempt,
            "event": "committed_without_audit",
            "run_id_of_attempt": str(entry.get(_META_RUN)),
            "version_committed": int(entry["version"]),
            "rows_deleted": int(entry.get(_META_ROWS, 0)),
            "reasons": dict(entry.get(_META_REASONS) or {}),
        }
        written.append(payload)
    keys = key_table_path(config, name)
    if lake.is_table(keys):
        recorded = lake.open_table(keys).to_pyarrow_table(columns=["attempt", "run_id"])
        seen: dict[str, str] = {}
        for attempt, run in zip(
            recorded.column("attempt").to_pylist(),
            recorded.column("run_id").to_pylist(),
            strict=True,
        ):
            seen.setdefault(str(attempt), str(run))
        for attempt, run in sorted(seen.items()):
            if attempt in known or attempt in committed:
                continue
            written.append(
                {
                    "dataset": name,
                    "attempt": attempt,
                    "event": "attempt_not_committed",
                    "run_id_of_attempt": run,
                    "table_changed": False,
                }
            )
    for payload in written:
        audit.append_event(
            spark,
            config,
            kind="recovery",
            run_id=str(payload["run_id_of_attempt"]),
            payload=payload,
        )
    return written


# --------------------------------------------------------------------------------------------
# Public steps


def purge_dataset(
    spark: SparkSession,
    config: Config,
    name: str,
    *,
    as_of: dt.datetime | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    max_retries: int = 3,
    decide: Decider | None = None,
    run: RunDecisions | None = None,
) -> dict[str, Any]:
    """Purge one configured dataset or registered snapshot (the Airflow mapped task's body).

    Where the decisions come from, cheapest first: ``run`` (the caller decided the whole run
    in this process, as :func:`run_purge` does, or loaded it with :func:`load_decision`, as
    the nightly DAG's task does), the run's work tables (:func:`plan_purge` with this
    ``run_id`` and ``as_of`` materialised them, possibly in another process; a table they
    record as not decided raises that failure), else this table is decided here on its own
    (a caller that must never decide here, such as the DAG's task, passes ``run``). Either
    way consent is evaluated at most once, and conflicts re-locate rows instead of deciding
    again.

    Args:
        spark: Session.
        config: The lake.
        name: A configured dataset or a ``snapshot/<model_version>/<dataset>`` name.
        as_of: Evaluation instant (default now, UTC).
        run_id: The purge run this belongs to (default: a fresh ``purge-...`` id).
        dry_run: Plan only; write nothing (not even recovery entries).
        max_retries: Re-plans allowed after conflicting concurrent commits.
        decide: Override the consent decider (tests and tools).
        run: This run's decisions, from :func:`decide_run` or :func:`load_decision`.

    Raises:
        ConsentgateError: unknown dataset name; the table cannot be opened (``TableError``).
        ConflictError: the table kept conflicting with concurrent writers.
        TableFailure: the table's rows could not be read or decided (a corrupt data file).
        DecideFailed: the run's work tables record that this table could not be decided.
    """
    instant = as_of or now_utc()
    with spark_work(spark, "rewrite") as ran:
        run_name = run_id or new_run_id("purge", at=instant)
        all_targets = targets(config)
        if name not in all_targets:
            raise ConsentgateError(
                f"dataset {name!r}: not configured and not a registered snapshot"
            )
        dataset = all_targets[name]
        own: RunDecisions | None = None
        if decide is None:
            if run is not None and name in run.failed:
                raise run.failed[name]
            if run is None or name not in run.tables:
                run = load_run(spark, config, run_id, as_of=instant) if run_id else None
                if run is not None and name in run.failed:
                    raise run.failed[name]
            if run is None or name not in run.tables:
                run = own = decide_run(spark, config, as_of=instant, names=[name])
                if name in own.failed:
                    own.release()
                    raise own.failed[name]
        try:
            decided = None if decide is not None or run is None else run.tables[name]
            if dry_run:
                return purge_table(
                    spark,
                    config,
                    name,
                    dataset,
                    decide=decide,
                    decided=decided,
                    run=run,
                    as_of=instant,
                    run_id=run_name,
                    dry_run=True,
                )
            with table_lock(config, name):
                recovered = reconcile(spark, config, name, target_path(config, name, dataset))
                result = purge_table(
                    spark,
                    config,
                    name,
                    dataset,
                    decide=decide,
                    decided=decided,
                    run=run,
                    as_of=instant,
                    run_id=run_name,
                    max_retries=max_retries,
                )
        finally:
            if own is not None:
                own.release()
    result["recovered"] = len(recovered)
    step(
        log,
        "rewrite",
        table=name,
        rows=result["rows_deleted"],
        files=result["files_rewritten"],
        bytes=result["bytes_rewritten"],
        conflicts=result.get("conflicts"),
        work=ran,
    )
    return result


def erase_tables(
    spark: SparkSession, config: Config, *, run_id: str, names: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Exception]]:
    """Erase and verify each of ``names`` on its own (:func:`consentgate.erasure.erase_each`),
    so that a table whose erasure raises (an unreadable file on disk) never stops the others'
    erasure; their receipts are recorded in one audit append.

    Returns:
        ``{"ok", "datasets": {name: receipt}}`` (plus ``failed{name: message}`` when an
        erasure raised), and the failures by table (:func:`table_failure`).
    """
    from consentgate import erasure

    receipts, raised = erasure.erase_each(spark, config, names, run_id=run_id)
    failed: dict[str, Exception] = {}
    for name, exc in raised.items():
        failed[name] = table_failure(name, exc, doing="erasure")
        log.warning("purge: %s", failed[name])
    verified = all(r.get("result") == "verified" for r in receipts.values())
    out: dict[str, Any] = {"ok": verified and not failed, "datasets": receipts}
    if failed:
        out["failed"] = {name: str(exc) for name, exc in sorted(failed.items())}
    return out, failed


def _purge_and_erase(
    spark: SparkSession,
    config: Config,
    names: list[str],
    *,
    as_of: dt.datetime,
    run_id: str,
    dry_run: bool,
    erase: bool,
    deciders: Mapping[str, Decider],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """A full night's work (:func:`run_purge`): decide every table once, purge each, erase.

    Returns:
        Each purged table's result, the erasure (``{}`` when not erased) and the failed
        tables' messages, in ``names`` order.
    """
    decisions = decide_run(
        spark, config, as_of=as_of, names=[n for n in names if n not in deciders]
    )
    failed: dict[str, str] = {name: str(exc) for name, exc in decisions.failed.items()}
    datasets: dict[str, Any] = {}
    try:
        for name in names:
            if name in failed:
                continue
            try:
                datasets[name] = purge_dataset(
                    spark,
                    config,
                    name,
                    as_of=as_of,
                    run_id=run_id,
                    dry_run=dry_run,
                    decide=deciders.get(name),
                    run=decisions,
                )
            except Exception as exc:
                failure = table_failure(name, exc, doing="purge")
                log.warning("purge: %s", failure)
                failed[name] = str(failure)
    finally:
        decisions.release()
    erased: dict[str, Any] = {}
    if erase and not dry_run:
        erased, not_erased = erase_tables(spark, config, run_id=run_id, names=list(datasets))
        failed.update({name: str(exc) for name, exc in not_erased.items()})
    return datasets, erased, {name: failed[name] for name in names if name in failed}


def run_payload(
    as_of: str,
    datasets: Mapping[str, Mapping[str, Any]],
    erasure: Mapping[str, Any],
    *,
    failed: Mapping[str, str] | None = None,
    orchestration: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A run's audit entry, wherever it ran (:func:`run_purge`, the nightly DAG's
    ``audit_summary``): per table what it removed and its versions, each table's erasure
    result, ``failed`` (ids redacted) naming the tables that failed, if any, and the
    orchestrator's run (``orchestration``: Airflow's ``dag_id``, ``dag_run_id``) if any."""
    summary = {
        name: {
            k: result.get(k)
            for k in ("rows_deleted", "version_before", "version_after", "files_rewritten")
        }
        | {"reasons": result.get("reasons", {})}
        for name, result in datasets.items()
    }
    receipts = erasure.get("datasets", {}) if isinstance(erasure, Mapping) else {}
    payload: dict[str, Any] = {
        "as_of": as_of,
        "datasets": summary,
        "erasure": {n: r.get("result") for n, r in receipts.items()},
    }
    if failed:
        payload["failed"] = {name: redact_uuids(why) for name, why in failed.items()}
    if orchestration:
        payload["orchestration"] = dict(orchestration)
    return payload


def quiet_purge(
    config: Config,
    *,
    as_of: dt.datetime,
    run_id: str,
    orchestration: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The night as the quiescence certificate answers it (:mod:`consentgate.quiescence`), or
    ``None`` when it must run in full. No Spark: the audit entries go in with delta-rs."""
    from consentgate import quiescence

    started = time.monotonic()
    night = quiescence.quiet_night(config, as_of=as_of, run_id=run_id)
    if night is None:
        return None
    payload = run_payload(iso(as_of), night.datasets, night.erasure, orchestration=orchestration)
    payload["unchanged_since"] = night.unchanged_since
    try:
        audit.append_events(None, config, [*night.events, audit.Event("purge", run_id, payload)])
    except Exception as exc:  # nothing was written (one commit): the full night records itself
        log.warning("purge: the certified night could not be recorded without Spark: %s", exc)
        return None
    step(
        log,
        "purge",
        run_id=run_id,
        tables=len(night.datasets),
        failed=0,
        rows=0,
        dry_run=False,
        unchanged=True,
        certified=False,
        jobs=0,
        tasks=0,
        since=started,
    )
    return {
        "run_id": run_id,
        "as_of": iso(as_of),
        "dry_run": False,
        "ok": True,
        "failed": {},
        "datasets": night.datasets,
        "erasure": night.erasure,
        "unchanged_since": night.unchanged_since,
    }


def run_purge(
    spark: SparkSession | Callable[[], SparkSession],
    config: Config,
    *,
    as_of: dt.datetime | None = None,
    dry_run: bool = False,
    erase: bool = True,
    run_id: str | None = None,
    kind: str = "purge",
    deciders: Mapping[str, Decider] | None = None,
    orchestration: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole nightly purge: every table, then erasure and its verification.

    Consent and lineage are decided once for every table (:func:`decide_run`), in this
    process, before any table is rewritten; each table is then purged from that decision.
    Each table is decided, purged and erased on its own: one that fails is recorded (in the
    result and the run's audit entry) and every other one is still purged and erased; then
    :class:`PurgeFailed` names the failed tables.

    A night the quiescence certificate covers (:mod:`consentgate.quiescence`) decides and
    erases nothing and needs no Spark: ``spark`` may be a factory, called only when the night
    has work (the command line then never starts a JVM for it).

    Returns:
        ``{"run_id", "as_of", "dry_run", "ok", "failed": {}, "datasets": {name: {...}},
        "erasure": {...}}`` as ``consentgate purge --json`` prints it (plus
        ``unchanged_since`` on a certified night); ``ok`` is false when an erasure does not
        verify.

    Raises:
        PurgeFailed: some tables failed (after every other table was purged, erased and the
            run audited); its ``result`` is the return value with ``failed{name: message}``.
    """
    from consentgate import flips, quiescence

    instant = as_of or now_utc()
    run_name = run_id or new_run_id(kind, at=instant)
    # The certificate covers consentgate's own decisions of a full night (module doc there).
    certifiable = not dry_run and erase and not deciders and kind in ("purge", "backfill")
    if certifiable and kind == "purge":
        quiet = quiet_purge(config, as_of=instant, run_id=run_name, orchestration=orchestration)
        if quiet is not None:
            return quiet
    session = spark if isinstance(spark, SparkSession) else spark()
    with spark_work(session, kind) as ran:
        started_from = None
        if not dry_run:
            quiescence.discard(config)
            started_from = quiescence.start(config) if certifiable else None
        names = list(targets(config))
        datasets, erased, failed = _purge_and_erase(
            session,
            config,
            names,
            as_of=instant,
            run_id=run_name,
            dry_run=dry_run,
            erase=erase,
            deciders=deciders or {},
        )
        if not dry_run:
            payload = run_payload(
                iso(instant), datasets, erased, failed=failed, orchestration=orchestration
            )
            audit.append_event(session, config, kind=kind, run_id=run_name, payload=payload)
        certified = False
        if not failed and erased.get("ok"):
            try:
                if started_from is not None and quiescence.changed_only_by(
                    config, started_from, run_id=run_name
                ):
                    written = quiescence.certify(
                        config,
                        run_id=run_name,
                        as_of=instant,
                        receipts=erased["datasets"],
                        started_from=started_from,
                        decisions_hold_until=flips.decision_flips(session, config, as_of=instant),
                    )
                    certified = written is not None
            except Exception as exc:  # the night is done; the next one just runs in full
                log.warning("purge: no quiescence certificate written: %s", redact_uuids(str(exc)))
    result = {
        "run_id": run_name,
        "as_of": iso(instant),
        "dry_run": dry_run,
        "ok": not failed and bool(erased.get("ok", True)),
        "failed": failed,
        "datasets": datasets,
        "erasure": erased,
        "heads": heads.published(config.lake_root),  # after the run's audit entries
    }
    step(
        log,
        kind,
        run_id=run_name,
        tables=len(names),
        failed=len(failed),
        rows=sum(int(r["rows_deleted"]) for r in datasets.values()),
        dry_run=dry_run,
        unchanged=False,
        certified=certified,
        work=ran,
        level=logging.WARNING if failed else logging.INFO,
    )
    if failed:
        done = "planned" if dry_run else "purged and erased" if erase else "purged"
        raise PurgeFailed(
            f"{kind} {run_name}: {len(failed)} of {len(names)} tables failed (every other "
            f"table was {done}): " + "; ".join(failed.values()),
            result,
        )
    if not result["ok"]:  # a failed verification is exit 1 (DESIGN), not a quiet ok: false
        unverified = sorted(
            n for n, r in erased.get("datasets", {}).items() if r.get("result") != "verified"
        )
        raise PurgeFailed(
            f"{kind} {run_name}: erasure did not verify for {', '.join(unverified) or 'the run'}"
            " (every table was purged and the run audited)",
            result,
        )
    return result


def run_backfill(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime | None = None,
    dry_run: bool = False,
    deciders: Mapping[str, Decider] | None = None,
    run_id: str | None = None,
    orchestration: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Re-evaluate everything under the current (changed) policy, purge what no longer
    complies, and report which trained models are affected (``impact``).

    ``run_id`` and ``orchestration`` as for :func:`run_purge` (an orchestrator passes its
    run's id and names its run).

    The impact is computed before the purge so that it describes the snapshots as they were
    when the policy changed (the purge then cleans those snapshots too).
    """
    from consentgate.gate import impact as run_impact

    instant = as_of or now_utc()
    with spark_work(spark, "impact") as ran:
        impact = run_impact(spark, config, as_of=instant)
    step(log, "impact", runs=len(impact["runs"]), runs_checked=impact["runs_checked"], work=ran)
    try:
        result = run_purge(
            spark,
            config,
            as_of=instant,
            dry_run=dry_run,
            kind="backfill",
            deciders=deciders,
            run_id=run_id,
            orchestration=orchestration,
        )
    except PurgeFailed as exc:
        exc.result["impact"] = impact
        raise
    result["impact"] = impact
    return result
