"""Interop: a lake written by the previous engine (delta-rs) is read, purged, erased and
verified by delta-spark, and what delta-spark leaves behind is still read by delta-rs."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from deltalake import DeltaTable, write_deltalake
from pyspark.sql import SparkSession

from consentgate import erasure, lake, purge
from consentgate.config import load_config

AS_OF = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
TABLES = ("consent_records", "assets", "lineage", "derived/track_embeddings")


def rewrite_with_delta_rs(root: Path) -> None:
    """Replace each table by the same rows written by delta-rs (as the old engine did)."""
    for name in TABLES:
        path = root / name
        rows = DeltaTable(str(path)).to_pyarrow_table()
        shutil.rmtree(path)
        write_deltalake(str(path), rows)
        assert "Apache-Spark" not in str(DeltaTable(str(path)).history())  # no JVM wrote it


def test_delta_rs_lake_is_purged_erased_and_verified(spark: SparkSession, small_lake: Path) -> None:
    root = small_lake.parent
    config = load_config(small_lake)
    rewrite_with_delta_rs(root)
    path = config.dataset_path("track_embeddings")
    assert {r["embedding_id"] for r in lake.read_table(spark, path).collect()} == {
        "e1",
        "e2",
        "e3",
    }

    result = purge.run_purge(spark, config, as_of=AS_OF, run_id="purge-interop", erase=False)
    emb = result["datasets"]["track_embeddings"]
    assert emb["rows_deleted"] == 2 and emb["rows_after"] == 1
    # delta-rs wrote min/max statistics of the key, so the log names the removed keys until
    # the erasure cleans it (one file held e1..e3, so the removed e3 is its max bound).
    assert any(rb"\"e3\"" in f.read_bytes() for f in (path / "_delta_log").glob("*.json"))
    erased = erasure.erase_and_verify(spark, config, run_id="erase-interop")
    assert erased["ok"], json.dumps(erased, default=str)
    receipt = erased["datasets"]["track_embeddings"]
    assert receipt["result"] == "verified" and receipt["keys_checked"] == 2
    assert receipt["log_cleaned"] is True
    for file in (path / "_delta_log").iterdir():
        if file.suffix in (".json", ".crc"):  # quoted, escaped or not
            for quoted in (b'"e2"', b'"e3"', rb"\"e2\"", rb"\"e3\""):
                assert quoted not in file.read_bytes(), (file, quoted)
    # delta-spark's commits on a delta-rs table are read back by delta-rs, rows and all.
    after = DeltaTable(str(path)).to_pyarrow_table()
    assert after.column("embedding_id").to_pylist() == ["e1"]
    assert lake.table_inventory(path)["rows"] == 1
    assert {r["embedding_id"] for r in lake.read_table(spark, path).collect()} == {"e1"}
