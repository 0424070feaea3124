"""When decisions next flip (:mod:`consentgate.flips`): from file statistics, else from rows.

The unit tests give :func:`consentgate.flips.from_statistics` the ``add`` statistics of a few
files as delta-rs flattens them; the Spark tests write real Delta tables (the three-asset lake
of ``tests/lakes.py``, whose tables have no statistics, as tables consentgate creates; given
statistics on their time columns, as README advises for users' tables) and check the premise (delta-spark truncates timestamp statistics to
milliseconds), that the statistics answer without a Spark job and are never later than the
rows' answer, and that a file straddling ``T0`` is read.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession

from consentgate import flips, lake
from consentgate.consent import as_of_micros
from consentgate.lineage import DAY_MICROS
from consentgate.spark import spark_work
from tests.lakes import RECORDS_DDL, copy_small_lake

UTC = dt.UTC
A = dt.datetime(2026, 6, 1, tzinfo=UTC)
T = as_of_micros(A)
SOURCE = flips.Flips(Path("/lake/t"), "t", "c")
MS = 1000
MICROS_UTC = pa.timestamp("us", tz="UTC")


def _files(
    lows: list[int | None],
    highs: list[int | None],
    *,
    nulls: list[int | None] | None = None,
    records: list[int | None] | None = None,
) -> pa.Table:
    n = len(lows)
    return pa.table(
        {
            "path": [f"part-{i}.parquet" for i in range(n)],
            "num_records": pa.array(records or [1] * n, pa.int64()),
            "min.c": pa.array(lows, pa.int64()).cast(MICROS_UTC),
            "max.c": pa.array(highs, pa.int64()).cast(MICROS_UTC),
            "null_count.c": pa.array(nulls or [0] * n, pa.int64()),
        }
    )


def test_files_wholly_before_t0_flip_nothing() -> None:
    files = _files([T - 10 * MS, T - 5 * MS], [T - 2 * MS, T - MS])
    assert flips.from_statistics(files, SOURCE, after=T) == flips.Answer(None)


def test_files_wholly_after_t0_flip_first_at_their_least_minimum() -> None:
    files = _files([T + 7 * MS, T + 3 * MS, T - 9 * MS], [T + 9 * MS, T + 4 * MS, T - 5 * MS])
    assert flips.from_statistics(files, SOURCE, after=T) == flips.Answer(T + 3 * MS)


def test_a_file_straddling_t0_needs_its_rows() -> None:
    files = _files([T + 3 * MS, T - MS], [T + 4 * MS, T + MS])
    assert flips.from_statistics(files, SOURCE, after=T) is None


def test_a_truncated_maximum_within_a_millisecond_of_t0_may_hide_a_later_value() -> None:
    """A maximum of ``T - 999 µs`` may stand for a value up to ``T`` (not after it); one of
    ``T - 998 µs`` for one up to ``T + 1 µs``."""
    assert flips.from_statistics(_files([T - 5 * MS], [T - 999]), SOURCE, after=T) == flips.Answer(
        None
    )
    assert flips.from_statistics(_files([T - 5 * MS], [T - 998]), SOURCE, after=T) is None


def test_the_offset_moves_every_value() -> None:
    """A retained row flips ``retention + 1 µs`` after it was derived."""
    kept = flips.Flips(Path("/lake/t"), "t", "c", offset=30 * DAY_MICROS + 1)
    derived = T - 10 * DAY_MICROS
    files = _files([derived, T - 40 * DAY_MICROS], [derived + MS, T - 31 * DAY_MICROS - MS])
    answer = flips.from_statistics(files, kept, after=T)
    assert answer == flips.Answer(derived + 30 * DAY_MICROS + 1)


def test_null_values_and_missing_statistics() -> None:
    every_value_null = _files([None], [None], nulls=[4], records=[4])
    assert flips.from_statistics(every_value_null, SOURCE, after=T) == flips.Answer(None)
    not_collected = _files([None, T + MS], [None, T + MS], nulls=[None, 0])
    assert flips.from_statistics(not_collected, SOURCE, after=T) is None
    some_null = _files([T + MS], [T + 2 * MS], nulls=[3], records=[4])
    assert flips.from_statistics(some_null, SOURCE, after=T) == flips.Answer(T + MS)
    no_columns = _files([T + MS], [T + MS]).drop(["min.c", "max.c"])
    assert flips.from_statistics(no_columns, SOURCE, after=T) is None
    assert flips.from_statistics(_files([], []), SOURCE, after=T) == flips.Answer(None)


def test_dates_are_midnight_utc_and_other_types_are_read() -> None:
    day = T // DAY_MICROS
    dates = pa.table(
        {
            "path": ["p"],
            "num_records": [2],
            "min.c": pa.array([day + 1], pa.int32()).cast(pa.date32()),
            "max.c": pa.array([day + 3], pa.int32()).cast(pa.date32()),
            "null_count.c": [0],
        }
    )
    answer = flips.from_statistics(dates, SOURCE, after=T)
    assert answer == flips.Answer((day + 1) * DAY_MICROS)
    strings = dates.set_column(2, "min.c", pa.array(["2026"])).set_column(
        3, "max.c", pa.array(["2027"])
    )
    assert flips.from_statistics(strings, SOURCE, after=T) is None
    local = _files([T + MS], [T + MS]).set_column(
        2, "min.c", pa.array([T + MS], pa.int64()).cast(pa.timestamp("us"))
    )
    assert flips.from_statistics(local, SOURCE, after=T) is None  # timestamp_ntz: not ours


def _lake(pristine: Path, root: Path) -> Any:
    from consentgate.config import load_config

    return load_config(copy_small_lake(pristine, root))


#: Statistics on the time columns only (README's advice for users' tables: no ids in the log).
TIME_STATISTICS = {
    "consent_records": "captured_at,revoked_at",
    "assets": "deleted_at",
    "track_embeddings": "derived_at",
}


def _with_time_statistics(spark: SparkSession, config: Any) -> None:
    """Set the statistics columns, then rewrite each table so that its files carry them."""
    for table, columns in TIME_STATISTICS.items():
        path = (
            config.table_path(table)
            if table in ("consent_records", "assets")
            else config.dataset_path(table)
        )
        lake.set_properties(
            spark,
            path,
            {"delta.dataSkippingStatsColumns": columns},
            commit_metadata={"test": "time statistics"},
        )
        lake.write_table(lake.read_table(spark, path).localCheckpoint(), path, mode="overwrite")


def _append(spark: SparkSession, config: Any, captured: list[dt.datetime]) -> None:
    rows = [
        (f"r{9 + i}", "u1", "a1", "recommendation", "granted", "2026-03", None, at, None)
        for i, at in enumerate(captured)
    ]
    lake.write_table(
        spark.createDataFrame(rows, RECORDS_DDL).coalesce(1),  # one file
        config.table_path("consent_records"),
        mode="append",
    )


def _exact(spark: SparkSession, config: Any) -> int | None:
    """The rows' answer: every source aggregated with Spark."""
    return flips._read(spark, flips.sources(config), after=T)


def test_spark_written_statistics_answer_without_a_job_and_never_late(
    spark: SparkSession, pristine_small_lake: Path, tmp_path: Path
) -> None:
    """A record captured in the future, at a microsecond that is not a millisecond, in a file
    of its own: delta-spark records its instant truncated to the millisecond, and the answer
    from the log is that millisecond, before the exact instant and no Spark job."""
    config = _lake(pristine_small_lake, tmp_path / "lake")
    _with_time_statistics(spark, config)
    future = A + dt.timedelta(days=3, microseconds=123_456)
    _append(spark, config, [future])
    stats = lake.file_statistics(lake.open_table(config.table_path("consent_records")))
    maxima = {as_of_micros(m) for m in stats.column("max.captured_at").to_pylist()}
    assert as_of_micros(future) - 456 in maxima  # the premise: truncated to milliseconds

    with spark_work(spark, "flips") as ran:
        answer = flips.decision_flips(spark, config, as_of=A)
    assert ran.jobs == 0
    assert _exact(spark, config) == as_of_micros(future)
    assert answer == as_of_micros(future) - 456


def test_a_file_straddling_t0_is_read(
    spark: SparkSession, pristine_small_lake: Path, tmp_path: Path
) -> None:
    """One file holding a record from before ``T0`` and one from after: only its rows can
    tell, so they are read (one aggregation; delta-spark may add a job for the table's
    snapshot) and the answer is exact."""
    config = _lake(pristine_small_lake, tmp_path / "lake")
    _with_time_statistics(spark, config)
    after = A + dt.timedelta(days=2, microseconds=5)
    _append(spark, config, [A - dt.timedelta(days=1), after])
    with spark_work(spark, "flips") as ran:
        answer = flips.decision_flips(spark, config, as_of=A)
    assert ran.jobs is not None and 1 <= ran.jobs <= 2
    assert answer == as_of_micros(after) == _exact(spark, config)


def test_retained_rows_flip_a_microsecond_after_their_last_kept_day(
    spark: SparkSession, pristine_small_lake: Path, tmp_path: Path
) -> None:
    """The small lake's embeddings were derived 2026-01-01 and are kept 365 days; nothing
    else flips after ``A``."""
    config = _lake(pristine_small_lake, tmp_path / "lake")
    expected = as_of_micros(dt.datetime(2027, 1, 1, tzinfo=UTC)) + 1
    with spark_work(spark, "flips") as ran:  # tables without statistics: their rows are read
        assert flips.decision_flips(spark, config, as_of=A) == expected
    assert ran.jobs is not None and ran.jobs >= 1
    _with_time_statistics(spark, config)
    with spark_work(spark, "flips") as ran:
        assert flips.decision_flips(spark, config, as_of=A) == expected
    assert ran.jobs == 0
    assert _exact(spark, config) == expected
    late = dt.datetime(2027, 1, 2, tzinfo=UTC)
    assert flips.decision_flips(spark, config, as_of=late) is None


def test_sources_are_the_as_of_columns_and_the_retained_targets(
    pristine_small_lake: Path, tmp_path: Path
) -> None:
    config = _lake(pristine_small_lake, tmp_path / "lake")
    assert {(s.table, s.column): s.offset for s in flips.sources(config)} == {
        ("consent_records", "captured_at"): 0,
        ("consent_records", "revoked_at"): 0,
        ("assets", "deleted_at"): 0,
        ("track_embeddings", "derived_at"): 365 * DAY_MICROS + 1,
    }
