"""The lake layer: the one place that talks to Delta Lake.

Two engines share the work, each where it is the right one:

* **delta-spark** (the JVM Delta engine, jars from ``jvm/pom.xml``) does every read, write and
  maintenance operation: ``spark.read.format("delta")`` with time travel, ``df.write.format(
  "delta")``, ``MERGE ... WHEN MATCHED THEN DELETE`` against a table of removed keys,
  ``REORG TABLE ... APPLY (PURGE)``, ``OPTIMIZE`` and ``VACUUM``. So every table feature
  delta-spark handles is honoured — deletion vectors, column mapping, change data feed, CHECK
  constraints, generated columns, partitions — and delta-spark's own optimistic concurrency
  control decides conflicts (its typed ``Concurrent*Exception``\\ s become
  :class:`~consentgate.errors.ConflictError`).
* **delta-rs** (``deltalake``) only *reads the log*, where a JVM is not wanted: the Spark-free
  verifier (file lists of snapshots, their history) and cheap log-only inventories. It never
  commits.

Commit metadata: every commit we make carries ``userMetadata``, an RFC 8785 canonical JSON
object with our keys (run id, operation, counts per reason, policy, ...) and ``consentgate.txn``
(random) so the committed version can be found in the history even under concurrent writers.
Never a raw asset or user id: MERGE records only its join and clause conditions, never the
source's values (a ``DELETE ... IN ('<ids>')`` would put the ids into the log).

Statistics (decision, see README "Lake layer"): tables consentgate creates set
``delta.dataSkippingNumIndexedCols=0``, so their add actions carry ``numRecords`` only. Min/max
bounds of key or id columns (of any type) would put raw ids into the Delta log, which VACUUM
never erases. Users' own tables keep their settings; their log is cleaned by the erasure step
(checkpoint + log retention) and then scanned (``consentgate.erasure``).

Paths are local filesystem paths (a shared mount on a cluster); delta-spark itself would take
object-store URIs, but the erasure scan walks the directory with ``os``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import rfc8785
from deltalake import DeltaTable as LogTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DateType,
    MapType,
    StructField,
    StructType,
    TimestampType,
)

from consentgate import verifier
from consentgate.errors import ConflictError, SchemaError, TableError, foreign_cause

WriteMode = Literal["error", "append", "overwrite"]

__all__ = [
    "CREATED_TABLE_PROPERTIES",
    "TXN_KEY",
    "CommitResult",
    "LogTable",
    "active_files",
    "append_only",
    "append_rows",
    "checkpoint_and_clean_log",
    "file_statistics",
    "history",
    "is_table",
    "merge_delete",
    "open_table",
    "partition_columns",
    "read_table",
    "relative_file",
    "require_schema",
    "run_sql",
    "session_setting",
    "set_properties",
    "spark_schema",
    "table_inventory",
    "table_version",
    "time_statistics",
    "user_metadata",
    "write_table",
]

#: The key of our random transaction tag inside ``userMetadata``.
TXN_KEY = "consentgate.txn"
#: Table properties of every table consentgate creates: no per-column statistics (see above).
CREATED_TABLE_PROPERTIES: Mapping[str, str] = {"delta.dataSkippingNumIndexedCols": "0"}


def time_statistics(schema: StructType) -> dict[str, str]:
    """Table properties that give a table statistics on its top-level timestamp and date
    columns only (``delta.dataSkippingStatsColumns``), or none when it has no such column.

    What README advises for users' tables, and what the demo's source tables do: instants
    are no ids, so their bounds may stay in the log; from them the quiescence certificate's
    decision bound is read without reading a row (:mod:`consentgate.flips`).
    """
    columns = [f.name for f in schema.fields if isinstance(f.dataType, TimestampType | DateType)]
    return {"delta.dataSkippingStatsColumns": ",".join(columns)} if columns else {}


#: Session setting through which delta-spark takes ``userMetadata`` for SQL/DeltaTable ops.
_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


# --------------------------------------------------------------------------------------------
# Log-only reads (delta-rs; no JVM)


def open_table(path: str | Path, *, version: int | None = None) -> LogTable:
    """Open a Delta table's log (latest, or ``version``) with delta-rs, or fail naming the path.

    For log-only questions (versions, file lists, history); never for rows. The same function
    as the Spark-free verifier's.

    Raises:
        TableError: the path holds no Delta table or the version does not exist.
    """
    return verifier.open_delta(path, version=version)


def is_table(path: str | Path) -> bool:
    """Whether ``path`` holds a Delta table."""
    return verifier.is_delta_table(path)


def spark_schema(table: LogTable) -> StructType:
    """The table's logical schema as a Spark StructType (Delta's schema JSON is Spark's)."""
    return StructType.fromJson(json.loads(table.schema().to_json()))


def partition_columns(table: LogTable) -> list[str]:
    """The table's partition columns (logical names)."""
    return list(table.metadata().partition_columns)


def append_only(table: LogTable) -> bool:
    """Whether the table forbids removing data (``delta.appendOnly``)."""
    return str(table.metadata().configuration.get("delta.appendOnly", "false")).lower() == "true"


def file_statistics(table: LogTable) -> pa.Table:
    """The snapshot's add actions as the log holds them: ``path, size_bytes, num_records`` and
    per column ``min.<c>``, ``max.<c>``, ``null_count.<c>`` (+ ``partition.*``); no data read."""
    return pa.table(table.get_add_actions(flatten=True))


def active_files(table: LogTable) -> pa.Table:
    """:func:`file_statistics` plus ``rows``: what a reader sees, ``num_records`` minus the
    rows a deletion vector hides (from delta-rs's keep-masks,
    :func:`consentgate.verifier.deletion_vector_masks`).
    """
    actions = file_statistics(table)
    masks = verifier.deletion_vector_masks(table)
    rows = [
        int(n or 0) - sum(1 for keep in masks.get(str(path), ()) if not keep)
        for n, path in zip(
            actions.column("num_records").to_pylist(),
            actions.column("path").to_pylist(),
            strict=True,
        )
    ]
    return actions.append_column("rows", pa.array(rows, pa.int64()))


def table_version(path: str | Path) -> int:
    """The latest committed version of the table."""
    return int(open_table(path).version())


def history(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Commit infos, newest first, with our ``userMetadata`` keys merged in at the top level.

    A commit whose ``userMetadata`` is not a JSON object (someone else's) keeps it as a string.
    """
    return verifier.commit_history(path, limit=limit)


user_metadata = verifier.user_metadata


def table_inventory(path: str | Path) -> dict[str, Any]:
    """Rows, files, bytes and version of a table, from the log alone (no data read)."""
    table = open_table(path)
    files = active_files(table)
    return {
        "version": int(table.version()),
        "files": files.num_rows,
        "bytes": int(sum(files.column("size_bytes").to_pylist())) if files.num_rows else 0,
        "rows": int(sum(files.column("rows").to_pylist())) if files.num_rows else 0,
    }


# --------------------------------------------------------------------------------------------
# Reading rows (delta-spark)


def read_table(
    spark: SparkSession,
    path: str | Path,
    *,
    version: int | None = None,
    with_file: bool = False,
) -> DataFrame:
    """Read a Delta table (latest or ``version``) with delta-spark.

    Args:
        spark: The session to read with.
        path: Table directory.
        version: Time travel to this table version (default: the latest, pinned at the call).
        with_file: Also return ``_file``, the data file's path relative to the table root as
            the log's add actions spell it (what the purge uses to locate removed rows).

    Raises:
        TableError: no table, or a missing version.
    """
    location = str(path)
    if not is_table(location):
        raise TableError(f"{location}: not a Delta table (no _delta_log)")
    # Pin the version now: a delta-spark DataFrame read by path otherwise resolves the latest
    # snapshot each time it is executed, so a frame read once and used twice (persisted
    # decisions recomputed, say) could see two versions of the table.
    pinned = table_version(location) if version is None else int(version)
    reader = spark.read.format("delta").option("versionAsOf", pinned)
    try:
        frame = reader.load(location)
        if with_file:
            frame = frame.select("*", relative_file(F.col("_metadata.file_path"), Path(path)))
    except Exception as exc:  # AnalysisException for a version that does not exist
        # the engine's text can quote partition directories (column=value): not repeated
        raise TableError(f"{location}: cannot read Delta table ({foreign_cause(exc)})") from None
    return frame


def relative_file(file_uri: Column, root: Path) -> Column:
    """Spark's ``_metadata.file_path`` (a ``file:`` URI) as ``_file``: the root-relative path
    spelt as the log's add actions spell it (URI-encoded, e.g. ``p=E%20U/part-...``)."""
    prefix = root.resolve().as_uri()[len("file://") :].rstrip("/") + "/"
    bare = F.regexp_replace(file_uri, r"^file:(//)?", "")
    return F.substring(bare, len(prefix) + 1, 1 << 20).alias("_file")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Schema checks


def require_schema(schema: StructType, expected: Mapping[str, DataType], *, table: str) -> None:
    """Check that ``schema`` has each expected column with the expected type.

    Nullability is not compared, at any depth (delta-spark stores every column, struct field
    and array element as nullable): fail-closed logic handles nulls explicitly.

    Raises:
        SchemaError: naming the table and the first missing or mistyped column.
    """
    present = {f.name: f.dataType for f in schema.fields}
    for name, data_type in expected.items():
        if name not in present:
            raise SchemaError(
                f"table {table}: missing column {name!r} ({data_type.simpleString()})"
            )
        if _nullable(present[name]) != _nullable(data_type):
            raise SchemaError(
                f"table {table}: column {name!r} has type {present[name].simpleString()}, "
                f"expected {data_type.simpleString()}"
            )


def _nullable(data_type: DataType) -> DataType:
    """``data_type`` with every nested field, element and value nullable."""
    if isinstance(data_type, StructType):
        return StructType(
            [StructField(f.name, _nullable(f.dataType), True) for f in data_type.fields]
        )
    if isinstance(data_type, ArrayType):
        return ArrayType(_nullable(data_type.elementType), True)
    if isinstance(data_type, MapType):
        return MapType(_nullable(data_type.keyType), _nullable(data_type.valueType), True)
    return data_type


def _require_same_schema(actual: StructType, table_schema: StructType, *, table: str) -> None:
    require_schema(actual, {f.name: f.dataType for f in table_schema.fields}, table=table)
    extra = set(actual.fieldNames()) - set(table_schema.fieldNames())
    if extra:
        raise SchemaError(f"table {table}: unexpected columns {sorted(extra)}")


# --------------------------------------------------------------------------------------------
# Commits (delta-spark)


@dataclass(frozen=True)
class CommitResult:
    """What one commit did: its version and delta-spark's operation metrics."""

    version: int
    metrics: Mapping[str, int] = field(default_factory=dict)

    def metric(self, name: str) -> int:
        return int(self.metrics.get(name, 0))


def append_rows(
    rows: Sequence[Sequence[Any]],
    schema: StructType,
    path: str | Path,
    *,
    commit_metadata: Mapping[str, Any] | None = None,
) -> int:
    """Append a few driver-side rows to an existing table with delta-rs: one commit, no JVM.

    For consentgate's own small logs (the audit) when nothing else of a run needs Spark: a
    certified quiet night (:mod:`consentgate.quiescence`) records itself without starting one.
    The table must exist (created by :func:`write_table`, whose properties it keeps: delta-rs
    honours ``delta.dataSkippingNumIndexedCols``, so no statistics are written) and have
    exactly ``schema``; the commit carries our ``userMetadata`` as delta-spark's writes do.

    Returns:
        The committed table version.

    Raises:
        TableError: no table at ``path``.
        SchemaError: ``schema`` is not the table's.
    """
    from deltalake import CommitProperties, write_deltalake
    from pyspark.sql.pandas.types import to_arrow_schema

    root = Path(path)
    if not is_table(root):
        raise TableError(f"{root}: no Delta table to append to")
    table = open_table(root)
    _require_same_schema(schema, spark_schema(table), table=str(root))
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema.fields)
    arrow_schema = to_arrow_schema(schema)
    data = pa.table(
        {
            f.name: pa.array(list(c), type=f.type)
            for f, c in zip(arrow_schema, columns, strict=True)
        },
        schema=arrow_schema,
    )
    text = _metadata_json(commit_metadata, uuid.uuid4().hex)
    write_deltalake(
        table,
        data,
        mode="append",
        commit_properties=CommitProperties(custom_metadata={"userMetadata": text}),
    )
    return int(open_table(root).version())


def _metadata_json(metadata: Mapping[str, Any] | None, txn: str) -> str:
    body = {str(k): v for k, v in (metadata or {}).items()}
    body[TXN_KEY] = txn
    return rfc8785.dumps(body).decode()


@contextmanager
def _session_user_metadata(spark: SparkSession, text: str) -> Iterator[None]:
    with session_setting(spark, _USER_METADATA_CONF, text):
        yield


@contextmanager
def session_setting(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """The session's ``key`` set to ``value`` inside the block, as it was after it (unset
    when it was unset)."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


@contextmanager
def commits_tagged(spark: SparkSession, commit_metadata: Mapping[str, Any]) -> Iterator[None]:
    """Every commit the block makes carries ``commit_metadata`` as ``userMetadata`` (with a
    fresh transaction tag): for Delta commands that commit without a statement of ours
    (VACUUM's ``VACUUM START``/``VACUUM END``), so that our run is named on each of them."""
    with _session_user_metadata(spark, _metadata_json(commit_metadata, uuid.uuid4().hex)):
        yield


def _committed(path: str | Path, txn: str, *, search: int = 50) -> CommitResult:
    """Our commit (found by its ``txn`` tag) in the newest ``search`` entries of the history,
    read from the log with delta-rs: no Spark job for a lookup that reads a few JSON files."""
    for entry in open_table(path).history(search):
        if user_metadata(entry.get("userMetadata")).get(TXN_KEY) == txn:
            raw = entry.get("operationMetrics") or {}
            metrics = {k: int(v) for k, v in raw.items() if str(v).lstrip("-").isdigit()}
            return CommitResult(version=int(entry["version"]), metrics=metrics)
    raise TableError(f"{path}: commit {txn} not found in the last {search} history entries")


def _conflict(path: str | Path, exc: BaseException) -> ConflictError | None:
    """delta-spark's typed conflict exceptions as :class:`ConflictError` (None otherwise).

    In delta-spark's Python package the specific classes do not share a base class, so each
    is named; importing :mod:`delta.exceptions` also installs their conversion from Java.
    """
    from delta import exceptions as delta_exceptions

    conflicts = tuple(
        getattr(delta_exceptions, name)
        for name in (
            "DeltaConcurrentModificationException",
            "ConcurrentWriteException",
            "MetadataChangedException",
            "ProtocolChangedException",
            "ConcurrentAppendException",
            "ConcurrentDeleteReadException",
            "ConcurrentDeleteDeleteException",
            "ConcurrentTransactionException",
        )
        if hasattr(delta_exceptions, name)
    )
    if isinstance(exc, conflicts):
        return ConflictError(
            f"{path}: a concurrent commit conflicts with ours "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
    return None


def write_table(
    df: DataFrame,
    path: str | Path,
    *,
    mode: WriteMode = "error",
    partition_by: Sequence[str] = (),
    commit_metadata: Mapping[str, Any] | None = None,
    configuration: Mapping[str, str] | None = None,
) -> int:
    """Write a DataFrame as a new Delta table, or append to / overwrite an existing one.

    One delta-spark commit: a reader sees all of the write or none of it.

    Args:
        df: The rows to write.
        path: Table directory.
        mode: ``error`` (the table must not exist), ``append`` or ``overwrite``.
        partition_by: Partition columns for a new table; must match an existing table's.
        commit_metadata: Our ``userMetadata`` keys (never raw asset or user ids).
        configuration: Table properties for a new table (on top of
            :data:`CREATED_TABLE_PROPERTIES`).

    Returns:
        The committed table version.

    Raises:
        TableError: the table exists in ``error`` mode, is append-only in ``overwrite`` mode.
        SchemaError: the DataFrame's columns or types differ from the table's.
        ConflictError: a concurrent commit conflicts (overwrite).
    """
    root = Path(path)
    exists = is_table(root)
    if exists and mode == "error":
        raise TableError(f"{root}: table already exists")
    txn = uuid.uuid4().hex
    writer = df.write.format("delta").option("userMetadata", _metadata_json(commit_metadata, txn))
    if exists:
        table = open_table(root)
        _require_same_schema(df.schema, spark_schema(table), table=str(root))
        parts = partition_columns(table)
        if partition_by and list(partition_by) != parts:
            raise SchemaError(f"table {root}: partitioned by {parts}, not {list(partition_by)}")
        if mode == "overwrite" and append_only(table):
            raise TableError(f"{root}: delta.appendOnly is set; refusing to overwrite")
        writer = writer.mode("append" if mode == "append" else "overwrite")
    else:
        root.mkdir(parents=True, exist_ok=True)
        writer = writer.mode("errorifexists")
        for key, value in {**CREATED_TABLE_PROPERTIES, **dict(configuration or {})}.items():
            writer = writer.option(key, value)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
    try:
        import delta.exceptions  # noqa: F401  (installs the Java -> Python conflict types)

        writer.save(str(root))
    except Exception as exc:
        conflict = _conflict(root, exc)
        if conflict is not None:
            raise conflict from None
        raise
    return _committed(root, txn).version


def merge_delete(
    spark: SparkSession,
    path: str | Path,
    keys: DataFrame,
    *,
    condition: Column,
    commit_metadata: Mapping[str, Any] | None = None,
) -> CommitResult:
    """Delete the target rows that match ``keys`` with one ``MERGE ... WHEN MATCHED DELETE``.

    The target is aliased ``t`` and ``keys`` ``s``; ``condition`` joins them. The log records
    only the condition's text, never the keys' values. On a table with deletion vectors
    delta-spark writes vectors (no data file is rewritten); otherwise it copies the touched
    files on write. delta-spark's conflict detection decides concurrent commits.

    Raises:
        TableError: the table is append-only.
        ConflictError: a concurrent commit conflicts (the caller re-plans).
    """
    from delta.tables import DeltaTable

    log = open_table(path)
    if append_only(log):
        raise TableError(f"{path}: delta.appendOnly is set; refusing to delete rows")
    txn = uuid.uuid4().hex
    target = DeltaTable.forPath(spark, str(path)).alias("t")
    try:
        with _session_user_metadata(spark, _metadata_json(commit_metadata, txn)):
            target.merge(keys.alias("s"), condition).whenMatchedDelete().execute()
    except Exception as exc:
        conflict = _conflict(path, exc)
        if conflict is not None:
            raise conflict from None
        raise
    return _committed(path, txn)


def run_sql(
    spark: SparkSession, statement: str, path: str | Path, *, commit_metadata: Mapping[str, Any]
) -> CommitResult | None:
    """Run a maintenance statement on ``delta.`<path>```, tagged with our commit metadata.

    ``statement`` holds ``{table}`` where the table goes (``REORG TABLE {table} APPLY
    (PURGE)``, ``OPTIMIZE {table}``). Returns the commit, or None when the statement committed
    nothing (REORG on a table without deletion vectors).
    """
    txn = uuid.uuid4().hex
    table = _sql_table(path)
    before = table_version(path)
    try:
        with _session_user_metadata(spark, _metadata_json(commit_metadata, txn)):
            spark.sql(statement.format(table=table)).collect()
    except Exception as exc:
        conflict = _conflict(path, exc)
        if conflict is not None:
            raise conflict from None
        raise
    if table_version(path) == before:
        return None
    try:
        return _committed(path, txn)
    except TableError:
        return None


def _sql_table(path: str | Path) -> str:
    return "delta.`" + str(Path(path).resolve()).replace("`", "``") + "`"


def set_properties(
    spark: SparkSession,
    path: str | Path,
    properties: Mapping[str, str],
    *,
    commit_metadata: Mapping[str, Any],
) -> None:
    """``ALTER TABLE ... SET TBLPROPERTIES`` (one commit) unless every value is already set."""
    current = open_table(path).metadata().configuration
    wanted = {k: v for k, v in properties.items() if current.get(k) != v}
    if not wanted:
        return
    body = ", ".join(f"'{k}' = '{v}'" for k, v in sorted(wanted.items()))
    run_sql(
        spark,
        f"ALTER TABLE {{table}} SET TBLPROPERTIES ({body})",
        path,
        commit_metadata=commit_metadata,
    )


def checkpoint_and_clean_log(spark: SparkSession, path: str | Path) -> None:
    """Write a checkpoint at the latest version, then delete every log file before it (JSON
    commits, older checkpoints, ``.crc``): time travel to any earlier version ends.

    Only the erasure step calls this, and only on a table whose log still names a removed key
    after the window (statistics or partition values of a table consentgate did not create).
    delta-spark cleans logs on its own only when it checkpoints, for whole days, and only up
    to a newest expired file — which the erasure's own commits (REORG, VACUUM START/END)
    never are. So this calls delta-spark's own ``DeltaLog.checkpoint`` and
    ``cleanUpExpiredLogs`` through the JVM (no public API exists for either) with a retention
    override that puts the cutoff in the future. The table's properties are left alone.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    delta = jvm.org.apache.spark.sql.delta
    none = jvm.scala.Option.empty()
    log = delta.DeltaLog.forTable(spark._jsparkSession, str(Path(path).resolve()))
    log.checkpoint(log.update(False, none, none), none)
    # A negative retention: every file before the checkpoint is "expired". The value must
    # cross py4j as a java.lang.Long (Scala's Option[Long]); a Python int only becomes one
    # beyond 32 bits, hence 2**32 ms (about 50 days) rather than a minute.
    future = jvm.scala.Option.apply(-(2**32))
    minute = getattr(getattr(delta, "TruncationGranularity$"), "MODULE$").MINUTE()
    log.cleanUpExpiredLogs(log.update(False, none, none), none, future, minute)
