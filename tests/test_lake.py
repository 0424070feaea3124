"""The lake layer on real Spark and real Delta tables: delta-spark writes and maintains them,
delta-rs reads their log (and, for interop, their rows)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rfc8785
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from consentgate import lake
from consentgate.errors import ConflictError, SchemaError, TableError

UTC = dt.UTC

SCHEMA = StructType(
    [
        StructField("id", StringType()),
        StructField("n", LongType()),
        StructField("score", DoubleType()),
        StructField("vector", ArrayType(FloatType())),
        StructField("tags", ArrayType(StringType())),
        StructField("blob", BinaryType()),
        StructField("at", TimestampType()),
        StructField("part", StringType()),
        StructField("bucket", IntegerType()),
    ]
)
#: The same columns as delta-rs writes them from Arrow.
ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("n", pa.int64()),
        ("score", pa.float64()),
        ("vector", pa.list_(pa.float32())),
        ("tags", pa.list_(pa.string())),
        ("blob", pa.binary()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("part", pa.string()),
        ("bucket", pa.int32()),
    ]
)
ROWS: list[tuple[Any, ...]] = [
    (
        "a",
        1,
        0.5,
        [1.0, 2.5],
        ["x"],
        b"\x00\x01",
        dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "EU",
        1,
    ),
    ("b", 2, None, [], None, None, dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), "US", 2),
    ("c", None, -0.0, None, ["y", None], b"", None, None, 1),
    ("d", 4, 1e300, [None, 3.0], [], b"z", dt.datetime(2026, 6, 1, tzinfo=UTC), "EU", None),
]
#: Raw ids that must never reach the Delta log.
SECRET = "asset-secret-1"
KEY_ROWS = [(SECRET, "x"), ("asset-secret-2", "y"), ("asset-3", "z"), ("asset-4", "w")]
DV_ON = {"delta.enableDeletionVectors": "true"}
REORG = "REORG TABLE {table} APPLY (PURGE)"


# --------------------------------------------------------------------------------------------
# Helpers


def sample(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(ROWS, SCHEMA)


def keyed(spark: SparkSession) -> DataFrame:
    """Four rows with string ids, in one file."""
    return spark.createDataFrame(KEY_ROWS, "k string, v string").coalesce(1)


def keys(spark: SparkSession, *values: str) -> DataFrame:
    return spark.createDataFrame([(v,) for v in values], "k string")


def ks(frame: DataFrame) -> list[Any]:
    return sorted(r.k for r in frame.collect())


def normalized(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with timestamps as UTC instants (PySpark hands out naive local datetimes, delta-rs
    aware ones) and binaries as bytes."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, dt.datetime):
            value = value.astimezone(UTC)
        elif isinstance(value, bytearray):
            value = bytes(value)
        out[name] = value
    return out


def spark_rows(frame: DataFrame) -> dict[str, dict[str, Any]]:
    return {r["id"]: normalized(r.asDict()) for r in frame.collect()}


def arrow_rows(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {r["id"]: normalized(r) for r in table.to_pylist()}


def log_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "_delta_log").rglob("*") if p.is_file())


def commit_info(path: Path, version: int) -> dict[str, Any]:
    for line in (path / "_delta_log" / f"{version:020d}.json").read_text().splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            return dict(action["commitInfo"])
    raise AssertionError(f"no commitInfo in version {version}")


def added_stats(path: Path, version: int) -> list[dict[str, Any]]:
    log = (path / "_delta_log" / f"{version:020d}.json").read_text().splitlines()
    adds = [json.loads(line)["add"] for line in log if "add" in json.loads(line)]
    return [json.loads(a["stats"]) for a in adds]


def file_paths(path: Path) -> list[str]:
    return sorted(lake.active_files(lake.open_table(path)).column("path").to_pylist())


def deletion_vector_count(path: Path) -> int:
    return pa.table(lake.open_table(path).deletion_vectors()).num_rows


def dv_table_with_one_deleted_row(spark: SparkSession, path: Path) -> lake.CommitResult:
    lake.write_table(keyed(spark), path, configuration=DV_ON)
    return lake.merge_delete(spark, path, keys(spark, SECRET), condition=F.expr("t.k = s.k"))


def overwrite_once(path: Path, marker: Path) -> Callable[[int], int]:
    """An identity UDF whose first evaluation commits an overwrite of ``path`` with delta-rs:
    a second writer committing after our transaction read the table, before it commits."""

    def side_effect(k: int) -> int:
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return k
        write_deltalake(str(path), pa.table({"k": pa.array([100], pa.int64())}), mode="overwrite")
        return k

    return side_effect


def racing_keys(spark: SparkSession, path: Path, marker: Path) -> DataFrame:
    """Keys 0..2 whose evaluation (inside our commit) lets another writer overwrite ``path``."""
    effect = overwrite_once(path, marker)
    udf = F.udf(lambda k: effect(k), LongType())  # no hints: a plain (not pandas) UDF
    return spark.range(3).select(udf(F.col("id")).alias("k"))


# --------------------------------------------------------------------------------------------
# Round trips, time travel, partitions


def test_round_trip_unpartitioned(spark: SparkSession, tmp_path: Path) -> None:
    df = sample(spark)
    version = lake.write_table(df, tmp_path / "t")
    assert version == 0
    back = lake.read_table(spark, tmp_path / "t")
    assert back.schema == df.schema
    assert_df_equality(back, df, ignore_row_order=True)


@pytest.mark.parametrize("partition_by", [["part"], ["part", "bucket"], ["bucket"]])
def test_round_trip_typed_partitions(
    spark: SparkSession, tmp_path: Path, partition_by: list[str]
) -> None:
    df = sample(spark)
    lake.write_table(df, tmp_path / "t", partition_by=partition_by)
    assert lake.partition_columns(lake.open_table(tmp_path / "t")) == partition_by
    back = lake.read_table(spark, tmp_path / "t")
    assert back.schema == df.schema
    assert_df_equality(back, df, ignore_row_order=True)
    # A typed partition value filters like any column (the integer 1, not the string "1").
    assert sorted(r.id for r in back.where(F.col("bucket") == 1).collect()) == ["a", "c"]


def test_append_overwrite_and_time_travel(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    first = spark.range(3).withColumnRenamed("id", "k")
    second = spark.range(3, 5).withColumnRenamed("id", "k")
    assert lake.write_table(first, path) == 0
    assert lake.write_table(second, path, mode="append") == 1
    assert lake.write_table(second, path, mode="overwrite") == 2
    assert ks(lake.read_table(spark, path, version=0)) == [0, 1, 2]
    assert ks(lake.read_table(spark, path, version=1)) == list(range(5))
    assert ks(lake.read_table(spark, path)) == [3, 4]
    assert lake.table_version(path) == 2
    assert [h["version"] for h in lake.history(path)] == [2, 1, 0]
    assert lake.table_inventory(path)["rows"] == 2


def test_empty_dataframe_makes_empty_table(spark: SparkSession, tmp_path: Path) -> None:
    df = spark.createDataFrame([], "k string, at timestamp")
    lake.write_table(df, tmp_path / "t")
    back = lake.read_table(spark, tmp_path / "t")
    assert back.count() == 0
    assert back.schema == df.schema
    assert lake.table_inventory(tmp_path / "t")["rows"] == 0


def test_timestamps_are_utc_instants(spark: SparkSession, tmp_path: Path) -> None:
    at = dt.datetime(2026, 3, 29, 1, 30, 0, 999_999, tzinfo=UTC)
    lake.write_table(spark.createDataFrame([(at,)], "at timestamp").coalesce(1), tmp_path / "t")
    # The Parquet file holds INT64 microseconds adjusted to UTC, not Spark's legacy INT96.
    (data_file,) = file_paths(tmp_path / "t")
    assert pq.read_schema(tmp_path / "t" / data_file).field("at").type == pa.timestamp(
        "us", tz="UTC"
    )
    assert DeltaTable(str(tmp_path / "t")).to_pyarrow_table().column("at").to_pylist() == [at]
    back = lake.read_table(spark, tmp_path / "t").selectExpr("cast(at as string) s").first()
    assert back is not None and back.s == "2026-03-29 01:30:00.999999"


# --------------------------------------------------------------------------------------------
# Refusals and errors


def test_error_mode_refuses_existing_table(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(1), tmp_path / "t")
    with pytest.raises(TableError, match="already exists"):
        lake.write_table(spark.range(1), tmp_path / "t")


def test_append_with_wrong_type_names_column(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(1).withColumnRenamed("id", "k"), tmp_path / "t")
    with pytest.raises(SchemaError, match=r"column 'k' has type string, expected bigint"):
        lake.write_table(
            spark.range(1).selectExpr("cast(id as string) k"), tmp_path / "t", mode="append"
        )
    assert lake.table_version(tmp_path / "t") == 0


def test_append_with_missing_or_extra_column_is_refused(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(1).selectExpr("id k", "id v"), path)
    with pytest.raises(SchemaError, match=r"missing column 'v'"):
        lake.write_table(spark.range(1).selectExpr("id k"), path, mode="append")
    with pytest.raises(SchemaError, match=r"unexpected columns \['w'\]"):
        lake.write_table(spark.range(1).selectExpr("id k", "id v", "id w"), path, mode="append")
    assert lake.table_version(path) == 0


def test_append_with_other_partitioning_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(sample(spark), path, partition_by=["part"])
    with pytest.raises(SchemaError, match=r"partitioned by \['part'\]"):
        lake.write_table(sample(spark), path, mode="append", partition_by=["bucket"])


def test_require_schema_names_table_and_column() -> None:
    schema = StructType([StructField("a", StringType()), StructField("b", LongType())])
    lake.require_schema(schema, {"a": StringType(), "b": LongType()}, table="t")
    with pytest.raises(SchemaError, match=r"table t: missing column 'c'"):
        lake.require_schema(schema, {"c": StringType()}, table="t")
    with pytest.raises(SchemaError, match=r"table t: column 'b' has type bigint, expected string"):
        lake.require_schema(schema, {"b": StringType()}, table="t")


def test_append_only_table_refuses_overwrite(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(
        spark.range(2).withColumnRenamed("id", "k"),
        path,
        configuration={"delta.appendOnly": "true"},
    )
    assert lake.append_only(lake.open_table(path))
    assert (
        lake.write_table(spark.range(2, 3).withColumnRenamed("id", "k"), path, mode="append") == 1
    )
    with pytest.raises(TableError, match="appendOnly"):
        lake.write_table(spark.range(1).withColumnRenamed("id", "k"), path, mode="overwrite")
    assert ks(lake.read_table(spark, path)) == [0, 1, 2]


def test_missing_table_is_named(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(TableError, match=re.escape(str(path))):
        lake.read_table(spark, path)
    with pytest.raises(TableError, match=re.escape(str(path))):
        lake.table_inventory(path)


def test_missing_version_is_named(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(1), path)
    with pytest.raises(TableError, match=re.escape(str(path))):
        lake.read_table(spark, path, version=7)


# --------------------------------------------------------------------------------------------
# The log: commit metadata, statistics, inventories, file paths


def test_commit_metadata_is_canonical_json_with_txn(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    ours = {"consentgate.run": "r-1", "consentgate.op": "purge", "consentgate.counts": {"x": 2}}
    lake.write_table(spark.range(2), path, commit_metadata=ours)
    lake.write_table(spark.range(1), path, mode="append", commit_metadata=ours)
    text = commit_info(path, 1)["userMetadata"]
    assert rfc8785.dumps(json.loads(text)).decode() == text
    body = json.loads(text)
    assert {k: v for k, v in body.items() if k != lake.TXN_KEY} == ours
    assert re.fullmatch(r"[0-9a-f]{32}", body[lake.TXN_KEY])
    newest, oldest = lake.history(path)
    assert newest["version"] == 1 and oldest["version"] == 0
    assert newest["consentgate.run"] == "r-1"
    assert newest["consentgate.counts"] == {"x": 2}
    assert newest[lake.TXN_KEY] == body[lake.TXN_KEY]
    assert oldest[lake.TXN_KEY] != newest[lake.TXN_KEY]


def test_created_tables_log_row_counts_only(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(keyed(spark), path, configuration={"delta.appendOnly": "true"})
    configuration = lake.open_table(path).metadata().configuration
    assert configuration["delta.dataSkippingNumIndexedCols"] == "0"
    assert configuration["delta.appendOnly"] == "true"
    assert added_stats(path, 0) == [{"numRecords": 4}]
    for log in log_files(path):
        assert SECRET.encode() not in log.read_bytes(), log


def test_inventory_comes_from_the_log(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(10).repartition(3), path)
    lake.write_table(spark.range(5).coalesce(1), path, mode="append")
    files = lake.active_files(lake.open_table(path))
    assert files.num_rows == 4
    assert files.column("rows").to_pylist() == files.column("num_records").to_pylist()
    inventory = lake.table_inventory(path)
    assert inventory == {
        "version": 1,
        "files": 4,
        "bytes": sum(p.stat().st_size for p in path.glob("*.parquet")),
        "rows": 15,
    }


def test_read_with_file_column_matches_log(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(sample(spark), tmp_path / "t", partition_by=["part"])
    seen = {r._file for r in lake.read_table(spark, tmp_path / "t", with_file=True).collect()}
    assert seen == set(file_paths(tmp_path / "t"))
    assert all(not f.startswith(("/", "file:")) for f in seen)


def test_file_column_matches_log_for_escaped_partition_values(
    spark: SparkSession, tmp_path: Path
) -> None:
    df = spark.createDataFrame([("a", "E U"), ("b", "x/y%"), ("c", "plain")], "id string, p string")
    lake.write_table(df, tmp_path / "t", partition_by=["p"])
    frame = lake.read_table(spark, tmp_path / "t", with_file=True)
    assert {r._file for r in frame.collect()} == set(file_paths(tmp_path / "t"))


# --------------------------------------------------------------------------------------------
# MERGE ... WHEN MATCHED DELETE


def test_merge_delete_removes_matching_rows(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(keyed(spark), path)
    result = lake.merge_delete(
        spark,
        path,
        keys(spark, SECRET, "asset-absent"),
        condition=F.expr("t.k = s.k"),
        commit_metadata={"consentgate.op": "purge"},
    )
    assert result.version == 1 == lake.table_version(path)
    assert result.metric("numTargetRowsDeleted") == 1
    assert ks(lake.read_table(spark, path)) == ["asset-3", "asset-4", "asset-secret-2"]
    assert lake.table_inventory(path)["rows"] == 3
    entry = lake.history(path)[0]
    assert entry["operation"] == "MERGE"
    assert entry["consentgate.op"] == "purge"
    assert SECRET not in json.dumps(entry["operationParameters"])
    for log in log_files(path):
        assert SECRET.encode() not in log.read_bytes(), log


def test_merge_delete_with_deletion_vectors_rewrites_no_file(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    lake.write_table(keyed(spark), path, configuration=DV_ON)
    before = file_paths(path)
    result = lake.merge_delete(spark, path, keys(spark, SECRET), condition=F.expr("t.k = s.k"))
    assert result.metric("numTargetRowsDeleted") == 1
    assert result.metric("numTargetDeletionVectorsAdded") >= 1
    assert result.metric("numTargetFilesAdded") == 0
    assert file_paths(path) == before
    assert deletion_vector_count(path) == 1
    files = lake.active_files(lake.open_table(path))
    assert files.column("num_records").to_pylist() == [4]
    assert files.column("rows").to_pylist() == [3]
    assert lake.table_inventory(path)["rows"] == 3 == lake.read_table(spark, path).count()
    assert SECRET not in ks(lake.read_table(spark, path))
    assert SECRET not in json.dumps(lake.history(path)[0]["operationParameters"])
    for log in log_files(path):
        assert SECRET.encode() not in log.read_bytes(), log


def test_merge_delete_refuses_append_only_table(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(keyed(spark), path, configuration={"delta.appendOnly": "true"})
    with pytest.raises(TableError, match="appendOnly"):
        lake.merge_delete(spark, path, keys(spark, SECRET), condition=F.expr("t.k = s.k"))
    assert lake.table_version(path) == 0
    assert lake.read_table(spark, path).count() == 4


# --------------------------------------------------------------------------------------------
# Maintenance statements


def test_reorg_purge_rewrites_files_with_deletion_vectors(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    dv_table_with_one_deleted_row(spark, path)
    before = file_paths(path)
    result = lake.run_sql(spark, REORG, path, commit_metadata={"consentgate.op": "reorg"})
    assert result is not None
    assert result.version == 2 == lake.table_version(path)
    assert result.metric("numDeletionVectorsRemoved") == 1
    assert deletion_vector_count(path) == 0
    files = lake.active_files(lake.open_table(path))
    assert files.column("num_records").to_pylist() == files.column("rows").to_pylist() == [3]
    assert set(file_paths(path)).isdisjoint(before)
    assert ks(lake.read_table(spark, path)) == ["asset-3", "asset-4", "asset-secret-2"]
    entry = lake.history(path)[0]
    assert entry["operation"] == "REORG" and entry["consentgate.op"] == "reorg"
    # Nothing left to purge: no second commit.
    assert lake.run_sql(spark, REORG, path, commit_metadata={}) is None
    assert lake.table_version(path) == 2


def test_reorg_purge_without_deletion_vectors_commits_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    lake.write_table(keyed(spark), path)
    lake.merge_delete(spark, path, keys(spark, SECRET), condition=F.expr("t.k = s.k"))
    before = file_paths(path)
    assert lake.run_sql(spark, REORG, path, commit_metadata={"consentgate.op": "reorg"}) is None
    assert lake.table_version(path) == 1
    assert file_paths(path) == before


# --------------------------------------------------------------------------------------------
# Concurrency: delta-spark's conflict detection, typed as ConflictError


def test_concurrent_commit_fails_merge_with_conflict_error(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(10).withColumnRenamed("id", "k"), path)
    racing = racing_keys(spark, path, tmp_path / "raced")
    with pytest.raises(ConflictError, match=re.escape(str(path))):
        lake.merge_delete(spark, path, racing, condition=F.expr("t.k = s.k"))
    # The other writer's commit stands; ours never landed.
    assert (tmp_path / "raced").exists()
    assert [h["operation"] for h in lake.history(path)] == ["WRITE", "WRITE"]
    assert ks(lake.read_table(spark, path)) == [100]


def test_concurrent_commit_fails_overwrite_with_conflict_error(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(10).withColumnRenamed("id", "k"), path)
    racing = racing_keys(spark, path, tmp_path / "raced")
    with pytest.raises(ConflictError, match=re.escape(str(path))):
        lake.write_table(racing, path, mode="overwrite")
    assert lake.table_version(path) == 1
    assert ks(lake.read_table(spark, path)) == [100]


# --------------------------------------------------------------------------------------------
# Interop with delta-rs


def test_delta_rs_reads_lake_tables_identically(spark: SparkSession, tmp_path: Path) -> None:
    df = sample(spark)
    lake.write_table(df, tmp_path / "t", partition_by=["part"])
    arrow = DeltaTable(str(tmp_path / "t")).to_pyarrow_table()
    assert sorted(arrow.schema.names) == sorted(SCHEMA.names)
    assert arrow_rows(arrow) == spark_rows(df)


def test_reads_tables_written_by_delta_rs_identically(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "rs"
    data = pa.Table.from_pylist(
        [dict(zip(SCHEMA.names, r, strict=True)) for r in ROWS], schema=ARROW_SCHEMA
    )
    write_deltalake(str(path), data, partition_by=["part"])
    back = lake.read_table(spark, path)
    assert back.schema == SCHEMA
    assert spark_rows(back) == arrow_rows(DeltaTable(str(path)).to_pyarrow_table())
    assert_df_equality(back, sample(spark), ignore_row_order=True)
    # Appending through the lake layer keeps the table readable by delta-rs.
    lake.write_table(sample(spark).where("id = 'a'"), path, mode="append")
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 5


def test_append_rows_commits_without_spark_as_spark_would(
    spark: SparkSession, tmp_path: Path
) -> None:
    """delta-rs appends a few rows to a table delta-spark created: Spark reads them, the
    commit carries our userMetadata, the table's no-statistics property holds, and a wrong
    schema or a missing table is refused naming it."""
    path = tmp_path / "t"
    schema = StructType(
        [StructField("k", LongType(), False), StructField("at", TimestampType(), False)]
    )
    at = dt.datetime(2026, 6, 1, 12, 30, 0, 123456, tzinfo=dt.UTC)
    lake.write_table(spark.createDataFrame([(1, at)], schema), path)
    version = lake.append_rows(
        [(2, at), (3, at)], schema, path, commit_metadata={"consentgate.run": "r-1"}
    )
    assert version == 1
    read = lake.read_table(spark, path).orderBy("k").collect()
    assert [(r.k, r.at.astimezone(dt.UTC)) for r in read] == [(1, at), (2, at), (3, at)]
    newest = lake.history(path, limit=1)[0]
    assert newest["consentgate.run"] == "r-1" and lake.TXN_KEY in newest
    actions = [
        json.loads(x) for x in (path / "_delta_log" / f"{1:020d}.json").read_text().splitlines()
    ]
    (add,) = [a["add"] for a in actions if "add" in a]
    stats = json.loads(add["stats"])
    assert stats.get("minValues", {}) == {} and stats.get("maxValues", {}) == {}
    other = StructType([StructField("k", StringType(), False), *schema.fields[1:]])
    with pytest.raises(SchemaError, match="k"):
        lake.append_rows([("x", at)], other, path)
    with pytest.raises(TableError, match=re.escape(str(tmp_path / "nope"))):
        lake.append_rows([(1, at)], schema, tmp_path / "nope")


def test_time_statistics_name_the_instants_and_nothing_else() -> None:
    from pyspark.sql.types import DateType, TimestampType

    def schema(*fields: tuple[str, Any]) -> StructType:
        return StructType([StructField(name, kind) for name, kind in fields])

    timed = schema(
        ("asset_id", StringType()),
        ("captured_at", TimestampType()),
        ("day", DateType()),
        ("n", LongType()),
        ("revoked_at", TimestampType()),
    )
    assert lake.time_statistics(timed) == {
        "delta.dataSkippingStatsColumns": "captured_at,day,revoked_at"
    }
    assert lake.time_statistics(schema(("asset_id", StringType()), ("n", LongType()))) == {}
