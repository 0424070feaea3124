"""The purge's run-wide decision (``purge.decide_run``) against the gate's per-table one.

``decide_run`` decides every table of a run as one frame (tables of two use cases, tables
naming their asset and tables traced through lineage, keys unique per table only), while the
gate decides one table at a time with ``lineage.source_assets`` and ``lineage.row_decisions``.
Both must remove exactly the same rows for the same reasons. The lake holds what tends to
break a batched decision: the same key in two tables with different verdicts, null keys in
two tables, a key whose rows sit in two files with different ``derived_at``, a row naming no
asset, an asset id spelled in upper case, a lineage key with no edge and one with two
sources. The expected reasons are also written out by hand for the tables naming their asset,
so both paths being wrong the same way fails too.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import lake, lineage, purge
from consentgate.config import Config, load_config
from consentgate.registry import lineage_dataset
from tests.lakes import LINEAGE_DDL, T0, small_lake_conf, write_small_lake

AS_OF = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
FRESH = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
STALE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
ROWS_DDL = "id string, asset_id string, derived_at timestamp"
STEMS_DDL = "stem_id string, derived_at timestamp"

#: a1 granted for both use cases, a2 granted then revoked for recommendation only, a3 with a
#: record for another user (write_small_lake's assets: a1..a3).
RECORDS = [
    ("r1", "u1", "a1", "recommendation", "granted", "2026-03", None, T0, None),
    ("r2", "u1", "a1", "generative_training", "granted", "2026-03", None, T0, None),
    ("r3", "u2", "a2", "recommendation", "granted", "2026-03", None, T0, None),
    ("r4", "u2", "a2", "recommendation", "revoked", "2026-03", None, T0 + dt.timedelta(1), None),
    ("r5", "u2", "a2", "generative_training", "granted", "2026-03", None, T0, None),
    ("r6", "u9", "a3", "recommendation", "granted", "2026-03", None, T0, None),
]


def _dataset(path: str, use_case: str, key: str, asset_column: str | None) -> dict[str, object]:
    return {
        "path": path,
        "use_case": use_case,
        "key": key,
        "asset_column": asset_column,
        "retention_days": 365,
        "derived_at_column": "derived_at",
    }


def _lake(spark: SparkSession, root: Path) -> Config:
    conf = small_lake_conf()
    conf["use_cases"] = {
        "recommendation": {"accepted_policy_versions": ["2026-03"]},
        "generative_training": {"accepted_policy_versions": ["2026-03"]},
    }
    conf["datasets"] = {
        "emb": _dataset("derived/emb", "recommendation", "id", "asset_id"),
        "gen": _dataset("derived/gen", "generative_training", "id", "asset_id"),
        "stems": _dataset("derived/stems", "generative_training", "stem_id", None),
    }
    conf_path = write_small_lake(spark, root, records=RECORDS, conf=conf)
    batches = {
        "emb": [
            [("e1", "a1", FRESH), ("e2", "A1 ", FRESH), ("e3", None, FRESH), (None, "a1", FRESH)],
            [("e1", "a1", STALE), ("e4", "a2", FRESH), ("e5", "a3", FRESH), ("e6", "a1", FRESH)],
        ],
        # e1 again, granted here (generative training); e4 again, granted here (a2's
        # revocation is for recommendation only)
        "gen": [[("e1", "a1", FRESH), (None, "a2", FRESH)], [("e4", "a2", FRESH)]],
    }
    for name, files in batches.items():
        for rows in files:
            lake.write_table(
                spark.createDataFrame(rows, ROWS_DDL), root / "derived" / name, mode="append"
            )
    stems = [("s1", FRESH), ("s2", FRESH), ("s3", FRESH), (None, FRESH), ("s4", STALE)]
    lake.write_table(spark.createDataFrame(stems, STEMS_DDL), root / "derived" / "stems")
    edges = [
        ("stems", "s1", "assets", "a1"),
        ("stems", "s2", "assets", "a1"),
        ("stems", "s2", "assets", "a3"),  # a3: no generative_training record
        ("stems", "s4", "assets", "a2"),
        # s3: no edge
    ]
    lake.write_table(spark.createDataFrame(edges, LINEAGE_DDL), root / "lineage", mode="overwrite")
    return load_config(conf_path)


def _gate_way(spark: SparkSession, config: Config, name: str, consent: DataFrame) -> Counter:  # type: ignore[type-arg]
    """The rows to remove, decided for this one table as the gate decides."""
    dataset = config.datasets[name]
    path = config.dataset_path(name)
    rows = lake.read_table(spark, path, with_file=True)
    edges = lake.read_table(spark, config.table_path("lineage"))
    sources = lineage.source_assets(
        lineage_dataset(name),
        rows,
        key=dataset.key,
        asset_column=dataset.asset_column,
        lineage=edges,
    )
    decided = lineage.row_decisions(
        rows,
        sources,
        consent,
        key=dataset.key,
        use_case=dataset.use_case,
        retention_days=dataset.retention_days,
        derived_at_column=dataset.derived_at_column,
        as_of=AS_OF,
        dataset=name,
    )
    removed = decided.where(~F.col("keep"))
    located = rows.join(
        removed, F.col(dataset.key).cast("string").eqNullSafe(F.col("key")), "inner"
    ).select(purge.key_digest(F.col(dataset.key)).alias("sha"), "_file", "reason")
    return Counter((r["sha"], r["_file"], r["reason"]) for r in located.collect())


def test_one_frame_for_every_table_decides_as_the_gate_does_table_by_table(
    spark: SparkSession, tmp_path: Path
) -> None:
    config = _lake(spark, tmp_path / "lake")
    run = purge.decide_run(spark, config, as_of=AS_OF)
    try:
        assert run.failed == {}
        assert set(run.tables) == {"emb", "gen", "stems"}
        assert run.consent is not None
        decided = {
            name: Counter(
                (r[purge.KEY_SHA], r["_file"], r["reason"]) for r in one.located.collect()
            )
            for name, one in run.tables.items()
        }
        for name in run.tables:
            assert decided[name] == _gate_way(spark, config, name, run.consent), name
        # Written out by hand (a row per removed row): e1's two rows go together (one is
        # stale), a null key and a row naming no asset have no lineage, e4 is revoked for
        # recommendation, a3 has no attributable record for it; e2 ("A1 ") and e6 stay.
        reasons = {n: Counter(r for _, _, r in d.elements()) for n, d in decided.items()}
        assert reasons["emb"] == Counter(
            retention_expired=2, no_lineage=2, revoked=1, no_consent_record=1
        ), reasons["emb"]
        assert reasons["gen"] == Counter(no_lineage=1), reasons["gen"]
        # s2 has a source without consent, s3 no edge, the null key no lineage, s4 is stale
        assert sum(reasons["stems"].values()) == 4, reasons["stems"]
        assert reasons["stems"]["no_lineage"] == 2, reasons["stems"]
        plan = run.tables["emb"].plan
        assert plan.rows_removed == 6
        assert {f.path: f.rows_removed for f in plan.files} == Counter(
            file for _, file, _ in decided["emb"].elements()
        )
    finally:
        run.release()
