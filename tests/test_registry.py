"""The registry: append-only, hash-chained, and the source of the purge's snapshot datasets."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from consentgate import registry
from consentgate.config import Config, parse_config
from consentgate.errors import CheckFailed, ConsentgateError


def _config(tmp_path: Path) -> Config:
    return parse_config(
        {
            "lake_root": str(tmp_path),
            "use_cases": {"recommendation": {"accepted_policy_versions": ["v1"]}},
        },
        base_dir=tmp_path,
        check_paths=False,
    )


def _entry(config: Config, seq: int, previous: str | None, version: str) -> registry.RegistryEntry:
    snap = registry.SnapshotRecord(
        name=registry.snapshot_name(version, "gen_shards"),
        dataset="gen_shards",
        path=registry.relative_to_lake(
            config, registry.snapshot_path(config, version, "gen_shards")
        ),
        version=0,
        use_case="recommendation",
        key="sample_id",
    )
    return registry.RegistryEntry(
        seq=seq,
        run_id=f"gate-{seq}",
        use_case="recommendation",
        model_version=version,
        manifest_path=f"_consentgate/manifests/gate-{seq}/manifest.json",
        manifest_sha256=f"{seq:064x}",
        previous_manifest_sha256=previous,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        snapshots=(snap,),
    )


def test_append_chain_and_snapshot_datasets(spark: SparkSession, tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert registry.read_entries(config) == []
    assert registry.snapshot_datasets(config) == {}
    with registry.registry_lock(config):
        seq, previous = registry.next_link(config)
        registry.append_entry(spark, config, _entry(config, seq, previous, "m1"))
    with registry.registry_lock(config):
        seq, previous = registry.next_link(config)
        assert (seq, previous) == (1, f"{0:064x}")
        registry.append_entry(spark, config, _entry(config, seq, previous, "m2"))
    entries = registry.read_entries(config)
    assert [e.model_version for e in entries] == ["m1", "m2"]
    assert registry.check_chain(entries) == []
    datasets = registry.snapshot_datasets(config)
    assert set(datasets) == {"snapshot/m1/gen_shards", "snapshot/m2/gen_shards"}
    ds = datasets["snapshot/m2/gen_shards"]
    assert Path(ds.path).is_absolute()
    assert ds.path == str(config.state_dir / "snapshots" / "m2" / "gen_shards")
    assert ds.key == "sample_id" and ds.use_case == "recommendation"
    assert registry.lineage_dataset("snapshot/m2/gen_shards") == "gen_shards"
    assert registry.lineage_dataset("gen_shards") == "gen_shards"
    # A stale link (not the tail) is refused.
    with pytest.raises(CheckFailed, match="does not continue"):
        registry.append_entry(spark, config, _entry(config, 1, f"{0:064x}", "m3"))


def test_check_chain_detects_reorder_and_gaps(tmp_path: Path) -> None:
    config = _config(tmp_path)
    a = _entry(config, 0, None, "m1")
    b = _entry(config, 1, a.manifest_sha256, "m2")
    assert registry.check_chain([b, a]) == []  # order of rows is irrelevant, seq is the order
    swapped = [
        registry.RegistryEntry(**{**a.__dict__, "seq": 1}),
        registry.RegistryEntry(**{**b.__dict__, "seq": 0}),
    ]
    assert registry.check_chain(swapped)
    assert registry.check_chain([b])  # a missing first entry


def test_model_version_is_checked() -> None:
    assert registry.check_model_version("m-1.2_3") == "m-1.2_3"
    for bad in ("", "../x", "a/b", " x"):
        with pytest.raises(ConsentgateError, match="--model-version"):
            registry.check_model_version(bad)


def test_snapshot_retention_follows_a_shorter_config(tmp_path: Path) -> None:
    """A snapshot published under 365 days is purged under today's 30, never kept longer."""
    config = parse_config(
        {
            "lake_root": str(tmp_path),
            "use_cases": {"recommendation": {"accepted_policy_versions": ["v1"]}},
            "datasets": {
                "gen_shards": {
                    "path": "gen_shards",
                    "use_case": "recommendation",
                    "key": "sample_id",
                    "retention_days": 30,
                    "derived_at_column": "made_at",
                }
            },
        },
        base_dir=tmp_path,
        check_paths=False,
    )
    published = registry.SnapshotRecord(
        name=registry.snapshot_name("m1", "gen_shards"),
        dataset="gen_shards",
        path="_consentgate/snapshots/m1/gen_shards",
        version=0,
        use_case="recommendation",
        key="sample_id",
    )
    # Published without retention: the config's 30 days (and its column) apply.
    ds = published.dataset_config(config)
    assert (ds.retention_days, ds.derived_at_column) == (30, "made_at")
    # Published with a longer retention: the shorter one wins, the snapshot's column stays.
    longer = dataclasses.replace(published, retention_days=365, derived_at_column="derived_at")
    ds = longer.dataset_config(config)
    assert (ds.retention_days, ds.derived_at_column) == (30, "derived_at")
    # Published with a shorter one, or the dataset dropped from the config: the published one.
    shorter = dataclasses.replace(published, retention_days=7, derived_at_column="derived_at")
    assert shorter.dataset_config(config).retention_days == 7
    dropped = config.model_copy(update={"datasets": {}})
    assert longer.dataset_config(dropped).retention_days == 365
