"""What a gate must admit and a purge must keep on a small demo lake, computed independently.

Nothing here calls the code under test (``consentgate.lineage``, ``.registry``, ``.purge``,
``.consent``, ``.evaluate``, ``.config`` parsing): the demo lake's derivative tables, their keys,
use cases, retention and lineage are written out by hand from DESIGN.md and the demo's
documentation (``consentgate/demo.py``); consent is decided by the pure-Python reference model
(``tests/consent_model.py``); a row's source assets are found by walking the lineage table's
edges in plain Python. Spark only reads the tables' raw rows (plain ``format("delta")``).

Only for small lakes (the 80-asset ``pristine_lake`` that the Airflow, gate, backfill and erasure
tests copy): the inputs are collected to the driver. Results are compared in Spark (counts and
anti-joins both ways); a failure names a few differing rows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate.config import JurisdictionRules, UseCaseConfig
from tests import consent_model
from tests.consent_model import Asset, Decision, Record

UTC = dt.UTC


@dataclass(frozen=True)
class Table:
    """A derivative table of the demo lake (DESIGN.md "Config", the demo's ``DATASETS``).

    Attributes:
        path: Relative to the lake root.
        use_case: The one use case its rows serve.
        key: Row key column.
        asset_column: Column naming the row's asset; None when sources come from lineage.
        retention_days: Rows derived longer ago are out (None: kept forever).
        lineage_name: ``child_dataset`` of its rows' lineage edges (a snapshot's rows keep
            their source dataset's keys, and so its lineage).
        derived_at_column: When the row was derived.
    """

    path: str
    use_case: str
    key: str
    asset_column: str | None
    retention_days: int | None
    lineage_name: str
    derived_at_column: str = "derived_at"


#: The demo lake's five derivative datasets: two name their asset in a column, three reach
#: assets through lineage only (stems -> assets; stem_embeddings -> stems -> assets;
#: gen_shards -> 1-3 stems -> assets, plus planted orphans and cycles).
DEMO_TABLES: Mapping[str, Table] = {
    "track_embeddings": Table(
        "derived/track_embeddings",
        "recommendation",
        "embedding_id",
        "asset_id",
        365,
        "track_embeddings",
    ),
    "segment_spectrograms": Table(
        "derived/segment_spectrograms",
        "moderation",
        "segment_id",
        "asset_id",
        270,
        "segment_spectrograms",
    ),
    "stems": Table("derived/stems", "generative_training", "stem_id", None, None, "stems"),
    "stem_embeddings": Table(
        "derived/stem_embeddings",
        "recommendation",
        "stem_embedding_id",
        None,
        365,
        "stem_embeddings",
    ),
    "gen_shards": Table(
        "derived/gen_shards", "generative_training", "sample_id", None, 540, "gen_shards"
    ),
}

#: The demo conf's use-case rules: generative training only under the 2026-03 terms and not
#: in the EU; the others accept both policy versions everywhere.
DEMO_RULES: Mapping[str, UseCaseConfig] = {
    "recommendation": UseCaseConfig(accepted_policy_versions=("2025-01", "2026-03")),
    "moderation": UseCaseConfig(accepted_policy_versions=("2025-01", "2026-03")),
    "generative_training": UseCaseConfig(
        accepted_policy_versions=("2026-03",), jurisdictions=JurisdictionRules(deny=("EU",))
    ),
}


def snapshot_tables(model_version: str, datasets: Iterable[str]) -> dict[str, Table]:
    """The snapshots a gate of ``model_version`` cut of ``datasets``, by registered name
    ``snapshot/<V>/<dataset>``: under ``_consentgate/snapshots/<V>/<dataset>``, with the source
    dataset's key, use case, retention and lineage."""
    return {
        f"snapshot/{model_version}/{d}": replace(
            DEMO_TABLES[d], path=f"_consentgate/snapshots/{model_version}/{d}"
        )
        for d in sorted(datasets)
    }


def read(spark: SparkSession, path: Path, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(str(path))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(UTC)


Node = tuple[str, str]


@dataclass(frozen=True)
class LakeInputs:
    """A small lake's consent inputs and lineage, collected."""

    records: list[Record]
    assets: list[Asset]
    #: (child_dataset, child_key) -> its parents (parent_dataset, parent_key).
    edges: dict[Node, list[Node]]
    #: Asset ids that derivatives point at (lineage roots, asset columns): they get a decision
    #: even when neither assets nor consent_records knows them.
    referenced: frozenset[str]


def read_inputs(spark: SparkSession, root: Path) -> LakeInputs:
    """Collect ``consent_records``, ``assets`` and ``lineage`` of the lake at ``root``."""
    records = [
        Record(
            **{
                **r.asDict(),
                "captured_at": _utc(r["captured_at"]),
                "revoked_at": _utc(r["revoked_at"]),
            }
        )
        for r in read(spark, root / "consent_records")
        .select(
            "id",
            "user_id",
            "asset_id",
            "use_case",
            "consent_status",
            "policy_version",
            "jurisdiction",
            "captured_at",
            "revoked_at",
        )
        .collect()
    ]
    assets = [
        Asset(
            r["asset_id"],
            r["owner_user_id"],
            r["jurisdiction"],
            _utc(r["created_at"]),
            _utc(r["deleted_at"]),
        )
        for r in read(spark, root / "assets").collect()
    ]
    edges: dict[Node, list[Node]] = {}
    referenced: set[str] = set()
    for e in read(spark, root / "lineage").collect():
        if None in (e["child_dataset"], e["child_key"], e["parent_dataset"], e["parent_key"]):
            continue
        edges.setdefault((e["child_dataset"], e["child_key"]), []).append(
            (e["parent_dataset"], e["parent_key"])
        )
        if e["parent_dataset"] == "assets":
            referenced.add(e["parent_key"])
    for table in DEMO_TABLES.values():
        if table.asset_column is not None:
            column = read(spark, root / table.path).select(table.asset_column)
            referenced |= {r[0] for r in column.collect() if r[0] is not None}
    return LakeInputs(records, assets, edges, frozenset(referenced))


def decisions(
    inputs: LakeInputs, use_case: str, rules: UseCaseConfig, as_of: dt.datetime
) -> dict[str, Decision]:
    """The reference model's decision per asset id for ``use_case`` at ``as_of``."""
    return {
        d.asset_id: d
        for d in consent_model.effective_consent(
            inputs.records,
            inputs.assets,
            use_cases={use_case: rules},
            as_of=as_of,
            extra_asset_ids=sorted(inputs.referenced),
        )
    }


def granted_assets(decided: Mapping[str, Decision]) -> set[str]:
    return {a for a, d in decided.items() if d.decision == "granted"}


def source_assets(edges: Mapping[Node, list[Node]], node: Node) -> set[str] | None:
    """Every asset ``node`` derives from, or None when a path is cut (a dangling edge, no
    edge at all, a cycle): DESIGN.md "lineage", fail closed for the whole row."""

    def walk(node: Node, path: tuple[Node, ...]) -> set[str] | None:
        if node[0] == "assets":
            return {node[1]}
        if node in path or node not in edges:
            return None
        out: set[str] = set()
        for parent in set(edges[node]):
            found = walk(parent, (*path, node))
            if found is None:
                return None
            out |= found
        return out

    return walk(node, ())


def row_sources(
    rows: DataFrame, table: Table, *, edges: Mapping[Node, list[Node]], as_of: dt.datetime
) -> dict[str, set[str] | None]:
    """Per key of ``rows``: its source assets, or None when it may not be kept whatever the
    consent (no path to an asset, past the table's retention, a null asset). Null keys are
    left out: they are never kept. A key on several rows is kept only if every row may be."""
    columns = [table.key, table.derived_at_column]
    if table.asset_column is not None:
        columns.append(table.asset_column)
    cutoff = (
        None if table.retention_days is None else as_of - dt.timedelta(days=table.retention_days)
    )
    out: dict[str, set[str] | None] = {}
    for row in rows.select(*dict.fromkeys(columns)).collect():
        if row[table.key] is None:
            continue
        key = str(row[table.key])
        found: set[str] | None
        if table.asset_column is not None:
            asset = row[table.asset_column]
            found = None if asset is None else {asset}
        else:
            found = source_assets(edges, (table.lineage_name, key))
        if cutoff is not None:
            derived = row[table.derived_at_column]
            if not isinstance(derived, dt.datetime) or derived.astimezone(UTC) < cutoff:
                found = None
        before = out.get(key, set())
        out[key] = None if found is None or before is None else before | found
    return out


def expected_keys(
    rows: DataFrame,
    table: Table,
    *,
    edges: Mapping[Node, list[Node]],
    granted: Collection[str],
    as_of: dt.datetime,
) -> set[str]:
    """Keys of ``rows`` that may be kept (DESIGN.md: every source asset granted for the
    table's use case, derived inside its retention)."""
    allowed = set(granted)
    return {
        k
        for k, found in row_sources(rows, table, edges=edges, as_of=as_of).items()
        if found and found <= allowed
    }


def expected_survivors(
    spark: SparkSession,
    root: Path,
    tables: Mapping[str, Table],
    rows: Mapping[str, DataFrame],
    *,
    rules: Mapping[str, UseCaseConfig],
    as_of: dt.datetime,
) -> dict[str, set[str]]:
    """Per table of the lake at ``root``: the keys of its ``rows`` that a purge must keep."""
    inputs = read_inputs(spark, root)
    allowed = {
        u: granted_assets(decisions(inputs, u, rules[u], as_of))
        for u in {t.use_case for t in tables.values()}
    }
    return {
        name: expected_keys(
            rows[name], table, edges=inputs.edges, granted=allowed[table.use_case], as_of=as_of
        )
        for name, table in tables.items()
    }


# --------------------------------------------------------------------------------------------
# Comparing in Spark


def assert_same_rows(actual: DataFrame, expected: DataFrame, what: str) -> None:
    """``actual`` and ``expected`` hold the same rows, duplicates counted.

    One Spark job when they agree: both sides tagged +1 / -1 and summed per distinct row (an
    anti-join both ways that keeps multiplicities); only counts reach the driver, and a few
    differing rows when they do not agree.
    """
    assert sorted(actual.columns) == sorted(expected.columns), (what, actual.columns)
    columns = actual.columns
    tagged = actual.select(*columns, F.lit(1).alias("_cg_n")).unionByName(
        expected.select(*columns, F.lit(-1).alias("_cg_n"))
    )
    surplus = tagged.groupBy(*columns).agg(F.sum("_cg_n").alias("_cg_surplus"))
    counts = surplus.agg(
        F.count(F.lit(1)).alias("distinct_rows"),
        F.sum(F.when(F.col("_cg_surplus") > 0, F.col("_cg_surplus"))).alias("extra"),
        F.sum(F.when(F.col("_cg_surplus") < 0, -F.col("_cg_surplus"))).alias("missing"),
    ).first()
    assert counts is not None
    if counts["extra"] or counts["missing"]:
        examples = surplus.where(F.col("_cg_surplus") != 0).limit(3).collect()
        raise AssertionError(
            f"{what}: {counts['extra'] or 0} unexpected and {counts['missing'] or 0} missing "
            f"row(s) of {counts['distinct_rows']} distinct; e.g. {examples}"
        )


def assert_kept_rows(
    actual: DataFrame, source: DataFrame, key: str, keys: Collection[str], what: str
) -> None:
    """``actual`` holds exactly ``source``'s rows whose key is in ``keys``, bit for bit."""
    spark = source.sparkSession
    wanted = spark.createDataFrame([(k,) for k in sorted(keys)], "_cg_k string")
    want = source.join(wanted, F.col(key).cast("string") == F.col("_cg_k"), "left_semi")
    assert_same_rows(actual, want, what)


# --------------------------------------------------------------------------------------------
# A published gate run, checked absolutely


#: The allowlist's columns (DESIGN.md "Effective consent" rule 8: a grant carries its consent
#: record id, policy version, captured_at and jurisdiction).
ALLOWLIST_COLUMNS = (
    "asset_id",
    "consent_record_id",
    "policy_version",
    "captured_at",
    "jurisdiction",
)
ALLOWLIST_DDL = (
    "asset_id string, consent_record_id string, policy_version string, "
    "captured_at timestamp, jurisdiction string"
)


def check_gate_run(
    spark: SparkSession,
    *,
    lake_root: Path,
    manifest_path: str | Path,
    inputs: LakeInputs,
    sources_root: Path,
    use_case: str,
    model_version: str,
    datasets: Collection[str],
    as_of: dt.datetime,
) -> dict[str, Any]:
    """Check a published gate run against the independent computation; return its figures.

    The allowlist (every leaf column), the evaluation's count per reason, and every snapshot's
    rows (bit for bit the source rows whose keys are expected) and asset count. ``inputs`` and
    the source datasets under ``sources_root`` must be the lake as the gate saw it.
    """
    manifest = json.loads(Path(manifest_path).read_text())
    assert manifest["use_case"] == use_case and manifest["model_version"] == model_version
    rules = DEMO_RULES[use_case]
    decided = decisions(inputs, use_case, rules, as_of)
    allowed = granted_assets(decided)

    # The allowlist: exactly the granted assets, each under its deciding record.
    table = manifest["allowlist"]["table"]
    allowlist = read(spark, lake_root / table["path"], int(table["version"]))
    assert allowlist.columns == list(ALLOWLIST_COLUMNS)
    leaves = [
        (a, d.consent_record_id, d.policy_version, d.captured_at, d.jurisdiction)
        for a, d in sorted(decided.items())
        if d.decision == "granted"
    ]
    assert_same_rows(
        allowlist,
        spark.createDataFrame(leaves, ALLOWLIST_DDL),
        f"{model_version}: allowlist",
    )
    assert manifest["allowlist"]["asset_count"] == len(allowed)
    reasons: dict[str, int] = {}
    for d in decided.values():
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    assert manifest["evaluation"]["reasons"] == dict(sorted(reasons.items())), model_version

    # Each snapshot: the source rows whose every source asset is granted, inside retention.
    expected_snaps = snapshot_tables(model_version, datasets)
    assert {s["name"] for s in manifest["snapshots"].values()} == set(expected_snaps)
    kept: dict[str, int] = {}
    for name, snap in expected_snaps.items():
        dataset = name.rsplit("/", 1)[1]
        recorded = manifest["snapshots"][dataset]
        assert recorded["path"] == snap.path, (name, recorded["path"])
        source = read(spark, sources_root / DEMO_TABLES[dataset].path)
        found = row_sources(source, snap, edges=inputs.edges, as_of=as_of)
        keys = {k for k, s in found.items() if s and s <= allowed}
        rows = read(spark, lake_root / snap.path, int(recorded["version"]))
        assert_kept_rows(rows, source, snap.key, keys, f"{model_version}: {name}")
        assert recorded["rows"] == len(keys), name
        assert recorded["assets"] == len(set().union(*(found[k] or () for k in keys))), name
        kept[dataset] = len(keys)
    return {"allowlist": len(allowed), "reasons": reasons, "kept": kept}
