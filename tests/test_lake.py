"""The lake layer on real Spark and real Delta tables (delta-rs reads them back)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
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


def sample(spark: SparkSession) -> DataFrame:
    rows = [
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
        (
            "d",
            4,
            1e300,
            [None, 3.0],
            [],
            b"z",
            dt.datetime(2026, 6, 1, tzinfo=UTC),
            "EU",
            None,
        ),
    ]
    return spark.createDataFrame(rows, SCHEMA)


def test_round_trip_unpartitioned(spark: SparkSession, tmp_path: Path) -> None:
    df = sample(spark)
    version = lake.write_table(df, tmp_path / "t")
    assert version == 0
    back = lake.read_table(spark, tmp_path / "t")
    assert back.schema == df.schema
    assert_df_equality(back, df, ignore_row_order=True)


@pytest.mark.parametrize("partition_by", [["part"], ["part", "bucket"]])
def test_round_trip_partitioned(
    spark: SparkSession, tmp_path: Path, partition_by: list[str]
) -> None:
    df = sample(spark)
    lake.write_table(df, tmp_path / "t", partition_by=partition_by)
    table = DeltaTable(str(tmp_path / "t"))
    assert list(table.metadata().partition_columns) == partition_by
    back = lake.read_table(spark, tmp_path / "t")
    assert back.schema == df.schema
    assert_df_equality(back, df, ignore_row_order=True)


def test_other_delta_reader_sees_identical_rows(spark: SparkSession, tmp_path: Path) -> None:
    df = sample(spark)
    lake.write_table(df, tmp_path / "t", partition_by=["part"])
    arrow = DeltaTable(str(tmp_path / "t")).to_pyarrow_table()
    from_delta_rs = {r["id"]: r for r in arrow.to_pylist()}
    from_spark = {r["id"]: r.asDict() for r in df.collect()}
    assert from_delta_rs.keys() == from_spark.keys()
    for key, row in from_spark.items():
        other = from_delta_rs[key]
        for column in ("n", "vector", "tags", "blob", "part", "bucket"):
            assert other[column] == row[column], (key, column)
        assert (other["score"] is None) == (row["score"] is None)
        if row["at"] is None:
            assert other["at"] is None
        else:
            assert other["at"].astimezone(UTC) == row["at"].astimezone(UTC)


def test_stats_come_from_footers(spark: SparkSession, tmp_path: Path) -> None:
    df = sample(spark).coalesce(1)
    lake.write_table(df, tmp_path / "t")
    files = lake.active_files(DeltaTable(str(tmp_path / "t")))
    assert files.num_rows == 1
    stats = files.to_pylist()[0]
    assert stats["num_records"] == 4
    # No string bounds: they would put raw ids into the log (see lake.py).
    raw = json.loads(_raw_stats(tmp_path / "t"))
    assert "id" not in raw["minValues"] and "id" not in raw["maxValues"]
    assert stats["null_count.id"] == 0
    assert stats["min.n"] == 1 and stats["max.n"] == 4
    assert stats["null_count.n"] == 1
    assert stats["null_count.at"] == 1
    # Timestamps are widened to millisecond bounds: the max is ceiled, never below the data.
    assert stats["max.at"] >= dt.datetime(2026, 6, 1, tzinfo=UTC)
    assert stats["min.at"] <= dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_timestamp_stats_never_cut_off_microseconds(spark: SparkSession, tmp_path: Path) -> None:
    at = dt.datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)
    df = spark.createDataFrame([(at,)], "at timestamp").coalesce(1)
    lake.write_table(df, tmp_path / "t")
    stats = json.loads(_raw_stats(tmp_path / "t"))
    assert stats["minValues"]["at"] == "2026-01-01T00:00:00.999Z"
    assert stats["maxValues"]["at"] == "2026-01-01T00:00:01.000Z"


def _raw_stats(path: Path) -> str:
    for line in (path / "_delta_log" / "00000000000000000000.json").read_text().splitlines():
        action = json.loads(line)
        if "add" in action:
            return str(action["add"]["stats"])
    raise AssertionError("no add action")


def test_append_overwrite_and_time_travel(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    first = spark.range(3).withColumnRenamed("id", "k")
    second = spark.range(3, 5).withColumnRenamed("id", "k")
    assert lake.write_table(first, path) == 0
    assert lake.write_table(second, path, mode="append") == 1
    assert lake.write_table(second, path, mode="overwrite") == 2
    assert sorted(r.k for r in lake.read_table(spark, path, version=0).collect()) == [0, 1, 2]
    assert sorted(r.k for r in lake.read_table(spark, path, version=1).collect()) == list(range(5))
    assert sorted(r.k for r in lake.read_table(spark, path).collect()) == [3, 4]
    assert lake.table_version(path) == 2
    assert [h["version"] for h in lake.history(path)] == [2, 1, 0]
    assert lake.table_inventory(path)["rows"] == 2


def test_error_mode_refuses_existing_table(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(1), tmp_path / "t")
    with pytest.raises(TableError, match="already exists"):
        lake.write_table(spark.range(1), tmp_path / "t")


def test_append_with_wrong_schema_names_column(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(1).withColumnRenamed("id", "k"), tmp_path / "t")
    with pytest.raises(SchemaError, match="'k'"):
        lake.write_table(
            spark.range(1).selectExpr("cast(id as string) k"), tmp_path / "t", mode="append"
        )


def test_commit_metadata_is_recorded(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(2), tmp_path / "t", commit_metadata={"consentgate.run": "r-1"})
    entry = lake.history(tmp_path / "t")[0]
    assert entry["consentgate.run"] == "r-1"
    assert "consentgate.txn" in entry


def test_empty_dataframe_makes_empty_table(spark: SparkSession, tmp_path: Path) -> None:
    df = spark.createDataFrame([], "k string, at timestamp")
    lake.write_table(df, tmp_path / "t")
    back = lake.read_table(spark, tmp_path / "t")
    assert back.count() == 0
    assert back.schema == df.schema


def test_read_with_file_column_matches_log(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(sample(spark), tmp_path / "t", partition_by=["part"])
    logged = set(lake.active_files(DeltaTable(str(tmp_path / "t"))).column("path").to_pylist())
    seen = {r._file for r in lake.read_table(spark, tmp_path / "t", with_file=True).collect()}
    assert seen == logged


def test_missing_table_is_named(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(TableError, match="not a Delta table"):
        lake.read_table(spark, tmp_path / "nope")


def test_missing_version_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(1), tmp_path / "t")
    with pytest.raises(TableError):
        lake.read_table(spark, tmp_path / "t", version=7)


def _add_protocol(path: Path, version: int, protocol: dict[str, object]) -> None:
    log = path / "_delta_log" / f"{version:020d}.json"
    log.write_text(json.dumps({"protocol": protocol}) + "\n")


def test_deletion_vector_table_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "dv"
    write_deltalake(str(path), pa.table({"k": [1, 2]}))
    _add_protocol(
        path,
        1,
        {
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"],
            "writerFeatures": ["deletionVectors"],
        },
    )
    with pytest.raises(TableError, match="deletionVectors"):
        lake.read_table(spark, path)


def test_column_mapping_table_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "cm"
    write_deltalake(str(path), pa.table({"k": [1, 2]}))
    _add_protocol(path, 1, {"minReaderVersion": 2, "minWriterVersion": 5})
    with pytest.raises(TableError, match="column mapping"):
        lake.read_table(spark, path)


def test_change_data_feed_table_is_refused_for_writes(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "cdf"
    write_deltalake(
        str(path), pa.table({"id": [1]}), configuration={"delta.enableChangeDataFeed": "true"}
    )
    assert lake.read_table(spark, path).count() == 1
    with pytest.raises(TableError, match="enableChangeDataFeed"):
        lake.write_table(spark.range(1), path, mode="append")


def test_reads_tables_written_by_delta_rs(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "rs"
    data = pa.table({"k": ["x", "y", "z"], "p": ["1", "1", "2"]})
    write_deltalake(str(path), data, partition_by=["p"])
    back = lake.read_table(spark, path).orderBy("k").collect()
    assert [(r.k, r.p) for r in back] == [("x", "1"), ("y", "1"), ("z", "2")]


def test_require_schema_names_table_and_column(spark: SparkSession) -> None:
    schema = StructType([StructField("a", StringType()), StructField("b", LongType())])
    lake.require_schema(schema, {"a": StringType(), "b": LongType()}, table="t")
    with pytest.raises(SchemaError, match=r"table t: missing column 'c'"):
        lake.require_schema(schema, {"c": StringType()}, table="t")
    with pytest.raises(SchemaError, match=r"table t: column 'b' has type bigint, expected string"):
        lake.require_schema(schema, {"b": StringType()}, table="t")


def test_replace_files_removes_and_adds_in_one_commit(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(10).repartition(2).withColumnRenamed("id", "k"), path)
    before = lake.active_files(DeltaTable(str(path))).column("path").to_pylist()
    victim = before[0]
    keep = lake.read_table(spark, path, with_file=True).where(F.col("_file") == victim)
    survivors = keep.where("k % 2 = 0").drop("_file")
    expected = (
        lake.read_table(spark, path, with_file=True)
        .where((F.col("_file") != victim) | (F.col("k") % 2 == 0))
        .drop("_file")
    )
    expected_rows = sorted(r.k for r in expected.collect())
    written = lake.write_files(survivors, path)
    result = lake.replace_files(path, read_version=0, remove=[victim], add=written)
    assert result.version == 1
    assert sorted(r.k for r in lake.read_table(spark, path).collect()) == expected_rows
    # Time travel still sees the old file: it is tombstoned, not deleted.
    assert lake.read_table(spark, path, version=0).count() == 10
    assert (path / victim).exists()


def test_replace_files_detects_concurrent_removal(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(10).repartition(2).withColumnRenamed("id", "k"), path)
    victim = lake.active_files(DeltaTable(str(path))).column("path").to_pylist()[0]
    # Another writer (a compaction) removes the same file after we planned at version 0.
    lake.replace_files(path, read_version=0, remove=[victim], add=[])
    with pytest.raises(ConflictError):
        lake.replace_files(path, read_version=0, remove=[victim], add=[])


def test_replace_files_with_typed_partition_values(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    df = sample(spark)
    lake.write_table(df, path, partition_by=["bucket"])
    files = lake.active_files(DeltaTable(str(path)))
    victims = [
        p
        for p, b in zip(
            files.column("path").to_pylist(),
            files.column("partition.bucket").to_pylist(),
            strict=True,
        )
        if b == 1
    ]
    result = lake.replace_files(path, read_version=0, remove=victims, add=[])
    assert result.version == 1
    back = lake.read_table(spark, path)
    assert_df_equality(back, df.where("bucket is null or bucket != 1"), ignore_row_order=True)


def test_replace_files_keeps_concurrent_append(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t"
    lake.write_table(spark.range(4).coalesce(1).withColumnRenamed("id", "k"), path)
    victim = lake.active_files(DeltaTable(str(path))).column("path").to_pylist()[0]
    lake.write_table(spark.range(100, 102).withColumnRenamed("id", "k"), path, mode="append")
    lake.replace_files(path, read_version=0, remove=[victim], add=[])
    assert sorted(r.k for r in lake.read_table(spark, path).collect()) == [100, 101]


def test_written_files_are_parquet_inside_table(spark: SparkSession, tmp_path: Path) -> None:
    lake.write_table(spark.range(3), tmp_path / "t")
    for rel in lake.active_files(DeltaTable(str(tmp_path / "t"))).column("path").to_pylist():
        assert rel.startswith("w-")
        assert pq.read_metadata(tmp_path / "t" / rel).num_rows >= 0
