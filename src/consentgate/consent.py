"""Effective consent per asset and use case, as pure Spark transformations.

This module answers the one question every job asks — may this asset be used for this
purpose at instant ``T``? — exactly as DESIGN.md ("Effective consent") specifies. Everything
here is a DataFrame -> DataFrame function: no reads, no writes, no actions, no Python UDFs, so
gate, purge, backfill and ``evaluate`` can all compose it and Spark can plan it as a whole.

Decisions the contract leaves open, decided here (fail closed throughout):

* Timestamps are instants. ``as_of`` is turned into epoch microseconds in Python and compared
  as a ``timestamp_micros`` literal, so the session time zone never changes a decision. A
  naive ``as_of`` is taken to be UTC.
* Duplicate ids are checked over the whole ``consent_records`` table (all use cases, all
  instants): one id with two different contents makes every row of that id malformed. A null
  ``id`` is malformed too: a grant must name the record it rests on.
* Two ``assets`` rows for one ``asset_id`` are merged: the earliest ``deleted_at`` wins, and
  the owner (or jurisdiction) is kept only when all rows agree, else it is unknown, so nobody's
  record can be attributed (or the jurisdiction is unknown). ``created_at`` is not consulted.
* Ties beyond the contract's order (two clean grants at the same instant) are broken towards
  the record whose own outcome is most restrictive — policy version not accepted, then
  jurisdiction unknown, then blocked — then by the largest id, so a tie never grants when one
  of the tied records would not.
* On a denied row the decisive record's id, policy version, captured_at and jurisdiction are
  still filled (for explanations); they are null when rule 1 or 3 decided. ``jurisdiction`` is
  the record's jurisdiction, else the asset's.

Canonical values (rule 2), decided here:

* "Surrounding whitespace" is every character Python's ``str.isspace`` accepts
  (:data:`WHITESPACE`: ASCII blanks, NBSP, the Unicode spaces and line separators), not only
  the ASCII space Spark's ``trim`` removes. Case is folded for ASCII letters only (the
  vocabularies — statuses, use-case keys, jurisdiction codes, hex UUIDs — are ASCII), so the
  result never depends on the JVM's locale.
* Canonical forms: record ``id``, ``user_id`` and ``asset_id`` and the assets table's
  ``asset_id`` and ``owner_user_id`` are ids (lowercase: UUIDs compare case-insensitively);
  ``use_case`` and ``consent_status`` lowercase; ``jurisdiction`` (record and asset) uppercase;
  ``policy_version`` is only trimmed (case is part of a version, compared exactly with the
  config's, so ``V1`` is simply not accepted). After trimming, an empty string is null.
* A value is *non-canonical* when it is not null and differs from its canonical spelling, i.e.
  it needed trimming or case folding. ``""`` is just null (canonical); ``"  "`` is a
  non-canonical null. Matching, attribution, the duplicate-id check (content is compared in
  canonical form) and the rules all use canonical values.
* "May restrict but never grant" is applied at the very end: a candidate that passes rules 5-7
  but relies on a non-canonical value is ``malformed_record`` instead of ``granted``. It relies
  on every field of its own record, on the assets table's ``asset_id``/``owner_user_id`` of its
  asset (any row of it; the record is attributed through them) and, when the use case has
  jurisdiction rules and the record has no jurisdiction, on the asset's jurisdiction. A
  non-canonical value that fails earlier keeps its natural reason: `` Revoked`` revokes,
  ``Denied`` denies, ``eu`` is ``jurisdiction_blocked`` under ``deny: [EU]``, and ``V1 `` that
  is not accepted is ``policy_version_not_accepted``. The tie-break rank follows the outcome, so
  a non-canonical copy of a clean grant at the same instant wins the tie and denies.
* Outputs carry canonical values: ``asset_id`` (so an asset written ``A1`` in one table and
  ``a1`` in another is one row, ``a1``), ``consent_record_id``, ``policy_version`` and
  ``jurisdiction``. A granted row rests only on canonical values, so its fields are exactly as
  stored. Callers joining other tables to ``asset_id`` must canonicalise their side too (see
  :func:`canonical_id`); an id they leave non-canonical finds no decision, which denies.
* Config values are compared as written (a use-case key, accepted version or allow-listed code
  that is not canonical matches nothing, so it can only deny), except deny-list codes, which
  are canonicalised: a deny entry restricts whatever its spelling.
* A jurisdiction must also *read as a code*: once canonical, the whole value matches the use
  case's ``jurisdictions.pattern`` (default :data:`consentgate.config.JURISDICTION_PATTERN`:
  ISO 3166-1 alpha-2, optionally ``-`` and an ISO 3166-2 subdivision). One that does not
  (``EU\u200b``, ``E U``, ``EU.``: nothing to trim, so canonical, yet not a code) counts as
  unknown, and under the use case's rules the decision is ``jurisdiction_unknown``. A record's
  unreadable code is not replaced by its asset's: the record said something we cannot read.
  Without rules the jurisdiction is not consulted (issue #23 item 6).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import or_
from typing import Final, Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    LongType,
    StringType,
    TimestampType,
)

from consentgate.config import UseCaseConfig
from consentgate.errors import SchemaError

#: The columns ``consent_records`` must have (extra columns are allowed and ignored).
CONSENT_RECORDS_SCHEMA: Final[dict[str, DataType]] = {
    "id": StringType(),
    "user_id": StringType(),
    "asset_id": StringType(),
    "use_case": StringType(),
    "consent_status": StringType(),
    "policy_version": StringType(),
    "jurisdiction": StringType(),
    "captured_at": TimestampType(),
    "revoked_at": TimestampType(),
}

#: The columns ``assets`` must have (extra columns are allowed and ignored).
ASSETS_SCHEMA: Final[dict[str, DataType]] = {
    "asset_id": StringType(),
    "owner_user_id": StringType(),
    "jurisdiction": StringType(),
    "created_at": TimestampType(),
    "deleted_at": TimestampType(),
}

#: The column an ``extra_asset_ids`` frame must have.
ASSET_IDS_SCHEMA: Final[dict[str, DataType]] = {"asset_id": StringType()}

#: Canonical status values; anything else (after canonicalisation) or null is malformed.
STATUSES: Final[tuple[str, ...]] = ("granted", "denied", "revoked")

#: What "surrounding whitespace" means (DESIGN.md rule 2): exactly the characters for which
#: Python's ``str.isspace`` is true, so ``str.strip()`` is the same trim.
WHITESPACE: Final[str] = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_WHITESPACE_CLASS: Final[str] = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]"
#: A Java regex for leading or trailing whitespace (``\A``/``\z``: the very ends, whatever the
#: line terminators).
_SURROUNDING_WHITESPACE: Final[str] = rf"\A{_WHITESPACE_CLASS}+|{_WHITESPACE_CLASS}+\z"

#: How a value's case is canonicalised: ids, use cases and statuses lowercase, jurisdiction
#: codes uppercase, policy versions as written.
Case = Literal["lower", "upper", "keep"]

#: Canonical case of every ``consent_records`` value rule 2 canonicalises.
RECORD_CASES: Final[dict[str, Case]] = {
    "id": "lower",
    "user_id": "lower",
    "asset_id": "lower",
    "use_case": "lower",
    "consent_status": "lower",
    "policy_version": "keep",
    "jurisdiction": "upper",
}

#: Canonical case of every ``assets`` value rule 2 canonicalises.
ASSET_CASES: Final[dict[str, Case]] = {
    "asset_id": "lower",
    "owner_user_id": "lower",
    "jurisdiction": "upper",
}

GRANTED: Final = "granted"
DENIED: Final = "denied"

#: Every denial reason in the contract's rule order; the first that fires is reported.
DENIAL_REASONS: Final[tuple[str, ...]] = (
    "asset_unknown",
    "asset_deleted",
    "no_consent_record",
    "malformed_record",
    "revoked",
    "denied",
    "policy_version_not_accepted",
    "jurisdiction_unknown",
    "jurisdiction_blocked",
)

#: All reasons effective consent can give, in rule order.
REASONS: Final[tuple[str, ...]] = (*DENIAL_REASONS, GRANTED)

#: A single record's own outcome, from most to least restrictive. The position in this tuple
#: (counted from the end, 1-based) is the tie-break rank: revoked > malformed > denied, and
#: among clean grants the one that would fail a later rule wins.
_RESTRICTIVENESS: Final[tuple[str, ...]] = (
    "revoked",
    "malformed_record",
    "denied",
    "policy_version_not_accepted",
    "jurisdiction_unknown",
    "jurisdiction_blocked",
    GRANTED,
)

#: Tie-break rank of a record's own outcome: larger is more restrictive.
_RANK: Final[dict[str, int]] = {
    name: position for position, name in enumerate(reversed(_RESTRICTIVENESS), start=1)
}

#: Why a record was ignored (never attributed to an asset's owner), in the order checked.
IGNORED_REASONS: Final[tuple[str, ...]] = (
    "unknown_use_case",
    "asset_unknown",
    "missing_captured_at",
    "captured_after_as_of",
    "missing_user_id",
    "not_owner",
)

#: Schema of :func:`effective_consent`'s output.
EFFECTIVE_CONSENT_COLUMNS: Final[tuple[str, ...]] = (
    "asset_id",
    "use_case",
    "decision",
    "reason",
    "consent_record_id",
    "policy_version",
    "captured_at",
    "jurisdiction",
)


def check_schema(df: DataFrame, expected: Mapping[str, DataType], *, table: str) -> None:
    """Refuse a table that lacks a needed column or has it with another type.

    Reading a timestamp stored as a string, or a missing ``user_id`` read as null, would
    silently turn into wrong decisions; refusing up front turns it into exit status 2 with a
    message an operator can act on. Extra columns are fine.

    Args:
        df: The table as read.
        expected: Column name -> Spark type the caller needs.
        table: The table's name, used in the error message.

    Raises:
        SchemaError: naming ``table.column`` and the expected and found types.
    """
    actual = {field.name: field.dataType for field in df.schema.fields}
    for column, dtype in expected.items():
        if column not in actual:
            raise SchemaError(
                f"{table}.{column}: column is missing (expected {dtype.simpleString()})"
            )
        if actual[column] != dtype:
            raise SchemaError(
                f"{table}.{column}: expected {dtype.simpleString()}, "
                f"found {actual[column].simpleString()}"
            )


#: Every column a decision compares with ``T``, by input table: a record counts from its
#: ``captured_at``, a revocation from ``revoked_at``, an asset is deleted from ``deleted_at``
#: (each inclusive). :mod:`consentgate.quiescence` reads from them when a decision can change
#: with no input changing; a new comparison with ``T`` must be listed here.
AS_OF_COLUMNS: Final[Mapping[Literal["consent_records", "assets"], tuple[str, ...]]] = {
    "consent_records": ("captured_at", "revoked_at"),
    "assets": ("deleted_at",),
}


def as_of_micros(as_of: datetime) -> int:
    """Microseconds since the Unix epoch of ``as_of`` (naive means UTC), computed exactly.

    Exact integer arithmetic rather than ``timestamp()`` floats, so an instant a microsecond
    before ``T`` is never rounded onto it.
    """
    instant = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def instant_literal(as_of: datetime) -> Column:
    """``as_of`` as a Spark timestamp literal that does not depend on the session time zone."""
    return F.timestamp_micros(F.lit(as_of_micros(as_of)))


_TO_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TO_UPPER: Final = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def canonical_text(value: str | None, case: Case) -> str | None:
    """Rule 2 in Python: trim :data:`WHITESPACE`, fold ASCII case, empty string -> None."""
    if value is None:
        return None
    spelled = value.strip(WHITESPACE)
    if case == "lower":
        spelled = spelled.translate(_TO_LOWER)
    elif case == "upper":
        spelled = spelled.translate(_TO_UPPER)
    return spelled or None


def _spelled(value: Column, case: Case) -> Column:
    """``value`` trimmed and case-folded (ASCII), before the empty string becomes null."""
    trimmed = F.regexp_replace(value, _SURROUNDING_WHITESPACE, "")
    if case == "lower":
        return F.translate(trimmed, string.ascii_uppercase, string.ascii_lowercase)
    if case == "upper":
        return F.translate(trimmed, string.ascii_lowercase, string.ascii_uppercase)
    return trimmed


def _canonical(value: Column, case: Case) -> tuple[Column, Column]:
    """``(canonical value, non-canonical flag)`` of a string column (rule 2).

    The flag is true when the value is not null and needed trimming or case folding; it is
    never null.
    """
    spelled = _spelled(value, case)
    return (
        F.when(spelled != F.lit(""), spelled),
        F.coalesce(value != spelled, F.lit(False)),
    )


def canonical_id(value: Column) -> Column:
    """An id column in canonical form (trimmed, ASCII-lowercased, empty -> null), the form
    :func:`effective_consent` outputs ``asset_id`` in, for callers that join to it."""
    return _canonical(value, "lower")[0]


def _canonical_records(records: DataFrame) -> DataFrame:
    """The records with every :data:`RECORD_CASES` column canonical, plus ``noncanonical``
    (any of them was not). Extra columns are dropped."""
    canonical = {name: _canonical(F.col(name), case) for name, case in RECORD_CASES.items()}
    return records.select(
        *[value.alias(name) for name, (value, _) in canonical.items()],
        "captured_at",
        "revoked_at",
        reduce(or_, [flag for _, flag in canonical.values()]).alias("noncanonical"),
    )


def _canonical_assets(assets: DataFrame) -> DataFrame:
    """The assets with every :data:`ASSET_CASES` column canonical, plus ``ids_noncanonical``
    (``asset_id`` or ``owner_user_id`` was not) and ``jurisdiction_noncanonical``."""
    asset_id, asset_id_flag = _canonical(F.col("asset_id"), ASSET_CASES["asset_id"])
    owner, owner_flag = _canonical(F.col("owner_user_id"), ASSET_CASES["owner_user_id"])
    jurisdiction, jurisdiction_flag = _canonical(F.col("jurisdiction"), ASSET_CASES["jurisdiction"])
    return assets.select(
        asset_id.alias("asset_id"),
        owner.alias("owner_user_id"),
        jurisdiction.alias("jurisdiction"),
        "deleted_at",
        (asset_id_flag | owner_flag).alias("ids_noncanonical"),
        jurisdiction_flag.alias("jurisdiction_noncanonical"),
    )


def _string_array(values: Iterable[str]) -> Column:
    return F.array(*[F.lit(v) for v in values]).cast("array<string>")


def _by_use_case(use_case: Column, use_cases: Mapping[str, Column], default: Column) -> Column:
    """A CASE expression over the configured use cases (a handful, so no join is needed)."""
    expr = default
    for name, value in sorted(use_cases.items(), reverse=True):
        expr = F.when(use_case == F.lit(name), value).otherwise(expr)
    return expr


def _policy_accepted(
    use_case: Column, policy_version: Column, use_cases: Mapping[str, UseCaseConfig]
) -> Column:
    return F.coalesce(
        _by_use_case(
            use_case,
            {
                name: policy_version.isin(list(cfg.accepted_policy_versions))
                for name, cfg in use_cases.items()
            },
            F.lit(False),
        ),
        F.lit(False),
    )


def _has_jurisdiction_rules(use_case: Column, use_cases: Mapping[str, UseCaseConfig]) -> Column:
    return _by_use_case(
        use_case,
        {name: F.lit(cfg.jurisdictions is not None) for name, cfg in use_cases.items()},
        F.lit(False),
    )


def _jurisdiction_unreadable(
    use_case: Column, jurisdiction: Column, use_cases: Mapping[str, UseCaseConfig]
) -> Column:
    """Whether a non-null canonical jurisdiction fails ``use_case``'s code syntax
    (:attr:`JurisdictionRules.pattern`, matched whole); false when it has no rules."""
    conditions: dict[str, Column] = {}
    for name, cfg in use_cases.items():
        rules = cfg.jurisdictions
        # ^(?:p)\z: the whole value (Java's $ would also match before a final line break).
        conditions[name] = (
            F.lit(False) if rules is None else ~jurisdiction.rlike(f"^(?:{rules.pattern})\\z")
        )
    return F.coalesce(_by_use_case(use_case, conditions, F.lit(False)), F.lit(True))


def _jurisdiction_allowed(
    use_case: Column, jurisdiction: Column, use_cases: Mapping[str, UseCaseConfig]
) -> Column:
    """Whether a non-null jurisdiction passes ``use_case``'s rules (true when it has none)."""
    conditions: dict[str, Column] = {}
    for name, cfg in use_cases.items():
        rules = cfg.jurisdictions
        if rules is None:
            conditions[name] = F.lit(True)
        elif rules.allow is not None:
            conditions[name] = jurisdiction.isin(list(rules.allow))
        else:
            # Deny entries are canonicalised: whatever their spelling, they may restrict.
            deny = {canonical_text(code, "upper") for code in rules.deny or ()}
            conditions[name] = ~jurisdiction.isin(sorted(c for c in deny if c is not None))
    return F.coalesce(_by_use_case(use_case, conditions, F.lit(False)), F.lit(False))


def _asset_info(assets: DataFrame, *others: DataFrame) -> DataFrame:
    """One row per asset id seen in ``assets`` or any of ``others`` (frames of ``asset_id``).

    ``assets`` is :func:`_canonical_assets` output and ``others`` hold canonical ids. A single
    aggregation (one shuffle on ``asset_id``) both merges duplicate asset rows and builds the
    universe of ids the output must cover. ``ids_noncanonical`` and
    ``asset_jurisdiction_noncanonical`` are true when any assets row of the id had that value
    non-canonical (false for ids only in ``others``).
    """
    null = F.lit(None).cast(StringType())
    known = assets.select(
        "asset_id",
        "owner_user_id",
        "jurisdiction",
        "deleted_at",
        "ids_noncanonical",
        "jurisdiction_noncanonical",
        F.lit(1).alias("_asset_row"),
    )
    union = known
    for other in others:
        union = union.unionByName(
            other.select(
                "asset_id",
                null.alias("owner_user_id"),
                null.alias("jurisdiction"),
                F.lit(None).cast(TimestampType()).alias("deleted_at"),
                F.lit(False).alias("ids_noncanonical"),
                F.lit(False).alias("jurisdiction_noncanonical"),
                F.lit(0).alias("_asset_row"),
            )
        )

    def agreed(column: str) -> Column:
        # Kept only when every assets row has it and all agree; otherwise unknown (null).
        return F.when(
            (F.count(column) == F.sum("_asset_row")) & (F.min(column) == F.max(column)),
            F.min(column),
        )

    return (
        union.filter(F.col("asset_id").isNotNull())
        .groupBy("asset_id")
        .agg(
            (F.max("_asset_row") == 1).alias("in_assets"),
            agreed("owner_user_id").alias("owner_user_id"),
            agreed("jurisdiction").alias("asset_jurisdiction"),
            F.min("deleted_at").alias("deleted_at"),
            F.max("ids_noncanonical").alias("asset_ids_noncanonical"),
            F.max("jurisdiction_noncanonical").alias("asset_jurisdiction_noncanonical"),
        )
    )


def _with_malformed(records: DataFrame) -> DataFrame:
    """Add ``malformed``: bad status, null policy version or id, revoked before captured, or
    an id shared with a row of different content (checked over the whole table). ``records``
    is :func:`_canonical_records` output, so ids and content are compared in canonical form."""
    content = F.struct(*[c for c in CONSENT_RECORDS_SCHEMA if c != "id"])
    by_id = Window.partitionBy("id")
    conflicting = ~F.min(content).over(by_id).eqNullSafe(F.max(content).over(by_id))
    bad_status = F.coalesce(~F.col("consent_status").isin(list(STATUSES)), F.lit(True))
    revoked_before_captured = F.coalesce(F.col("revoked_at") < F.col("captured_at"), F.lit(False))
    return records.withColumn(
        "malformed",
        F.col("id").isNull()
        | bad_status
        | F.col("policy_version").isNull()
        | revoked_before_captured
        | conflicting,
    )


def _check_inputs(records: DataFrame, assets: DataFrame, extra: DataFrame | None) -> None:
    check_schema(records, CONSENT_RECORDS_SCHEMA, table="consent_records")
    check_schema(assets, ASSETS_SCHEMA, table="assets")
    if extra is not None:
        check_schema(extra, ASSET_IDS_SCHEMA, table="extra_asset_ids")


def _reason_of_rank(rank: Column) -> Column:
    return F.element_at(_string_array(reversed(_RESTRICTIVENESS)), rank.cast("int"))


def effective_consent(
    records: DataFrame,
    assets: DataFrame,
    *,
    use_cases: Mapping[str, UseCaseConfig],
    as_of: datetime,
    extra_asset_ids: DataFrame | None = None,
) -> DataFrame:
    """Decide, for every asset id and every configured use case, whether consent holds at T.

    The contract's rules are applied in order and the first that fires is the reason, so an
    operator (and a creator) can see exactly why an asset was excluded. All use cases are
    evaluated together in a fixed number of shuffles (one on record id for the duplicate-id
    check, one on asset id to build the asset universe, one to bring records to their asset);
    the latest-record choice and the final join reuse the asset-id partitioning.

    Args:
        records: The ``consent_records`` table (see :data:`CONSENT_RECORDS_SCHEMA`).
        assets: The ``assets`` table (see :data:`ASSETS_SCHEMA`).
        use_cases: The configured use cases; records for any other use case are ignored.
        as_of: The evaluation instant ``T`` (naive means UTC).
        extra_asset_ids: Further asset ids that must get a decision, e.g. those referenced by
            lineage, so that an id known only to a derivative still gets ``asset_unknown``.

    Returns:
        One row per (asset id, use case) for every asset id in ``assets``,
        ``consent_records`` or ``extra_asset_ids`` that is not null in canonical form (rule 2:
        ``asset_id`` is output trimmed and lowercased), with columns ``asset_id``, ``use_case``,
        ``decision`` (``granted``/``denied``), ``reason`` (one of :data:`REASONS`),
        ``consent_record_id``, ``policy_version``, ``captured_at`` and ``jurisdiction``.

    Raises:
        SchemaError: when an input lacks a column or has it with another type.
        ValueError: when no use case is configured.
    """
    _check_inputs(records, assets, extra_asset_ids)
    if not use_cases:
        raise ValueError("effective_consent needs at least one use case")
    names = sorted(use_cases)
    t = instant_literal(as_of)

    canonical_records = _canonical_records(records)
    others = [canonical_records.select("asset_id")]
    if extra_asset_ids is not None:
        others.append(extra_asset_ids.select(canonical_id(F.col("asset_id")).alias("asset_id")))
    universe = _asset_info(_canonical_assets(assets), *others)

    effective_jurisdiction = F.coalesce(F.col("jurisdiction"), F.col("asset_jurisdiction"))
    has_rules = _has_jurisdiction_rules(F.col("use_case"), use_cases)
    # Rule 2's "never grant": the values a grant would rest on, any of them non-canonical
    # (the record's own fields, the asset's id and owner it is attributed through, the asset's
    # jurisdiction when rule 7 consults it). Unknown is taken as non-canonical (fail closed).
    relies_on_noncanonical = F.coalesce(
        F.col("noncanonical")
        | F.col("asset_ids_noncanonical")
        | (has_rules & F.col("jurisdiction").isNull() & F.col("asset_jurisdiction_noncanonical")),
        F.lit(True),
    )
    # Each candidate's own outcome, as its restrictiveness rank (see _RESTRICTIVENESS).
    rank = (
        F.when(F.col("malformed"), F.lit(_RANK["malformed_record"]))
        .when(
            (F.col("consent_status") == F.lit("revoked"))
            | F.coalesce(F.col("revoked_at") <= t, F.lit(False)),
            F.lit(_RANK["revoked"]),
        )
        .when(F.col("consent_status") == F.lit("denied"), F.lit(_RANK["denied"]))
        .when(
            ~_policy_accepted(F.col("use_case"), F.col("policy_version"), use_cases),
            F.lit(_RANK["policy_version_not_accepted"]),
        )
        .when(
            has_rules
            & (
                effective_jurisdiction.isNull()
                | _jurisdiction_unreadable(F.col("use_case"), effective_jurisdiction, use_cases)
            ),
            F.lit(_RANK["jurisdiction_unknown"]),
        )
        .when(
            ~_jurisdiction_allowed(F.col("use_case"), effective_jurisdiction, use_cases),
            F.lit(_RANK["jurisdiction_blocked"]),
        )
        .when(relies_on_noncanonical, F.lit(_RANK["malformed_record"]))
        .otherwise(F.lit(_RANK[GRANTED]))
    )
    # Attribution is checked inside the aggregate, not as a join condition, so the optimizer
    # cannot turn user_id = owner_user_id into a join key and add a shuffle on it.
    attributable = F.col("user_id").isNotNull() & F.coalesce(
        F.col("user_id") == F.col("owner_user_id"), F.lit(False)
    )
    candidates = (
        _with_malformed(canonical_records)
        .filter(F.col("use_case").isin(names))
        .filter(F.col("captured_at").isNotNull() & (F.col("captured_at") <= t))
        .select(
            "asset_id",
            "use_case",
            "id",
            "user_id",
            "consent_status",
            "policy_version",
            "jurisdiction",
            "captured_at",
            "revoked_at",
            "malformed",
            "noncanonical",
        )
    )
    # Each asset beside its candidates, joined on asset_id alone: the universe is already
    # partitioned by asset_id, so only the records move, and the per-asset aggregate below
    # needs no further shuffle. The use cases are unrolled into one aggregate column each and
    # exploded afterwards, so adding a use case adds expressions, never a shuffle.
    joined = universe.join(candidates, on="asset_id", how="left").withColumn(
        "candidate",
        # max(struct) is deterministic: latest first, then most restrictive, then the remaining
        # fields as a total order. Rows that are not attributable are null, which max skips.
        F.when(
            attributable,
            F.struct(
                F.col("captured_at").alias("captured_at"),
                rank.alias("rank"),
                F.col("id").alias("id"),
                F.col("policy_version").alias("policy_version"),
                effective_jurisdiction.alias("jurisdiction"),
            ),
        ),
    )
    per_asset = joined.groupBy("asset_id", "in_assets", "asset_jurisdiction", "deleted_at").agg(
        *[
            F.max(F.when(F.col("use_case") == F.lit(name), F.col("candidate"))).alias(f"_best{i}")
            for i, name in enumerate(names)
        ]
    )
    decided = per_asset.select(
        "asset_id",
        "in_assets",
        "asset_jurisdiction",
        "deleted_at",
        F.inline(
            F.array(
                *[
                    F.struct(F.lit(name).alias("use_case"), F.col(f"_best{i}").alias("best"))
                    for i, name in enumerate(names)
                ]
            )
        ),
    )
    reason = (
        F.when(~F.col("in_assets"), F.lit("asset_unknown"))
        .when(
            F.coalesce(F.col("deleted_at") <= t, F.lit(False)),
            F.lit("asset_deleted"),
        )
        .when(F.col("best").isNull(), F.lit("no_consent_record"))
        .otherwise(_reason_of_rank(F.col("best.rank")))
    )
    record_decided = F.col("reason").isin(list(_RESTRICTIVENESS))
    return decided.withColumn("reason", reason).select(
        "asset_id",
        "use_case",
        F.when(F.col("reason") == F.lit(GRANTED), F.lit(GRANTED))
        .otherwise(F.lit(DENIED))
        .alias("decision"),
        "reason",
        F.when(record_decided, F.col("best.id")).alias("consent_record_id"),
        F.when(record_decided, F.col("best.policy_version")).alias("policy_version"),
        F.when(record_decided, F.col("best.captured_at")).alias("captured_at"),
        F.when(record_decided, F.col("best.jurisdiction"))
        .otherwise(F.col("asset_jurisdiction"))
        .alias("jurisdiction"),
    )


def ignored_record_counts(
    records: DataFrame,
    assets: DataFrame,
    *,
    use_cases: Mapping[str, UseCaseConfig],
    as_of: datetime,
) -> DataFrame:
    """Count the records effective consent ignores, by the first reason that applies.

    Ignored records never grant nor deny; an operator needs to see how many there are (a
    spike in ``not_owner`` means someone is consenting for others' work). Each row is counted
    once under the first reason in :data:`IGNORED_REASONS`: ``unknown_use_case`` (use case
    null or not configured), ``asset_unknown`` (asset id null or not in ``assets``),
    ``missing_captured_at``, ``captured_after_as_of`` (checked before attribution: at ``T`` the
    record did not exist yet), ``missing_user_id``, ``not_owner`` (user is not the asset's
    owner, or the owner is unknown). Rows are counted, so identical duplicates count twice.
    Malformed records are not ignored: they deny. Values are compared in canonical form, as
    :func:`effective_consent` compares them (a use case `` Recommendation`` is not unknown; a
    ``user_id`` of ``""`` is missing).

    Returns:
        A small frame ``(reason string, count long)`` with one row per reason, zeros included,
        in :data:`IGNORED_REASONS` order — safe to collect.
    """
    _check_inputs(records, assets, None)
    t = instant_literal(as_of)
    owners = _asset_info(_canonical_assets(assets)).select("asset_id", "owner_user_id", "in_assets")
    classified = (
        _canonical_records(records)
        .join(owners, on="asset_id", how="left")
        .select(
            F.when(
                ~F.coalesce(F.col("use_case").isin(sorted(use_cases)), F.lit(False)),
                F.lit("unknown_use_case"),
            )
            .when(F.col("in_assets").isNull(), F.lit("asset_unknown"))
            .when(F.col("captured_at").isNull(), F.lit("missing_captured_at"))
            .when(F.col("captured_at") > t, F.lit("captured_after_as_of"))
            .when(F.col("user_id").isNull(), F.lit("missing_user_id"))
            .when(
                ~F.coalesce(F.col("user_id") == F.col("owner_user_id"), F.lit(False)),
                F.lit("not_owner"),
            )
            .alias("reason")
        )
    )
    sums = classified.agg(
        *[
            F.coalesce(F.sum(F.when(F.col("reason") == name, 1).otherwise(0)), F.lit(0))
            .cast(LongType())
            .alias(name)
            for name in IGNORED_REASONS
        ]
    )
    stack = ", ".join(f"'{name}', `{name}`" for name in IGNORED_REASONS)
    return sums.selectExpr(f"stack({len(IGNORED_REASONS)}, {stack}) as (reason, count)")


__all__ = [
    "ASSETS_SCHEMA",
    "ASSET_CASES",
    "ASSET_IDS_SCHEMA",
    "AS_OF_COLUMNS",
    "CONSENT_RECORDS_SCHEMA",
    "DENIAL_REASONS",
    "EFFECTIVE_CONSENT_COLUMNS",
    "IGNORED_REASONS",
    "REASONS",
    "RECORD_CASES",
    "STATUSES",
    "WHITESPACE",
    "Case",
    "as_of_micros",
    "canonical_id",
    "canonical_text",
    "check_schema",
    "effective_consent",
    "ignored_record_counts",
    "instant_literal",
]
