"""Backfill after a policy change, on a small demo lake, against an independent computation.

The lake is first gated (three models: generative training, recommendation, moderation) and
purged to compliance under the demo policy. Then the config changes the way an operator
would: recommendation no longer accepts the 2025-01 terms, and generative training newly
blocks BR (on this seed, some but not all of the surviving stems, and every shard, come from
BR assets). ``run_backfill`` must then remove exactly the rows that no longer comply (the
pure-Python model in ``tests/consent_model.py``, with the tables, rules and lineage walk written
out by hand in ``tests/demo_expectations.py``, decides independently), leave every other row
bit for bit, write nothing at all on a dry run, and list in ``impact`` exactly the gate runs
whose allowlists hold assets that lost consent.
The dry run and the real run share one lake copy and one independent computation (it is the
costly part of the module).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import audit, lake, purge
from consentgate.config import Config, JurisdictionRules, UseCaseConfig, load_config
from tests.airflow_fixtures import copy_lake
from tests.demo_expectations import (
    DEMO_RULES,
    DEMO_TABLES,
    LakeInputs,
    Table,
    decisions,
    expected_survivors,
    read_inputs,
    snapshot_tables,
)

pytestmark = pytest.mark.slow

#: Models gated before the policy change, by use case.
MODELS = {"generative_training": "gen-1", "recommendation": "rec-1", "moderation": "mod-1"}
#: Every table the backfill must cover (written out by hand: the five datasets, and each
#: model's snapshots of its use case's datasets).
TABLES: dict[str, Table] = {
    **DEMO_TABLES,
    **snapshot_tables("gen-1", ("gen_shards", "stems")),
    **snapshot_tables("rec-1", ("stem_embeddings", "track_embeddings")),
    **snapshot_tables("mod-1", ("segment_spectrograms",)),
}
#: The use-case rules after :func:`_change_policy`, written out by hand.
CHANGED_RULES: dict[str, UseCaseConfig] = {
    **DEMO_RULES,
    "recommendation": UseCaseConfig(accepted_policy_versions=("2026-03",)),
    "generative_training": UseCaseConfig(
        accepted_policy_versions=("2026-03",), jurisdictions=JurisdictionRules(deny=("EU", "BR"))
    ),
}


def _change_policy(conf_path: Path) -> Config:
    """Edit the conf file as an operator would, and load it (validated)."""
    conf = yaml.safe_load(conf_path.read_text())
    conf["use_cases"]["recommendation"]["accepted_policy_versions"] = ["2026-03"]
    conf["use_cases"]["generative_training"]["jurisdictions"] = {"deny": ["EU", "BR"]}
    conf_path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return load_config(conf_path)


@pytest.fixture(scope="module")
def compliant_lake(
    spark: SparkSession, pristine_lake: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A demo lake with three gate runs, purged to compliance under the demo policy.

    A copy of the run's 80-asset demo lake (``tests/airflow_fixtures.pristine_lake``, the one
    the Airflow runs use), with a zero-hour erasure window.
    """
    from consentgate.demo import DEMO_NOW
    from consentgate.gate import run_gate

    root = tmp_path_factory.mktemp("backfill") / "lake"
    conf_path = copy_lake(pristine_lake, root, conf={"erasure": {"window_hours": 0}})
    assert yaml.safe_load(conf_path.read_text())["erasure"] == {"window_hours": 0}
    config = load_config(conf_path)
    for use_case, model in MODELS.items():
        run_gate(spark, config, use_case=use_case, model_version=model, as_of=DEMO_NOW)
    purge.run_purge(spark, config, as_of=DEMO_NOW)
    return root


@pytest.fixture
def lake_copy(compliant_lake: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the compliant lake (every path in it is relative to the lake)."""
    copy = tmp_path / "lake"
    shutil.copytree(compliant_lake, copy)
    yield copy


def _granted(
    inputs: LakeInputs, use_case: str, rules: UseCaseConfig, as_of: dt.datetime
) -> dict[str, str]:
    """Independent decision per asset for ``use_case``: asset id -> reason (``granted`` too)."""
    return {a: d.reason for a, d in decisions(inputs, use_case, rules, as_of).items()}


def _tables(root: Path) -> dict[str, Path]:
    return {n: root / t.path for n, t in TABLES.items()}


def _files(root: Path) -> dict[str, int]:
    """Every file under the lake with its size: any write anywhere shows up here."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


def _expected(
    spark: SparkSession, root: Path, as_of: dt.datetime
) -> tuple[dict[str, DataFrame], dict[str, set[str]]]:
    before = {n: lake.read_table(spark, p).localCheckpoint() for n, p in _tables(root).items()}
    keep = expected_survivors(spark, root, TABLES, before, rules=CHANGED_RULES, as_of=as_of)
    return before, keep


def _expected_impact(
    spark: SparkSession, root: Path, as_of: dt.datetime
) -> dict[str, dict[str, int]]:
    """Per model: the assets granted when gated (the allowlist) that are not granted now,
    counted by their reason under the new policy."""
    inputs = read_inputs(spark, root)
    out: dict[str, dict[str, int]] = {}
    for use_case, model in MODELS.items():
        then = _granted(inputs, use_case, DEMO_RULES[use_case], as_of)
        now = _granted(inputs, use_case, CHANGED_RULES[use_case], as_of)
        lost: dict[str, int] = {}
        for asset, reason in then.items():
            if reason == "granted" and now.get(asset, "asset_unknown") != "granted":
                key = now.get(asset, "asset_unknown")
                lost[key] = lost.get(key, 0) + 1
        if lost:
            out[model] = lost
    return out


def test_dry_run_reports_then_backfill_purges_exactly_what_no_longer_complies(
    spark: SparkSession, lake_copy: Path
) -> None:
    from consentgate.demo import DEMO_NOW

    conf_path = lake_copy / "consentgate.yaml"
    config = _change_policy(conf_path)
    assert set(purge.targets(config)) == set(TABLES)  # the backfill covers exactly these
    before, keep = _expected(spark, lake_copy, DEMO_NOW)
    expected_impact = _expected_impact(spark, lake_copy, DEMO_NOW)
    # Both changes matter on this lake (else the test would prove little).
    assert {"gen-1", "rec-1"} <= set(expected_impact), expected_impact
    assert "mod-1" not in expected_impact  # moderation's policy did not change
    assert "jurisdiction_blocked" in expected_impact["gen-1"]
    assert "policy_version_not_accepted" in expected_impact["rec-1"]
    assert 0 < len(keep["stems"]) < before["stems"].count()  # the block hits some stems only
    # Snapshot rows reached through lineage are kept too (so a wrong lineage for snapshots,
    # removing them all in the fixture's purge or in the backfill, shows).
    for name in ("snapshot/gen-1/stems", "snapshot/rec-1/stem_embeddings"):
        assert keep[name], name

    # A dry run first: it reports the change and writes nothing at all.
    on_disk = _files(lake_copy)
    versions = {n: lake.table_version(p) for n, p in _tables(lake_copy).items()}
    entries = audit.verify_chain(spark, config)["entries"]
    dry = purge.run_backfill(spark, config, as_of=DEMO_NOW, dry_run=True)
    assert dry["dry_run"] is True
    assert _files(lake_copy) == on_disk  # no data file, log entry, work table or audit entry
    assert {n: lake.table_version(p) for n, p in _tables(lake_copy).items()} == versions
    assert audit.verify_chain(spark, config)["entries"] == entries
    for name, frame in before.items():
        assert dry["datasets"][name]["rows_deleted"] == frame.count() - len(keep[name]), name
    assert {r["model_version"]: r["reasons"] for r in dry["impact"]["runs"]} == expected_impact

    result = purge.run_backfill(spark, config, as_of=DEMO_NOW)

    reasons: dict[str, set[str]] = {}
    assert set(dry["datasets"]) == set(result["datasets"]) == set(TABLES)
    for name, path in _tables(lake_copy).items():
        wanted = spark.createDataFrame([(k,) for k in keep[name]], "_k string")
        survivors = before[name].join(
            wanted, F.col(TABLES[name].key).cast("string") == F.col("_k"), "left_semi"
        )
        assert_df_equality(
            lake.read_table(spark, path),
            survivors,
            ignore_row_order=True,
            ignore_nullable=True,
            allow_nan_equality=True,
        )
        stats: dict[str, Any] = result["datasets"][name]
        assert stats["rows_deleted"] == before[name].count() - len(keep[name]), name
        reasons[name] = set(stats["reasons"])
    # The compliant lake lost rows for exactly the two new reasons.
    assert set().union(*reasons.values()) == {"policy_version_not_accepted", "jurisdiction_blocked"}
    assert "policy_version_not_accepted" in reasons["track_embeddings"]
    assert "jurisdiction_blocked" in reasons["stems"]
    assert not reasons["segment_spectrograms"]  # moderation: untouched
    impact = {r["model_version"]: r["reasons"] for r in result["impact"]["runs"]}
    assert impact == expected_impact
    assert result["erasure"]["ok"]
    kinds = [e["kind"] for e in audit.events(spark, config)]
    assert kinds[-1] == "backfill"
    assert audit.verify_chain(spark, config)["ok"]
    assert not purge.run_dir(config, result["run_id"]).exists()

    # Idempotent: the same backfill again commits nothing.
    versions = {n: lake.table_version(p) for n, p in _tables(lake_copy).items()}
    again = purge.run_backfill(spark, config, as_of=DEMO_NOW)
    assert all(r["rows_deleted"] == 0 for r in again["datasets"].values())
    assert {n: lake.table_version(p) for n, p in _tables(lake_copy).items()} == versions
