"""Lineage closure (multi-hop, many-to-many, missing edges, cycles) and row decisions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from consentgate import lineage
from consentgate.errors import SchemaError

T = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
SHARDS = "gen_shards"

SOURCE_SCHEMA = StructType([StructField(c, StringType(), True) for c in lineage.SOURCE_COLUMNS])
DECISION_SCHEMA = StructType(
    [
        StructField("key", StringType(), True),
        StructField("keep", BooleanType(), True),
        StructField("reason", StringType(), True),
    ]
)

Edge = tuple[str, str, str, str]


def edges_df(spark: SparkSession, edges: Sequence[Edge | tuple[str | None, ...]]) -> DataFrame:
    return spark.createDataFrame(
        list(edges),
        "child_dataset string, child_key string, parent_dataset string, parent_key string",
    )


def rows_df(spark: SparkSession, keys: Sequence[str | None]) -> DataFrame:
    return spark.createDataFrame([(k, 1.0) for k in keys], "sample_id string, value double")


def traced(key: str, asset_id: str) -> tuple[str, str, None, None, None]:
    return (key, asset_id, None, None, None)


def problem(key: str, kind: str, dataset: str, node: str) -> tuple[str, None, str, str, str]:
    return (key, None, kind, dataset, node)


def sources(
    spark: SparkSession,
    keys: Sequence[str | None],
    edges: Sequence[Edge | tuple[str | None, ...]],
    *,
    max_hops: int = 32,
) -> DataFrame:
    return lineage.source_assets(
        SHARDS,
        rows_df(spark, keys),
        key="sample_id",
        asset_column=None,
        lineage=edges_df(spark, edges),
        max_hops=max_hops,
    )


def assert_sources(spark: SparkSession, actual: DataFrame, expected: Sequence[tuple]) -> None:  # type: ignore[type-arg]
    assert_df_equality(
        actual,
        spark.createDataFrame(list(expected), SOURCE_SCHEMA),
        ignore_row_order=True,
        ignore_nullable=True,
    )


# A small lineage graph: shards <- stems <- tracks (assets), with a diamond, a dead end and a
# cycle.
GRAPH: list[Edge] = [
    # s1: three hops, one asset.
    (SHARDS, "s1", "embeddings", "e1"),
    ("embeddings", "e1", "stems", "st1"),
    ("stems", "st1", "assets", "a1"),
    # s2: many-to-many: two stems, one of them from two tracks; st1 shared with s1.
    (SHARDS, "s2", "stems", "st1"),
    (SHARDS, "s2", "stems", "st2"),
    ("stems", "st2", "assets", "a2"),
    ("stems", "st2", "assets", "a3"),
    # s3: diamond, e2 -> (st1, st3) -> a1: the same asset twice, no cycle.
    (SHARDS, "s3", "embeddings", "e2"),
    ("embeddings", "e2", "stems", "st1"),
    ("embeddings", "e2", "stems", "st3"),
    ("stems", "st3", "assets", "a1"),
    # s4: one good path and one that dead-ends at st9 (no edges): fail closed.
    (SHARDS, "s4", "stems", "st1"),
    (SHARDS, "s4", "stems", "st9"),
    # s6, s7: run into the cycle x1 -> x2 -> x3 -> x1 at different points; x3 also has an asset.
    (SHARDS, "s6", "mix", "x1"),
    (SHARDS, "s7", "mix", "x3"),
    ("mix", "x1", "mix", "x2"),
    ("mix", "x2", "mix", "x3"),
    ("mix", "x3", "mix", "x1"),
    ("mix", "x3", "assets", "a4"),
    # s8: a self-loop.
    (SHARDS, "s8", SHARDS, "s8"),
    # Edges of another dataset with the same key must not be followed for shards.
    ("other", "s5", "assets", "a9"),
    # An edge with a null parent is ignored.
    (SHARDS, "s9", "assets", None),  # type: ignore[list-item]
]


def test_multi_hop_many_to_many_missing_and_cycles(spark: SparkSession) -> None:
    result = sources(spark, ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", None], GRAPH)
    assert_sources(
        spark,
        result,
        [
            traced("s1", "a1"),
            traced("s2", "a1"),
            traced("s2", "a2"),
            traced("s2", "a3"),
            traced("s3", "a1"),
            problem("s4", "missing_edge", "stems", "st9"),
            problem("s5", "missing_edge", SHARDS, "s5"),
            problem("s6", "cycle", "mix", "x1"),
            problem("s7", "cycle", "mix", "x1"),
            problem("s8", "cycle", SHARDS, "s8"),
            problem("s9", "missing_edge", SHARDS, "s9"),
        ],
    )


def test_a_cycle_is_reported_once(spark: SparkSession) -> None:
    result = sources(spark, ["s1", "s4", "s6", "s7", "s8"], GRAPH)
    report = sorted(tuple(r) for r in lineage.lineage_problems(result).collect())
    assert report == [
        ("cycle", "gen_shards", "s8", 1),
        ("cycle", "mix", "x1", 2),
        ("missing_edge", "stems", "st9", 1),
    ]


def test_long_chain_beyond_max_hops_is_given_up(spark: SparkSession) -> None:
    chain: list[Edge] = [(SHARDS, "s1", "d", "n1")]
    chain += [("d", f"n{i}", "d", f"n{i + 1}") for i in range(1, 6)]
    chain += [("d", "n6", "assets", "a1")]
    assert_sources(spark, sources(spark, ["s1"], chain, max_hops=7), [traced("s1", "a1")])
    assert_sources(
        spark,
        sources(spark, ["s1"], chain, max_hops=3),
        [problem("s1", "max_hops_exceeded", "d", "n3")],
    )


def test_empty_lineage_and_rows(spark: SparkSession) -> None:
    assert_sources(spark, sources(spark, [], []), [])
    assert_sources(spark, sources(spark, ["s1"], []), [problem("s1", "missing_edge", SHARDS, "s1")])


def test_direct_asset_column(spark: SparkSession) -> None:
    rows = spark.createDataFrame(
        [(1, "a1"), (2, "a2"), (2, "a2"), (3, None), (None, "a3")],
        "embedding_id long, asset_id string",
    )
    result = lineage.source_assets(
        "track_embeddings",
        rows,
        key="embedding_id",
        asset_column="asset_id",
        lineage=edges_df(spark, []),
    )
    assert_sources(
        spark,
        result,
        [
            traced("1", "a1"),
            traced("2", "a2"),
            problem("3", "missing_asset", "track_embeddings", "3"),
        ],
    )


def test_source_asset_ids_are_canonical(spark: SparkSession) -> None:
    """Sources carry asset ids in the form effective consent decides under (DESIGN rule 2):
    a derivative spelling an id in upper case or padded still finds its decision, and a
    blank one is a missing asset (fail closed)."""
    rows = spark.createDataFrame(
        [(1, "A1"), (2, " a2\t"), (3, "  ")], "embedding_id long, asset_id string"
    )
    direct = lineage.source_assets(
        "track_embeddings",
        rows,
        key="embedding_id",
        asset_column="asset_id",
        lineage=edges_df(spark, []),
    )
    assert_sources(
        spark,
        direct,
        [
            traced("1", "a1"),
            traced("2", "a2"),
            problem("3", "missing_asset", "track_embeddings", "3"),
        ],
    )
    walked = sources(spark, ["s1"], [(SHARDS, "s1", "assets", "A9 ")])
    assert_sources(spark, walked, [traced("s1", "a9")])


def test_schema_problems_name_table_and_column(spark: SparkSession) -> None:
    with pytest.raises(SchemaError, match=r"gen_shards\.nope"):
        lineage.source_assets(
            SHARDS,
            rows_df(spark, ["s1"]),
            key="nope",
            asset_column=None,
            lineage=edges_df(spark, []),
        )
    bad = edges_df(spark, []).withColumn("parent_key", F.lit(1))
    with pytest.raises(SchemaError, match=r"lineage\.parent_key"):
        lineage.source_assets(
            SHARDS, rows_df(spark, ["s1"]), key="sample_id", asset_column=None, lineage=bad
        )


# --- Row decisions ----------------------------------------------------------------------------

CONSENT_SCHEMA = "asset_id string, use_case string, decision string, reason string"


def consent_df(spark: SparkSession, decisions: Sequence[tuple[str, str, str]]) -> DataFrame:
    return spark.createDataFrame(
        [(a, u, "granted" if r == "granted" else "denied", r) for a, u, r in decisions],
        CONSENT_SCHEMA,
    )


def decide(
    spark: SparkSession,
    rows: DataFrame,
    srcs: DataFrame,
    consent: DataFrame,
    *,
    retention_days: int | None = None,
) -> DataFrame:
    return lineage.row_decisions(
        rows,
        srcs,
        consent,
        key="sample_id",
        use_case="generative_training",
        retention_days=retention_days,
        derived_at_column=None if retention_days is None else "derived_at",
        as_of=T,
        dataset=SHARDS,
    )


def assert_decided(spark: SparkSession, actual: DataFrame, expected: Sequence[tuple]) -> None:  # type: ignore[type-arg]
    assert_df_equality(
        actual,
        spark.createDataFrame(list(expected), DECISION_SCHEMA),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_row_kept_iff_every_source_is_granted(spark: SparkSession) -> None:
    gen = "generative_training"
    consent = consent_df(
        spark,
        [
            ("a1", gen, "granted"),
            ("a2", gen, "granted"),
            ("a3", gen, "revoked"),
            ("a4", gen, "granted"),
            ("a1", "recommendation", "revoked"),  # another use case: irrelevant
        ],
    )
    keys = ["s1", "s2", "s3", "s4", "s6", "s10", None]
    graph = [*GRAPH, (SHARDS, "s10", "assets", "a_missing")]
    srcs = sources(spark, keys, graph)
    assert_decided(
        spark,
        decide(spark, rows_df(spark, keys), srcs, consent),
        [
            ("s1", True, None),
            ("s2", False, "revoked"),
            ("s3", True, None),
            ("s4", False, "no_lineage"),
            ("s6", False, "no_lineage"),
            ("s10", False, "asset_unknown"),
            (None, False, "no_lineage"),
        ],
    )


def test_first_reason_in_design_order_among_denied_sources(spark: SparkSession) -> None:
    gen = "generative_training"
    edges = [(SHARDS, "s1", "assets", a) for a in ("a1", "a2", "a3", "a4")]
    consent = consent_df(
        spark,
        [
            ("a1", gen, "jurisdiction_blocked"),
            ("a2", gen, "denied"),
            ("a3", gen, "revoked"),
            ("a4", gen, "granted"),
        ],
    )
    rows = rows_df(spark, ["s1"])
    result = decide(spark, rows, sources(spark, ["s1"], edges), consent)
    assert_decided(spark, result, [("s1", False, "revoked")])


def test_retention(spark: SparkSession) -> None:
    gen = "generative_training"
    rows = spark.createDataFrame(
        [
            ("fresh", T - timedelta(days=10)),
            ("edge", T - timedelta(days=30)),
            ("old", T - timedelta(days=30, microseconds=1)),
            ("unknown", None),
            ("denied_and_old", T - timedelta(days=400)),
        ],
        "sample_id string, derived_at timestamp",
    )
    edges = [(SHARDS, k, "assets", "a1") for k in ("fresh", "edge", "old", "unknown")] + [
        (SHARDS, "denied_and_old", "assets", "a2")
    ]
    srcs = sources(spark, ["fresh", "edge", "old", "unknown", "denied_and_old"], edges)
    consent = consent_df(spark, [("a1", gen, "granted"), ("a2", gen, "denied")])
    assert_decided(
        spark,
        decide(spark, rows, srcs, consent, retention_days=30),
        [
            ("fresh", True, None),
            ("edge", True, None),
            ("old", False, "retention_expired"),
            ("unknown", False, "retention_expired"),
            ("denied_and_old", False, "denied"),
        ],
    )
    # Without retention nothing expires.
    assert_decided(
        spark,
        decide(spark, rows, srcs, consent),
        [
            ("fresh", True, None),
            ("edge", True, None),
            ("old", True, None),
            ("unknown", True, None),
            ("denied_and_old", False, "denied"),
        ],
    )


def test_retention_on_a_date_column_and_wrong_type(spark: SparkSession) -> None:
    gen = "generative_training"
    rows = spark.createDataFrame(
        [("s1", date(2026, 3, 10)), ("s2", date(2025, 1, 1))], "sample_id string, derived_at date"
    )
    srcs = sources(
        spark, ["s1", "s2"], [(SHARDS, "s1", "assets", "a1"), (SHARDS, "s2", "assets", "a1")]
    )
    consent = consent_df(spark, [("a1", gen, "granted")])
    assert_decided(
        spark,
        decide(spark, rows, srcs, consent, retention_days=30),
        [("s1", True, None), ("s2", False, "retention_expired")],
    )
    bad = rows.withColumn("derived_at", F.lit("2026-01-01"))
    with pytest.raises(SchemaError, match=r"gen_shards\.derived_at"):
        decide(spark, bad, srcs, consent, retention_days=30)


def test_with_decisions_attaches_keep_and_reason(spark: SparkSession) -> None:
    rows = spark.createDataFrame(
        [(1, "x"), (2, "y"), (None, "z"), (4, "w")], "embedding_id long, payload string"
    )
    decisions = spark.createDataFrame(
        [("1", True, None), ("2", False, "revoked"), (None, False, "no_lineage")],
        DECISION_SCHEMA,
    )
    result = lineage.with_decisions(rows, decisions, key="embedding_id")
    expected = spark.createDataFrame(
        [
            (1, "x", True, None),
            (2, "y", False, "revoked"),
            (None, "z", False, "no_lineage"),
            (4, "w", False, "no_lineage"),
        ],
        "embedding_id long, payload string, keep boolean, reason string",
    )
    assert_df_equality(result, expected, ignore_row_order=True, ignore_nullable=True)
