"""The alternatives consentgate is measured against: what a team would write without it.

Each is written the way a competent engineer would write it in an afternoon, on the same
Spark session and the same lake layer (``consentgate.lake`` for reads and commits, so that the
Delta plumbing is identical and only the strategy differs):

* :func:`incremental_plan`: the rows to remove, found from the consent records appended since
  the last run (revocations only) and a forward lineage walk. Cheaper than consentgate's plan,
  which re-evaluates every asset's consent (denials, deletions, retention, policy lapses, bad
  records) every night; both baselines pay for this plan in their timings.
* :func:`naive_rewrite`: read each dataset, anti-join the removals, overwrite the whole table.
* :func:`spark_merge`: delta-spark's own ``MERGE ... WHEN MATCHED THEN DELETE`` per dataset with
  the removal keys as source, written the way the Delta documentation shows it
  (``DeltaTable.forPath(...).alias("t").merge(...).whenMatchedDelete().execute()``), on the
  same session; a dataset with no key to remove is skipped.
* :func:`bare_gate`: the training snapshot without governance: latest record per asset,
  granted + accepted policy + allowed jurisdiction + not deleted, joined through lineage, rows
  written; no fail-closed handling of malformed records, no allowlist, no hashing, no manifest.
* :func:`bare_scan`: a Spark scan that reads every column of every row (the floor under any
  row-level digest).
* :func:`sha256sum`: coreutils ``sha256sum`` on the same files, one process or ``cores``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from bench.lakes import descendants, removal_keys
from consentgate import lake
from consentgate.config import Config

# --------------------------------------------------------------------------------------------
# Purge baselines


def new_records(spark: SparkSession, config: Config, *, since_version: int) -> DataFrame:
    """Consent records committed after ``since_version``: only the data files added since are
    read (an incremental job's view of "what changed since last night")."""
    path = config.table_path("consent_records")
    old = set(
        lake.active_files(lake.open_table(path, version=since_version)).column("path").to_pylist()
    )
    table = lake.open_table(path)
    added = [p for p in lake.active_files(table).column("path").to_pylist() if p not in old]
    schema = lake.spark_schema(table)
    if not added:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*[str(path / p) for p in added])


def incremental_plan(
    spark: SparkSession, config: Config, *, since_version: int, out_dir: Path
) -> dict[str, Path]:
    """Write, per dataset, the keys of rows derived from assets revoked since ``since_version``
    as Parquet under ``out_dir``; returns the directories."""
    records = new_records(spark, config, since_version=since_version)
    revoked = (
        records.where((F.col("consent_status") == "revoked") | F.col("revoked_at").isNotNull())
        .select("asset_id")
        .distinct()
    )
    out: dict[str, Path] = {}
    for name, keys in removal_keys(spark, config, revoked).items():
        target = out_dir / name
        keys.write.mode("overwrite").parquet(str(target))
        out[name] = target
    return out


def naive_rewrite(spark: SparkSession, config: Config, keys: Mapping[str, Path]) -> None:
    """Read each dataset, drop the removed keys, overwrite the whole table in one commit."""
    for name, ds in config.datasets.items():
        path = config.dataset_path(name)
        rows = lake.read_table(spark, path)
        kept = rows.join(spark.read.parquet(str(keys[name])), ds.key, "left_anti")
        lake.write_table(
            kept,
            path,
            mode="overwrite",
            commit_metadata={"consentgate.operation": "bench.naive_rewrite"},
        )


def spark_merge(spark: SparkSession, config: Config, keys: Mapping[str, Path]) -> None:
    """delta-spark ``MERGE ... WHEN MATCHED THEN DELETE`` per dataset, keys as the source.

    A dataset with nothing to remove is skipped (a MERGE with an empty source would still scan
    and commit): what anyone writing this by hand checks first.
    """
    from delta.tables import DeltaTable

    for name, ds in config.datasets.items():
        source = spark.read.parquet(str(keys[name]))
        if source.isEmpty():
            continue
        (
            DeltaTable.forPath(spark, str(config.dataset_path(name)))
            .alias("t")
            .merge(source.alias("s"), f"t.{ds.key} = s.{ds.key}")
            .whenMatchedDelete()
            .execute()
        )


# --------------------------------------------------------------------------------------------
# Gate baseline


def _granted_assets(
    spark: SparkSession, config: Config, *, use_case: str, as_of: dt.datetime
) -> DataFrame:
    """Assets whose latest record for ``use_case`` grants it under the accepted terms."""
    rules = config.use_cases[use_case]
    at = F.lit(as_of).cast("timestamp")
    records = lake.read_table(spark, config.table_path("consent_records")).where(
        (F.col("use_case") == use_case) & (F.col("captured_at") <= at)
    )
    latest = (
        records.withColumn(
            "_rn",
            F.row_number().over(Window.partitionBy("asset_id").orderBy(F.desc("captured_at"))),
        )
        .where(F.col("_rn") == 1)
        .drop("_rn")
    )
    assets = lake.read_table(spark, config.table_path("assets")).select(
        "asset_id", "owner_user_id", F.col("jurisdiction").alias("asset_jurisdiction"), "deleted_at"
    )
    joined = latest.join(assets, "asset_id")
    ok = (
        (F.col("consent_status") == "granted")
        & (F.col("revoked_at").isNull() | (F.col("revoked_at") > at))
        & F.col("policy_version").isin(*rules.accepted_policy_versions)
        & (F.col("deleted_at").isNull() | (F.col("deleted_at") > at))
        & (F.col("user_id") == F.col("owner_user_id"))
    )
    if rules.jurisdictions is not None:
        jurisdiction = F.coalesce(F.col("jurisdiction"), F.col("asset_jurisdiction"))
        if rules.jurisdictions.allow is not None:
            ok = ok & jurisdiction.isin(*rules.jurisdictions.allow)
        else:
            ok = ok & ~jurisdiction.isin(*(rules.jurisdictions.deny or ()))
    return joined.where(ok).select("asset_id")


def bare_gate(
    spark: SparkSession,
    config: Config,
    *,
    use_case: str,
    as_of: dt.datetime,
    out_dir: Path,
) -> dict[str, int]:
    """Write the rows of every ``use_case`` dataset whose sources are all granted and that are
    inside retention, as plain Delta tables under ``out_dir``; returns rows written."""
    granted = _granted_assets(spark, config, use_case=use_case, as_of=as_of).withColumn(
        "_ok", F.lit(1)
    )
    edges = lake.read_table(spark, config.table_path("lineage"))
    all_assets = lake.read_table(spark, config.table_path("assets")).select("asset_id")
    sources: DataFrame | None = None
    written: dict[str, int] = {}
    for name, ds in sorted(config.datasets.items()):
        if ds.use_case != use_case:
            continue
        rows = lake.read_table(spark, config.dataset_path(name))
        if ds.asset_column is not None:
            kept = rows.join(
                granted.select(F.col("asset_id").alias(ds.asset_column)),
                ds.asset_column,
                "left_semi",
            )
        else:
            if sources is None:
                sources = descendants(edges, all_assets)
            good_keys = (
                sources.where(F.col("dataset") == name)
                .join(granted, "asset_id", "left")
                .groupBy(F.col("key").alias(ds.key))
                .agg(F.min(F.coalesce(F.col("_ok"), F.lit(0))).alias("_all_ok"))
                .where(F.col("_all_ok") == 1)
                .select(ds.key)
            )
            kept = rows.join(good_keys, ds.key, "left_semi")
        if ds.retention_days is not None and ds.derived_at_column is not None:
            oldest = as_of - dt.timedelta(days=ds.retention_days)
            kept = kept.where(F.col(ds.derived_at_column) >= F.lit(oldest).cast("timestamp"))
        target = out_dir / name
        lake.write_table(kept, target, mode="error")
        written[name] = int(lake.table_inventory(target)["rows"])
    return written


# --------------------------------------------------------------------------------------------
# Hashing baselines


def bare_scan(spark: SparkSession, path: Path) -> int:
    """Read every column of every row (an xxhash64 per row, XOR-folded): the scan floor."""
    frame = lake.read_table(spark, path)
    row = frame.select(F.bit_xor(F.xxhash64(*frame.columns)).alias("s")).collect()[0]
    return int(row["s"] or 0)


def sha256sum(files: Sequence[Path], *, processes: int = 1) -> dict[str, str]:
    """coreutils ``sha256sum`` over ``files``, in ``processes`` parallel processes (xargs -P);
    returns path -> hex digest."""
    if processes <= 1:
        out = subprocess.run(
            ["sha256sum", "--", *[str(f) for f in files]],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    else:
        per = max(1, -(-len(files) // processes))
        out = subprocess.run(
            ["xargs", "-0", "-P", str(processes), "-n", str(per), "sha256sum", "--"],
            input="\0".join(str(f) for f in files),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    digests: dict[str, str] = {}
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        digests[name] = digest
    return digests
