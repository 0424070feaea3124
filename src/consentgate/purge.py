"""The purge: remove every row whose consent no longer holds from every derivative Delta table
and every registered training snapshot, touching only the data files that hold such rows.

Per table, in steps that Airflow can map over (``plan_purge`` once, ``purge_dataset`` per table,
then :mod:`consentgate.erasure`):

1. **Plan** at the table's latest version ``v``: a *decider* turns the table's rows into the
   rows to remove, ``(key, reason)`` (consent + lineage + retention, see :func:`decider_for`).
   Those keys are joined back to the rows' data files (``lake.read_table(with_file=True)``,
   i.e. Spark's ``_metadata.file_path``), so the plan is exact: only files that really hold a
   removed row are touched, which is the minimum any file-level rewrite can do. Only the
   decision columns (key, asset column, derived_at) are read for the whole table: Parquet is
   columnar, so embeddings and blobs are never read outside the affected files. Only per-file
   and per-reason counts reach the driver.
2. **Rewrite**: executors read just the affected files, drop the removed keys (anti join) and
   write the survivors with :func:`lake.write_files` (new files, invisible until committed).
   Values are copied through Spark's Parquet reader and writer with the table's own schema,
   so every surviving row comes out bit-for-bit equal.
3. **Record keys**: the removed keys, hashed (SHA-256 of ``"k:" + key``; ``"n:"`` for a null
   key), are appended to a key table under ``state_dir/purge_keys/<dataset>`` tagged with the
   attempt id, *before* the commit, so that a crash after the commit can never lose them. The
   erasure verifier only trusts attempts whose commit is in the table's history.
4. **Commit** one Delta transaction (remove the affected files, add the rewritten ones) based
   on ``v``, with commit metadata: run id, attempt id, counts per reason, the use case's policy,
   ``as_of``. No raw ids. If another writer removed one of our files since ``v`` (a
   compaction), delta-rs refuses, our new files are deleted and the plan is redone from the new
   snapshot, up to ``max_retries`` times, then :class:`ConflictError`. Concurrent appends do
   not conflict; when anyone committed between ``v`` and our commit, the table is planned once
   more so that appended rows of withdrawn assets are removed in the same run.
5. **Audit**: one ``purge`` entry per committed table (counts, versions, attempt ids).

Crash safety: files written but not committed are orphans, invisible to readers, erased by
the erasure step once older than the window. A commit without its audit entry (crash between
the two) is found on the next run from the table's history and recorded as a ``recovery``
entry, as is an attempt that recorded keys but never committed. Purges of one table are
serialised by a per-table ``flock`` so that a running attempt is never mistaken for a crashed
one. For tests, ``CONSENTGATE_PURGE_CRASH_AT=before_commit|after_commit`` kills the process
with SIGKILL at that point.

Idempotence: a table with nothing to remove gets no commit at all.
"""

from __future__ import annotations

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

from deltalake import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from consentgate import audit, lake
from consentgate.config import Config, DatasetConfig
from consentgate.errors import ConflictError, ConsentgateError, TableError
from consentgate.runtime import iso, new_run_id, now_utc

#: A decider maps a table's rows (its own columns) to the rows to remove: two columns, the
#: row key (any name and type; compared as a string) then ``reason``.
Decider = Callable[[DataFrame], DataFrame]

CRASH_ENV: Final = "CONSENTGATE_PURGE_CRASH_AT"
OPERATION: Final = "consentgate.purge"
_META_OPERATION: Final = "consentgate.operation"
_META_ATTEMPT: Final = "consentgate.attempt"
_META_RUN: Final = "consentgate.run"
_META_REASONS: Final = "consentgate.reasons"
_META_ROWS: Final = "consentgate.rows_deleted"
_META_DATASET: Final = "consentgate.dataset"

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
# Targets and deciders


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


def decider_for(
    spark: SparkSession, config: Config, name: str, dataset: DatasetConfig, *, as_of: dt.datetime
) -> Decider:
    """The consent + lineage + retention decider for one table (DESIGN.md "Effective consent").

    A row is removed unless every source asset is granted for the dataset's use case and the
    row is inside retention; rows without a path to an asset are removed (``no_lineage``).
    """
    from consentgate import lineage
    from consentgate.consent import effective_consent
    from consentgate.registry import lineage_dataset

    records = lake.read_table(spark, config.table_path("consent_records"))
    assets = lake.read_table(spark, config.table_path("assets"))
    edges = lake.read_table(spark, config.table_path("lineage"))
    use_cases = {dataset.use_case: config.use_cases[dataset.use_case]}

    def decide(rows: DataFrame) -> DataFrame:
        sources = lineage.source_assets(
            lineage_dataset(name),
            rows,
            key=dataset.key,
            asset_column=dataset.asset_column,
            lineage=edges,
        )
        consent = effective_consent(
            records,
            assets,
            use_cases=use_cases,
            as_of=as_of,
            extra_asset_ids=sources.select("asset_id").where(F.col("asset_id").isNotNull()),
        )
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
        return decisions.where(~F.col("keep")).select("key", "reason")

    return decide


# --------------------------------------------------------------------------------------------
# Planning one table


def _as_key(column: Column) -> Column:
    """Keys are compared as strings (as lineage does), so any key type works the same way."""
    return column.cast(StringType())


def _located(rows: DataFrame, removals: DataFrame, key: str) -> DataFrame:
    """``[key, _file, reason]`` of every row to remove (one reason per key).

    The join is null-safe: a removed null key removes the null-key rows (fail closed) instead
    of silently matching nothing.
    """
    first = removals.columns[0]
    one_reason = (
        removals.select(_as_key(F.col(first)).alias("_purge_key"), F.col("reason"))
        .groupBy("_purge_key")
        .agg(F.min("reason").alias("reason"))
    )
    picked = rows.select(key, "_file")
    joined = picked.join(one_reason, _as_key(picked[key]).eqNullSafe(one_reason["_purge_key"]))
    return joined.select(key, "_file", "reason")


def _without(source: DataFrame, located: DataFrame, key: str) -> DataFrame:
    """``source`` minus the rows whose key is in ``located`` (null-safe anti join)."""
    removed = located.select(_as_key(F.col(key)).alias("_purge_key")).distinct()
    condition = _as_key(source[key]).eqNullSafe(removed["_purge_key"])
    return source.join(removed, condition, "left_anti")


def plan_table(
    spark: SparkSession, name: str, path: Path, *, key: str, decide: Decider
) -> tuple[DatasetPlan, DataFrame]:
    """Plan the purge of one table at its latest version.

    Returns:
        The plan and a DataFrame ``[key, _file, reason]`` of the rows to remove, persisted so
        that the rewrite does not decide again; the caller unpersists it.

    Raises:
        TableError: the table is missing, unreadable, or lacks the key column.
    """
    table = lake.open_table(path)
    version = int(table.version())
    schema = lake.spark_schema(table)
    if key not in schema.fieldNames():
        raise TableError(f"dataset {name}: key column {key!r} is not in table {path}")
    files = lake.active_files(table)
    paths = files.column("path").to_pylist()
    sizes = dict(zip(paths, files.column("size_bytes").to_pylist(), strict=True))
    counts = dict(zip(paths, files.column("num_records").to_pylist(), strict=True))
    rows = lake.read_table(spark, path, version=version, with_file=True)
    located = _located(rows, decide(rows.drop("_file")), key).persist()
    per_file: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for row in located.groupBy("_file", "reason").count().collect():
        per_file[row["_file"]] = per_file.get(row["_file"], 0) + int(row["count"])
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + int(row["count"])
    unknown = sorted(set(per_file) - set(sizes))
    if unknown:
        raise TableError(f"dataset {name}: rows located in files not in the log: {unknown[:3]}")
    plan = DatasetPlan(
        name=name,
        path=str(path),
        version=version,
        rows_before=int(sum(int(c or 0) for c in counts.values())),
        files_total=len(paths),
        bytes_total=int(sum(int(s) for s in sizes.values())),
        reasons=reasons,
        files=tuple(
            FilePlan(p, int(sizes[p]), int(counts[p] or 0), n) for p, n in sorted(per_file.items())
        ),
    )
    return plan, located


def plan_purge(
    spark: SparkSession,
    config: Config,
    *,
    as_of: dt.datetime | None = None,
    deciders: Mapping[str, Decider] | None = None,
) -> PurgePlan:
    """Plan the purge of every configured dataset and registered snapshot; writes nothing.

    Args:
        spark: Session.
        config: The lake.
        as_of: Evaluation instant (default now, UTC).
        deciders: Override the consent decider per table name (tests and tools).
    """
    instant = as_of or now_utc()
    out: dict[str, DatasetPlan] = {}
    for name, dataset in targets(config).items():
        decide = (deciders or {}).get(name) or decider_for(
            spark, config, name, dataset, as_of=instant
        )
        plan, located = plan_table(
            spark, name, target_path(config, name, dataset), key=dataset.key, decide=decide
        )
        located.unpersist()
        out[name] = plan
    return PurgePlan(as_of=instant, datasets=out)


# --------------------------------------------------------------------------------------------
# Rewriting one table


def _read_files(
    spark: SparkSession, table: DeltaTable, root: Path, rels: Sequence[str]
) -> DataFrame:
    """Read only the given data files of a snapshot, with partition values re-attached and
    ``_src`` (the physical file) kept so the survivors can be laid out file by file."""
    schema = lake.spark_schema(table)
    parts = list(table.metadata().partition_columns)
    data_schema = StructType([f for f in schema.fields if f.name not in parts])
    files = lake.active_files(table)
    wanted = set(rels)
    groups: dict[tuple[str | None, ...], list[str]] = {}
    columns = [files.column(f"partition.{c}").to_pylist() for c in parts]
    for i, rel in enumerate(files.column("path").to_pylist()):
        if rel in wanted:
            groups.setdefault(tuple(c[i] for c in columns), []).append(rel)
    frames: list[DataFrame] = []
    for values, group in groups.items():
        frame = spark.read.schema(data_schema).parquet(*[str(root / r) for r in group])
        extra: list[Column] = [
            F.lit(v).cast(schema[n].dataType).alias(n) for n, v in zip(parts, values, strict=True)
        ]
        frames.append(frame.select("*", *extra, F.col("_metadata.file_path").alias("_src")))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result.select(*schema.fieldNames(), "_src")


def key_digest(column: Column) -> Column:
    """SHA-256 of a key as stored in the key table: ``"k:" + key``, or ``"n:"`` for null."""
    text = F.when(column.isNull(), F.lit("n:")).otherwise(
        F.concat(F.lit("k:"), column.cast("string"))
    )
    return F.sha2(text, 256)


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
    key: str,
    attempt: str,
    run_id: str,
) -> None:
    frame = located.select(
        key_digest(F.col(key)).alias("key_sha256"),
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


def _delete_uncommitted(root: Path, written: Sequence[lake.WrittenFile]) -> None:
    """Remove our own files after a refused commit (they were never visible to anyone)."""
    for top in {f.path.split("/", 1)[0] for f in written}:
        if top.startswith("w-"):
            shutil.rmtree(root / top, ignore_errors=True)


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
    decide: Decider,
    as_of: dt.datetime,
    run_id: str,
    dry_run: bool = False,
    max_retries: int = 3,
) -> dict[str, Any]:
    """Purge one table with a given decider (see the module docstring for the steps).

    Returns:
        ``rows_before, rows_deleted, rows_after, version_before, version_after, reasons{},
        files_rewritten, bytes_rewritten, bytes_written, commits, attempts, conflicts``
        (plus ``plan`` on a dry run).

    Raises:
        ConflictError: still conflicting after ``max_retries`` re-plans (names the table).
    """
    path = target_path(config, name, dataset)
    key = dataset.key
    reasons: dict[str, int] = {}
    files_rewritten = bytes_rewritten = bytes_written = 0
    commits: list[int] = []
    attempts: list[str] = []
    conflicts = 0
    first: DatasetPlan | None = None
    passes = 0
    while True:
        plan, located = plan_table(spark, name, path, key=key, decide=decide)
        first = first or plan
        if dry_run or not plan.files:
            located.unpersist()
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
        try:
            table = lake.open_table(path, version=plan.version)
            affected = [f.path for f in plan.files]
            source = _read_files(spark, table, path, affected)
            survivors = _without(source, located, key)
            survivors = survivors.repartition(max(1, len(affected)), "_src").drop("_src")
            parts = list(table.metadata().partition_columns)
            written = lake.write_files(survivors, path, partition_by=parts)
            _record_keys(spark, config, name, located, key=key, attempt=attempt, run_id=run_id)
        finally:
            located.unpersist()
        attempts.append(attempt)
        metadata = {
            _META_OPERATION: OPERATION,
            _META_RUN: run_id,
            _META_ATTEMPT: attempt,
            _META_DATASET: name,
            _META_REASONS: json.dumps(dict(sorted(plan.reasons.items())), separators=(",", ":")),
            _META_ROWS: str(plan.rows_removed),
            "consentgate.as_of": iso(as_of),
            "consentgate.policy": _policy(config, dataset),
        }
        _crash_point("before_commit")
        try:
            result = lake.replace_files(
                path,
                read_version=plan.version,
                remove=affected,
                add=written,
                commit_metadata=metadata,
            )
        except ConflictError:
            conflicts += 1
            _delete_uncommitted(path, written)
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
        commits.append(result.version)
        for reason, count in plan.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        files_rewritten += len(plan.files)
        bytes_rewritten += plan.bytes_affected
        bytes_written += result.bytes_added
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
                "rows_deleted": plan.rows_removed,
                "reasons": dict(sorted(plan.reasons.items())),
                "files_rewritten": len(plan.files),
                "bytes_rewritten": plan.bytes_affected,
                "files_added": len(written),
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
    known: set[str] = set()
    for event in audit.events(spark, config):
        payload = event["payload"]
        if event["kind"] in ("purge", "recovery") and payload.get("dataset") == name:
            known.add(str(payload.get("attempt")))
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
            "reasons": json.loads(entry.get(_META_REASONS, "{}")),
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
) -> dict[str, Any]:
    """Purge one configured dataset or registered snapshot (the Airflow mapped task's body).

    Args:
        spark: Session.
        config: The lake.
        name: A configured dataset or a ``snapshot/<model_version>/<dataset>`` name.
        as_of: Evaluation instant (default now, UTC).
        run_id: The purge run this belongs to (default: a fresh ``purge-...`` id).
        dry_run: Plan only; write nothing (not even recovery entries).
        max_retries: Re-plans allowed after conflicting concurrent commits.
        decide: Override the consent decider (tests and tools).

    Raises:
        ConsentgateError: unknown dataset name.
        ConflictError: the table kept conflicting with concurrent writers.
    """
    instant = as_of or now_utc()
    run = run_id or new_run_id("purge", at=instant)
    all_targets = targets(config)
    if name not in all_targets:
        raise ConsentgateError(f"dataset {name!r}: not configured and not a registered snapshot")
    dataset = all_targets[name]
    decider = decide or decider_for(spark, config, name, dataset, as_of=instant)
    if dry_run:
        return purge_table(
            spark, config, name, dataset, decide=decider, as_of=instant, run_id=run, dry_run=True
        )
    with _table_lock(config, name):
        recovered = reconcile(spark, config, name, target_path(config, name, dataset))
        result = purge_table(
            spark,
            config,
            name,
            dataset,
            decide=decider,
            as_of=instant,
            run_id=run,
            max_retries=max_retries,
        )
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

    Returns:
        ``{"run_id", "as_of", "dry_run", "datasets": {name: {...}}, "erasure": {...}}`` as
        ``consentgate purge --json`` prints it.
    """
    from consentgate import erasure

    instant = as_of or now_utc()
    run = run_id or new_run_id(kind, at=instant)
    datasets: dict[str, Any] = {}
    for name in targets(config):
        datasets[name] = purge_dataset(
            spark,
            config,
            name,
            as_of=instant,
            run_id=run,
            dry_run=dry_run,
            decide=(deciders or {}).get(name),
        )
    erased: dict[str, Any] = {}
    if erase and not dry_run:
        erased = erasure.erase_and_verify(spark, config, run_id=run, datasets=list(datasets))
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
            run_id=run,
            payload={
                "as_of": iso(instant),
                "datasets": summary,
                "erasure": {n: r.get("result") for n, r in erased.get("datasets", {}).items()},
            },
        )
    return {
        "run_id": run,
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
