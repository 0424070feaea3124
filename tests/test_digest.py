"""Row encoding: the Spark implementation and the Spark-free verifier produce the same bytes."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import digest, merkle, verifier
from consentgate.errors import SchemaError

UTC = dt.UTC
NAN = float("nan")
INF = float("inf")

ALL_TYPES = (
    "id int, s string, i int, b bigint, t tinyint, sm smallint, f float, d double, bo boolean, "
    "ts timestamp, dt date, bin binary, `dot.name` string, "
    "as_ array<string>, ai array<int>, ad array<double>, af array<float>, abin array<binary>, "
    "ats array<timestamp>, adt array<date>, abo array<boolean>, ab array<bigint>, "
    "nested array<array<int>>, st struct<x:int, y:array<string>>"
)

ROWS: list[tuple[Any, ...]] = [
    # ordinary values, nulls inside arrays
    (
        1, "hello", 42, 2**40, 7, 300, 1.5, 2.25, True,
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), dt.date(2024, 2, 29), b"\x00\x01", "x",
        ["a", None, ""], [1, None, -1], [1.0, None, -2.5], [0.5, None], [b"\xff", None, b""],
        [dt.datetime(2020, 1, 1, tzinfo=UTC), None], [dt.date(2000, 1, 1), None], [True, None, False],
        [2**62, None], [[1, 2], None, [], [None]], (5, ["p", None]),
    ),
    # every column null
    (2, *([None] * 23)),
    # empty string / binary / arrays: distinct from null
    (3, "", 0, 0, 0, 0, 0.0, 0.0, False, dt.datetime(1970, 1, 1, tzinfo=UTC), dt.date(1970, 1, 1),
     b"", "", [], [], [], [], [], [], [], [], [], [], (None, [])),
    # floating-point and integer extremes, instants before 1970 with microseconds
    (
        4, "\u0000", -(2**31), -(2**63), -128, -32768, NAN, -0.0, False,
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), dt.date(1969, 12, 31), b"\x80",
        None, [None], [2**31 - 1], [NAN, -0.0, 0.0, INF, -INF, 5e-324], [NAN, -0.0, -INF, 1e-45],
        [None], [dt.datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC)], [dt.date(1, 1, 1)], [None],
        [-(2**63), 2**63 - 1], [None, [None, -5]], None,
    ),
    # unicode, positive extremes, far future
    (
        5, "é€😀 ünï", 2**31 - 1, 2**63 - 1, 127, 32767, -0.0, NAN, True,
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), dt.date(9999, 12, 31), bytes(range(256)),
        "日本", ["😀", "é", "e\u0301"], [0], [-0.0], [INF], [bytes(300)], [], [], [], [], [], (-1, ["€"]),
    ),
]  # fmt: skip


def spark_encodings(df: DataFrame) -> dict[int, bytes]:
    rows = df.select("id", digest.row_encoding_column(df.schema).alias("enc")).collect()
    return {int(r["id"]): bytes(r["enc"]) for r in rows}


def arrow_encodings(tables: list[pa.Table | pa.RecordBatch]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for table in tables:
        ids = table.column(table.schema.get_field_index("id")).to_pylist()
        out.update(zip(ids, verifier.iter_row_encodings(table), strict=True))
    return out


@pytest.fixture(scope="module")
def all_types(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DataFrame, list[Path]]:
    path = tmp_path_factory.mktemp("all_types") / "t"
    spark.createDataFrame(ROWS, ALL_TYPES).repartition(2).write.parquet(str(path))
    files = sorted(path.glob("*.parquet"))
    assert files
    return spark.read.parquet(str(path)), files


def test_spark_and_verifier_agree_on_every_type(all_types: tuple[DataFrame, list[Path]]) -> None:
    df, files = all_types
    spark_side = spark_encodings(df)
    arrow_side = arrow_encodings(list(verifier.read_parquet_batches(files)))
    assert sorted(spark_side) == [1, 2, 3, 4, 5]
    for row_id in spark_side:
        assert spark_side[row_id] == arrow_side[row_id], f"row {row_id}"


def test_digests_and_content_root_agree(all_types: tuple[DataFrame, list[Path]]) -> None:
    df, files = all_types
    rows = df.select(
        "id",
        digest.row_digest_column(df.schema).alias("d"),
        digest.leaf_hash_column(df.schema).alias("h"),
        digest.row_encoding_column(df.schema).alias("enc"),
    ).collect()
    tables = list(verifier.read_parquet_batches(files))
    by_id = {}
    for table in tables:
        ids = table.column(0).to_pylist()
        by_id.update(
            zip(
                ids,
                zip(verifier.row_digests(table), verifier.row_leaf_hashes(table), strict=True),
                strict=True,
            )
        )
    for r in rows:
        enc = bytes(r["enc"])
        assert bytes(r["d"]) == merkle.hashlib.sha256(enc).digest() == by_id[r["id"]][0]
        assert bytes(r["h"]) == merkle.leaf_hash(enc) == by_id[r["id"]][1]
    spark_root = digest.content_merkle_root(df, chunk_log2=1)
    assert spark_root == verifier.content_root_of_files(files)
    assert spark_root[1] == 5


def test_null_empty_and_float_distinctions(all_types: tuple[DataFrame, list[Path]]) -> None:
    df, _ = all_types
    enc = spark_encodings(df)
    decoded = {k: dict(verifier.decode_row(v)) for k, v in enc.items()}
    assert decoded[2]["s"] is None and decoded[3]["s"] == ""
    assert decoded[2]["as_"] is None and decoded[3]["as_"] == []
    assert decoded[1]["as_"] == ["a", None, ""]
    assert math.isnan(decoded[4]["f"]) and math.copysign(1, decoded[4]["d"]) == -1
    assert decoded[4]["ts"] == dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert decoded[4]["dt"] == dt.date(1969, 12, 31)
    assert decoded[5]["s"] == "é€😀 ünï"
    assert decoded[1]["st"] == {"x": 5, "y": ["p", None]}
    assert decoded[1]["nested"] == [[1, 2], None, [], [None]]
    assert len(set(enc.values())) == 5


def test_golden_vector_matches_docs(spark: SparkSession) -> None:
    """The worked example in docs/manifest.md, byte for byte, in both implementations."""
    expected = bytes.fromhex(
        "00000003"
        "00000001" "61" "04" "00000001"
        "00000001" "73" "08" "00000002" "c3a9"
        "00000001" "6e" "00"
    )  # fmt: skip
    df = spark.createDataFrame([(1, "é", None)], "a int, s string, n double")
    assert bytes(df.select(digest.row_encoding_column(df.schema)).first()[0]) == expected
    fields = [("a", pa.int32()), ("s", pa.string()), ("n", pa.float64())]
    assert verifier.encode_row([1, "é", None], fields) == expected
    assert verifier.decode_row(expected) == [("a", 1), ("s", "é"), ("n", None)]


def test_nan_payloads_and_negative_zero_bits() -> None:
    assert verifier.encode_row([NAN], [("x", pa.float64())])[-8:] == verifier.DOUBLE_NAN
    assert verifier.encode_row([-0.0], [("x", pa.float64())])[-8:] == b"\x80" + bytes(7)
    assert verifier.encode_row([-0.0], [("x", pa.float32())])[-4:] == b"\x80\x00\x00\x00"


def test_unsupported_types_are_refused_by_name(spark: SparkSession) -> None:
    df = spark.createDataFrame([], "ok int, money decimal(10,2)")
    with pytest.raises(SchemaError, match="money"):
        digest.row_digest_column(df.schema)
    df = spark.createDataFrame([], "ok int, m map<string,int>")
    with pytest.raises(SchemaError, match="'m'"):
        digest.row_digest_column(df.schema)
    df = spark.createDataFrame([], "ok int, a array<timestamp_ntz>")
    with pytest.raises(SchemaError, match="timestamp_ntz"):
        digest.row_digest_column(df.schema)
    with pytest.raises(verifier.UnsupportedType, match="money"):
        list(verifier.iter_row_encodings(pa.table({"money": pa.array([1], pa.decimal128(10, 2))})))
    with pytest.raises(verifier.UnsupportedType, match=r"without time zone"):
        list(verifier.iter_row_encodings(pa.table({"t": pa.array([0], pa.timestamp("us"))})))


def test_decode_rejects_malformed_bytes() -> None:
    good = verifier.encode_row([1], [("a", pa.int32())])
    for bad in (good[:-1], good + b"\x00", b"\x00\x00\x00\x01\x00\x00\x00\x01a\x7f"):
        with pytest.raises(ValueError):
            verifier.decode_row(bad)


# ---- hypothesis: random rows, both implementations --------------------------------------

HYP_SCHEMA = (
    "id int, s string, i int, b bigint, f float, d double, bo boolean, ts timestamp, dt date, "
    "bin binary, ad array<double>, as_ array<string>"
)


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


rows_strategy = st.lists(
    st.tuples(
        nullable(st.text(max_size=6)),
        nullable(st.integers(-(2**31), 2**31 - 1)),
        nullable(st.integers(-(2**63), 2**63 - 1)),
        nullable(st.floats(width=32)),
        nullable(st.floats()),
        nullable(st.booleans()),
        nullable(
            st.datetimes(
                min_value=dt.datetime(1900, 1, 1),
                max_value=dt.datetime(2200, 1, 1),
                timezones=st.just(UTC),
            )
        ),
        nullable(st.dates(min_value=dt.date(1900, 1, 1))),
        nullable(st.binary(max_size=6)),
        nullable(st.lists(nullable(st.floats()), max_size=3)),
        nullable(st.lists(nullable(st.text(max_size=3)), max_size=3)),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows_strategy)
def test_hypothesis_rows_agree(spark: SparkSession, rows: list[tuple[Any, ...]]) -> None:
    data = [(i, *row) for i, row in enumerate(rows)]
    df = spark.createDataFrame(data, HYP_SCHEMA)
    # one job: the values as Arrow plus Spark's encodings of them
    table = df.select("*", digest.row_encoding_column(df.schema).alias("_enc")).toArrow()
    values = table.drop_columns(["_enc"])
    assert table.column("_enc").to_pylist() == list(verifier.iter_row_encodings(values))


# ---- allowlist ---------------------------------------------------------------------------

ALLOWLIST = [
    (
        f"asset-{i:02d}",
        f"rec-{i:02d}",
        "2026-03" if i % 3 else "2025-01",
        dt.datetime(2026, 3, 1, 12, 0, i, i * 1000, tzinfo=UTC),
        None if i % 4 == 0 else "US-CA",
    )
    for i in range(0, 22, 2)  # 11 assets: three chunks of 4, the last one short
]
ALLOWLIST_SCHEMA = (
    "asset_id string, consent_record_id string, policy_version string, captured_at timestamp, "
    "jurisdiction string"
)


def allowlist_entries() -> list[bytes]:
    return [verifier.allowlist_entry(*row) for row in ALLOWLIST]


def allowlist_root() -> str:
    tree = verifier.allowlist_tree_entries(allowlist_entries())
    return merkle.merkle_root([merkle.leaf_hash(d) for _, d in tree]).hex()


def test_allowlist_root_and_proofs(spark: SparkSession) -> None:
    df = spark.createDataFrame(ALLOWLIST, ALLOWLIST_SCHEMA).withColumn("extra", F.lit(1))
    root, count = digest.allowlist_merkle_root(df, chunk_log2=2)
    assert (root, count) == (allowlist_root(), 11)
    # Spark's leaf bytes are the reference's
    spark_leaves = sorted(
        bytes(r["l"]) for r in df.select(digest.allowlist_leaf_column(df).alias("l")).collect()
    )
    assert spark_leaves == sorted(verifier.allowlist_leaf(e) for e in allowlist_entries())

    included = digest.allowlist_proof(df, "asset-08", chunk_log2=2)
    json.dumps(included)  # JSON-able as is
    assert included == verifier.build_allowlist_proof(allowlist_entries(), "asset-08")
    assert included["included"] is True and included["tree"] == "allowlist"
    assert included["leaf"]["record"] == {
        "asset_id": "asset-08",
        "consent_record_id": "rec-08",
        "policy_version": "2026-03",
        "captured_at": "2026-03-01T12:00:08.008000Z",
        "jurisdiction": None,
    }
    assert verifier.verify_allowlist_proof(included, root)
    assert not verifier.verify_allowlist_proof(included, merkle.EMPTY_ROOT.hex())

    # Absent assets: below, above and between leaves, one pair straddling a chunk boundary
    # (indices 3 and 4 with chunks of 4); every proof equals the in-memory reference.
    keys = sorted(verifier.allowlist_key(row[0]) for row in ALLOWLIST)
    probes = [f"probe-{i}" for i in range(400)]

    def first_probe(test: Callable[[str], bool]) -> str:
        return next(p for p in probes if test(verifier.allowlist_key(p)))

    straddle = first_probe(lambda k: keys[3] < k < keys[4])
    below = first_probe(lambda k: k < keys[0])
    above = first_probe(lambda k: k > keys[-1])
    for probe in (straddle, below, above, "asset-07", "not-a-uuid"):
        excluded = digest.allowlist_proof(df, probe, chunk_log2=2)
        assert excluded == verifier.build_allowlist_proof(allowlist_entries(), probe), probe
        assert excluded["included"] is False
        assert verifier.verify_allowlist_proof(excluded, root), probe
        assert not verifier.verify_allowlist_proof(excluded, allowlist_root()[::-1])
        text = json.dumps(excluded)
        assert not any(row[0] in text or row[1] in text for row in ALLOWLIST), probe
    excluded = digest.allowlist_proof(df, straddle, chunk_log2=2)
    assert (excluded["left"]["index"], excluded["right"]["index"]) == (3, 4)

    # a readable record that disagrees with the entry is rejected
    tampered = json.loads(json.dumps(included))
    tampered["leaf"]["record"]["policy_version"] = "2099-01"
    assert not verifier.verify_allowlist_proof(tampered, root)
    # so is an entry edited to match a forged record
    forged = verifier.allowlist_entry(
        "asset-08", "rec-08", "2099-01", dt.datetime(2026, 3, 1, 12, 0, 8, 8000, tzinfo=UTC), None
    )
    tampered["leaf"]["entry"] = forged.hex()
    tampered["leaf"]["record"] = verifier.allowlist_record(forged)
    assert not verifier.verify_allowlist_proof(tampered, root)
    # claiming inclusion with an exclusion proof
    assert not verifier.verify_allowlist_proof({**excluded, "included": True}, root)


def test_allowlist_row_without_asset_id_fails_the_job(spark: SparkSession) -> None:
    rows = [*ALLOWLIST[:2], (None, "rec-x", "2026-03", ALLOWLIST[0][3], None)]
    df = spark.createDataFrame(rows, ALLOWLIST_SCHEMA)
    with pytest.raises(Exception, match="allowlist row without asset_id"):
        digest.allowlist_merkle_root(df, chunk_log2=2)


def test_allowlist_schema_is_checked(spark: SparkSession) -> None:
    df = spark.createDataFrame([("a", "r", "v", "2026", None)], "asset_id string, consent_record_id string, "
                               "policy_version string, captured_at string, jurisdiction string")  # fmt: skip
    with pytest.raises(SchemaError, match="captured_at"):
        digest.allowlist_leaf_column(df)
    with pytest.raises(SchemaError, match="jurisdiction"):
        digest.allowlist_leaf_column(
            df.withColumn("captured_at", F.col("captured_at").cast("timestamp")).drop(
                "jurisdiction"
            )
        )
