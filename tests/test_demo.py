"""The synthetic creator-platform lake: determinism, the contract's schemas, referential facts,
realistic rates, and every planted defect present in exactly the documented amount.

Small lakes (300 assets) keep Spark's work tiny; the facts checked are the ones the consent,
lineage and purge code rely on the demo lake to exercise.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from consentgate import demo
from consentgate.config import load_config, parse_config
from consentgate.errors import TableError

ASSETS = 300
SEED = 7
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
VALID = list(demo.STATUSES)


@pytest.fixture(scope="module")
def lake(spark: SparkSession) -> Iterator[dict[str, DataFrame]]:
    tables = demo.generate(spark, assets=ASSETS, seed=SEED)
    cached = {name: df.cache() for name, df in tables.items()}
    yield cached
    for df in cached.values():
        df.unpersist()


@pytest.fixture(scope="module")
def planted() -> demo.PlantedCounts:
    return demo.planted_counts(ASSETS)


def _fingerprint(df: DataFrame) -> tuple[int, int, int]:
    """Row count and two order-independent sums of row hashes: one pass, no shuffle."""
    cols = sorted(df.columns)
    h = F.xxhash64(*cols)
    row = df.select(
        F.count("*"), F.sum(h.bitwiseAND(0xFFFFFFFF)), F.sum(F.shiftright(h, 32))
    ).first()
    assert row is not None
    return (row[0], row[1] or 0, row[2] or 0)


# --------------------------------------------------------------------------------------------
# Shape and determinism


def test_schemas_are_exactly_the_contract(lake: dict[str, DataFrame]) -> None:
    assert tuple(lake) == demo.TABLES
    for name, df in lake.items():
        actual = [(f.name, f.dataType) for f in df.schema.fields]
        assert actual == list(demo.SCHEMAS[name]), name
    # DESIGN.md's columns, spelled out once more so a change to SCHEMAS cannot go unnoticed.
    assert lake["consent_records"].columns == [
        "id",
        "user_id",
        "asset_id",
        "use_case",
        "consent_status",
        "policy_version",
        "jurisdiction",
        "captured_at",
        "revoked_at",
    ]
    assert lake["assets"].columns == [
        "asset_id",
        "owner_user_id",
        "jurisdiction",
        "created_at",
        "deleted_at",
    ]
    assert lake["lineage"].columns == ["child_dataset", "child_key", "parent_dataset", "parent_key"]


def test_same_seed_same_rows_other_seed_other_rows(
    spark: SparkSession, lake: dict[str, DataFrame]
) -> None:
    again = demo.generate(spark, assets=ASSETS, seed=SEED)
    for name in demo.TABLES:
        assert _fingerprint(lake[name]) == _fingerprint(again[name]), name
    other = demo.generate(spark, assets=ASSETS, seed=SEED + 1)
    for name in ("assets", "consent_records", "gen_shards", "track_embeddings"):
        assert lake[name].join(other[name], lake[name].columns[0]).isEmpty(), name
    assert other["assets"].count() == ASSETS


def test_ids_are_uuids_and_computable_without_spark(lake: dict[str, DataFrame]) -> None:
    id_columns = {
        "assets": ["asset_id", "owner_user_id"],
        "consent_records": ["id", "asset_id"],
        "track_embeddings": ["embedding_id", "asset_id"],
        "segment_spectrograms": ["segment_id", "asset_id"],
        "stems": ["stem_id"],
        "stem_embeddings": ["stem_embedding_id"],
        "gen_shards": ["sample_id"],
        "lineage": ["child_key", "parent_key"],
    }
    for name, columns in id_columns.items():
        for column in columns:
            bad = lake[name].where(~F.col(column).rlike(UUID_RE))
            assert bad.isEmpty(), (name, column, bad.limit(3).collect())
    # Primary keys are unique (consent_records has planted duplicates; see below).
    for name, key in [
        ("assets", "asset_id"),
        ("track_embeddings", "embedding_id"),
        ("segment_spectrograms", "segment_id"),
        ("stems", "stem_id"),
        ("stem_embeddings", "stem_embedding_id"),
        ("gen_shards", "sample_id"),
    ]:
        assert lake[name].select(key).distinct().count() == lake[name].count(), name
    first = demo.demo_uuid(SEED, "asset", 0)
    assert uuid.UUID(first).version == 8
    assert not lake["assets"].where(F.col("asset_id") == first).isEmpty()


def test_python_xxhash64_agrees_with_spark(spark: SparkSession) -> None:
    long_text = "a salt longer than thirty-two bytes, to use the stripes"
    row = (
        spark.range(1)
        .select(
            F.xxhash64(F.lit(7).cast("long"), F.lit("x"), F.lit(-5).cast("long")).alias("a"),
            F.xxhash64(F.lit(long_text), F.lit(2**40).cast("long")).alias("b"),
            F.xxhash64(F.lit("abcdefghijklm")).alias("c"),
        )
        .first()
    )
    assert row is not None
    assert row["a"] == demo.spark_xxhash64(7, "x", -5)
    assert row["b"] == demo.spark_xxhash64(long_text, 2**40)
    assert row["c"] == demo.spark_xxhash64("abcdefghijklm")


def test_every_instant_is_before_demo_now(lake: dict[str, DataFrame]) -> None:
    now = demo.DEMO_NOW
    for name, df in lake.items():
        for field in df.schema.fields:
            if field.dataType.typeName() == "timestamp":
                late = df.where(F.col(field.name) > F.lit(now))
                assert late.isEmpty(), (name, field.name)


# --------------------------------------------------------------------------------------------
# Assets


def test_assets_look_like_a_platform(lake: dict[str, DataFrame]) -> None:
    assets = lake["assets"]
    assert assets.count() == ASSETS
    users = assets.select("owner_user_id").distinct().count()
    assert 2.0 <= ASSETS / users <= 5.0  # several tracks per user
    jurisdictions = {r[0] for r in assets.select("jurisdiction").distinct().collect()}
    assert {code for code, _ in demo.JURISDICTION_WEIGHTS} <= jurisdictions
    assert None in jurisdictions
    assert 0 < assets.where(F.col("jurisdiction").isNull()).count() < ASSETS * 0.1
    assert assets.where(F.col("deleted_at") < F.col("created_at")).isEmpty()
    deleted = assets.where(F.col("deleted_at").isNotNull()).count()
    assert 0 < deleted < ASSETS * 0.2
    # Account deletions: every asset of some multi-track user is deleted at one instant.
    per_user = assets.groupBy("owner_user_id").agg(
        F.count("*").alias("n"),
        F.count("deleted_at").alias("deleted"),
        F.countDistinct("deleted_at").alias("instants"),
    )
    accounts = per_user.where((F.col("n") >= 2) & (F.col("deleted") == F.col("n")))
    assert accounts.count() >= 1
    assert accounts.where(F.col("instants") != 1).isEmpty()
    # The planted one is addressable without reading the lake.
    gone = demo.demo_uuid(SEED, "user", demo.PLANTED_DELETED_ACCOUNT)
    mine = assets.where(F.col("owner_user_id") == gone)
    ids = {r["asset_id"] for r in mine.where(F.col("deleted_at").isNotNull()).collect()}
    assert len(ids) == mine.count() >= 2
    assert {demo.demo_uuid(SEED, "asset", 16), demo.demo_uuid(SEED, "asset", 17)} <= ids


# --------------------------------------------------------------------------------------------
# Consent history


def _owner_records(lake: dict[str, DataFrame]) -> DataFrame:
    """Well-formed records by the asset's owner (the planted defects left out)."""
    owners = lake["assets"].select("asset_id", "owner_user_id")
    records = lake["consent_records"].join(owners, "asset_id")
    dup_ids = records.groupBy("id").count().where("count > 1").select("id")
    return (
        records.where(F.col("user_id") == F.col("owner_user_id"))
        .where(F.col("consent_status").isin(VALID))
        .where(F.col("policy_version").isNotNull() & F.col("captured_at").isNotNull())
        .where(F.col("revoked_at").isNull() | (F.col("revoked_at") >= F.col("captured_at")))
        .join(dup_ids, "id", "left_anti")
    )


def test_generative_training_opt_in_is_far_below_recommendation(
    lake: dict[str, DataFrame],
) -> None:
    records = _owner_records(lake)
    latest = (
        records.withColumn(
            "r",
            F.row_number().over(
                Window.partitionBy("asset_id", "use_case").orderBy(F.col("captured_at").desc())
            ),
        )
        .where("r = 1")
        .groupBy("use_case")
        .agg(
            F.avg(
                ((F.col("consent_status") == "granted") & F.col("revoked_at").isNull()).cast(
                    "double"
                )
            ).alias("granted")
        )
    )
    rate = {r["use_case"]: r["granted"] for r in latest.collect()}
    assert set(rate) == set(demo.USE_CASES)
    assert rate["recommendation"] > 0.6
    assert rate["moderation"] > 0.6
    assert rate["generative_training"] < 0.35
    assert rate["recommendation"] - rate["generative_training"] > 0.4


def test_history_has_revocations_reconsents_and_a_policy_change(
    lake: dict[str, DataFrame],
) -> None:
    records = _owner_records(lake)
    statuses = {r[0] for r in records.select("consent_status").distinct().collect()}
    assert statuses == set(demo.STATUSES)
    # Revoked in place: a grant carrying revoked_at.
    assert not records.where(
        (F.col("consent_status") == "granted") & F.col("revoked_at").isNotNull()
    ).isEmpty()
    # Re-consent: a grant after an earlier revocation or denial on the same pair.
    w = Window.partitionBy("asset_id", "use_case").orderBy("captured_at")
    ordered = records.withColumn("prev", F.lag("consent_status").over(w))
    assert not ordered.where(
        (F.col("consent_status") == "granted") & F.col("prev").isin("revoked", "denied")
    ).isEmpty()
    # Policy versions follow the change instant; both occur.
    change = F.lit(demo.POLICY_CHANGE_AT)
    assert records.where(
        (F.col("captured_at") < change) & (F.col("policy_version") != demo.POLICY_BEFORE)
    ).isEmpty()
    assert records.where(
        (F.col("captured_at") >= change) & (F.col("policy_version") != demo.POLICY_AFTER)
    ).isEmpty()
    versions = {r[0] for r in records.select("policy_version").distinct().collect()}
    assert versions == {demo.POLICY_BEFORE, demo.POLICY_AFTER}
    # 18 months of history, never before the consent system launched.
    assert records.where(F.col("captured_at") < F.lit(demo.CONSENT_START)).isEmpty()
    recent = F.lit(demo.DEMO_NOW - dt.timedelta(days=60))
    assert not records.where(F.col("captured_at") >= recent).isEmpty()
    # Some records leave the jurisdiction to the asset.
    assert not records.where(F.col("jurisdiction").isNull()).isEmpty()


def test_every_planted_bad_record_kind_is_there_in_the_documented_amount(
    lake: dict[str, DataFrame], planted: demo.PlantedCounts
) -> None:
    records = lake["consent_records"]
    owners = lake["assets"].select("asset_id", "owner_user_id")
    bad = planted.bad_records
    assert set(bad) == set(demo.BAD_RECORD_RATES)
    not_owner = records.join(owners, "asset_id").where(
        F.col("user_id").isNotNull() & (F.col("user_id") != F.col("owner_user_id"))
    )
    assert not_owner.count() == bad["not_owner"]
    assert not_owner.where(F.col("consent_status") != "granted").isEmpty()
    unknown = records.where(~F.col("consent_status").isin(VALID))
    assert unknown.count() == bad["unknown_status"]
    assert {r[0] for r in unknown.select("consent_status").collect()} <= set(demo.UNKNOWN_STATUSES)
    assert records.where(F.col("policy_version").isNull()).count() == bad["null_policy_version"]
    assert records.where(F.col("captured_at").isNull()).count() == bad["null_captured_at"]
    assert (
        records.where(F.col("revoked_at") < F.col("captured_at")).count()
        == bad["revoked_before_captured"]
    )
    assert records.where(F.col("user_id").isNull()).count() == bad["null_user_id"]
    dup = records.groupBy("id").agg(
        F.count("*").alias("rows"), F.countDistinct("consent_status").alias("statuses")
    )
    dup = dup.where("rows > 1")
    assert dup.count() == bad["duplicate_id"]
    assert dup.where("rows != 2 or statuses != 2").isEmpty()
    # Every defect names a real asset, so it reaches the consent rules.
    assert records.join(owners, "asset_id", "left_anti").isEmpty()
    assert records.count() == _owner_records(lake).count() + planted.bad_record_rows


def test_planted_counts_scale_with_the_lake() -> None:
    small, big = demo.planted_counts(10), demo.planted_counts(1_000_000)
    assert all(n == 1 for n in small.bad_records.values())
    assert big.bad_records["not_owner"] == 4000
    assert big.gen_shard_cycle_rows == 1000
    assert big.segment_spectrogram_orphans == 1000 * demo.ORPHAN_SEGMENTS_PER_ASSET


# --------------------------------------------------------------------------------------------
# Derivatives and lineage


def test_asset_column_datasets_reference_assets_except_planted_orphans(
    lake: dict[str, DataFrame], planted: demo.PlantedCounts
) -> None:
    assets = lake["assets"].select("asset_id", "created_at")
    for name, orphans in [
        ("track_embeddings", planted.track_embedding_orphans),
        ("segment_spectrograms", planted.segment_spectrogram_orphans),
    ]:
        df = lake[name]
        assert df.join(assets, "asset_id", "left_anti").count() == orphans, name
        assert (
            df.join(assets, "asset_id").where(F.col("derived_at") < F.col("created_at")).isEmpty()
        )
    per_asset = lake["segment_spectrograms"].groupBy("asset_id").count()
    stats = per_asset.agg(F.min("count"), F.max("count")).first()
    assert stats is not None
    assert stats[0] >= demo.ORPHAN_SEGMENTS_PER_ASSET and stats[1] == demo.SEGMENTS_MAX
    models = {r[0] for r in lake["track_embeddings"].select("model").distinct().collect()}
    assert models == {"clap-v1", "clap-v2"}
    lengths = lake["track_embeddings"].select(F.size("vector").alias("n")).distinct().collect()
    assert [r["n"] for r in lengths] == [demo.EMBEDDING_DIM]


def _closure(lake: dict[str, DataFrame], child: str) -> DataFrame:
    """(child_key, asset_id) pairs reachable from ``child`` rows within three hops."""
    edges = lake["lineage"]
    frontier = edges.where(F.col("child_dataset") == child).select(
        F.col("child_key").alias("row"), "parent_dataset", "parent_key"
    )
    found = None
    for _ in range(3):
        roots = frontier.where(F.col("parent_dataset") == "assets").select(
            "row", F.col("parent_key").alias("asset_id")
        )
        found = roots if found is None else found.unionByName(roots)
        frontier = (
            frontier.where(F.col("parent_dataset") != "assets")
            .alias("f")
            .join(
                edges.alias("e"),
                (F.col("f.parent_dataset") == F.col("e.child_dataset"))
                & (F.col("f.parent_key") == F.col("e.child_key")),
            )
            .select("f.row", "e.parent_dataset", "e.parent_key")
        )
    assert found is not None
    return found.distinct()


def test_lineage_reaches_assets_except_planted_orphans(
    lake: dict[str, DataFrame], planted: demo.PlantedCounts
) -> None:
    assets = lake["assets"].select("asset_id")
    edges = lake["lineage"]
    roots = edges.where(F.col("parent_dataset") == "assets")
    assert roots.join(assets, roots.parent_key == assets.asset_id, "left_anti").isEmpty()
    datasets = {r[0] for r in edges.select("child_dataset").distinct().collect()}
    assert datasets == {"stems", "stem_embeddings", "gen_shards"}
    for name, key, orphans in [
        ("stems", "stem_id", planted.stem_orphans),
        ("stem_embeddings", "stem_embedding_id", planted.stem_embedding_orphans),
        ("gen_shards", "sample_id", planted.gen_shard_orphans),
    ]:
        reached = _closure(lake, name).select(F.col("row").alias(key)).distinct()
        assert lake[name].join(reached, key, "left_anti").count() == orphans, name
        # No edge names a row that does not exist.
        children = edges.where(F.col("child_dataset") == name).select(F.col("child_key").alias(key))
        assert children.join(lake[name], key, "left_anti").isEmpty(), name
    # Stems come from exactly one asset; samples mix 1-3 stems.
    stem_parents = edges.where("child_dataset = 'stems'").groupBy("child_key").count()
    assert stem_parents.where("count != 1").isEmpty()
    sample_parents = (
        edges.where("child_dataset = 'gen_shards' and parent_dataset = 'stems'")
        .groupBy("child_key")
        .count()
    )
    counts = {r["count"] for r in sample_parents.select("count").distinct().collect()}
    assert counts == {1, 2, 3}
    # Samples that mix stems from two tracks have two source assets.
    sources = _closure(lake, "gen_shards").groupBy("row").count()
    assert not sources.where("count = 2").isEmpty()
    # The planted cycles: gen_shards rows whose only edges point at each other.
    cycle = edges.where("child_dataset = 'gen_shards' and parent_dataset = 'gen_shards'")
    assert cycle.count() == planted.gen_shard_cycle_rows
    back = cycle.alias("a").join(
        cycle.alias("b"),
        (F.col("a.child_key") == F.col("b.parent_key"))
        & (F.col("a.parent_key") == F.col("b.child_key")),
    )
    assert back.count() == planted.gen_shard_cycle_rows


def test_some_rows_are_past_retention_and_most_are_not(lake: dict[str, DataFrame]) -> None:
    for name, spec in demo.DATASETS.items():
        retention = spec.get("retention_days")
        if retention is None:
            continue
        cutoff = F.lit(demo.DEMO_NOW - dt.timedelta(days=int(retention)))
        df = lake[name]
        expired = df.where(F.col("derived_at") < cutoff).count()
        assert 0 < expired < df.count() * 0.5, name


def test_demo_config_matches_the_contract(tmp_path: Path) -> None:
    config = parse_config(demo.demo_config(), base_dir=tmp_path, check_paths=False)
    assert config.lake_root == tmp_path.resolve()
    assert set(config.datasets) == set(demo.TABLES) - set(demo.SOURCE_TABLES)
    assert config.use_cases["generative_training"].accepted_policy_versions == ("2026-03",)
    assert config.use_cases["recommendation"].accepted_policy_versions == ("2025-01", "2026-03")
    for name, dataset in config.datasets.items():
        columns = dict(demo.SCHEMAS[name])
        assert dataset.key in columns
        assert dataset.asset_column is None or dataset.asset_column in columns
        assert dataset.derived_at_column in columns


# --------------------------------------------------------------------------------------------
# Writing the lake


@pytest.mark.slow
def test_init_demo_round_trip(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from consentgate import lake as lake_io

    root = tmp_path / "lake"
    with caplog.at_level(logging.INFO, logger="consentgate"):
        summary = demo.init_demo(spark, root, assets=120, seed=3)
    # Progress as it goes (issue #24 item 2): a step line per table as it is written, in
    # order, then one for the lake; counts and table names only.
    lines = [r.consentgate for r in caplog.records if r.name == "consentgate.demo"]
    assert [(f["step"], f.get("table")) for f in lines] == [
        *(("generate", name) for name in demo.TABLES),
        ("init_demo", None),
    ]
    for fields in lines[:-1]:
        assert fields["rows"] == summary.rows[str(fields["table"])], fields
        assert int(fields["files"]) >= 1 and int(fields["jobs"]) >= 1, fields
    assert lines[-1]["tables"] == len(demo.TABLES), lines[-1]
    assert lines[-1]["rows"] == sum(summary.rows.values()), lines[-1]
    assert summary.conf_path == root.resolve() / demo.CONF_FILE
    config = load_config(summary.conf_path)
    assert config.lake_root == root.resolve()
    expected = demo.generate(spark, assets=120, seed=3)
    assert set(summary.rows) == set(demo.TABLES)
    for name in demo.TABLES:
        written = lake_io.read_table(spark, config.lake_root / demo.table_path(name))
        assert summary.rows[name] == expected[name].count() > 0, name
        assert summary.versions[name] == 0
        assert _fingerprint(written) == _fingerprint(expected[name]), name
        # Statistics on the time columns only (README's advice): no id bound in the log.
        table = lake_io.open_table(config.lake_root / demo.table_path(name))
        timed = [
            f.name for f in written.schema.fields if f.dataType.typeName() in ("timestamp", "date")
        ]
        configuration = table.metadata().configuration
        assert configuration.get("delta.dataSkippingStatsColumns") == (",".join(timed) or None), (
            name
        )
        stats = lake_io.file_statistics(table).column_names
        assert {c.split(".", 1)[1] for c in stats if c.startswith("min.")} <= set(timed), name
    assert summary.to_json()["conf_path"] == str(summary.conf_path)
    with pytest.raises(TableError, match="already exists"):
        demo.init_demo(spark, root, assets=120, seed=3)


def test_uuid_regex_is_rfc_shaped() -> None:
    value = demo.demo_uuid(1, "x", 2, 3)
    assert re.match(UUID_RE, value)
    assert uuid.UUID(value).variant == uuid.RFC_4122
