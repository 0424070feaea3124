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
   :func:`plan_purge` with a ``run_id`` materialises them as small Delta work tables under
   ``state_dir/purge_runs/<run_id>/`` (digests only, never raw ids).
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
process with SIGKILL at that point.

Idempotence: a table with nothing to remove gets no commit at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from consentgate import audit, lake
from consentgate.config import Config, DatasetConfig
from consentgate.errors import ConflictError, ConsentgateError, TableError
from consentgate.lake import LogTable
from consentgate.runtime import iso, new_run_id, now_utc, parse_instant

#: A decider maps a table's rows (its own columns) to the rows to remove: two columns, the
#: row key (any name and type; compared as a string) then ``reason``. The default decision
#: (consent + lineage + retention, :func:`decide_run`) is not a decider: it is made once per
#: run, not per table and pass.
Decider = Callable[[DataFrame], DataFrame]

CRASH_ENV: Final = "CONSENTGATE_PURGE_CRASH_AT"
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
LOCATED_COLUMNS: Final = (KEY_SHA, "_file", "reason")
#: Lineage walks give up after this many edges (lineage.source_assets' default).
_MAX_HOPS: Final = 32
#: The synthetic root node of the run's single lineage walk, and the separator between a
#: dataset and a key in its node keys (NUL: in no dataset name).
_ROOT: Final = "__consentgate_purge_roots__"
_SEP: Final = "\x00"
_PLAN_FILE: Final = "plan.json"
#: Removed keys broadcast to the rewrite's anti join up to this many (64-byte digests).
_BROADCAST_ROWS: Final = 1_000_000

KEY_TABLE_SCHEMA: Final = StructType(
    [
        StructField("key_sha256", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("attempt", StringType(), False),
        StructField("run_id", StringType(), False),
        StructField("recorded_at", TimestampType(), False),
    ]
)


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
            "files": [f.path for f in self.files],
        }


@dataclass(frozen=True)
class PurgePlan:
    """The plan over every configured dataset and registered snapshot."""

    as_of: dt.datetime
    datasets: dict[str, DatasetPlan] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": iso(self.as_of),
            "datasets": {name: plan.to_json() for name, plan in self.datasets.items()},
            "rows_deleted": sum(p.rows_removed for p in self.datasets.values()),
            "files_affected": sum(len(p.files) for p in self.datasets.values()),
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
    """Absolute path of a target table."""
    return config.resolve(dataset.path)


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


def _located(rows: DataFrame, removals: DataFrame, key: str, *, unique: bool = False) -> DataFrame:
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
    picked = rows.select(key, "_file")
    joined = picked.join(one_reason, _as_key(picked[key]).eqNullSafe(one_reason["_purge_key"]))
    return joined.select(key_digest(F.col(key)).alias(KEY_SHA), "_file", "reason")


def _located_hashed(rows: DataFrame, removals: DataFrame, key: str) -> DataFrame:
    """Like :func:`_located`, but ``removals`` are already hashed (``key_sha256, reason``):
    used for the few rows of files added since a decision, matched against earlier ones."""
    one_reason = removals.groupBy(KEY_SHA).agg(F.min("reason").alias("reason"))
    picked = rows.select(key_digest(F.col(key)).alias(KEY_SHA), "_file")
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
        raise TableError(f"dataset {name}: rows located in files not in the log: {unknown[:3]}")
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
    spark: SparkSession, name: str, path: Path, *, key: str, decide: Decider
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
    located = _located(rows, decide(rows.drop("_file")), key).persist()
    return _summarise(name, path, table, located), located


# --------------------------------------------------------------------------------------------
# Deciding once per run


@dataclass
class Decided:
    """One table's removals, decided at one version and located in its files.

    Attributes:
        plan: Counts and affected files at ``plan.version``.
        located: :data:`LOCATED_COLUMNS` of the rows to remove (persisted or a work table).
        covered: The data files whose every row has been decided: the snapshot's files at
            ``plan.version``, later minus files others removed and plus files we wrote. A
            file outside this set (a concurrent append or compaction) is decided on its own.
    """

    plan: DatasetPlan
    located: DataFrame
    covered: frozenset[str]


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


def _closure(edges: DataFrame, seeds: Mapping[str, Sequence[DataFrame]]) -> DataFrame:
    """Source assets of the keys of every lineage-traced table, in one lineage walk.

    Each seed key ``k`` of lineage dataset ``d`` gets a synthetic edge from a root node
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

    nodes: DataFrame | None = None
    for dataset, frames in seeds.items():
        for frame in frames:
            part = frame.select(
                F.lit(dataset).alias("parent_dataset"), F.col("key").alias("parent_key")
            )
            nodes = part if nodes is None else nodes.unionByName(part)
    assert nodes is not None  # callers pass at least one seed
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


def _closure_of(closure: DataFrame, dataset: str) -> DataFrame:
    """One lineage dataset's rows of :func:`_closure`, with its own keys."""
    prefix = dataset + _SEP
    return closure.where(F.col("key").startswith(prefix)).select(
        F.col("key").substr(len(prefix) + 1, 1 << 30).alias("key"),
        "asset_id",
        "lineage_problem",
        "problem_dataset",
        "problem_key",
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
    return _located(rows, removed, dataset.key, unique=True)


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


def decide_run(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime,
    names: Sequence[str] | None = None,
) -> RunDecisions:
    """Decide, once for the whole run, which rows of which tables must go.

    Effective consent is evaluated once for every configured use case; the lineage closure
    once for every lineage-traced table (see :func:`_closure`); then per table one pass over
    its decision columns (key, asset column, derived_at and Spark's file path: Parquet is
    columnar, embeddings and blobs are never read) yields the rows to remove with their data
    file. Each table is pinned at its current version before anything is read, so the
    closure's keys and the decided rows are the same rows. Only per-file and per-reason
    counts reach the driver; the located rows stay persisted on the executors.

    Args:
        spark: Session.
        config: The lake.
        as_of: Evaluation instant.
        names: Tables to decide (default every target).

    Raises:
        TableError: a table is missing, unreadable, or lacks its key column.
    """
    from consentgate.registry import lineage_dataset

    all_targets = targets(config)
    chosen = list(names) if names is not None else list(all_targets)
    if not chosen:  # every table has its own decider: consent is not needed (nor read)
        return RunDecisions(as_of=as_of, consent=None, hashed_assets=False)
    use_cases = [all_targets[n].use_case for n in chosen]
    consent = _consent(spark, config, as_of, use_cases).persist()
    run = RunDecisions(as_of=as_of, consent=consent, hashed_assets=False, _owned=[consent])
    edges = lake.read_table(spark, config.table_path("lineage"))
    pinned: dict[str, tuple[LogTable, DataFrame]] = {}
    for name in chosen:
        dataset = all_targets[name]
        path = target_path(config, name, dataset)
        table = _open_checked(name, path, dataset.key)
        rows = lake.read_table(spark, path, version=int(table.version()), with_file=True)
        pinned[name] = (table, rows)
    seeds: dict[str, list[DataFrame]] = {}
    for name in chosen:
        dataset = all_targets[name]
        if dataset.asset_column is None:
            keys = pinned[name][1].select(_as_key(F.col(dataset.key)).alias("key"))
            seeds.setdefault(lineage_dataset(name), []).append(keys)
    closure: DataFrame | None = None
    if seeds:
        closure = _closure(edges, seeds).persist()
        run._owned.append(closure)
    # Every table's decision in one Spark job: one persisted frame tagged by table, one
    # collect of the per-(table, file, reason) counts. Independent tables' stages then run
    # side by side instead of one small job after another.
    tagged: DataFrame | None = None
    for i, name in enumerate(chosen):
        dataset = all_targets[name]
        table, rows = pinned[name]
        if dataset.asset_column is None:
            assert closure is not None
            sources = _closure_of(closure, lineage_dataset(name))
        else:
            sources = _direct_sources(name, dataset, rows, edges)
        located = _decide_rows(rows, sources, consent, name=name, dataset=dataset, as_of=as_of)
        part = located.select(F.lit(i).alias("_table"), *LOCATED_COLUMNS)
        tagged = part if tagged is None else tagged.unionByName(part)
    assert tagged is not None
    tagged = tagged.persist()
    run._owned.append(tagged)
    counted: dict[int, list[tuple[str, str, int]]] = {i: [] for i in range(len(chosen))}
    for row in tagged.groupBy("_table", "_file", "reason").count().collect():
        counted[int(row["_table"])].append((row["_file"], row["reason"], int(row["count"])))
    for i, name in enumerate(chosen):
        dataset = all_targets[name]
        table = pinned[name][0]
        located = tagged.where(F.col("_table") == F.lit(i)).select(*LOCATED_COLUMNS)
        path = target_path(config, name, dataset)
        plan = _summarise(name, path, table, located, counted=counted[i])
        covered = frozenset(lake.active_files(table).column("path").to_pylist())
        run.tables[name] = Decided(plan=plan, located=located, covered=covered)
    return run


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
    if int(table.version()) == decided.plan.version:
        return decided, None
    active = lake.active_files(table).column("path").to_pylist()
    still = {f.path for f in decided.plan.files} & set(active)
    located = decided.located.where(F.col("_file").isin(*sorted(still))) if still else None
    added = sorted(set(active) - decided.covered)
    if added:
        assert run.consent is not None  # a run that decided this table evaluated consent
        rows = lake.read_table(spark, path, version=int(table.version()), with_file=True)
        rows = rows.where(F.col("_file").isin(*added))
        edges = lake.read_table(spark, config.table_path("lineage"))
        sources = _direct_sources(name, dataset, rows, edges)
        if run.hashed_assets:
            sources = _hash_assets(sources)
        fresh = _decide_rows(
            rows, sources, run.consent, name=name, dataset=dataset, as_of=run.as_of
        ).select(KEY_SHA, "reason")
        earlier = decided.located.select(KEY_SHA, "reason")
        new = _located_hashed(rows, fresh.unionByName(earlier), dataset.key)
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
    """Write a run's decisions as small Delta work tables so that ``purge_dataset`` tasks in
    other processes (Airflow's mapped tasks) read them instead of deciding again.

    Only digests are written: removed keys as ``key_digest`` and consent's asset ids as
    SHA-256, so nothing under ``purge_runs/`` can outlive an erasure as a raw id. The plan
    (``plan.json``) is written last: a directory without it is an incomplete plan, ignored.
    """
    root = run_dir(config, run_id)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    consent = run.consent
    if consent is None:
        raise ConsentgateError("materialise: the run decided no table")
    if not run.hashed_assets:
        consent = _hash_assets(consent)
    lake.write_table(consent, root / "consent", commit_metadata={_META_RUN: run_id})
    tables: dict[str, Any] = {}
    for i, (name, decided) in enumerate(run.tables.items()):
        sub = f"t{i:04d}"
        lake.write_table(
            decided.located.select(*LOCATED_COLUMNS).coalesce(1),
            root / sub,
            commit_metadata={_META_RUN: run_id, _META_DATASET: name},
        )
        tables[name] = {
            "work_table": sub,
            "plan": _plan_state(decided.plan),
            "covered": sorted(decided.covered),
        }
    state = {"run_id": run_id, "as_of": iso(run.as_of), "tables": tables}
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
    spark: SparkSession, config: Config, run_id: str, *, as_of: dt.datetime | None = None
) -> RunDecisions | None:
    """A run's materialised decisions, or None if the run has no complete plan (or one made
    for another ``as_of``, which must not be reused)."""
    root = run_dir(config, run_id)
    plan_file = root / _PLAN_FILE
    if not plan_file.is_file():
        return None
    state = json.loads(plan_file.read_text())
    instant = parse_instant(state["as_of"])
    if as_of is not None and iso(as_of) != iso(instant):
        return None
    run = RunDecisions(
        as_of=instant,
        consent=lake.read_table(spark, root / "consent"),
        hashed_assets=True,
    )
    for name, entry in state["tables"].items():
        run.tables[name] = Decided(
            plan=_plan_from_state(entry["plan"]),
            located=lake.read_table(spark, root / entry["work_table"]),
            covered=frozenset(entry["covered"]),
        )
    return run


def discard_run(config: Config, run_id: str) -> None:
    """Remove a run's work tables (call once every table of the run is purged)."""
    shutil.rmtree(run_dir(config, run_id), ignore_errors=True)


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
    """
    instant = as_of or now_utc()
    custom = dict(deciders or {})
    names = list(targets(config))
    run = decide_run(spark, config, as_of=instant, names=[n for n in names if n not in custom])
    try:
        out: dict[str, DatasetPlan] = {}
        for name in names:
            if name in custom:
                dataset = targets(config)[name]
                plan, located = plan_table(
                    spark,
                    name,
                    target_path(config, name, dataset),
                    key=dataset.key,
                    decide=custom[name],
                )
                located.unpersist()
                out[name] = plan
            else:
                out[name] = run.tables[name].plan
        if run_id is not None:
            materialise(spark, config, run, run_id)
    finally:
        run.release()
    return PurgePlan(as_of=instant, datasets=out)


# --------------------------------------------------------------------------------------------
# Rewriting one table


def key_table_path(config: Config, name: str) -> Path:
    """Where the hashed removed keys of table ``name`` are kept."""
    safe = "".join(c if c.isalnum() or c in "-_." else "__" for c in name)
    return config.state_dir / "purge_keys" / safe


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
    ).distinct()
    path = key_table_path(config, name)
    lake.write_table(
        frame,
        path,
        mode="append" if lake.is_table(path) else "error",
        commit_metadata={_META_RUN: run_id, _META_ATTEMPT: attempt},
        configuration={"delta.appendOnly": "true"},
    )


def _crash_point(point: str) -> None:
    """Kill this process with SIGKILL when the crash test asks for it at ``point``."""
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _policy(config: Config, dataset: DatasetConfig) -> str:
    body = {
        "use_case": dataset.use_case,
        **config.use_cases[dataset.use_case].model_dump(mode="json", exclude_none=True),
        "retention_days": dataset.retention_days,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@contextmanager
def _table_lock(config: Config, name: str) -> Iterator[None]:
    """One purge per table at a time (released by the kernel if the process dies)."""
    locks = config.state_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / (key_table_path(config, name).name + ".lock"), "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
            plan, located = plan_table(spark, name, path, key=key, decide=decide)
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
        _crash_point("before_commit")
        removed = located.select(KEY_SHA).distinct()
        if plan.rows_removed <= _BROADCAST_ROWS:
            removed = F.broadcast(removed)
        try:
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
        _crash_point("after_commit")
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
    """Attempts of table ``name`` that have a ``purge`` or ``recovery`` audit entry.

    Read with delta-rs (two small columns of a log that grows with runs, not with data): a
    Spark job per table and run would be pure overhead.
    """
    path = audit.audit_path(config)
    if not lake.is_table(path):
        return set()
    log = lake.open_table(path).to_pyarrow_table(columns=["kind", "payload_json"])
    known: set[str] = set()
    for kind, text in zip(
        log.column("kind").to_pylist(), log.column("payload_json").to_pylist(), strict=True
    ):
        if kind in ("purge", "recovery"):
            payload = json.loads(text)
            if payload.get("dataset") == name:
                known.add(str(payload.get("attempt")))
    return known


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
    in this process), the run's work tables (:func:`plan_purge` with this ``run_id`` and
    ``as_of`` materialised them, possibly in another process), else this table is decided
    here on its own. Either way consent is evaluated at most once, and conflicts re-locate
    rows instead of deciding again.

    Args:
        spark: Session.
        config: The lake.
        name: A configured dataset or a ``snapshot/<model_version>/<dataset>`` name.
        as_of: Evaluation instant (default now, UTC).
        run_id: The purge run this belongs to (default: a fresh ``purge-...`` id).
        dry_run: Plan only; write nothing (not even recovery entries).
        max_retries: Re-plans allowed after conflicting concurrent commits.
        decide: Override the consent decider (tests and tools).
        run: This run's decisions, from :func:`decide_run`.

    Raises:
        ConsentgateError: unknown dataset name.
        ConflictError: the table kept conflicting with concurrent writers.
    """
    instant = as_of or now_utc()
    run_name = run_id or new_run_id("purge", at=instant)
    all_targets = targets(config)
    if name not in all_targets:
        raise ConsentgateError(f"dataset {name!r}: not configured and not a registered snapshot")
    dataset = all_targets[name]
    own: RunDecisions | None = None
    if decide is None:
        if run is None or name not in run.tables:
            run = load_run(spark, config, run_id, as_of=instant) if run_id else None
        if run is None or name not in run.tables:
            run = own = decide_run(spark, config, as_of=instant, names=[name])
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
        with _table_lock(config, name):
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
    return result


def run_purge(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime | None = None,
    dry_run: bool = False,
    erase: bool = True,
    run_id: str | None = None,
    kind: str = "purge",
    deciders: Mapping[str, Decider] | None = None,
) -> dict[str, Any]:
    """The whole nightly purge: every table, then erasure and its verification.

    Consent and lineage are decided once for every table (:func:`decide_run`), in this
    process, before any table is rewritten; each table is then purged from that decision.

    Returns:
        ``{"run_id", "as_of", "dry_run", "datasets": {name: {...}}, "erasure": {...}}`` as
        ``consentgate purge --json`` prints it.
    """
    from consentgate import erasure

    instant = as_of or now_utc()
    run_name = run_id or new_run_id(kind, at=instant)
    custom = dict(deciders or {})
    names = list(targets(config))
    decisions = decide_run(
        spark, config, as_of=instant, names=[n for n in names if n not in custom]
    )
    datasets: dict[str, Any] = {}
    try:
        for name in names:
            datasets[name] = purge_dataset(
                spark,
                config,
                name,
                as_of=instant,
                run_id=run_name,
                dry_run=dry_run,
                decide=custom.get(name),
                run=decisions,
            )
    finally:
        decisions.release()
    erased: dict[str, Any] = {}
    if erase and not dry_run:
        erased = erasure.erase_and_verify(spark, config, run_id=run_name, datasets=list(datasets))
    summary = {
        name: {
            k: result[k]
            for k in ("rows_deleted", "version_before", "version_after", "files_rewritten")
        }
        | {"reasons": result["reasons"]}
        for name, result in datasets.items()
    }
    if not dry_run:
        audit.append_event(
            spark,
            config,
            kind=kind,
            run_id=run_name,
            payload={
                "as_of": iso(instant),
                "datasets": summary,
                "erasure": {n: r.get("result") for n, r in erased.get("datasets", {}).items()},
            },
        )
    return {
        "run_id": run_name,
        "as_of": iso(instant),
        "dry_run": dry_run,
        "datasets": datasets,
        "erasure": erased,
    }


def run_backfill(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime | None = None,
    dry_run: bool = False,
    deciders: Mapping[str, Decider] | None = None,
) -> dict[str, Any]:
    """Re-evaluate everything under the current (changed) policy, purge what no longer
    complies, and report which trained models are affected (``impact``).

    The impact is computed before the purge so that it describes the snapshots as they were
    when the policy changed (the purge then cleans those snapshots too).
    """
    from consentgate.gate import impact as run_impact

    instant = as_of or now_utc()
    impact = run_impact(spark, config, as_of=instant)
    result = run_purge(
        spark, config, as_of=instant, dry_run=dry_run, kind="backfill", deciders=deciders
    )
    result["impact"] = impact
    return result
