"""The audit log: hash chain over real Delta appends, tamper detection, no raw ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from consentgate import audit, lake
from consentgate.canonical import canonical_json, sha256_hex
from consentgate.config import Config, parse_config
from consentgate.errors import ConsentgateError, TableError


def _config(root: Path) -> Config:
    root.mkdir(parents=True, exist_ok=True)
    return parse_config(
        {"lake_root": str(root), "use_cases": {"u": {"accepted_policy_versions": ["1"]}}},
        base_dir=root,
        check_paths=False,
    )


def test_chain_appends_and_verifies(spark: SparkSession, tmp_path: Path) -> None:
    config = _config(tmp_path / "lake")
    assert audit.verify_chain(spark, config) == {
        "ok": True,
        "entries": 0,
        "head": None,
        "problems": [],
    }
    first = audit.append_event(spark, config, kind="gate", run_id="gate-1", payload={"n": 1})
    second = audit.append_event(
        spark, config, kind="purge", run_id="purge-1", payload={"datasets": {"d": {"rows": 2}}}
    )
    result = audit.verify_chain(spark, config)
    assert result["ok"], result
    assert result["entries"] == 2
    assert result["head"] == second
    entries = audit.events(spark, config)
    assert [e["seq"] for e in entries] == [0, 1]
    assert entries[0]["entry_sha256"] == first
    assert audit.events(spark, config, kind="purge")[0]["payload"] == {
        "datasets": {"d": {"rows": 2}}
    }
    table = lake.open_table(audit.audit_path(config))
    assert lake.append_only(table)


def test_entry_hash_is_jcs_of_entry_without_hash(spark: SparkSession, tmp_path: Path) -> None:
    config = _config(tmp_path / "lake")
    digest = audit.append_event(
        spark, config, kind="verify", run_id="r", payload={"b": 1, "a": "x"}
    )
    row = lake.read_table(spark, audit.audit_path(config)).collect()[0]
    body: dict[str, object] = {
        "seq": 0,
        "kind": "verify",
        "run_id": "r",
        "payload": {"a": "x", "b": 1},
        "previous_sha256": "",
    }
    # Recompute independently from the stored at string (UTC, microseconds).
    stamp = (
        lake.read_table(spark, audit.audit_path(config))
        .selectExpr("date_format(at, \"yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'\") AS s")
        .collect()[0]["s"]
    )
    body["at"] = stamp
    assert sha256_hex(canonical_json(body)) == digest
    assert json.loads(row["payload_json"]) == {"a": "x", "b": 1}


def test_tampering_is_detected(spark: SparkSession, tmp_path: Path) -> None:
    config = _config(tmp_path / "lake")
    for i in range(3):
        audit.append_event(spark, config, kind="purge", run_id=f"r{i}", payload={"i": i})
    path = audit.audit_path(config)
    # Rewrite the table's content behind the log's back: change one payload (bypassing appendOnly
    # by writing a fresh table at a new path with the same rows, then swapping the directory).
    rows = lake.read_table(spark, path)
    forged = rows.selectExpr(
        "seq",
        "at",
        "kind",
        "run_id",
        "CASE WHEN seq = 1 THEN '{\"i\":99}' ELSE payload_json END AS payload_json",
        "previous_sha256",
        "entry_sha256",
    )
    forged_path = tmp_path / "forged"
    lake.write_table(forged, forged_path)
    config_forged = _config(tmp_path / "lake2")
    (config_forged.state_dir).mkdir(parents=True)
    forged_path.rename(audit.audit_path(config_forged))
    result = audit.verify_chain(spark, config_forged)
    assert not result["ok"]
    assert any("seq 1" in p and "entry_sha256" in p for p in result["problems"])
    assert any("appendOnly" in p for p in result["problems"])


def test_dropped_entry_breaks_chain(spark: SparkSession, tmp_path: Path) -> None:
    config = _config(tmp_path / "lake")
    for i in range(3):
        audit.append_event(spark, config, kind="purge", run_id=f"r{i}", payload={"i": i})
    rows = lake.read_table(spark, audit.audit_path(config)).where("seq != 1")
    other = _config(tmp_path / "other")
    other.state_dir.mkdir(parents=True)
    lake.write_table(rows, audit.audit_path(other), configuration={"delta.appendOnly": "true"})
    result = audit.verify_chain(spark, other)
    assert not result["ok"]
    assert any(p.startswith("seq 2") for p in result["problems"])


def test_append_only_table_refuses_overwrite(spark: SparkSession, tmp_path: Path) -> None:
    config = _config(tmp_path / "lake")
    audit.append_event(spark, config, kind="gate", run_id="g", payload={})
    path = audit.audit_path(config)
    with pytest.raises(TableError, match="appendOnly"):
        lake.write_table(lake.read_table(spark, path), path, mode="overwrite")


@pytest.mark.parametrize(
    "payload",
    [
        {"asset": "3f2b8c1e-1d2a-4b7c-9e0f-123456789abc"},
        {"ids": ["x", "3F2B8C1E-1D2A-4B7C-9E0F-123456789ABC"]},
        {"3f2b8c1e-1d2a-4b7c-9e0f-123456789abc": 1},
        {"bad": object()},
    ],
)
def test_payload_with_raw_ids_is_refused(
    spark: SparkSession, tmp_path: Path, payload: dict[str, object]
) -> None:
    config = _config(tmp_path / "lake")
    with pytest.raises(ConsentgateError, match="audit payload"):
        audit.append_event(spark, config, kind="purge", run_id="r", payload=payload)
    assert not lake.is_table(audit.audit_path(config))


def test_unknown_kind_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(ConsentgateError, match="kind"):
        audit.append_event(spark, _config(tmp_path / "l"), kind="Oops!", run_id="r", payload={})
