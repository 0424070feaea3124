"""VACUUM runs only when a file can go, and says which files went and why (tombstoned/orphan).

The expectations come from the disk and from what the test itself did (which files it
overwrote, which file it planted), not from the module's own log reading.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from consentgate import lake, maintenance

WEEK = 168
OLD = time.time() - (WEEK + 24) * 3600  # older than the window
META = {"consentgate.operation": "consentgate.erasure", "consentgate.run": "purge-test"}


def _table(spark: SparkSession, path: Path) -> tuple[set[str], set[str]]:
    """A table written twice (the first version's files tombstoned by an overwrite).

    Returns (tombstoned files, active files), relative paths read from the disk.
    """
    lake.write_table(spark.range(6).repartition(2).withColumnRenamed("id", "k"), path)
    first = {p.relative_to(path).as_posix() for p in path.glob("*.parquet")}
    lake.write_table(spark.range(3).withColumnRenamed("id", "k"), path, mode="overwrite")
    active = {p.relative_to(path).as_posix() for p in path.glob("*.parquet")} - first
    return first, active


def test_inside_the_window_nothing_runs_and_nothing_is_committed(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    tombstoned, active = _table(spark, path)
    version = lake.table_version(path)
    result = maintenance.vacuum(spark, path, retention_hours=WEEK, commit_metadata=META)
    assert result == maintenance.VacuumResult()
    assert lake.table_version(path) == version  # no VACUUM START/END commits
    assert all((path / rel).exists() for rel in tombstoned | active)


def test_old_bytes_go_as_orphans_young_tombstones_stay(spark: SparkSession, tmp_path: Path) -> None:
    """An orphan older than the window goes; a tombstoned file whose *bytes* are old but whose
    removal is recent stays (Delta keeps it for time travel), and VACUUM still had to run."""
    path = tmp_path / "t"
    tombstoned, active = _table(spark, path)
    orphan = path / "part-99999-killed-writer.snappy.parquet"
    shutil.copy(path / sorted(active)[0], orphan)
    for file in [orphan, *(path / rel for rel in tombstoned)]:
        os.utime(file, (OLD, OLD))
    version = lake.table_version(path)
    size = orphan.stat().st_size

    result = maintenance.vacuum(spark, path, retention_hours=WEEK, commit_metadata=META)

    assert result == maintenance.VacuumResult(orphans=(orphan.name,), bytes_removed=size)
    assert not orphan.exists()
    assert all((path / rel).exists() for rel in tombstoned | active)
    # VACUUM's own commits name our run (the quiescence certificate tells ours from others')
    vacuums = [e for e in lake.history(path) if int(e["version"]) > version]
    assert {e["operation"] for e in vacuums} == {"VACUUM START", "VACUUM END"}
    assert all(e["consentgate.run"] == "purge-test" for e in vacuums)
    assert lake.table_version(path) > version  # VACUUM ran (START/END)


def test_window_zero_removes_tombstoned_files_and_names_them(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    tombstoned, active = _table(spark, path)
    sizes = sum((path / rel).stat().st_size for rel in tombstoned)
    result = maintenance.vacuum(spark, path, retention_hours=0, commit_metadata=META)
    assert set(result.tombstoned) == tombstoned and result.orphans == ()
    assert result.bytes_removed == sizes > 0
    assert not any((path / rel).exists() for rel in tombstoned)
    assert all((path / rel).exists() for rel in active)
    version = lake.table_version(path)
    assert (
        maintenance.vacuum(spark, path, retention_hours=0, commit_metadata=META)
        == maintenance.VacuumResult()
    )
    assert lake.table_version(path) == version


def test_delta_retention_check_is_off_only_inside_our_vacuum(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Issue #22 item 6: the session keeps Delta's safety check (another VACUUM run in it
    with a short retention is refused); only the erasure's own VACUUM turns it off, for
    that call."""
    from delta.tables import DeltaTable

    path = tmp_path / "t"
    tombstoned, _active = _table(spark, path)
    assert spark.conf.get(maintenance.RETENTION_CHECK_CONF, "true") == "true"
    with pytest.raises(Exception, match="retention"):
        DeltaTable.forPath(spark, str(path)).vacuum(0)
    assert all((path / rel).exists() for rel in tombstoned)
    result = maintenance.vacuum(spark, path, retention_hours=0, commit_metadata=META)
    assert set(result.tombstoned) == tombstoned
    assert spark.conf.get(maintenance.RETENTION_CHECK_CONF, "true") == "true"


def test_the_window_given_is_the_one_vacuum_applies(spark: SparkSession, tmp_path: Path) -> None:
    """A window shorter than Delta's 7-day default: an orphan older than the window goes.

    delta-spark 4 ignores a VACUUM retention other than 0 hours by default (it keeps the
    table's ``delta.deletedFileRetentionDuration``, 7 days here, and warns per table); then
    this orphan, 2 hours old, would stay. The session setting that makes VACUUM honour the
    window is the same one that keeps that WARN line off the terminal (issue #24 item 3).
    """
    path = tmp_path / "t"
    _tombstoned, active = _table(spark, path)
    orphan = path / "part-99999-killed-writer.snappy.parquet"
    shutil.copy(path / sorted(active)[0], orphan)
    two_hours_ago = time.time() - 2 * 3600
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    size = orphan.stat().st_size

    result = maintenance.vacuum(spark, path, retention_hours=1, commit_metadata=META)

    assert not orphan.exists()
    assert result == maintenance.VacuumResult(orphans=(orphan.name,), bytes_removed=size)
    assert all((path / rel).exists() for rel in active)


def test_interval_hours_reads_delta_intervals() -> None:
    assert maintenance.interval_hours("interval 30 days") == 720
    assert maintenance.interval_hours("INTERVAL 1 week 12 hours") == 180
    assert maintenance.interval_hours("90 minutes") == 1.5
    for bad in ("", "interval", "30", "interval 30 fortnights", "interval x days"):
        try:
            maintenance.interval_hours(bad)
        except ValueError as exc:
            assert repr(bad) in str(exc)
        else:
            raise AssertionError(f"{bad!r} was read as an interval")
