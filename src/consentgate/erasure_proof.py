"""The proof of erasure: nothing under a table holds a removed key, or a removed asset's id.

:func:`verify_erased` is step 3 of :mod:`consentgate.erasure` (which erases, and calls this
before and after a log cleanup). What it reads, all in Spark, joined once with the removed
keys' digests and never collected:

- **every Parquet file physically present** under the table (data files and
  ``_change_data/``), by the key's *physical* column name (column mapping honoured), and the
  asset column's when assets are checked;
- **every row value of the Delta log**, parsed, not grepped (:mod:`consentgate.logscan`, on
  the executors): commits, checkpoints (schemas merged, v2 sidecars included) and ``.crc``
  files; partition values, every leaf of the min/max statistics (nested columns too) and the
  literals of *other* writers' predicates — our own MERGE names digests only, and its text
  (``'k:'``, ``256``) is not compared;
- **every** ``name=value`` **directory name**.

Each value is hashed the way :func:`consentgate.purge.key_digest` hashes keys, whole, and by
its first N characters for every prefix length N the removed keys were recorded with:
delta-spark truncates a string statistic to ``spark.databricks.io.skipping.stringPrefixLength``
(32) characters, so a 36-character UUID key is in the log only as a prefix. The key table
records the digest of each removed key's prefix of that length with the length
(``prefix_sha256``, ``prefix_chars``), and a stored value at least that long whose prefix
hashes the same is a hit (a surviving key sharing its first 32 characters with a removed one
is a hit too: its bound *is* that removed key's prefix).

**Assets** (issue #22 item 3): the key table also records each removed row's asset id
(``asset_sha256``, ``asset_prefix_sha256``); an asset none of whose rows the table's latest
version keeps (:func:`_gone_assets`) is checked like a key. One with surviving rows is still
named, legitimately, by them.

**No evidence is no proof**: committed purges due for erasure whose removed keys cannot be read
(the key table missing or unreadable, or holding nothing for some of them) fail the receipt,
saying why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from consentgate import lake, maintenance
from consentgate.config import Config
from consentgate.errors import TableError, foreign_cause
from consentgate.purge import (
    ASSET_PREFIX_SHA,
    ASSET_SHA,
    KEY_TABLE_SCHEMA,
    PREFIX_CHARS,
    PREFIX_SHA,
    key_digest,
    key_table_path,
    prefix_hash,
)
from consentgate.redact import redact_partitions


def physical_parquet_files(root: Path) -> list[str]:
    """Every ``*.parquet`` file under a table directory outside the Delta log (data files and
    ``_change_data/``), relative to the table."""
    return [rel for rel in _physical_files(root) if rel.endswith(".parquet")]


def _physical_files(root: Path) -> list[str]:
    """Every file under a table directory outside ``_delta_log``, relative, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if not rel_dir.parts:
            dirnames[:] = [d for d in dirnames if d != maintenance.LOG_DIR]
        out.extend((rel_dir / filename).as_posix() for filename in filenames)
    return sorted(out)


def _log_files(root: Path) -> list[Path]:
    """Every file under ``_delta_log`` (commits, checkpoints, ``.crc``, sidecars)."""
    log = root / maintenance.LOG_DIR
    return sorted(p for p in log.rglob("*") if p.is_file()) if log.is_dir() else []


#: A digest's kind in the scan: the whole value (:data:`_WHOLE`), or its first N characters
#: (``p<N>``), matched with the same kind of digest of the removed keys only.
_WHOLE = "k"


def _file() -> Column:
    """The path of the file a row was read from, as ``file``."""
    return F.col("_metadata.file_path").alias("file")


def _log_values(spark: SparkSession, path: Path) -> DataFrame | None:
    """``file, value``: every row value in the log's files, parsed on the executors by
    :func:`consentgate.logscan.values_in` (commit lines and JSON checkpoints line by line,
    checksums whole, checkpoints and v2 sidecars as Parquet with their schemas merged), and
    every ``column=value`` directory name under the table."""
    from pyspark.sql.types import ArrayType, StringType

    from consentgate.logscan import values_in

    # A lambda: given the typed function itself, PySpark guesses at a pandas UDF and warns.
    parse = F.udf(lambda text: values_in(text), ArrayType(StringType()))
    files = _log_files(path)
    texts: list[DataFrame] = []
    whole = [str(p) for p in files if p.name.endswith(".crc") or p.name == "_last_checkpoint"]
    lines = [str(p) for p in files if not p.name.endswith(".parquet") and str(p) not in whole]
    if lines:
        texts.append(spark.read.text(lines).select(_file(), F.col("value")))
    if whole:
        texts.append(spark.read.text(whole, wholetext=True).select(_file(), F.col("value")))
    checkpoints = [str(p) for p in files if p.name.endswith(".parquet")]
    if checkpoints:
        raw = spark.read.option("mergeSchema", "true").parquet(*checkpoints)
        columns = [F.col(f"`{c}`") for c in raw.columns]
        texts.append(raw.select(_file(), F.to_json(F.struct(*columns)).alias("value")))
    parts = [t.select("file", F.explode(parse(F.col("value"))).alias("value")) for t in texts]
    directories = sorted(
        {
            (rel_dir, part.split("=", 1)[1])
            for rel in _physical_files(path)
            for rel_dir in [rel.rsplit("/", 1)[0]]
            if "/" in rel
            for part in rel_dir.split("/")
            if "=" in part
        }
    )
    if directories:
        parts.append(
            spark.createDataFrame(
                [(str(path / d), unquote(v)) for d, v in directories], "file string, value string"
            )
        )
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _value_digests(values: DataFrame, prefix_chars: Sequence[int]) -> DataFrame:
    """``file, digest, kind`` of stored values: each whole, and, for every prefix length the
    removed keys were recorded with, its first N characters when it has that many (a
    truncated minimum is the prefix itself, a truncated maximum the prefix and one more)."""
    out = values.select(
        "file", key_digest(F.col("value")).alias("digest"), F.lit(_WHOLE).alias("kind")
    )
    for chars in sorted(set(prefix_chars)):
        prefixed = values.where(F.length("value") >= chars).select(
            "file",
            prefix_hash(F.col("value"), chars).alias("digest"),
            F.lit(f"p{chars}").alias("kind"),
        )
        out = out.unionByName(prefixed)
    return out


def _removed_digests(keys: DataFrame, gone: DataFrame | None) -> DataFrame:
    """``digest, kind`` of the removed keys, and of the assets in ``gone``
    (:func:`_gone_assets`): whole, and their recorded prefixes."""
    out: DataFrame | None = None
    pairs = [(keys, "key_sha256", PREFIX_SHA)]
    if gone is not None:
        pairs.append((gone, ASSET_SHA, ASSET_PREFIX_SHA))
    for frame, whole, prefix in pairs:
        both = frame.select(F.col(whole).alias("digest"), F.lit(_WHOLE).alias("kind")).unionByName(
            frame.where(F.col(prefix).isNotNull()).select(
                F.col(prefix).alias("digest"),
                F.concat(F.lit("p"), F.col(PREFIX_CHARS).cast("string")).alias("kind"),
            )
        )
        out = both if out is None else out.unionByName(both)
    assert out is not None
    return out.distinct()


def _gone_assets(spark: SparkSession, path: Path, keys: DataFrame, column: str) -> DataFrame:
    """The assets (``asset_sha256, asset_prefix_sha256, prefix_chars``) the key table's rows
    removed rows of and that no row of the table's latest version keeps: their ids must be
    gone from the table's files and log. An asset some rows of which stay (one row past its
    retention, say) is legitimately still named by those rows."""
    kept = (
        lake.read_table(spark, path)
        .select(key_digest(F.col(f"`{column}`").cast("string")).alias(ASSET_SHA))
        .distinct()
    )
    removed = keys.where(F.col(ASSET_SHA).isNotNull()).select(
        ASSET_SHA, ASSET_PREFIX_SHA, PREFIX_CHARS
    )
    return removed.distinct().join(kept, ASSET_SHA, "left_anti")


def _physical(field: StructField) -> str:
    """A column's name in the Parquet files (its column-mapping physical name, if any)."""
    return str(field.metadata.get("delta.columnMapping.physicalName", field.name))


def verify_erased(
    spark: SparkSession,
    config: Config,
    name: str,
    path: Path,
    *,
    key: str,
    asset_column: str | None,
    attempts: Sequence[str],
) -> dict[str, Any]:
    """Prove that nothing under ``path`` holds a key removed by ``attempts``: no Parquet file
    on disk (data and ``_change_data/``), no file of the Delta log, no directory name; nor
    the id of an asset those attempts removed rows of and that no row of the table keeps
    (``asset_column``: its values in the files, its statistics and partition values).

    Every attempt in ``attempts`` is a committed purge, and a purge records its hashed keys
    before it commits (:func:`consentgate.purge.purge_table`): an attempt without keys in the
    key table means the evidence is gone, and the check would prove nothing about its rows.

    Returns:
        ``files_scanned, rows_scanned, log_files_scanned, keys_checked, assets_checked,
        files_with_removed_keys[]`` (paths relative to the table, partition values digested:
        :func:`consentgate.redact.redact_partitions`; never a key) and
        ``problems[]``: why the check could not be made (no evidence for committed purges).

    Raises:
        TableError: a file cannot be read (named).
    """
    table = lake.open_table(path)
    schema = lake.spark_schema(table)
    if key not in schema.fieldNames():
        raise TableError(f"dataset {name}: key column {key!r} is not in table {path}")
    field = schema[key]
    stored_in_files = key not in lake.partition_columns(table)
    keys_path = key_table_path(config, name)
    files = physical_parquet_files(path)
    logs = _log_files(path)
    empty: dict[str, Any] = {
        "files_scanned": len(files),
        "rows_scanned": 0,
        "log_files_scanned": len(logs),
        "keys_checked": 0,
        "assets_checked": 0,
        "files_with_removed_keys": [],
        "problems": [],
    }
    if not attempts:
        return empty

    def no_evidence(why: str) -> dict[str, Any]:
        return {
            **empty,
            "problems": [
                f"dataset {name}: {len(set(attempts))} committed purge attempt(s) are due for "
                f"erasure but {why}; nothing to check the table against, so its erasure is "
                "not proven"
            ],
        }

    if not lake.is_table(keys_path):
        return no_evidence(f"the removed-key table {keys_path} is missing")
    # Which attempts have keys, and how many keys: one aggregation (one pass over the key
    # table) rather than a distinct-collect and a count of its own each.
    try:
        keys = lake.read_table(spark, keys_path).where(F.col("attempt").isin(sorted(set(attempts))))
        for column in KEY_TABLE_SCHEMA.fields:  # rows recorded before the digests were
            if column.name not in keys.columns:
                keys = keys.withColumn(column.name, F.lit(None).cast(column.dataType))
        evidence = keys.agg(
            F.collect_set("attempt").alias("attempts"),
            F.count_distinct("key_sha256").alias("keys"),
            F.collect_set(PREFIX_CHARS).alias("prefix_chars"),
            F.count_distinct(ASSET_SHA).alias("assets"),
        ).first()
    except Exception as exc:  # an unreadable key table is missing evidence, not a crash
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return no_evidence(f"the removed-key table {keys_path} cannot be read ({first})")
    with_keys = {str(a) for a in evidence["attempts"]} if evidence is not None else set()
    missing = len(set(attempts) - with_keys)
    if missing:
        return no_evidence(f"the removed-key table {keys_path} holds no key for {missing} of them")
    keys_checked = int(evidence["keys"]) if evidence is not None else 0
    prefix_chars = [int(c) for c in evidence["prefix_chars"]] if evidence is not None else []
    if keys_checked == 0:
        return no_evidence(f"the removed-key table {keys_path} holds no key for them")
    asset_field = (
        schema[asset_column]
        if asset_column is not None and asset_column in schema.fieldNames()
        else None
    )
    gone: DataFrame | None = None
    assets_checked = 0
    if asset_field is not None and evidence is not None and int(evidence["assets"]):
        # Materialised once: counted here and joined below without reading the table again.
        gone = _gone_assets(spark, path, keys, asset_field.name).localCheckpoint()
        assets_checked = gone.count()
    # Every scan (the Parquet files' keys, the log's tokens, the directory names) in one
    # union, joined once with the removed keys; the same pass counts the rows read from the
    # Parquet files (``_row``) and collects the files where a removed key turned up.
    try:
        scans: list[DataFrame] = []
        # The key column (its rows counted), and the asset column when assets are checked,
        # read from every Parquet file on disk, unless partition values (directory names).
        parts = set(lake.partition_columns(table))
        read = [(field, True)] if stored_in_files else []
        if assets_checked and asset_field is not None and asset_field.name not in parts:
            read.append((asset_field, False))
        if files and read:
            on_disk = spark.read.schema(
                StructType([StructField(_physical(f), f.dataType, True) for f, _ in read])
            ).parquet(*[str(path / rel) for rel in files])
            for column, counted in read:
                scans.append(
                    on_disk.select(
                        _file(),
                        key_digest(F.col(f"`{_physical(column)}`")).alias("digest"),
                        F.lit(_WHOLE).alias("kind"),
                        F.lit(1 if counted else 0).alias("_row"),
                    )
                )
        in_log = _log_values(spark, path)
        if in_log is not None:
            scans.append(_value_digests(in_log, prefix_chars).withColumn("_row", F.lit(0)))
        hits: list[str] = []
        rows_scanned = 0
        if scans:
            scan = scans[0]
            for other in scans[1:]:
                scan = scan.unionByName(other)
            removed = _removed_digests(keys, gone).withColumn("_removed", F.lit(True))
            found = (
                scan.join(F.broadcast(removed), ["digest", "kind"], "left")
                .agg(
                    F.sum("_row").alias("rows"),
                    F.collect_set(F.when(F.col("_removed"), F.col("file"))).alias("files"),
                )
                .first()
            )
            if found is not None:
                rows_scanned = int(found["rows"] or 0)
                hits = [str(f) for f in found["files"]]
    except Exception as exc:
        raise TableError(
            f"dataset {name}: cannot read the files on disk ({foreign_cause(exc)}; "
            "details in the Spark log)"
        ) from None
    root = path.resolve().as_posix().rstrip("/") + "/"
    # Partition values digested: a table partitioned by an id column (issue #23 item 5).
    relative = sorted(
        {redact_partitions(unquote(h.split(root, 1)[1]) if root in h else h) for h in hits}
    )
    return {
        "files_scanned": len(files),
        "rows_scanned": int(rows_scanned),
        "log_files_scanned": len(logs),
        "keys_checked": int(keys_checked),
        "assets_checked": int(assets_checked),
        "files_with_removed_keys": relative,
        "problems": [],
    }
