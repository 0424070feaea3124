"""A tiny, hand-made lake for command-line tests (the demo generator makes the big ones).

A pytest plugin of ``tests/conftest.py``: the default three-asset lake is written once per
test run (:func:`pristine_small_lake`) and each test gets its own copy (:func:`small_lake`,
:func:`copy_small_lake`). A copy of a Delta directory is a valid table (the log holds relative
paths), and the conf's ``lake_root: .`` resolves against the copy. Tests that need other rows
still call :func:`write_small_lake` with their overrides.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession

from consentgate import lake

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)

RECORDS_DDL = (
    "id string, user_id string, asset_id string, use_case string, consent_status string, "
    "policy_version string, jurisdiction string, captured_at timestamp, revoked_at timestamp"
)
ASSETS_DDL = (
    "asset_id string, owner_user_id string, jurisdiction string, created_at timestamp, "
    "deleted_at timestamp"
)
LINEAGE_DDL = "child_dataset string, child_key string, parent_dataset string, parent_key string"


def small_lake_conf() -> dict[str, Any]:
    """The small lake's config (relative paths): one embeddings table over the three assets."""
    return {
        "lake_root": ".",
        "use_cases": {"recommendation": {"accepted_policy_versions": ["2026-03"]}},
        "datasets": {
            "track_embeddings": {
                "path": "derived/track_embeddings",
                "use_case": "recommendation",
                "key": "embedding_id",
                "asset_column": "asset_id",
                "retention_days": 365,
                "derived_at_column": "derived_at",
            }
        },
        "erasure": {"window_hours": 0},
        "spark": {"master": "local[2]"},
    }


def write_small_lake(spark: SparkSession, root: Path, **overrides: Any) -> Path:
    """Three assets: a1 granted, a2 revoked, a3 never asked; one embeddings dataset."""
    assets = [
        ("a1", "u1", "US", T0, None),
        ("a2", "u2", "EU", T0, None),
        ("a3", "u3", "US", T0, None),
    ]
    records = [
        ("r1", "u1", "a1", "recommendation", "granted", "2026-03", None, T0, None),
        ("r2", "u2", "a2", "recommendation", "granted", "2026-03", None, T0, None),
        (
            "r3",
            "u2",
            "a2",
            "recommendation",
            "revoked",
            "2026-03",
            None,
            T0 + dt.timedelta(days=1),
            None,
        ),
        ("r4", "u9", "a3", "recommendation", "granted", "2026-03", None, T0, None),
    ]
    embeddings = [
        ("e1", "a1", T0),
        ("e2", "a2", T0),
        ("e3", "a3", T0),
    ]
    lake.write_table(
        spark.createDataFrame(overrides.get("records", records), RECORDS_DDL),
        root / "consent_records",
    )
    lake.write_table(
        spark.createDataFrame(overrides.get("assets", assets), ASSETS_DDL), root / "assets"
    )
    lake.write_table(spark.createDataFrame([], LINEAGE_DDL), root / "lineage")
    lake.write_table(
        spark.createDataFrame(
            embeddings, "embedding_id string, asset_id string, derived_at timestamp"
        ),
        root / "derived" / "track_embeddings",
    )
    conf = small_lake_conf()
    conf.update(overrides.get("conf", {}))
    path = root / "consentgate.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def pristine_small_lake(tmp_path_factory: pytest.TempPathFactory, jvm: None) -> Path:
    """The default three-asset lake, written once per run; never written by tests."""
    from tests.conftest import spark_session

    root = tmp_path_factory.mktemp("small-pristine") / "lake"
    write_small_lake(spark_session(), root)
    return root


def copy_small_lake(pristine: Path, root: Path, *, conf: dict[str, Any] | None = None) -> Path:
    """Copy the pristine small lake to ``root`` and return its conf path.

    ``conf`` replaces top-level keys of the conf, as ``write_small_lake(conf=...)`` does.
    """
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    path = root / "consentgate.yaml"
    if conf:
        data = yaml.safe_load(path.read_text())
        data.update(conf)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def small_lake(pristine_small_lake: Path, tmp_path: Path) -> Path:
    """This test's copy of the default three-asset lake (under ``tmp_path/lake``): its conf."""
    return copy_small_lake(pristine_small_lake, tmp_path / "lake")
