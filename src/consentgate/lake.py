"""The lake layer: the one place that touches the Delta transaction log.

Spark does the data work and delta-rs (``deltalake``) reads and commits the log:

* **read**: the snapshot's active file list, schema and partition values come from delta-rs;
  Spark reads those Parquet files. Partition columns are re-attached as typed literals.
* **write**: Spark executors write Parquet files into a fresh, non-hidden directory inside the
  table (``w-<write id>/``); executors then read their own files' footers to build the add
  actions' statistics (numRecords, minValues, maxValues, nullCount); the driver commits all the
  files in one Delta transaction. Only file metadata crosses to the driver, never rows.
* **replace**: remove-and-add commits in one transaction, for rewrites such as the purge.

Tables whose protocol needs features this path cannot honour (deletion vectors, column mapping,
anything unknown) are refused with :class:`TableError`, never read or written wrongly.

Decisions (see README, "Lake layer"):

* Paths are local filesystem paths, visible to the driver and every executor (a shared mount on
  a cluster). Object stores would need a Hadoop filesystem listing; not built yet.
* Every commit carries ``consentgate.txn`` (a random id) in its commit info so the committed
  version can be found in the history even when other writers commit concurrently.
* Statistics for timestamps are widened to millisecond bounds (min floored, max ceiled), as
  Delta readers compare at millisecond precision. Strings get no min/max at all: bounds of id
  columns would write raw asset and user ids into the log, which outlives VACUUM. Floats,
  binaries, booleans and nested columns get only null counts.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import pyarrow as pa
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    create_table_with_add_actions,
)
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StringType, StructField, StructType

from consentgate.errors import ConflictError, SchemaError, TableError

WriteMode = Literal["error", "append", "overwrite"]

#: Reader features whose absence from our read path cannot change what a reader sees.
SUPPORTED_READER_FEATURES = frozenset({"timestampNtz", "vacuumProtocolCheck"})
#: Writer features our write path honours (appendOnly: we never remove data from such a table).
SUPPORTED_WRITER_FEATURES = frozenset(
    {"appendOnly", "timestampNtz", "vacuumProtocolCheck", "invariants"}
)
#: Table properties that oblige a writer to do work we do not do (CDC files, constraints, ...).
_UNHONOURED_PROPERTIES = ("delta.enableChangeDataFeed", "delta.enableDeletionVectors")
#: Column metadata keys that oblige a writer to compute or check values.
_UNHONOURED_COLUMN_METADATA = (
    "delta.invariants",
    "delta.generationExpression",
    "delta.identity.start",
)
_TXN_KEY = "consentgate.txn"
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


# --------------------------------------------------------------------------------------------
# Opening tables and checking what they need


def open_table(path: str | Path, *, version: int | None = None) -> DeltaTable:
    """Open a Delta table (latest, or ``version``) or fail naming the path.

    Raises:
        TableError: the path holds no Delta table or the version does not exist.
    """
    location = str(path)
    try:
        table = DeltaTable(location)
        if version is not None:
            table.load_as_version(version)
    except TableNotFoundError:
        raise TableError(f"{location}: not a Delta table (no _delta_log)") from None
    except Exception as exc:  # delta-rs raises several types for a bad version
        raise TableError(f"{location}: cannot open Delta table: {exc}") from None
    return table


def is_table(path: str | Path) -> bool:
    """Whether ``path`` holds a Delta table."""
    return DeltaTable.is_deltatable(str(path))


def _check_readable(table: DeltaTable) -> None:
    protocol = table.protocol()
    name = table.table_uri
    if protocol.min_reader_version == 2:
        raise TableError(f"{name}: needs column mapping (reader version 2), which is not supported")
    if protocol.min_reader_version >= 3:
        unsupported = set(protocol.reader_features or ()) - SUPPORTED_READER_FEATURES
        if unsupported:
            raise TableError(
                f"{name}: needs reader features {sorted(unsupported)} that this engine "
                "cannot honour; refusing to read it"
            )
    if protocol.min_reader_version > 3:
        raise TableError(f"{name}: unknown reader version {protocol.min_reader_version}")


def _check_writable(table: DeltaTable) -> None:
    _check_readable(table)
    protocol = table.protocol()
    name = table.table_uri
    if protocol.min_writer_version >= 7:
        unsupported = set(protocol.writer_features or ()) - SUPPORTED_WRITER_FEATURES
        if unsupported:
            raise TableError(
                f"{name}: needs writer features {sorted(unsupported)} that this engine "
                "cannot honour; refusing to write it"
            )
    elif protocol.min_writer_version > 7:
        raise TableError(f"{name}: unknown writer version {protocol.min_writer_version}")
    configuration = table.metadata().configuration
    for key in _UNHONOURED_PROPERTIES:
        if str(configuration.get(key, "false")).lower() == "true":
            raise TableError(f"{name}: table property {key}=true is not supported for writes")
    for key in configuration:
        if key.startswith("delta.constraints."):
            raise TableError(f"{name}: CHECK constraint {key} is not supported for writes")
    for column in json.loads(table.schema().to_json())["fields"]:
        for key in _UNHONOURED_COLUMN_METADATA:
            if key in column.get("metadata", {}):
                raise TableError(f"{name}: column {column['name']} uses {key}, not supported")


def spark_schema(table: DeltaTable) -> StructType:
    """The table's schema as a Spark StructType (Delta's schema JSON is Spark's)."""
    return StructType.fromJson(json.loads(table.schema().to_json()))


def append_only(table: DeltaTable) -> bool:
    """Whether the table forbids removing data (``delta.appendOnly``)."""
    return str(table.metadata().configuration.get("delta.appendOnly", "false")).lower() == "true"


# --------------------------------------------------------------------------------------------
# Reading


def active_files(table: DeltaTable) -> pa.Table:
    """The snapshot's add actions (path, size_bytes, num_records, stats, partition.*)."""
    return pa.table(table.get_add_actions(flatten=True))


def read_table(
    spark: SparkSession,
    path: str | Path,
    *,
    version: int | None = None,
    with_file: bool = False,
) -> DataFrame:
    """Read a Delta table (latest or ``version``) as a Spark DataFrame.

    Args:
        spark: The session to read with.
        path: Table directory.
        version: Time travel to this table version.
        with_file: Also return ``_file``, the data file's path relative to the table root
            (what the purge uses to touch only the files that hold affected rows).

    Raises:
        TableError: no table, a missing version, or a protocol feature we cannot honour.
    """
    table = open_table(path, version=version)
    _check_readable(table)
    return _read_snapshot(spark, table, Path(path), with_file=with_file)


def _read_snapshot(
    spark: SparkSession, table: DeltaTable, root: Path, *, with_file: bool
) -> DataFrame:
    schema = spark_schema(table)
    partition_columns = list(table.metadata().partition_columns)
    data_schema = StructType([f for f in schema.fields if f.name not in partition_columns])
    out_fields = list(schema.fields)
    if with_file:
        out_fields.append(StructField("_file", StringType(), False))
    files = active_files(table)
    paths = files.column("path").to_pylist()
    if not paths:
        return spark.createDataFrame([], StructType(out_fields))

    # One Parquet scan per distinct partition tuple; the values become typed literals.
    groups: dict[tuple[str | None, ...], list[str]] = {}
    partitions = [files.column(f"partition.{c}").to_pylist() for c in partition_columns]
    for i, rel in enumerate(paths):
        groups.setdefault(tuple(col[i] for col in partitions), []).append(rel)

    frames: list[DataFrame] = []
    for values, rels in groups.items():
        frame = spark.read.schema(data_schema).parquet(*[_file_uri(root, rel) for rel in rels])
        extra: list[Column] = [
            F.lit(value).cast(schema[name].dataType).alias(name)
            for name, value in zip(partition_columns, values, strict=True)
        ]
        if with_file:
            extra.append(_relative_file(F.col("_metadata.file_path"), root).alias("_file"))
        frames.append(frame.select("*", *extra))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result.select(*[f.name for f in out_fields])


def _file_uri(root: Path, relative: str) -> str:
    if "://" in relative or relative.startswith("/"):
        return relative
    return str(root / unquote(relative))


def _relative_file(file_uri: Column, root: Path) -> Column:
    """Turn Spark's ``_metadata.file_path`` (``file:/abs/path``, URL-encoded) into the
    root-relative, decoded path that the Delta log's add actions carry."""
    prefix = root.resolve().as_posix().rstrip("/") + "/"
    bare = F.url_decode(F.regexp_replace(file_uri, r"^file:(//)?", ""))
    return F.substring(bare, len(prefix) + 1, 1 << 20)


# --------------------------------------------------------------------------------------------
# Schema checks


def require_schema(schema: StructType, expected: Mapping[str, DataType], *, table: str) -> None:
    """Check that ``schema`` has each expected column with the expected type.

    Nullability is not compared: fail-closed logic handles nulls explicitly.

    Raises:
        SchemaError: naming the table and the first missing or mistyped column.
    """
    present = {f.name: f.dataType for f in schema.fields}
    for name, data_type in expected.items():
        if name not in present:
            raise SchemaError(
                f"table {table}: missing column {name!r} ({data_type.simpleString()})"
            )
        if present[name] != data_type:
            raise SchemaError(
                f"table {table}: column {name!r} has type {present[name].simpleString()}, "
                f"expected {data_type.simpleString()}"
            )


# --------------------------------------------------------------------------------------------
# Writing: executors write Parquet, the driver commits the log


@dataclass(frozen=True)
class WrittenFile:
    """One Parquet file written by the executors, described for an add action."""

    path: str
    size: int
    partition_values: dict[str, str | None]
    stats: str
    num_records: int

    def add_action(self, *, modification_time: int) -> AddAction:
        return AddAction(
            self.path, self.size, self.partition_values, modification_time, True, self.stats
        )


@dataclass(frozen=True)
class CommitResult:
    """What a commit did: the version it created and the files it touched."""

    version: int
    added: tuple[WrittenFile, ...] = field(default_factory=tuple)
    removed: tuple[str, ...] = ()

    @property
    def rows_added(self) -> int:
        return sum(f.num_records for f in self.added)

    @property
    def bytes_added(self) -> int:
        return sum(f.size for f in self.added)


def write_files(
    df: DataFrame, root: str | Path, *, partition_by: Sequence[str] = ()
) -> list[WrittenFile]:
    """Have the executors write ``df`` as Parquet under ``root`` and describe the files.

    Nothing is committed: the files stay invisible to Delta readers until a commit adds them,
    and a crash leaves only orphans that vacuum removes.
    """
    root_path = Path(root).resolve()
    write_dir = f"w-{uuid.uuid4().hex}"
    out = root_path / write_dir
    writer = df.write.mode("errorifexists").option("compression", "snappy")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(str(out))
    relative = sorted(
        p.relative_to(root_path).as_posix()
        for p in out.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(out).parts)
    )
    if not relative:
        return []
    return describe_files(df.sparkSession, root_path, relative, partition_by=partition_by)


def describe_files(
    spark: SparkSession, root: Path, relative_paths: Sequence[str], *, partition_by: Sequence[str]
) -> list[WrittenFile]:
    """Read the footers of Parquet files on the executors and build add-action descriptions."""
    root_str = str(root)
    columns = list(partition_by)
    slices = max(1, min(len(relative_paths), spark.sparkContext.defaultParallelism * 4))
    rdd = spark.sparkContext.parallelize(list(relative_paths), slices)
    described = rdd.mapPartitions(lambda it: _describe_partition(root_str, columns, it))
    return [WrittenFile(**item) for item in described.collect()]


def _describe_partition(
    root: str, partition_by: list[str], paths: Iterable[str]
) -> Iterator[dict[str, Any]]:
    import os

    import pyarrow.parquet as pq

    for rel in paths:
        full = os.path.join(root, rel)
        meta = pq.ParquetFile(full).metadata
        yield {
            "path": rel,
            "size": os.path.getsize(full),
            "partition_values": _partition_values(rel, partition_by),
            "stats": json.dumps(_footer_stats(meta), separators=(",", ":")),
            "num_records": meta.num_rows,
        }


def _partition_values(relative: str, partition_by: Sequence[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for part in relative.split("/")[:-1]:
        if "=" in part:
            name, _, raw = part.partition("=")
            value = unquote(raw)
            values[unquote(name)] = None if value == _HIVE_NULL else value
    missing = [c for c in partition_by if c not in values]
    if missing:
        raise TableError(f"{relative}: no partition directory for {missing}")
    return {c: values[c] for c in partition_by}


def _footer_stats(meta: Any) -> dict[str, Any]:
    """Delta add-action stats from a Parquet footer, for top-level primitive columns."""
    schema = meta.schema
    top_level: dict[str, int] = {}
    for i in range(meta.num_columns):
        column = schema.column(i)
        path = column.path
        if "." in path:  # nested (arrays, structs): not stat-ed
            continue
        top_level[path] = i
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name, index in top_level.items():
        lo: Any = None
        hi: Any = None
        null_count = 0
        exact = True
        for rg in range(meta.num_row_groups):
            chunk = meta.row_group(rg).column(index)
            stats = chunk.statistics
            if stats is None or not stats.has_null_count:
                exact = False
                break
            null_count += stats.null_count
            if stats.has_min_max:
                lo = stats.min if lo is None else min(lo, stats.min)
                hi = stats.max if hi is None else max(hi, stats.max)
            elif chunk.num_values > stats.null_count:
                lo = hi = None
                exact = False
        if not exact:
            continue
        nulls[name] = null_count
        bounds = _stat_bounds(schema.column(index), lo, hi)
        if bounds is not None:
            mins[name], maxs[name] = bounds
    return {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _stat_bounds(column: Any, lo: Any, hi: Any) -> tuple[Any, Any] | None:
    if lo is None or hi is None:
        return None
    logical = str(column.logical_type)
    physical = column.physical_type
    if isinstance(lo, dt.datetime):
        return _ts_floor(lo), _ts_ceil(hi)
    if isinstance(lo, dt.date):
        return lo.isoformat(), hi.isoformat()
    if isinstance(lo, str):
        # Never: string bounds of key and id columns would put raw asset and user ids into
        # the Delta log, which outlives VACUUM, so a purged id would survive erasure there.
        return None
    is_integer = isinstance(lo, int) and not isinstance(lo, bool)
    if is_integer and physical in ("INT32", "INT64") and "Decimal" not in logical:
        return lo, hi
    # Booleans, binaries, decimals and floats: null counts only. Float bounds would buy no
    # pruning we need and invite -0.0/NaN subtleties.
    return None


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _ts_floor(value: dt.datetime) -> str:
    value = _as_utc(value)
    value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _ts_ceil(value: dt.datetime) -> str:
    value = _as_utc(value)
    if value.microsecond % 1000:
        value = value.replace(microsecond=value.microsecond // 1000 * 1000) + dt.timedelta(
            milliseconds=1
        )
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _commit_properties(metadata: Mapping[str, str] | None, txn: str) -> CommitProperties:
    custom = {str(k): str(v) for k, v in (metadata or {}).items()}
    custom[_TXN_KEY] = txn
    return CommitProperties(custom_metadata=custom)


def _version_of(path: str | Path, txn: str, *, search: int = 50) -> int:
    for entry in open_table(path).history(search):
        if entry.get(_TXN_KEY) == txn:
            return int(entry["version"])
    raise TableError(f"{path}: commit {txn} not found in the last {search} history entries")


def write_table(
    df: DataFrame,
    path: str | Path,
    *,
    mode: WriteMode = "error",
    partition_by: Sequence[str] = (),
    commit_metadata: Mapping[str, str] | None = None,
    configuration: Mapping[str, str] | None = None,
) -> int:
    """Write a DataFrame as a new Delta table, or append to / overwrite an existing one.

    The executors write Parquet; the driver commits every file in one transaction, so a
    reader sees all of the write or none of it.

    Args:
        df: The rows to write.
        path: Table directory.
        mode: ``error`` (the table must not exist), ``append`` or ``overwrite``.
        partition_by: Partition columns for a new table; must match an existing table's.
        commit_metadata: Extra commit-info entries (never raw asset or user ids).
        configuration: Table properties for a new table.

    Returns:
        The committed table version.

    Raises:
        TableError: the table exists in ``error`` mode, or needs a feature we cannot honour.
        SchemaError: the DataFrame's columns or types differ from the table's.
    """
    root = Path(path)
    exists = is_table(root)
    if exists and mode == "error":
        raise TableError(f"{root}: table already exists")
    txn = uuid.uuid4().hex
    if exists:
        table = open_table(root)
        _check_writable(table)
        existing = spark_schema(table)
        _require_same_schema(df.schema, existing, table=str(root))
        parts = list(table.metadata().partition_columns)
        if partition_by and list(partition_by) != parts:
            raise SchemaError(f"table {root}: partitioned by {parts}, not {list(partition_by)}")
        if mode == "overwrite" and append_only(table):
            raise TableError(f"{root}: delta.appendOnly is set; refusing to overwrite")
        files = write_files(df.select(*existing.fieldNames()), root, partition_by=parts)
        now = int(time.time() * 1000)
        table.create_write_transaction(
            [f.add_action(modification_time=now) for f in files],
            mode="append" if mode == "append" else "overwrite",
            schema=table.schema(),
            partition_by=parts or None,
            commit_properties=_commit_properties(commit_metadata, txn),
        )
    else:
        root.mkdir(parents=True, exist_ok=True)
        files = write_files(df, root, partition_by=partition_by)
        now = int(time.time() * 1000)
        create_table_with_add_actions(
            str(root),
            DeltaSchema.from_json(df.schema.json()),
            [f.add_action(modification_time=now) for f in files],
            mode="error",
            partition_by=list(partition_by) or None,
            configuration=dict(configuration) if configuration else None,
            commit_properties=_commit_properties(commit_metadata, txn),
        )
    return _version_of(root, txn)


def _require_same_schema(actual: StructType, table_schema: StructType, *, table: str) -> None:
    require_schema(actual, {f.name: f.dataType for f in table_schema.fields}, table=table)
    extra = set(actual.fieldNames()) - set(table_schema.fieldNames())
    if extra:
        raise SchemaError(f"table {table}: unexpected columns {sorted(extra)}")


def replace_files(
    path: str | Path,
    *,
    read_version: int,
    remove: Sequence[str],
    add: Sequence[WrittenFile] = (),
    commit_metadata: Mapping[str, str] | None = None,
) -> CommitResult:
    """Commit, in one transaction, the removal of ``remove`` and the addition of ``add``.

    The transaction is based on ``read_version``: if another writer committed since and the
    commits conflict (it removed one of our files, e.g. a compaction), delta-rs refuses and
    :class:`ConflictError` is raised so that the caller can re-plan. Concurrent appends of new
    files do not conflict and are kept.

    Raises:
        ConflictError: a concurrent commit touched the files we remove.
        TableError: the table is append-only or needs a feature we cannot honour.
    """
    table = open_table(path, version=read_version)
    _check_writable(table)
    if remove and append_only(table):
        raise TableError(f"{path}: delta.appendOnly is set; refusing to remove files")
    txn = uuid.uuid4().hex
    now = int(time.time() * 1000)
    sizes = dict(
        zip(
            active_files(table).column("path").to_pylist(),
            active_files(table).column("size_bytes").to_pylist(),
            strict=True,
        )
    )
    parts = list(table.metadata().partition_columns)
    partition_of = _partition_lookup(table, parts)
    actions: list[AddAction | RemoveAction] = []
    for rel in remove:
        if rel not in sizes:
            raise ConflictError(f"{path}: file to remove is not active at version {read_version}")
        actions.append(RemoveAction(rel, True, now, sizes[rel], partition_of.get(rel)))
    actions.extend(f.add_action(modification_time=now) for f in add)
    try:
        table.create_write_transaction(
            actions,
            mode="append",
            schema=table.schema(),
            partition_by=parts or None,
            commit_properties=_commit_properties(commit_metadata, txn),
        )
    except CommitFailedError as exc:
        raise ConflictError(f"{path}: concurrent commit conflicts with ours: {exc}") from None
    except Exception as exc:
        if "conflict" in str(exc).lower() or "concurrent" in str(exc).lower():
            raise ConflictError(f"{path}: concurrent commit conflicts with ours: {exc}") from None
        raise
    return CommitResult(version=_version_of(path, txn), added=tuple(add), removed=tuple(remove))


def _partition_lookup(table: DeltaTable, parts: Sequence[str]) -> dict[str, dict[str, str | None]]:
    if not parts:
        return {}
    files = active_files(table)
    paths = files.column("path").to_pylist()
    columns = {c: files.column(f"partition.{c}").to_pylist() for c in parts}
    return {p: {c: _partition_string(columns[c][i]) for c in parts} for i, p in enumerate(paths)}


def _partition_string(value: Any) -> str | None:
    """A typed partition value (as delta-rs reports it) in the log's string serialisation."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return _as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# --------------------------------------------------------------------------------------------
# Log inspection


def table_version(path: str | Path) -> int:
    """The latest committed version of the table."""
    return int(open_table(path).version())


def history(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Commit infos, newest first (operation, version, timestamp, custom metadata)."""
    return list(open_table(path).history(limit))


def table_inventory(path: str | Path) -> dict[str, Any]:
    """Rows, files, bytes and version of a table, from the log alone (no data read)."""
    table = open_table(path)
    files = active_files(table)
    records = files.column("num_records").to_pylist() if files.num_rows else []
    return {
        "version": int(table.version()),
        "files": files.num_rows,
        "bytes": int(sum(files.column("size_bytes").to_pylist())) if files.num_rows else 0,
        "rows": int(sum(r or 0 for r in records)),
    }
