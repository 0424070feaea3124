"""When a decision could next change with no input changing, read from Delta's file statistics.

Why: the quiescence certificate (:mod:`consentgate.quiescence`) needs the first ``as_of``
after the night's ``T0`` at which deciding again could give another answer although no byte
changed: a consent record dated in the future, a scheduled revocation, an asset's deletion
date, a kept row reaching its retention. Asked of the data, that is one Spark aggregation over
``consent_records``, ``assets`` and every retained target, on every night that removes rows.
Asked of the Delta log, it is usually free: each data file's ``add`` action carries the
minimum and maximum of these columns, and after a purge every kept row is inside its retention,
so each file lies wholly before ``T0`` (it can flip nothing) or wholly after (its minimum is its
first flip). Only a file that straddles ``T0``, or whose statistics are missing, is read, and
then only its table's column, with Spark, in one job for all of them.

Decided: the answer may be early, never late. Delta truncates timestamp statistics down to
milliseconds (PROTOCOL.md, "Per-file Statistics"), so a file's true minimum lies in
``[min, min + 999 µs]`` and its true maximum in ``[max, max + 999 µs]``: a minimum is used as
it is (at most 999 µs early), a maximum is widened by 999 µs before it may rule a file out. A
file with a deletion vector keeps the statistics of the rows it hides, which again can only
make the answer earlier or send the file to Spark. An early answer only costs a full night;
a late one would certify a night that should have decided.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType

from consentgate import lake
from consentgate.config import Config
from consentgate.consent import AS_OF_COLUMNS, as_of_micros
from consentgate.lineage import DAY_MICROS, derived_micros

#: How far below the truth a timestamp statistic may be (truncated to milliseconds).
TRUNCATION_MICROS: Final = 999


@dataclass(frozen=True)
class Flips:
    """Where a table's column flips a decision: ``at(x) = micros(x) + offset``, for every
    value ``x`` of ``column`` with ``at(x) > T0``."""

    path: Path
    table: str
    column: str
    offset: int = 0


def sources(config: Config) -> list[Flips]:
    """Every column whose values are flips: the ``as_of`` columns of consent and assets (a
    record or deletion counts from its instant, inclusively) and each retained target's
    ``derived_at`` (a row kept at ``m`` expires at ``m + retention + 1``)."""
    from consentgate.purge import target_path, targets

    out = [
        Flips(config.table_path(table), table, column)
        for table, columns in AS_OF_COLUMNS.items()
        for column in columns
    ]
    for name, dataset in targets(config).items():
        if dataset.retention_days is None or dataset.derived_at_column is None:
            continue
        out.append(
            Flips(
                target_path(config, name, dataset),
                name,
                dataset.derived_at_column,
                dataset.retention_days * DAY_MICROS + 1,
            )
        )
    return out


def decision_flips(spark: SparkSession, config: Config, *, as_of: dt.datetime) -> int | None:
    """Microseconds since the epoch of the first ``as_of`` after ``as_of`` at which a decision
    could change with no input changing (module doc), or ``None`` when none can.

    From the Delta log where the file statistics answer; the columns they do not answer are
    aggregated with Spark, all in one job (none when the statistics answer everything).
    """
    t0 = as_of_micros(as_of)
    first: list[int] = []
    unread: list[Flips] = []
    by_path: dict[Path, pa.Table] = {}
    for source in sources(config):
        if source.path not in by_path:
            by_path[source.path] = lake.file_statistics(lake.open_table(source.path))
        answer = from_statistics(by_path[source.path], source, after=t0)
        if answer is None:
            unread.append(source)
        elif answer.first is not None:
            first.append(answer.first)
    if unread:
        read = _read(spark, unread, after=t0)
        if read is not None:
            first.append(read)
    return min(first, default=None)


@dataclass(frozen=True)
class Answer:
    """What the statistics say: the first flip after ``T0`` (``None``: none in this column)."""

    first: int | None


def from_statistics(files: pa.Table, source: Flips, *, after: int) -> Answer | None:
    """The column's first flip after ``after`` from the files' ``add`` statistics, or ``None``
    when some file's statistics cannot tell (missing, or the file straddles ``after``).

    ``files`` is :func:`consentgate.lake.file_statistics` of the table.
    """
    names = files.column_names
    low, high, nulls = (f"{k}.{source.column}" for k in ("min", "max", "null_count"))
    if files.num_rows == 0:
        return Answer(None)
    if not {low, high, nulls} <= set(names):
        return None
    lows = _micros(files.column(low))
    highs = _micros(files.column(high))
    if lows is None or highs is None:
        return None
    firsts: list[int] = []
    records = files.column("num_records").to_pylist()
    null_counts = files.column(nulls).to_pylist()
    for lo, hi, count, null_count in zip(lows, highs, records, null_counts, strict=True):
        if count is not None and null_count is not None and null_count >= count:
            continue  # every value null: no instant, no flip
        if lo is None or hi is None:
            return None  # statistics not collected for this file
        if hi + TRUNCATION_MICROS + source.offset <= after:
            continue  # wholly before T0
        if lo + source.offset > after:
            firsts.append(lo + source.offset)  # wholly after: its minimum flips first
            continue
        return None  # straddles T0: only the rows can tell
    return Answer(min(firsts, default=None))


def _micros(column: pa.ChunkedArray) -> list[int | None] | None:
    """A statistics column as microseconds since the epoch (a date as its midnight UTC), or
    ``None`` for another type (Spark then reads it and names the wrong type). A timestamp
    without a time zone is Spark's ``timestamp_ntz``, which the rows' path refuses: so here."""
    kind = column.type
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        values = pc.cast(column, pa.timestamp("us", tz=kind.tz)).cast(pa.int64())
        return [None if v is None else int(v) for v in values.to_pylist()]
    if pa.types.is_date(kind):
        days = pc.cast(column, pa.date32()).cast(pa.int32())
        return [None if d is None else int(d) * DAY_MICROS for d in days.to_pylist()]
    return None


def _read(spark: SparkSession, sources: Iterable[Flips], *, after: int) -> int | None:
    """The first flip after ``after`` of ``sources``, from their rows: one Spark job."""
    parts: list[DataFrame] = []
    for source in sources:
        rows = lake.read_table(spark, source.path)
        micros = derived_micros(rows, source.column, table=source.table)
        parts.append(rows.select((micros + F.lit(source.offset)).cast(LongType()).alias("flip")))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    (row,) = union.where(F.col("flip") > F.lit(after)).agg(F.min("flip").alias("first")).collect()
    first = row["first"]
    return None if first is None else int(first)
