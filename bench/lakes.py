"""Benchmark lakes: demo lakes at a scale, re-laid out, brought to compliance, then revoked.

Building a 1M-asset lake takes minutes, so every stage is cached under ``bench/lakes/``
(gitignored) and marked complete only when it finished (a marker file written last): a crashed
build is rebuilt, never reused half-written. The cache key includes a fingerprint of the demo
generator's source, so a changed generator never silently benchmarks a stale lake.

The stages, each a full lake directory with its own ``consentgate.yaml``:

1. **base**: ``consentgate.demo.init_demo`` at ``assets`` (what the gate and hashing use).
2. **layout**: the base with every derivative dataset rewritten in one layout, ``clustered``
   (rows range-partitioned and sorted by their source asset, as a Z-order on one column would)
   or ``scattered`` (rows hashed by key across the same number of files, like training shards),
   with files of about ``file_mb``; then purged once at :data:`AS_OF`, so that the lake is
   compliant: a nightly purge only ever sees the day's changes, and the benchmark measures that.
3. **revoked**: the layout lake plus revoked consent records (every use case) for an exact
   fraction of the assets, captured just before :data:`AS_OF`. The rows those revocations must
   remove are computed independently here (a forward lineage closure from the revoked assets)
   and stored with the data files that hold them: the copy-on-write minimum.

Trials never touch a cached lake: each runs on :func:`clone_lake`, which hard-links the
immutable Parquet data files and copies everything else (Delta logs, config, state), so a
1 GB lake clones in well under a second and a trial cannot corrupt the cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import demo, lake
from consentgate.config import Config, load_config

#: Evaluation instant of every purge and gate in the benchmark: a day after the demo's "now".
AS_OF = demo.DEMO_NOW + dt.timedelta(days=1)
#: When the benchmark's revocations were captured (before :data:`AS_OF`, after the steady
#: purge's view of the lake, which is also at :data:`AS_OF` but ran before they were appended:
#: the same instant keeps retention from expiring extra rows between the two purges).
REVOKED_AT = AS_OF - dt.timedelta(seconds=30)
#: Revocations carry the current terms.
REVOKE_POLICY = demo.POLICY_AFTER
LAYOUTS = ("clustered", "scattered")
_MARKER = ".bench-complete.json"
#: (start, length) of the five groups of a UUID's 32 hex digits.
_UUID_PARTS = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
_KEYS_DIR = "_bench_keys"


# --------------------------------------------------------------------------------------------
# Caching and cloning


def demo_fingerprint() -> str:
    """Short hash of the demo generator's source: part of every cache key."""
    source = Path(demo.__file__).read_bytes()
    return hashlib.sha256(source).hexdigest()[:10]


def read_marker(path: Path) -> dict[str, Any] | None:
    """The facts stored when a cached stage completed, or None if it never did."""
    marker = path / _MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _write_marker(path: Path, facts: Mapping[str, Any]) -> None:
    (path / _MARKER).write_text(json.dumps(facts, indent=2, sort_keys=True))


def clone_lake(src: Path, dst: Path) -> Path:
    """Copy a lake for one trial: data files hard-linked, logs and state copied.

    Parquet data files are immutable (every writer here, ours and the baselines', writes new
    files and never rewrites one in place), so sharing their inodes is safe; Delta logs, checkpoints,
    the config and consentgate's state are small and may be appended to, so they are copied.
    """
    if dst.exists():
        shutil.rmtree(dst)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        in_log = "_delta_log" in rel.parts
        for name in filenames:
            if name == _MARKER:
                continue
            source, target = Path(dirpath) / name, dst / rel / name
            if name.endswith(".parquet") and not in_log:
                os.link(source, target)
            else:
                shutil.copy2(source, target)
        dirnames.sort()
    return dst


def conf_of(lake_dir: Path) -> Config:
    """The validated config of a benchmark lake (every stage carries its own)."""
    return load_config(lake_dir / demo.CONF_FILE)


# --------------------------------------------------------------------------------------------
# Stage 1: base


def base_lake(spark: SparkSession, root: Path, *, assets: int, seed: int) -> Path:
    """The demo lake at ``assets`` (cached)."""
    path = root / f"base-a{assets}-s{seed}-{demo_fingerprint()}"
    if read_marker(path) is not None:
        return path
    if path.exists():
        shutil.rmtree(path)
    summary = demo.init_demo(spark, path, assets=assets, seed=seed)
    _write_marker(path, {"assets": assets, "seed": seed, "rows": summary.rows})
    return path


# --------------------------------------------------------------------------------------------
# Lineage closure (independent of consentgate's own, used for layout and expected removals)


def descendants(edges: DataFrame, roots: DataFrame, *, max_hops: int = 16) -> DataFrame:
    """Every ``(dataset, key, asset_id)`` reachable from the ``roots`` assets along lineage.

    A forward closure, one join per hop, stopping when a hop finds nothing new (the demo's
    deepest chain is two hops). Each hop is persisted so that the emptiness check and the
    union do not recompute the chain.
    """
    from pyspark import StorageLevel

    e = edges.select("child_dataset", "child_key", "parent_dataset", "parent_key")
    level = (
        e.where(F.col("parent_dataset") == "assets")
        .join(roots.select(F.col("asset_id").alias("parent_key")), "parent_key")
        .select(
            F.col("child_dataset").alias("dataset"),
            F.col("child_key").alias("key"),
            F.col("parent_key").alias("asset_id"),
        )
        .distinct()
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    levels = [level]
    for _ in range(max_hops):
        nxt = (
            e.join(
                level.select(
                    F.col("dataset").alias("parent_dataset"),
                    F.col("key").alias("parent_key"),
                    "asset_id",
                ),
                ["parent_dataset", "parent_key"],
            )
            .select(
                F.col("child_dataset").alias("dataset"), F.col("child_key").alias("key"), "asset_id"
            )
            .distinct()
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        if nxt.isEmpty():
            nxt.unpersist()
            break
        levels.append(nxt)
        level = nxt
    out = levels[0]
    for part in levels[1:]:
        out = out.unionByName(part)
    return out.distinct()


def removal_keys(spark: SparkSession, config: Config, revoked: DataFrame) -> dict[str, DataFrame]:
    """Per dataset, the keys of rows derived (directly or through lineage) from ``revoked``.

    This is what a hand-written incremental purge computes: it knows which assets were
    revoked and follows lineage from them. On a compliant lake it is exactly what a correct
    purge must remove.
    """
    edges = lake.read_table(spark, config.table_path("lineage"))
    reached = None
    out: dict[str, DataFrame] = {}
    for name, ds in config.datasets.items():
        if ds.asset_column is not None:
            rows = lake.read_table(spark, config.dataset_path(name))
            out[name] = (
                rows.join(revoked.select(F.col("asset_id").alias(ds.asset_column)), ds.asset_column)
                .select(ds.key)
                .distinct()
            )
        else:
            if reached is None:
                reached = descendants(edges, revoked)
            out[name] = (
                reached.where(F.col("dataset") == name)
                .select(F.col("key").alias(ds.key))
                .distinct()
            )
    return out


# --------------------------------------------------------------------------------------------
# Stage 2: layout (+ steady state)


def _sort_asset(spark: SparkSession, config: Config, name: str, rows: DataFrame) -> DataFrame:
    """``rows`` with ``_bench_asset``: the row's (first) source asset, its clustering key."""
    ds = config.datasets[name]
    if ds.asset_column is not None:
        return rows.withColumn("_bench_asset", F.col(ds.asset_column))
    edges = lake.read_table(spark, config.table_path("lineage"))
    assets = lake.read_table(spark, config.table_path("assets")).select("asset_id")
    first = (
        descendants(edges, assets)
        .where(F.col("dataset") == name)
        .groupBy(F.col("key").alias(ds.key))
        .agg(F.min("asset_id").alias("_bench_asset"))
    )
    return rows.join(first, ds.key, "left")


def relayout(
    spark: SparkSession, config: Config, name: str, *, layout: str, file_mb: float
) -> dict[str, Any]:
    """Rewrite one dataset in ``layout`` with files of about ``file_mb`` (overwrite commit)."""
    ds = config.datasets[name]
    path = config.dataset_path(name)
    inventory = lake.table_inventory(path)
    files = max(1, math.ceil(inventory["bytes"] / (file_mb * 1024 * 1024)))
    rows = lake.read_table(spark, path)
    columns = rows.columns
    if layout == "clustered":
        keyed = _sort_asset(spark, config, name, rows)
        laid = keyed.repartitionByRange(files, "_bench_asset", ds.key).sortWithinPartitions(
            "_bench_asset", ds.key
        )
    elif layout == "scattered":
        laid = rows.repartition(files, F.xxhash64(F.col(ds.key))).sortWithinPartitions(ds.key)
    else:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    lake.write_table(
        laid.select(*columns),
        path,
        mode="overwrite",
        commit_metadata={"consentgate.operation": f"bench.layout.{layout}"},
    )
    after = lake.table_inventory(path)
    return {"files": after["files"], "bytes": after["bytes"], "rows": after["rows"]}


def layout_lake(
    spark: SparkSession,
    root: Path,
    base: Path,
    *,
    layout: str,
    file_mb: float,
    steady: bool,
) -> tuple[Path, dict[str, Any]]:
    """The base lake re-laid out and (when ``steady`` and the purge exists) purged once."""
    tag = f"{layout}-f{file_mb:g}" + ("" if steady else "-raw")
    path = root / f"{base.name}-{tag}"
    facts = read_marker(path)
    if facts is not None:
        return path, facts
    clone_lake(base, path)
    config = conf_of(path)
    datasets = {
        name: relayout(spark, config, name, layout=layout, file_mb=file_mb)
        for name in config.datasets
    }
    facts = {"layout": layout, "file_mb": file_mb, "datasets_after_layout": datasets}
    if steady:
        from consentgate.purge import run_purge

        result = run_purge(spark, config, as_of=AS_OF, erase=False)
        facts["steady_purge_rows_deleted"] = {
            n: int(r["rows_deleted"]) for n, r in result["datasets"].items()
        }
    facts["steady"] = steady
    facts["datasets"] = {n: lake.table_inventory(config.dataset_path(n)) for n in config.datasets}
    _write_marker(path, facts)
    return path, facts


# --------------------------------------------------------------------------------------------
# Stage 3: revocations and the copy-on-write minimum


def pick_assets(spark: SparkSession, config: Config, fraction: float, *, salt: str) -> DataFrame:
    """Exactly ``max(1, round(fraction * live assets))`` live assets, chosen by a salted hash
    (deterministic, uniform, and the same assets whatever the layout)."""
    assets = lake.read_table(spark, config.table_path("assets"))
    live = assets.where(F.col("deleted_at").isNull())
    total = lake.table_inventory(config.table_path("assets"))["rows"]
    count = max(1, round(fraction * total))
    return (
        live.orderBy(F.xxhash64(F.lit(salt), F.col("asset_id")))
        .limit(count)
        .select("asset_id", "owner_user_id")
    )


def revocation_records(revoked: DataFrame, use_cases: Iterable[str]) -> DataFrame:
    """One ``revoked`` consent record per asset and use case, by the asset's owner."""
    ucs = F.array(*[F.lit(u) for u in sorted(use_cases)])
    rows = revoked.select("asset_id", "owner_user_id", F.explode(ucs).alias("use_case"))
    digest = F.md5(F.concat_ws(":", F.lit("bench-revocation"), "asset_id", "use_case"))
    record_id = F.concat_ws(
        "-", *[F.substring(digest, start, length) for start, length in _UUID_PARTS]
    )
    return rows.select(
        record_id.alias("id"),
        F.col("owner_user_id").alias("user_id"),
        "asset_id",
        "use_case",
        F.lit("revoked").alias("consent_status"),
        F.lit(REVOKE_POLICY).alias("policy_version"),
        F.lit(None).cast("string").alias("jurisdiction"),
        F.lit(REVOKED_AT).cast("timestamp").alias("captured_at"),
        F.lit(None).cast("timestamp").alias("revoked_at"),
    )


@dataclass(frozen=True)
class Minimum:
    """The copy-on-write minimum of one dataset: files that hold at least one removed row."""

    rows: int
    files: int
    bytes: int
    files_total: int
    bytes_total: int
    assets_per_file: float | None


def minimum(
    spark: SparkSession, path: Path, key: str, keys: DataFrame, *, asset_column: str | None
) -> Minimum:
    """Rows to remove and the files (count, bytes) that hold them, at the table's latest
    version, and the mean number of distinct assets per file (datasets with an asset column;
    what decides how many files a random revocation hits). Only distinct file names and
    counts reach the driver."""
    table = lake.open_table(path)
    files = lake.active_files(table)
    sizes = dict(
        zip(files.column("path").to_pylist(), files.column("size_bytes").to_pylist(), strict=True)
    )
    rows = lake.read_table(spark, path, with_file=True).select(key, "_file")
    hit = rows.join(keys, key, "left_semi")
    per_file = {r["_file"]: int(r["count"]) for r in hit.groupBy("_file").count().collect()}
    assets_per_file = None
    if asset_column is not None and sizes:
        located = lake.read_table(spark, path, with_file=True).select("_file", asset_column)
        assets_per_file = located.distinct().count() / len(sizes)
    return Minimum(
        rows=sum(per_file.values()),
        files=len(per_file),
        bytes=int(sum(sizes[f] for f in per_file)),
        files_total=len(sizes),
        bytes_total=int(sum(sizes.values())),
        assets_per_file=assets_per_file,
    )


def revoked_lake(
    spark: SparkSession, root: Path, layout: Path, *, fraction: float
) -> tuple[Path, dict[str, Any]]:
    """The layout lake plus revocations for ``fraction`` of the assets, with the expected
    removals (keys stored under ``_bench_keys/``) and the copy-on-write minimum per dataset."""
    path = root / f"{layout.name}-r{fraction:g}"
    facts = read_marker(path)
    if facts is not None:
        return path, facts
    clone_lake(layout, path)
    config = conf_of(path)
    picked = pick_assets(spark, config, fraction, salt=f"bench-revoke-{fraction:g}")
    # Materialise the choice so the records and the expected removals name the same assets.
    chosen_dir = path / _KEYS_DIR / "_revoked_assets"
    picked.write.mode("overwrite").parquet(str(chosen_dir))
    chosen = spark.read.parquet(str(chosen_dir))
    records_version_before = lake.table_version(config.table_path("consent_records"))
    lake.write_table(
        revocation_records(chosen, config.use_cases),
        config.table_path("consent_records"),
        mode="append",
        commit_metadata={"consentgate.operation": "bench.revoke"},
    )
    per_dataset: dict[str, Any] = {}
    for name, keys in removal_keys(spark, config, chosen).items():
        key = config.datasets[name].key
        key_dir = path / _KEYS_DIR / name
        keys.write.mode("overwrite").parquet(str(key_dir))
        m = minimum(
            spark,
            config.dataset_path(name),
            key,
            spark.read.parquet(str(key_dir)),
            asset_column=config.datasets[name].asset_column,
        )
        per_dataset[name] = m.__dict__
    facts = {
        "revoked_fraction": fraction,
        "revoked_assets": spark.read.parquet(str(chosen_dir)).count(),
        "revoked_at": REVOKED_AT.isoformat(),
        "records_version_before": records_version_before,
        "as_of": AS_OF.isoformat(),
        "datasets": per_dataset,
    }
    _write_marker(path, facts)
    return path, facts


def expected_keys_dir(lake_dir: Path, name: str) -> Path:
    """Where :func:`revoked_lake` stored the keys a purge of ``name`` must remove."""
    return lake_dir / _KEYS_DIR / name


# --------------------------------------------------------------------------------------------
# What a trial did, from the Delta logs alone


def active_sizes(path: Path) -> dict[str, int]:
    """Active data files of a table and their sizes (from the log; no data read)."""
    files = lake.active_files(lake.open_table(path))
    return dict(
        zip(files.column("path").to_pylist(), files.column("size_bytes").to_pylist(), strict=True)
    )


def snapshot_files(config: Config) -> dict[str, dict[str, int]]:
    """:func:`active_sizes` of every configured dataset."""
    return {name: active_sizes(config.dataset_path(name)) for name in config.datasets}


def io_diff(
    before: Mapping[str, Mapping[str, int]], config: Config, rows_before: Mapping[str, int]
) -> dict[str, Any]:
    """Files and bytes each dataset lost (rewritten or dropped) and gained since ``before``.

    Independent of what a strategy reports about itself: it compares the active file sets of
    the Delta log before and after, so consentgate, the naive rewrite and the MERGE are measured
    the same way.
    """
    out: dict[str, Any] = {}
    for name in config.datasets:
        after = active_sizes(config.dataset_path(name))
        old, new = before[name], after
        removed = [p for p in old if p not in new]
        added = [p for p in new if p not in old]
        rows_after = lake.table_inventory(config.dataset_path(name))["rows"]
        out[name] = {
            "files_rewritten": len(removed),
            "bytes_rewritten": int(sum(old[p] for p in removed)),
            "files_written": len(added),
            "bytes_written": int(sum(new[p] for p in added)),
            "rows_deleted": int(rows_before[name] - rows_after),
        }
    return out
