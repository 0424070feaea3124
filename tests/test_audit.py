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
        "head_seq": None,
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


def _rehash(body: dict[str, object]) -> str:
    """An entry's hash computed independently: SHA-256 of the RFC 8785 bytes (DESIGN's audit
    entry digest), with ``rfc8785`` and ``hashlib`` rather than consentgate's own helpers."""
    import hashlib

    import rfc8785

    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def test_rehashed_forgery_is_caught_by_the_link_alone(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #26 item 1: an entry whose payload is edited AND whose own hash is recomputed
    passes the per-entry check; only the next entry's ``previous_sha256`` link catches it.
    Without the link check this forgery would verify (tried: deleting the check in
    ``audit.verify_chain`` leaves ``ok`` true here). The CLI then exits 1."""
    config = _config(tmp_path / "lake")
    for i in range(3):
        audit.append_event(spark, config, kind="purge", run_id=f"r{i}", payload={"i": i})
    rows = [
        r.asDict()
        for r in lake.read_table(spark, audit.audit_path(config))
        .selectExpr(
            "seq",
            "date_format(at, \"yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'\") AS at_text",
            "at",
            "kind",
            "run_id",
            "payload_json",
            "previous_sha256",
            "entry_sha256",
        )
        .orderBy("seq")
        .collect()
    ]
    forged = dict(rows[1])
    forged["payload_json"] = json.dumps({"i": 99})
    body = {
        "seq": forged["seq"],
        "at": forged["at_text"],
        "kind": forged["kind"],
        "run_id": forged["run_id"],
        "payload": {"i": 99},
        "previous_sha256": forged["previous_sha256"],
    }
    forged["entry_sha256"] = _rehash(body)
    assert forged["entry_sha256"] != rows[1]["entry_sha256"]
    table = [forged if r["seq"] == 1 else r for r in rows]
    other = _config(tmp_path / "other")
    other.state_dir.mkdir(parents=True)
    frame = spark.createDataFrame(
        [{k: v for k, v in r.items() if k != "at_text"} for r in table],
        lake.read_table(spark, audit.audit_path(config)).schema,
    )
    lake.write_table(frame, audit.audit_path(other), configuration={"delta.appendOnly": "true"})

    result = audit.verify_chain(spark, other)
    assert not result["ok"]
    # The forged entry itself is self-consistent: no hash problem is reported for seq 1 ...
    assert not any(p.startswith("seq 1") for p in result["problems"]), result["problems"]
    # ... only the link from seq 2 to it breaks.
    assert result["problems"] == ["seq 2: previous_sha256 does not match the entry before it"]

    from tests.test_cli import run

    for table in ("consent_records", "assets", "lineage"):  # the config's paths must exist
        (tmp_path / "other" / table).mkdir()
    conf = tmp_path / "other" / "consentgate.yaml"
    conf.write_text(
        json.dumps(
            {
                "lake_root": str(tmp_path / "other"),
                "use_cases": {"u": {"accepted_policy_versions": ["1"]}},
            }
        )
    )
    code, out, _err = run("audit", "verify", "--conf", str(conf), "--json")
    assert code == 1
    assert json.loads(out)["ok"] is False


def test_append_events_writes_the_entries_one_by_one_would(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Several events in one commit: the same entries (seq, links, hashes) as one append each,
    and a bad payload among them writes none."""
    import datetime as dt

    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    events = [
        audit.Event("erasure", "r", {"dataset": n, "keys": i}, at) for i, n in enumerate("ab")
    ]
    one_by_one, batched = _config(tmp_path / "one"), _config(tmp_path / "batch")
    for config in (one_by_one, batched):
        audit.append_event(spark, config, kind="gate", run_id="g", payload={"n": 1}, at=at)
    singles = [
        audit.append_event(
            spark, one_by_one, kind=e.kind, run_id=e.run_id, payload=e.payload, at=at
        )
        for e in events
    ]
    version = lake.table_version(audit.audit_path(batched))
    assert audit.append_events(spark, batched, events) == singles
    assert lake.table_version(audit.audit_path(batched)) == version + 1
    assert audit.events(spark, batched) == audit.events(spark, one_by_one)
    assert audit.verify_chain(spark, batched)["ok"]

    bad = audit.Event("erasure", "r", {"asset": "123e4567-e89b-12d3-a456-426614174000"})
    with pytest.raises(ConsentgateError, match="raw asset/user id"):
        audit.append_events(spark, batched, [events[0], bad])
    assert lake.table_version(audit.audit_path(batched)) == version + 1
    assert audit.append_events(spark, batched, []) == []


def test_a_missing_log_fails_where_audited_runs_left_records(
    spark: SparkSession, pristine_small_lake: Path, tmp_path: Path
) -> None:
    """Issue #23 item 2: deleting the audit log of a lake that has been purged does not make
    ``verify`` say "ok, zero entries"; the problem names what shows that runs happened. The
    training summary's Spark-free reader refuses the same lake."""
    import datetime as dt
    import shutil

    from consentgate import purge
    from consentgate.config import load_config
    from consentgate.training_summary import TrainingSummaryError, read_audit
    from tests.lakes import copy_small_lake

    config = load_config(copy_small_lake(pristine_small_lake, tmp_path))
    purge.run_purge(spark, config, as_of=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    assert audit.verify_chain(spark, config)["ok"] is True
    shutil.rmtree(audit.audit_path(config))
    result = audit.verify_chain(spark, config)
    assert result["ok"] is False and result["entries"] == 0
    (problem,) = result["problems"]
    assert "audit log _consentgate/audit is missing" in problem
    assert "_consentgate/purge_keys" in problem
    with pytest.raises(TrainingSummaryError, match="audit log _consentgate/audit is missing"):
        read_audit(config.lake_root)


def test_a_truncated_or_rolled_back_log_shows_against_its_published_heads(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Issue #23 item 2 (heads): each append publishes the log's head (``heads.json``); with
    its newest commit removed the log still chains, but ends before its head. With the head
    file rolled back too, a head kept elsewhere (``--expect-head``) shows it; through the
    command line, exit 1."""
    from click.testing import CliRunner

    from consentgate.cli import main
    from consentgate.heads import Head, heads_path, read_heads

    config = _config(tmp_path / "lake")
    digests = [
        audit.append_event(spark, config, kind="gate", run_id=f"gate-{n}", payload={"n": n})
        for n in range(3)
    ]
    assert read_heads(config.lake_root)["audit"] == Head(2, digests[2])
    kept = tmp_path / "kept.json"
    kept.write_text(heads_path(config.lake_root).read_text())
    assert audit.verify_chain(spark, config)["ok"]
    log = audit.audit_path(config) / "_delta_log"
    newest = max(log.glob("*.json"))
    newest.unlink()
    newest.with_suffix(".crc").unlink(missing_ok=True)
    result = audit.verify_chain(spark, config)
    assert result["entries"] == 2 and not result["ok"]
    assert any("seq 2" in p and "newest entries were removed" in p for p in result["problems"])
    # the head file rolled back with the table: consistent, but not with the kept head
    heads_path(config.lake_root).write_text(json.dumps({"audit": {"seq": 1, "sha256": digests[1]}}))
    assert audit.verify_chain(spark, config)["ok"]
    assert not audit.verify_chain(spark, config, expect=Head(2, digests[2]))["ok"]
    for table in ("consent_records", "assets", "lineage"):  # the config's required tables
        (tmp_path / "lake" / table).mkdir()
    conf = tmp_path / "lake" / "consentgate.yaml"
    conf.write_text(
        json.dumps({"lake_root": ".", "use_cases": {"u": {"accepted_policy_versions": ["1"]}}})
    )
    runner = CliRunner()
    for expect, code in (
        ([], 0),
        (["--expect-head", str(kept)], 1),
        (["--expect-head", f"1:{digests[1]}"], 0),
    ):
        done = runner.invoke(main, ["audit", "verify", "--conf", str(conf), *expect, "--json"])
        assert done.exit_code == code, done.output
    bad = runner.invoke(main, ["audit", "verify", "--conf", str(conf), "--expect-head", "2:abc"])
    assert bad.exit_code == 2 and "--expect-head" in bad.output
