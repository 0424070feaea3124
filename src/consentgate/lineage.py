"""Lineage closure and per-row decisions for derivative datasets.

Gate keeps the rows of a derivative dataset whose every source asset is granted; purge removes
the others. Both need the same two building blocks, kept here as pure DataFrame functions:

* :func:`source_assets` — each row key's source assets, either directly through the dataset's
  ``asset_column`` or through the ``lineage`` edges table over any number of hops,
  many-to-many. Fail closed: a row is traced only if *every* lineage path from it ends at an
  asset. A missing edge, a cycle, or a path longer than ``max_hops`` makes the whole row a
  lineage problem (reason ``no_lineage``), with the node where tracing broke.
* :func:`row_decisions` — per row key, ``keep`` and the first failing reason.

:func:`with_decisions` attaches those decisions to the rows themselves.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, DateType, StringType, TimestampType

from consentgate.consent import (
    DENIAL_REASONS,
    GRANTED,
    as_of_micros,
    canonical_id,
    check_schema,
)
from consentgate.errors import SchemaError

log = logging.getLogger(__name__)

#: The columns the ``lineage`` edges table must have.
LINEAGE_SCHEMA: Final[dict[str, DataType]] = {
    "child_dataset": StringType(),
    "child_key": StringType(),
    "parent_dataset": StringType(),
    "parent_key": StringType(),
}

#: ``parent_dataset`` value that marks a root: ``parent_key`` is then an asset id.
ROOT_DATASET: Final = "assets"

#: Row reason for a row whose sources cannot be established.
NO_LINEAGE: Final = "no_lineage"
#: Row reason for a row older than its dataset's retention.
RETENTION_EXPIRED: Final = "retention_expired"
#: A day in microseconds: retention is counted in days, instants in microseconds.
DAY_MICROS: Final = 86_400_000_000

#: Row reasons in the order they are checked; the first that applies is reported.
ROW_REASONS: Final[tuple[str, ...]] = (NO_LINEAGE, *DENIAL_REASONS, RETENTION_EXPIRED)

#: Kinds of lineage problem, in the order one is picked when a row has several.
LINEAGE_PROBLEMS: Final[tuple[str, ...]] = (
    "cycle",  # a lineage path returns to a node it already passed
    "missing_edge",  # a non-asset node on the path has no parent
    "max_hops_exceeded",  # still not at an asset after max_hops edges
    "missing_asset",  # direct mode: the asset column is null
)

#: Columns of :func:`source_assets`' output.
SOURCE_COLUMNS: Final[tuple[str, ...]] = (
    "key",
    "asset_id",
    "lineage_problem",
    "problem_dataset",
    "problem_key",
)

#: Columns of :func:`row_decisions`' output.
DECISION_COLUMNS: Final[tuple[str, ...]] = ("key", "keep", "reason")

_NODE: Final = "struct<dataset:string,key:string>"


def _node(dataset: Column, key: Column) -> Column:
    return F.struct(dataset.alias("dataset"), key.alias("key")).cast(_NODE)


def require_column(df: DataFrame, column: str, *, table: str) -> DataType:
    """``column``'s type in ``df``; a :class:`SchemaError` naming ``table.column`` if it is missing."""
    for field in df.schema.fields:
        if field.name == column:
            return field.dataType
    raise SchemaError(f"{table}.{column}: column is missing")


def _problem_rows(df: DataFrame, kind: str, dataset: Column, key: Column) -> DataFrame:
    return df.select(
        "key",
        F.lit(kind).alias("lineage_problem"),
        dataset.alias("problem_dataset"),
        key.alias("problem_key"),
    )


def _assemble(pairs: DataFrame, problems: DataFrame) -> DataFrame:
    """One problem row per troubled key (and none of its asset rows), else its asset rows."""
    order = F.array_position(
        F.array(*[F.lit(p) for p in LINEAGE_PROBLEMS]).cast("array<string>"),
        F.col("lineage_problem"),
    )
    worst = (
        problems.groupBy("key")
        .agg(
            F.min(
                F.struct(
                    order.alias("order"),
                    F.col("lineage_problem").alias("lineage_problem"),
                    F.col("problem_dataset").alias("problem_dataset"),
                    F.col("problem_key").alias("problem_key"),
                )
            ).alias("p")
        )
        .select(
            "key",
            F.lit(None).cast(StringType()).alias("asset_id"),
            "p.lineage_problem",
            "p.problem_dataset",
            "p.problem_key",
        )
    )
    null = F.lit(None).cast(StringType())
    traced = (
        pairs.join(worst.select("key"), on="key", how="left_anti")
        .select(
            "key",
            "asset_id",
            null.alias("lineage_problem"),
            null.alias("problem_dataset"),
            null.alias("problem_key"),
        )
        .distinct()
    )
    return traced.unionByName(worst)


def source_assets(
    dataset_name: str,
    rows: DataFrame,
    *,
    key: str,
    asset_column: str | None,
    lineage: DataFrame,
    max_hops: int = 32,
) -> DataFrame:
    """Each row key's source assets, or the lineage problem that prevents knowing them.

    Lineage is walked as an iterative frontier expansion, one hop per iteration, so a deep or
    cyclic graph costs at most ``max_hops`` iterations (about two Spark jobs each; every hop is
    ``localCheckpoint``-ed so plans do not grow). Each frontier entry carries its path, so a
    walk that returns to a node on its own path is a cycle; the cycle is reported by its
    smallest (dataset, key) node, so every row that runs into it names the same node and
    :func:`lineage_problems` lists it once. Frontier entries are deduplicated per (row key,
    node) at every hop, which keeps diamonds (the same source reached twice) from multiplying.

    Args:
        dataset_name: The dataset's name as used in ``lineage.child_dataset``.
        rows: The dataset's rows (only ``key`` and ``asset_column`` are read).
        key: The dataset's key column; keys are compared as strings.
        asset_column: The column naming each row's asset directly; None to use lineage.
        lineage: The lineage edges table (see :data:`LINEAGE_SCHEMA`); edges with a null
            field are ignored.
        max_hops: How many edges a path may have before the row is given up on.

    Returns:
        Columns :data:`SOURCE_COLUMNS`: for a traced key one row per source asset
        (``lineage_problem`` null); for a troubled key exactly one row with ``asset_id`` null,
        ``lineage_problem`` one of :data:`LINEAGE_PROBLEMS` and the (dataset, key) node where
        tracing broke. Null row keys are left out (:func:`row_decisions` refuses them).

    Raises:
        SchemaError: when ``rows`` lacks ``key``/``asset_column`` or ``lineage`` is mistyped.
        ValueError: when ``max_hops`` is not positive.
    """
    require_column(rows, key, table=dataset_name)
    keyed = rows.select(
        F.col(key).cast(StringType()).alias("key"),
        *([asset_column] if asset_column is not None else []),
    )
    keyed = keyed.filter(F.col("key").isNotNull())
    if asset_column is not None:
        require_column(rows, asset_column, table=dataset_name)
        # Asset ids in canonical form (DESIGN rule 2), the form effective consent decides
        # under: a derivative that spells an id in upper case still finds its decision.
        pairs = keyed.select(
            "key", canonical_id(F.col(asset_column).cast(StringType())).alias("asset_id")
        )
        problems = _problem_rows(
            pairs.filter(F.col("asset_id").isNull()),
            "missing_asset",
            F.lit(dataset_name),
            F.col("key"),
        )
        return _assemble(pairs.filter(F.col("asset_id").isNotNull()), problems)

    if max_hops < 1:
        raise ValueError("max_hops must be at least 1")
    check_schema(lineage, LINEAGE_SCHEMA, table="lineage")
    edges = lineage.select(*LINEAGE_SCHEMA).dropna().distinct()

    frontier = (
        keyed.select("key")
        .distinct()
        .select(
            "key",
            _node(F.lit(dataset_name), F.col("key")).alias("node"),
            F.array(_node(F.lit(dataset_name), F.col("key"))).alias("path"),
        )
    )
    found: list[DataFrame] = []
    problems_found: list[DataFrame] = []
    exhausted = True
    for hop in range(1, max_hops + 1):
        parent = _node(F.col("parent_dataset"), F.col("parent_key"))
        step = (
            frontier.join(
                edges,
                (F.col("node.dataset") == F.col("child_dataset"))
                & (F.col("node.key") == F.col("child_key")),
                how="left",
            )
            .select(
                "key",
                "node",
                "path",
                F.when(F.col("parent_dataset").isNotNull(), parent).alias("parent"),
            )
            .withColumn(
                "kind",
                F.when(F.col("parent").isNull(), F.lit("missing_edge"))
                .when(F.col("parent.dataset") == F.lit(ROOT_DATASET), F.lit("asset"))
                .when(F.array_contains("path", F.col("parent")), F.lit("cycle"))
                .otherwise(F.lit("next")),
            )
            .localCheckpoint(eager=True)
        )
        found.append(
            step.filter(F.col("kind") == "asset").select(
                "key", canonical_id(F.col("parent.key")).alias("asset_id")
            )
        )
        problems_found.append(
            _problem_rows(
                step.filter(F.col("kind") == "missing_edge"),
                "missing_edge",
                F.col("node.dataset"),
                F.col("node.key"),
            )
        )
        # The cycle is the path from the parent's first occurrence on; name it by its
        # smallest node so that every walk into it reports the same one.
        cycle_node = F.array_min(
            F.slice(
                "path",
                F.array_position("path", F.col("parent")).cast("int"),
                F.size("path"),
            )
        )
        problems_found.append(
            _problem_rows(
                step.filter(F.col("kind") == "cycle").withColumn("cycle_node", cycle_node),
                "cycle",
                F.col("cycle_node.dataset"),
                F.col("cycle_node.key"),
            )
        )
        advancing = step.filter(F.col("kind") == "next")
        if advancing.isEmpty():
            exhausted = False
            log.debug("lineage of %s closed after %d hops", dataset_name, hop)
            break
        frontier = advancing.groupBy("key", "parent").agg(
            F.min(F.concat("path", F.array("parent"))).alias("path")
        )
        frontier = frontier.select("key", F.col("parent").alias("node"), "path")
    if exhausted:
        log.warning(
            "lineage of %s: paths longer than %d hops were given up", dataset_name, max_hops
        )
        problems_found.append(
            _problem_rows(frontier, "max_hops_exceeded", F.col("node.dataset"), F.col("node.key"))
        )

    pairs = found[0]
    for more in found[1:]:
        pairs = pairs.unionByName(more)
    problems = problems_found[0]
    for more in problems_found[1:]:
        problems = problems.unionByName(more)
    return _assemble(pairs, problems)


def lineage_problems(sources: DataFrame) -> DataFrame:
    """Each distinct lineage problem once, with how many row keys it affects.

    A cycle is reported once by its (dataset, key) node however many rows run into it.

    Returns:
        Columns ``lineage_problem, problem_dataset, problem_key, rows`` — one row per broken
        node, small enough to collect for a report.
    """
    return (
        sources.filter(F.col("lineage_problem").isNotNull())
        .groupBy("lineage_problem", "problem_dataset", "problem_key")
        .agg(F.count("*").alias("rows"))
    )


def derived_micros(rows: DataFrame, column: str, *, table: str) -> Column:
    """``column`` (a timestamp or a date) as microseconds since the epoch: what retention is
    measured from (:func:`expiry`; :mod:`consentgate.quiescence` reads when it next flips).

    Raises:
        SchemaError: ``column`` is missing or not a timestamp or date.
    """
    dtype = require_column(rows, column, table=table)
    if isinstance(dtype, TimestampType):
        return F.unix_micros(F.col(column))
    if isinstance(dtype, DateType):
        # A date is taken as midnight UTC of that day, whatever the session time zone.
        return F.unix_date(F.col(column)).cast("long") * F.lit(DAY_MICROS)
    raise SchemaError(f"{table}.{column}: expected timestamp or date, found {dtype.simpleString()}")


def _expired(rows: DataFrame, column: str, *, table: str, cutoff_micros: int) -> Column:
    micros = derived_micros(rows, column, table=table)
    # A missing derived_at cannot prove the row is inside retention: fail closed.
    return F.coalesce(micros < F.lit(cutoff_micros), F.lit(True))


def row_decisions(
    rows: DataFrame,
    sources: DataFrame,
    consent: DataFrame,
    *,
    key: str,
    use_case: str,
    retention_days: int | None,
    derived_at_column: str | None,
    as_of: datetime,
    dataset: str = "dataset",
) -> DataFrame:
    """Per row key: keep it or not, and the first reason not to.

    A row survives iff every source asset is granted for the dataset's use case and it is
    inside the dataset's retention. The reason is the first in :data:`ROW_REASONS` that
    applies: ``no_lineage`` (a lineage problem, or no sources at all), then among the denied
    source assets the consent reason that comes first in DESIGN.md's rule order (a source
    missing from ``consent`` counts as ``asset_unknown``), then ``retention_expired``
    (``derived_at`` older than ``retention_days`` before ``as_of``, or null). Gate keeps the
    ``keep`` keys, purge removes the others; both call this.

    Args:
        rows: The dataset's rows (``key`` and ``derived_at_column`` are read).
        sources: :func:`source_assets` of the same rows.
        consent: :func:`consentgate.consent.effective_consent` output covering ``use_case``.
        key: The dataset's key column.
        use_case: The dataset's use case.
        retention_days: The dataset's retention, or None for none.
        derived_at_column: The column retention is measured from (needed with retention).
        as_of: The evaluation instant (naive means UTC).
        dataset: The dataset's name, for error messages.

    Returns:
        Columns :data:`DECISION_COLUMNS`: ``key`` (string; one row per distinct key, a null
        key included and never kept), ``keep`` (boolean), ``reason`` (null when kept).

    Raises:
        SchemaError: a needed column is missing or ``derived_at`` is not a timestamp or date.
        ValueError: retention without a ``derived_at_column``.
    """
    require_column(rows, key, table=dataset)
    expired = expiry(
        rows,
        retention_days=retention_days,
        derived_at_column=derived_at_column,
        as_of=as_of,
        dataset=dataset,
    )
    per_row = rows.select(F.col(key).cast(StringType()).alias("key"), expired.alias("expired"))
    return key_decisions(per_row, sources.withColumn("use_case", F.lit(use_case)), consent)


def expiry(
    rows: DataFrame,
    *,
    retention_days: int | None,
    derived_at_column: str | None,
    as_of: datetime,
    dataset: str = "dataset",
) -> Column:
    """Whether a row of ``rows`` is past its dataset's retention at ``as_of`` (a null
    ``derived_at`` cannot prove it is inside: expired); false without retention.

    Raises:
        SchemaError: ``derived_at_column`` is missing or not a timestamp or date.
        ValueError: retention without a ``derived_at_column``.
    """
    if retention_days is None:
        return F.lit(False)
    if derived_at_column is None:
        raise ValueError(f"{dataset}: retention_days needs derived_at_column")
    cutoff = as_of_micros(as_of) - retention_days * DAY_MICROS
    return _expired(rows, derived_at_column, table=dataset, cutoff_micros=cutoff)


def key_decisions(per_row: DataFrame, sources: DataFrame, consent: DataFrame) -> DataFrame:
    """:func:`row_decisions` from its parts, for rows of one or of many datasets.

    Args:
        per_row: ``key`` (string; a null key included and never kept) and ``expired``
            (:func:`expiry`), one row per row (or already one per key).
        sources: :data:`SOURCE_COLUMNS` of the same keys, plus ``use_case``: the use case the
            key's rows serve (purge decides many datasets, of several use cases, at once; the
            keys are then unique across datasets).
        consent: Effective consent: ``asset_id, use_case, decision, reason``.

    Returns:
        :data:`DECISION_COLUMNS`, one row per distinct key.
    """
    per_key = per_row.groupBy("key").agg(F.max("expired").alias("expired"))
    reason_rank = F.array_position(
        F.array(*[F.lit(r) for r in ROW_REASONS]).cast("array<string>"), F.col("asset_reason")
    )
    verdicts = (
        sources.join(
            consent.select(
                "asset_id", "use_case", "decision", F.col("reason").alias("consent_reason")
            ),
            on=["asset_id", "use_case"],
            how="left",
        )
        .select(
            "key",
            F.when(F.col("lineage_problem").isNotNull(), F.lit(NO_LINEAGE))
            .when(F.col("decision").isNull(), F.lit("asset_unknown"))
            .when(
                F.col("decision") != F.lit(GRANTED), F.coalesce("consent_reason", F.lit("denied"))
            )
            .alias("asset_reason"),
        )
        .groupBy("key")
        .agg(
            F.min(
                F.when(
                    F.col("asset_reason").isNotNull(),
                    # Unknown reason strings sort after the known ones but still deny.
                    F.struct(
                        F.when(reason_rank > 0, reason_rank)
                        .otherwise(F.lit(len(ROW_REASONS) + 1))
                        .alias("rank"),
                        F.col("asset_reason").alias("reason"),
                    ),
                )
            ).alias("worst"),
            F.lit(True).alias("has_sources"),
        )
    )
    decided = per_key.join(verdicts, on="key", how="left").select(
        "key",
        F.when(F.col("has_sources").isNull(), F.lit(NO_LINEAGE))
        .when(F.col("worst").isNotNull(), F.col("worst.reason"))
        .when(F.col("expired"), F.lit(RETENTION_EXPIRED))
        .alias("reason"),
    )
    return decided.select("key", F.col("reason").isNull().alias("keep"), "reason")


def with_decisions(rows: DataFrame, decisions: DataFrame, *, key: str) -> DataFrame:
    """The rows with their key's ``keep`` and ``reason`` columns attached.

    Rows are matched on the key as a string, null-safely; a row whose key has no decision is
    not kept (``no_lineage``), so the join can only ever drop rows from an allowlist.

    Raises:
        ValueError: when ``rows`` already has a ``keep`` or ``reason`` column.
    """
    clash = {"keep", "reason"} & set(rows.columns)
    if clash:
        raise ValueError(f"rows already have column(s) {sorted(clash)}")
    d = decisions.select(
        F.col("key").alias("_decision_key"),
        F.col("keep").alias("_keep"),
        F.col("reason").alias("_reason"),
    )
    joined = rows.join(d, F.col(key).cast(StringType()).eqNullSafe(F.col("_decision_key")), "left")
    return joined.select(
        *[F.col(c) for c in rows.columns],
        F.coalesce(F.col("_keep"), F.lit(False)).alias("keep"),
        F.when(F.col("_keep").isNull(), F.lit(NO_LINEAGE))
        .otherwise(F.col("_reason"))
        .alias("reason"),
    )
