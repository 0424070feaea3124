"""The evaluate job: effective consent per asset for one use case, written as a Delta table.

Extract (``load_sources``: the three source tables, schema-checked, at pinned Delta versions),
transform (:func:`consentgate.consent.effective_consent`), load (a Delta table plus a small
summary). Gate and purge reuse :func:`load_sources` and :func:`referenced_asset_ids` so that
every job reads the lake the same way and records the same table versions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StringType

from consentgate import lake
from consentgate.config import Config
from consentgate.consent import (
    ASSETS_SCHEMA,
    CONSENT_RECORDS_SCHEMA,
    EFFECTIVE_CONSENT_COLUMNS,
    effective_consent,
    ignored_record_counts,
)
from consentgate.errors import ConsentgateError
from consentgate.lineage import LINEAGE_SCHEMA
from consentgate.runtime import iso, new_run_id, now_utc


@dataclass(frozen=True)
class Sources:
    """The source tables as read, and the Delta versions they were read at."""

    records: DataFrame
    assets: DataFrame
    lineage: DataFrame
    versions: dict[str, int]


def load_sources(spark: SparkSession, config: Config) -> Sources:
    """Read consent_records, assets and lineage at their latest versions, checking schemas.

    The versions are pinned at read time and reported, so a manifest or purge receipt can say
    exactly which state of the consent table a decision rests on.

    Raises:
        TableError: a table is missing or unreadable.
        SchemaError: a column is missing or mistyped (naming table and column).
    """
    frames: dict[str, DataFrame] = {}
    versions: dict[str, int] = {}
    expected: dict[str, Mapping[str, DataType]] = {
        "consent_records": CONSENT_RECORDS_SCHEMA,
        "assets": ASSETS_SCHEMA,
        "lineage": LINEAGE_SCHEMA,
    }
    for name in ("consent_records", "assets", "lineage"):
        schema = expected[name]
        path = config.table_path(name)
        version = lake.table_version(path)
        frame = lake.read_table(spark, path, version=version)
        lake.require_schema(frame.schema, schema, table=name)
        frames[name] = frame
        versions[name] = version
    return Sources(frames["consent_records"], frames["assets"], frames["lineage"], versions)


def referenced_asset_ids(spark: SparkSession, config: Config, sources: Sources) -> DataFrame:
    """Asset ids that derivatives point at: lineage roots and datasets' asset columns.

    These must get a decision even when neither ``assets`` nor ``consent_records`` knows them
    (they then come out ``asset_unknown``), so that a derivative of a vanished asset is never
    kept by accident.
    """
    ids = sources.lineage.where(F.col("parent_dataset") == "assets").select(
        F.col("parent_key").alias("asset_id")
    )
    for name, dataset in config.datasets.items():
        if dataset.asset_column is None:
            continue
        frame = lake.read_table(spark, config.dataset_path(name))
        lake.require_schema(frame.schema, {dataset.asset_column: StringType()}, table=name)
        ids = ids.unionByName(frame.select(F.col(dataset.asset_column).alias("asset_id")))
    return ids.where(F.col("asset_id").isNotNull()).distinct()


def decisions(
    spark: SparkSession, config: Config, sources: Sources, *, use_case: str, as_of: dt.datetime
) -> DataFrame:
    """Effective consent for one configured use case (see DESIGN.md "Effective consent")."""
    if use_case not in config.use_cases:
        raise ConsentgateError(
            f"--use-case: {use_case!r} is not configured (known: {', '.join(sorted(config.use_cases))})"
        )
    return effective_consent(
        sources.records,
        sources.assets,
        use_cases={use_case: config.use_cases[use_case]},
        as_of=as_of,
        extra_asset_ids=referenced_asset_ids(spark, config, sources),
    ).select(*EFFECTIVE_CONSENT_COLUMNS)


def run_evaluate(
    spark: SparkSession,
    config: Config,
    *,
    use_case: str,
    as_of: dt.datetime | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate consent for ``use_case`` at ``as_of`` and write the decisions as Delta.

    Args:
        spark: Session to run on.
        config: Validated configuration.
        use_case: A configured use case.
        as_of: Evaluation instant (default: now, UTC).
        out: Output table directory (default: ``<state_dir>/evaluations/<run id>``); must not
            exist yet, so an evaluation is never silently overwritten.

    Returns:
        ``assets``, ``granted``, ``reasons{}``, ``ignored_records{}``, ``output`` and the
        source tables' Delta versions.
    """
    instant = as_of or now_utc()
    run_id = new_run_id("evaluate", at=instant)
    sources = load_sources(spark, config)
    table = decisions(spark, config, sources, use_case=use_case, as_of=instant)
    target = out or config.state_dir / "evaluations" / run_id
    version = lake.write_table(
        table,
        target,
        mode="error",
        commit_metadata={"consentgate.run_id": run_id, "consentgate.use_case": use_case},
    )
    written = lake.read_table(spark, target, version=version)
    reasons = {r["reason"]: int(r["count"]) for r in written.groupBy("reason").count().collect()}
    # Ignored records of this use case, plus those naming no configured use case at all.
    relevant = sources.records.where(
        (F.col("use_case") == use_case)
        | F.col("use_case").isNull()
        | ~F.col("use_case").isin(sorted(config.use_cases))
    )
    ignored = {
        r["reason"]: int(r["count"])
        for r in ignored_record_counts(
            relevant, sources.assets, use_cases=config.use_cases, as_of=instant
        ).collect()
    }
    return {
        "run_id": run_id,
        "use_case": use_case,
        "as_of": iso(instant),
        "assets": sum(reasons.values()),
        "granted": reasons.get("granted", 0),
        "reasons": dict(sorted(reasons.items())),
        "ignored_records": ignored,
        "output": str(target),
        "table_versions": sources.versions,
    }
