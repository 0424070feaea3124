"""The quiescence certificate (:mod:`consentgate.quiescence`) on real Delta tables and Spark.

Each story starts from ``tests/lakes.py``'s three-asset lake (a1 granted, a2 revoked, a3 no
attributable record; embeddings derived 2026-01-01, kept 365 days) and runs real nights:
a full night that finds nothing to remove certifies, a night the certificate covers decides
nothing, and every way the lake or the clock can move makes the next night run in full.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession

from consentgate import audit, consent, lake, logs, purge, quiescence
from consentgate.config import Config, load_config
from tests.lakes import ASSETS_DDL, RECORDS_DDL, T0, copy_small_lake

UTC = dt.UTC
A = dt.datetime(2026, 6, 1, tzinfo=UTC)
TABLE = "track_embeddings"
RAW_IDS = {"a1", "a2", "a3", "e1", "e2", "e3", "u1", "u2", "u9", "r1", "r2", "r3", "r4", "r5"}
MICRO = dt.timedelta(microseconds=1)


def _config(pristine: Path, root: Path, **conf: Any) -> Config:
    return load_config(copy_small_lake(pristine, root, conf=conf or None))


def _append_records(spark: SparkSession, config: Config, records: list[tuple[Any, ...]]) -> None:
    lake.write_table(
        spark.createDataFrame(records, RECORDS_DDL),
        config.table_path("consent_records"),
        mode="append",
    )


def _steps(caplog: pytest.LogCaptureFixture) -> list[str]:
    fields = (getattr(r, logs.RECORD_FIELDS, None) for r in caplog.records)
    return [str(f["step"]) for f in fields if f is not None]


def _night(
    spark: SparkSession, config: Config, as_of: dt.datetime, caplog: pytest.LogCaptureFixture
) -> tuple[dict[str, Any], list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="consentgate"):
        result = purge.run_purge(spark, config, as_of=as_of)
    return result, _steps(caplog)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _micros(instant: dt.datetime) -> int:
    return consent.as_of_micros(instant)


def test_a_quiet_night_is_certified_and_ends_when_a_record_takes_effect(
    spark: SparkSession,
    pristine_small_lake: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """r5 grants a1 until a scheduled revocation at A+2d; a1 is to be deleted at A+4d; r6,
    captured at A+5d, revokes it again. The night that removes certifies the lake it leaves
    (only its own commits changed it); nights before A+2d are then answered from that; the
    night at A+2d decides again and removes e1, and the certificate it writes holds until the
    deletion."""
    config = _config(pristine_small_lake, tmp_path / "lake")
    _append_records(
        spark,
        config,
        [
            ("r5", "u1", "a1", "recommendation", "granted", "2026-03", None,
             T0 + dt.timedelta(hours=1), A + dt.timedelta(days=2)),
            ("r6", "u1", "a1", "recommendation", "revoked", "2026-03", None,
             A + dt.timedelta(days=5), None),
        ],
    )  # fmt: skip
    lake.write_table(
        spark.createDataFrame([("a1", "u1", "US", T0, A + dt.timedelta(days=4))], ASSETS_DDL),
        config.table_path("assets"),
        mode="append",
    )
    path = config.resolve(config.datasets[TABLE].path)

    removing, steps = _night(spark, config, A, caplog)
    assert removing["datasets"][TABLE]["rows_deleted"] == 2 and "decide" in steps
    certificate = quiescence.load(config)  # it changed the lake only by its own commits
    assert certificate is not None and certificate["run_id"] == removing["run_id"]

    # The premise, checked by deciding again in full (a dry run never uses a certificate).
    planned = purge.run_purge(spark, config, as_of=A + dt.timedelta(hours=1), dry_run=True)
    assert planned["datasets"][TABLE]["rows_deleted"] == 0 and "unchanged_since" not in planned

    first, steps = _night(spark, config, A + dt.timedelta(hours=1), caplog)
    assert first["datasets"][TABLE]["rows_deleted"] == 0 and steps == ["quiescent", "purge"]
    assert first["unchanged_since"] == certificate["certified_at"]
    assert quiescence.load(config) == certificate
    assert certificate["as_of"] == "2026-06-01T00:00:00.000000Z"
    assert certificate["decisions_hold_until"] == _micros(A + dt.timedelta(days=2))  # r5
    assert certificate["erasure_holds_until"] is None  # window 0: everything already erased
    assert certificate["tables"][TABLE]["rows"] == 1
    assert RAW_IDS.isdisjoint(_strings(certificate))
    dry = purge.run_purge(spark, config, as_of=A + dt.timedelta(hours=2), dry_run=True)
    assert "unchanged_since" not in dry
    assert quiescence.load(config) == certificate  # a dry run neither uses nor discards it

    version = lake.table_version(path)
    events_before = len(audit.events(spark, config))
    second, steps = _night(spark, config, A + dt.timedelta(hours=2), caplog)
    assert steps == ["quiescent", "purge"], steps
    assert second["unchanged_since"] == certificate["certified_at"]
    assert second["ok"] and not second["failed"]
    table = second["datasets"][TABLE]
    assert table["rows_deleted"] == 0 and table["rows_after"] == table["rows_before"] == 1
    assert table["version_after"] == table["version_before"] == version
    assert lake.table_version(path) == version
    receipt = second["erasure"]["datasets"][TABLE]
    assert receipt["result"] == "verified" and receipt["files_removed"] == 0
    assert receipt["keys_checked"] == certificate["tables"][TABLE]["receipt"]["keys_checked"] == 2
    # One audit commit: the carried receipt and the purge entry, both saying since when.
    new = audit.events(spark, config)[events_before:]
    assert [e["kind"] for e in new] == ["erasure", "purge"]
    assert all(e["run_id"] == second["run_id"] for e in new)
    assert new[1]["payload"]["unchanged_since"] == certificate["certified_at"]
    assert new[0]["payload"]["unchanged_since"] == certificate["certified_at"]
    assert RAW_IDS.isdisjoint(_strings(new))
    assert audit.verify_chain(spark, config)["ok"]

    # A microsecond before the revocation is still covered; at it the night decides again.
    _, steps = _night(spark, config, A + dt.timedelta(days=2) - MICRO, caplog)
    assert steps == ["quiescent", "purge"], steps
    revoked, steps = _night(spark, config, A + dt.timedelta(days=2), caplog)
    assert "decide" in steps and "unchanged_since" not in revoked
    assert revoked["datasets"][TABLE]["rows_deleted"] == 1  # e1: a1 revoked at A+2d
    renewed = quiescence.load(config)
    assert renewed is not None and renewed["run_id"] == revoked["run_id"]
    _, steps = _night(spark, config, A + dt.timedelta(days=2, hours=1), caplog)
    assert steps == ["quiescent", "purge"], steps
    assert renewed["decisions_hold_until"] == _micros(A + dt.timedelta(days=4))  # a1 deleted
    _, steps = _night(spark, config, A + dt.timedelta(days=3), caplog)
    assert steps == ["quiescent", "purge"], steps


def test_retention_ends_the_certificate_a_microsecond_after_the_last_kept_day(
    spark: SparkSession,
    pristine_small_lake: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """e1 was derived 2026-01-01 and is kept 365 days: still inside at 2027-01-01T00:00:00
    (not before the cutoff), expired a microsecond later. The lake is moved before: a copy
    that keeps the files' times keeps the certificate."""
    config = _config(pristine_small_lake, tmp_path / "lake")
    _night(spark, config, A, caplog)
    _night(spark, config, A + dt.timedelta(hours=1), caplog)
    # Moved with its files' times (cp -a), the lake keeps its certificate.
    shutil.copytree(tmp_path / "lake", tmp_path / "moved")
    config = load_config(tmp_path / "moved" / "consentgate.yaml")
    last_kept = dt.datetime(2027, 1, 1, tzinfo=UTC)
    covered, steps = _night(spark, config, last_kept, caplog)
    assert steps == ["quiescent", "purge"] and covered["datasets"][TABLE]["rows_after"] == 1
    stored = quiescence.load(config)
    assert stored is not None and stored["decisions_hold_until"] == _micros(last_kept) + 1
    expired, steps = _night(spark, config, last_kept + MICRO, caplog)
    assert "decide" in steps
    assert expired["datasets"][TABLE]["rows_deleted"] == 1
    assert expired["datasets"][TABLE]["rows_after"] == 0


def test_any_change_to_the_lake_runs_the_full_purge(
    spark: SparkSession,
    pristine_small_lake: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backfill never uses the certificate but writes one; a file touched in place, a
    changed configuration and a new consent record each make the next night decide in full;
    a write while a night runs keeps it from certifying."""
    config = _config(pristine_small_lake, tmp_path / "lake")
    purge.run_backfill(spark, config, as_of=A)
    quiet = purge.run_backfill(spark, config, as_of=A + dt.timedelta(hours=1))
    assert "unchanged_since" not in quiet  # a backfill decides, whatever the certificate
    certificate = quiescence.load(config)
    assert certificate is not None and certificate["run_id"] == quiet["run_id"]

    path = config.resolve(config.datasets[TABLE].path)
    data = next(path.glob("*.parquet"))
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched, steps = _night(spark, config, A + dt.timedelta(hours=2), caplog)
    assert "decide" in steps and "unchanged_since" not in touched
    why = "an input, the configuration or the code changed"
    assert any(why in r.getMessage() for r in caplog.records)
    assert touched["datasets"][TABLE]["rows_deleted"] == 0
    _, steps = _night(spark, config, A + dt.timedelta(hours=3), caplog)
    assert steps == ["quiescent", "purge"], steps  # the full night certified the touched lake

    conf_path = tmp_path / "lake" / "consentgate.yaml"
    conf = yaml.safe_load(conf_path.read_text())
    conf["use_cases"]["recommendation"]["accepted_policy_versions"].append("2026-09")
    conf_path.write_text(yaml.safe_dump(conf, sort_keys=False))
    config = load_config(conf_path)
    changed, steps = _night(spark, config, A + dt.timedelta(hours=4), caplog)
    assert "decide" in steps and "unchanged_since" not in changed

    # A writer between the night's start and its end: the night does not certify.
    started_from = quiescence.start(config)
    _append_records(
        spark,
        config,
        [("r5", "u1", "a1", "recommendation", "revoked", "2026-03", None, A, None)],
    )
    receipts = changed["erasure"]["datasets"]
    assert (
        quiescence.certify(
            config,
            run_id="purge-test",
            as_of=A + dt.timedelta(hours=4),
            receipts=receipts,
            started_from=started_from,
            decisions_hold_until=None,
        )
        is None
    )
    revoked, steps = _night(spark, config, A + dt.timedelta(hours=5), caplog)
    assert "decide" in steps and revoked["datasets"][TABLE]["rows_deleted"] == 1

    # The configuration (or the code) differs from the night's start: not what it decided with.
    started_from = quiescence.start(config)
    assert quiescence.changed_only_by(config, started_from, run_id=revoked["run_id"])
    wider = config.erasure.model_copy(update={"window_hours": 5})
    other = config.model_copy(update={"erasure": wider})
    assert not quiescence.changed_only_by(other, started_from, run_id=revoked["run_id"])

    # Another writer appends to a purge target during a night: not the night's own commit.
    started_from = quiescence.start(config)
    spark.createDataFrame(
        [("e9", "a1", dt.datetime(2026, 1, 1))],
        "embedding_id string, asset_id string, derived_at timestamp",
    ).write.format("delta").mode("append").save(str(path))
    assert not quiescence.changed_only_by(config, started_from, run_id=revoked["run_id"])
    assert (
        quiescence.certify(
            config,
            run_id=revoked["run_id"],
            as_of=A + dt.timedelta(hours=5),
            receipts=revoked["erasure"]["datasets"],
            started_from=started_from,
            decisions_hold_until=None,
        )
        is None
    )


def test_the_erasure_window_bounds_the_certificate(
    spark: SparkSession,
    pristine_small_lake: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A night that removes rows certifies the lake it leaves (its own commits are the only
    change), and the next night is answered from that. With a one-hour window, the
    removal's files wait for VACUUM and its keys for the proof: the certificate holds until
    the first of them is due, and not after."""
    config = _config(pristine_small_lake, tmp_path / "lake", erasure={"window_hours": 1})
    before = dt.datetime.now(UTC)
    removing, steps = _night(spark, config, A, caplog)
    after = dt.datetime.now(UTC)
    assert "decide" in steps and removing["datasets"][TABLE]["rows_deleted"] == 2
    receipt = removing["erasure"]["datasets"][TABLE]
    assert receipt["attempts_pending"] == 1 and receipt["files_removed"] == 0
    certificate = quiescence.load(config)
    assert certificate is not None and certificate["run_id"] == removing["run_id"]
    assert certificate["tables"][TABLE]["rows"] == removing["datasets"][TABLE]["rows_after"] == 1
    assert certificate["tables"][TABLE]["version"] == removing["datasets"][TABLE]["version_after"]
    assert RAW_IDS.isdisjoint(_strings(certificate))
    # The premise, checked by deciding again in full (a dry run never uses a certificate).
    planned = purge.run_purge(spark, config, as_of=A + dt.timedelta(minutes=1), dry_run=True)
    assert planned["datasets"][TABLE]["rows_deleted"] == 0
    _, steps = _night(spark, config, A + dt.timedelta(minutes=1), caplog)
    assert steps == ["quiescent", "purge"], steps
    assert quiescence.load(config) == certificate
    assert certificate["erasure_holds_until"] is not None
    holds = dt.datetime.fromisoformat(certificate["erasure_holds_until"].replace("Z", "+00:00"))
    hour = dt.timedelta(hours=1)
    assert before - dt.timedelta(seconds=1) + hour <= holds <= after + hour

    _, steps = _night(spark, config, A + dt.timedelta(minutes=2), caplog)
    assert steps == ["quiescent", "purge"], steps
    late = quiescence.why_not(config, certificate, as_of=A + hour, now=holds)
    assert late is not None and "erasure window" in late
    assert quiescence.why_not(config, certificate, as_of=A + hour, now=holds - MICRO) is None
    early = quiescence.why_not(config, certificate, as_of=A - MICRO, now=holds - MICRO)
    assert early is not None and "before the certified" in early
