"""Effective consent: one case per rule, tie-break and edge case (each its own test item,
batched into a few Spark runs), and properties checked against a pure-Python model."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any, cast

import pytest
from chispa import assert_df_equality
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from consentgate import consent
from consentgate.config import JurisdictionRules, UseCaseConfig
from consentgate.errors import SchemaError
from tests import consent_model as model
from tests.consent_model import Asset, Record

T = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)

USE_CASES: dict[str, UseCaseConfig] = {
    "recommendation": UseCaseConfig(accepted_policy_versions=("v1", "v2")),
    "generative_training": UseCaseConfig(
        accepted_policy_versions=("v2",), jurisdictions=JurisdictionRules(deny=("EU",))
    ),
    "moderation": UseCaseConfig(
        accepted_policy_versions=("v1",), jurisdictions=JurisdictionRules(allow=("US",))
    ),
}
REC, GEN, MOD = "recommendation", "generative_training", "moderation"


def at(hours: float) -> datetime:
    return T + timedelta(hours=hours)


def rec(
    rid: str | None = "r1",
    *,
    user: str | None = "u1",
    asset: str | None = "a1",
    use_case: str | None = REC,
    status: str | None = "granted",
    policy: str | None = "v1",
    jurisdiction: str | None = None,
    captured: datetime | None = None,
    revoked: datetime | None = None,
) -> Record:
    return Record(
        rid,
        user,
        asset,
        use_case,
        status,
        policy,
        jurisdiction,
        at(-24) if captured is None else captured,
        revoked,
    )


def asset(
    asset_id: str = "a1",
    *,
    owner: str | None = "u1",
    jurisdiction: str | None = "US",
    deleted: datetime | None = None,
) -> Asset:
    return Asset(asset_id, owner, jurisdiction, at(-1000), deleted)


def _schema(columns: dict[str, object]) -> StructType:
    return StructType([StructField(name, dtype, True) for name, dtype in columns.items()])  # type: ignore[arg-type]


def records_df(spark: SparkSession, records: Sequence[Record]) -> DataFrame:
    return spark.createDataFrame(
        [astuple(r) for r in records], _schema(dict(consent.CONSENT_RECORDS_SCHEMA))
    )


def assets_df(spark: SparkSession, assets: Sequence[Asset]) -> DataFrame:
    return spark.createDataFrame([astuple(a) for a in assets], _schema(dict(consent.ASSETS_SCHEMA)))


def evaluate(
    spark: SparkSession,
    records: Sequence[Record],
    assets: Sequence[Asset] = (asset(),),
    *,
    as_of: datetime = T,
    extra: Sequence[str] | None = None,
    use_cases: Mapping[str, UseCaseConfig] = USE_CASES,
) -> DataFrame:
    extra_df = (
        None if extra is None else spark.createDataFrame([(a,) for a in extra], "asset_id string")
    )
    return consent.effective_consent(
        records_df(spark, records),
        assets_df(spark, assets),
        use_cases=use_cases,
        as_of=as_of,
        extra_asset_ids=extra_df,
    )


DECISION_SCHEMA = StructType(
    [
        StructField(name, StringType(), True)
        for name in ("asset_id", "use_case", "decision", "reason", "consent_record_id")
    ]
)


def assert_decisions(
    spark: SparkSession,
    result: DataFrame,
    expected: Sequence[tuple[str, str, str, str | None]],
    *,
    use_case: str | None = REC,
) -> None:
    """Compare (asset_id, use_case, reason, consent_record_id) for one use case (or all)."""
    actual = result.select(*DECISION_SCHEMA.names)
    if use_case is not None:
        actual = actual.filter(F.col("use_case") == use_case)
    rows = [
        (a, u, "granted" if reason == "granted" else "denied", reason, rid)
        for a, u, reason, rid in expected
    ]
    assert_df_equality(
        actual,
        spark.createDataFrame(rows, DECISION_SCHEMA),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def ignored(
    spark: SparkSession,
    records: Sequence[Record],
    assets: Sequence[Asset] = (asset(),),
    *,
    as_of: datetime = T,
) -> dict[str, int]:
    df = consent.ignored_record_counts(
        records_df(spark, records), assets_df(spark, assets), use_cases=USE_CASES, as_of=as_of
    )
    return {row["reason"]: row["count"] for row in df.collect()}


# --- Example cases: each its own pytest item, all sharing a few Spark runs ------------------
#
# Every example below used to be a test of its own that built tiny frames and paid two or more
# Spark actions; a Spark run's fixed cost dwarfs the work on a few rows. Now each example is a
# declarative Case, the cases of one instant and configuration are evaluated together in one
# run (each case's ids namespaced, so cases cannot interact), and each case is still its own
# pytest item that asserts its own slice of the collected result, so no failure hides another.

#: One expected decision: (asset_id, use_case, reason, consent_record_id); the decision
#: follows from the reason.
Expected = tuple[str, str, str, str | None]

#: The columns of a decision, in the order rows are collected and compared.
COLUMNS = (
    "asset_id",
    "use_case",
    "decision",
    "reason",
    "consent_record_id",
    "policy_version",
    "captured_at",
    "jurisdiction",
)

#: Every reason ignored_record_counts reports, written out here so expectations stay
#: independent of the production code.
IGNORED_REASONS = (
    "unknown_use_case",
    "asset_unknown",
    "missing_captured_at",
    "captured_after_as_of",
    "missing_user_id",
    "not_owner",
)

#: Use-case configurations a case may name. "spelled-rules" is built without validation:
#: whatever config validation accepts, a deny entry restricts.
CONFIGS: dict[str, dict[str, UseCaseConfig]] = {
    "default": USE_CASES,
    "spelled-rules": {
        "deny": UseCaseConfig.model_construct(
            accepted_policy_versions=("v1",),
            jurisdictions=JurisdictionRules.model_construct(allow=None, deny=(" eu",)),
        ),
        "allow": UseCaseConfig.model_construct(
            accepted_policy_versions=("v1",),
            jurisdictions=JurisdictionRules.model_construct(allow=("us",), deny=None),
        ),
    },
    # Codes of another syntax (``pattern``): ISO 3166-1 alpha-3.
    "alpha-3": {
        "iso3": UseCaseConfig(
            accepted_policy_versions=("v1",),
            jurisdictions=JurisdictionRules(allow=("USA",), pattern="[A-Z]{3}"),
        ),
    },
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def counts(**nonzero: int) -> dict[str, int]:
    """Every ignored-record reason's count: the ones given, zero for the others."""
    assert set(nonzero) <= set(IGNORED_REASONS), nonzero
    return {reason: nonzero.get(reason, 0) for reason in IGNORED_REASONS}


@dataclass(frozen=True)
class Case:
    """One example: tables of its own, and what must be decided (or counted) for them.

    Cases share Spark runs (see :class:`Batches`), but each is checked on its own slice of
    the result exactly as if it had run alone: the same columns, the same values.
    """

    name: str
    records: tuple[Record, ...]
    assets: tuple[Asset, ...] = (asset(),)
    #: All decisions for ``scope`` (a use case; None for every use case): the case's slice of
    #: that use case must be exactly these.
    decisions: tuple[Expected, ...] | None = None
    scope: str | None = REC
    #: Decisions checked for just their (asset_id, use_case), whatever else is decided.
    selected: tuple[Expected, ...] = ()
    #: Further columns of one decision: (asset_id, use_case, column, value).
    fields: tuple[tuple[str, str, str, object], ...] = ()
    #: The ignored-record counts of exactly these tables, every reason listed.
    ignored: dict[str, int] | None = None
    #: Whether every decision must also equal the reference model's (all columns).
    matches_model: bool = False
    as_of: datetime = T
    extra: tuple[str, ...] = ()
    config: str = "default"

    def __post_init__(self) -> None:
        # The name is the namespace: lowercase ASCII without whitespace or "~", so that it is
        # its own canonical form and "name~" is a prefix no other case's namespace starts with.
        if not re.fullmatch(r"[a-z0-9_./-]+", self.name):
            raise ValueError(f"case name {self.name!r} is not a plain lowercase namespace")
        if self.decisions is None and not (
            self.selected or self.fields or self.matches_model or self.ignored is not None
        ):
            raise ValueError(f"case {self.name} checks nothing")

    @property
    def prefix(self) -> str:
        return f"{self.name}~"

    @property
    def evaluated(self) -> bool:
        return bool(
            self.decisions is not None or self.selected or self.fields or self.matches_model
        )


def namespaced_value(prefix: str, value: str | None) -> str | None:
    """``value`` with ``prefix`` inserted after its leading whitespace.

    Its canonical form is then ``prefix`` plus ``value``'s, it is non-canonical exactly when
    ``value`` is (padding and upper case survive), ids keep their order within a case, and
    null, empty and blank values are left as they are (they stay null). A plain prefix would
    turn `` A1`` into ``p~ A1``, whose whitespace is no longer surrounding: another case.
    """
    if value is None or not value.strip():
        return value
    core = value.lstrip()
    return value[: len(value) - len(core)] + prefix + core


def namespaced_case(case: Case) -> tuple[list[Record], list[Asset], list[str]]:
    """The case's tables with every record, user and asset id in the case's namespace."""

    def ns(value: str | None) -> str | None:
        return namespaced_value(case.prefix, value)

    records = [
        replace(r, id=ns(r.id), user_id=ns(r.user_id), asset_id=ns(r.asset_id))
        for r in case.records
    ]
    assets = [
        replace(a, asset_id=ns(a.asset_id), owner_user_id=ns(a.owner_user_id)) for a in case.assets
    ]
    return records, assets, [cast(str, ns(x)) for x in case.extra]


Decided = tuple[object, ...]
"""One collected decision, in :data:`COLUMNS` order, ``captured_at`` an aware UTC datetime."""


class Batches:
    """The example cases' results, computed on first use: one Spark run per (instant,
    configuration) for the decisions and one for every case's ignored-record counts."""

    def __init__(self, spark: SparkSession, cases: Sequence[Case]) -> None:
        self.spark = spark
        self.cases = cases
        self._decided: dict[tuple[datetime, str], list[Decided]] = {}
        self._ignored: dict[str, dict[str, int]] | None = None

    def decisions(self, case: Case) -> list[Decided]:
        """The case's decisions, its namespace removed from asset and record ids."""
        key = (case.as_of, case.config)
        if key not in self._decided:
            group = [c for c in self.cases if c.evaluated and (c.as_of, c.config) == key]
            self._decided[key] = self._evaluate(group, as_of=case.as_of, config=case.config)
        prefix = case.prefix

        def strip(value: object) -> object:
            # A record id from another namespace is left as is, so that it shows as a mismatch.
            if isinstance(value, str) and value.startswith(prefix):
                return value[len(prefix) :]
            return value

        return [
            (strip(row[0]), row[1], row[2], row[3], strip(row[4]), *row[5:])
            for row in self._decided[key]
            if isinstance(row[0], str) and row[0].startswith(prefix)
        ]

    def _evaluate(self, group: Sequence[Case], *, as_of: datetime, config: str) -> list[Decided]:
        records: list[Record] = []
        assets: list[Asset] = []
        extra: list[str] = []
        for case in group:
            r, a, x = namespaced_case(case)
            records += r
            assets += a
            extra += x
        result = evaluate(
            self.spark, records, assets, as_of=as_of, extra=extra, use_cases=CONFIGS[config]
        )
        columns = [F.unix_micros(c) if c == "captured_at" else F.col(c) for c in COLUMNS]
        return [
            tuple(
                EPOCH + timedelta(microseconds=v) if c == "captured_at" and v is not None else v
                for c, v in zip(COLUMNS, row, strict=True)
            )
            for row in result.select(*columns).collect()
        ]

    def ignored(self, case: Case) -> dict[str, int]:
        """The ignored-record counts of the case's own tables (not namespaced: each case is
        counted by its own aggregate, all of them unioned into one run)."""
        if self._ignored is None:
            frames = [
                consent.ignored_record_counts(
                    records_df(self.spark, c.records),
                    assets_df(self.spark, c.assets),
                    use_cases=CONFIGS[c.config],
                    as_of=c.as_of,
                ).select(F.lit(c.name).alias("case"), "reason", "count")
                for c in self.cases
                if c.ignored is not None
            ]
            self._ignored = {}
            for row in reduce(DataFrame.unionByName, frames).collect():
                self._ignored.setdefault(row["case"], {})[row["reason"]] = row["count"]
        return self._ignored.get(case.name, {})


def _with_decision(expected: Iterable[Expected]) -> list[Decided]:
    rows = [(a, u, "granted" if r == "granted" else "denied", r, rid) for a, u, r, rid in expected]
    return sorted(rows, key=repr)


def _model_decided(decisions: list[model.Decision]) -> list[Decided]:
    return sorted(
        (
            (
                d.asset_id,
                d.use_case,
                d.decision,
                d.reason,
                d.consent_record_id,
                d.policy_version,
                d.captured_at,
                d.jurisdiction,
            )
            for d in decisions
        ),
        key=repr,
    )


# --- Rule 1: asset unknown / deleted -------------------------------------------------------

RULE_1 = [
    Case(
        "asset-unknown/records-and-lineage-ids",
        records=(rec("r1", asset="a9"),),
        assets=(asset("a1"),),
        extra=("x1", "a1"),
        decisions=(
            ("a1", REC, "no_consent_record", None),
            ("a9", REC, "asset_unknown", None),
            ("x1", REC, "asset_unknown", None),
        ),
    ),
    Case(
        "asset-unknown/counted",
        records=(rec("r1", asset="a9"), rec("r2", asset=None)),
        ignored=counts(asset_unknown=2),
    ),
    Case(
        "asset-unknown/every-use-case",
        records=(),
        assets=(),
        extra=("x1",),
        decisions=tuple(("x1", uc, "asset_unknown", None) for uc in (REC, GEN, MOD)),
        scope=None,
    ),
    *[
        Case(
            f"asset-deleted/{label}",
            records=(rec("r1"),),
            assets=(asset(deleted=deleted),),
            decisions=(("a1", REC, reason, rid),),
        )
        for label, deleted, reason, rid in [
            ("before-t", at(-1), "asset_deleted", None),
            ("at-t", T, "asset_deleted", None),
            ("after-t", at(1), "granted", "r1"),
        ]
    ],
]

# --- Rules 2-3: candidates and attribution ---------------------------------------------------

RULES_2_3 = [
    Case(
        "no-consent-record",
        records=(rec("r1", use_case=GEN),),
        decisions=(("a1", REC, "no_consent_record", None),),
    ),
    # One asset per way of not being attributable; each is counted once under its reason.
    Case(
        "unattributable-ignored-and-counted",
        records=(
            rec("r1", asset="i1", user="stranger"),
            rec("r2", asset="i2", user=None),
            Record("r3", "u1", "i3", REC, "granted", "v1", None, None, None),
            rec("r4", asset="i4", captured=at(1)),
            rec("r5", asset="i5", use_case="training_of_robots"),
            rec("r6", asset="i6", use_case=None),
            rec("r7", asset="nowhere"),
        ),
        assets=tuple(asset(f"i{i}") for i in range(1, 7)),
        decisions=(
            *[(f"i{i}", REC, "no_consent_record", None) for i in range(1, 7)],
            ("nowhere", REC, "asset_unknown", None),
        ),
        ignored=counts(
            unknown_use_case=2,
            asset_unknown=1,
            missing_captured_at=1,
            captured_after_as_of=1,
            missing_user_id=1,
            not_owner=1,
        ),
    ),
    Case(
        "stranger-cannot-revoke-for-the-owner",
        records=(
            rec("r1", captured=at(-5)),
            rec("r2", user="stranger", status="revoked", captured=at(-1)),
        ),
        decisions=(("a1", REC, "granted", "r1"),),
    ),
    Case(
        "asset-without-owner-attributes-nothing",
        records=(rec("r1"),),
        assets=(asset(owner=None),),
        decisions=(("a1", REC, "no_consent_record", None),),
        ignored=counts(not_owner=1),
    ),
    Case(
        "conflicting-asset-rows-attribute-nothing",
        records=(rec("r1"),),
        assets=(asset(owner="u1"), asset(owner="u2")),
        decisions=(("a1", REC, "no_consent_record", None),),
    ),
    Case(
        "identical-asset-rows-are-one-asset",
        records=(rec("r1"),),
        assets=(asset(), asset()),
        decisions=(("a1", REC, "granted", "r1"),),
    ),
    Case(
        "captured-after-t/ignored",
        records=(rec("r1", captured=at(-1)), rec("r2", status="denied", captured=at(1))),
        decisions=(("a1", REC, "granted", "r1"),),
    ),
    # An audit at an earlier instant does not see the later grant either.
    Case(
        "captured-after-t/earlier-audit",
        records=(rec("r1", captured=at(-1)), rec("r2", status="denied", captured=at(1))),
        as_of=at(-2),
        decisions=(("a1", REC, "no_consent_record", None),),
    ),
    # A record captured exactly at T counts.
    Case(
        "captured-after-t/exactly-at-t-counts",
        records=(rec("r3", captured=T),),
        decisions=(("a1", REC, "granted", "r3"),),
    ),
]

# --- Rule 4: latest record, ties -----------------------------------------------------------

#: Two records of one asset at the same instant, (label, winner, loser, reason): the winner's
#: own outcome is the more restrictive.
TIES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("revoked-over-malformed", {"status": "revoked"}, {"status": None}, "revoked"),
    ("revoked-over-denied", {"status": "revoked"}, {"status": "denied"}, "revoked"),
    ("malformed-over-denied", {"status": "bogus"}, {"status": "denied"}, "malformed_record"),
    ("denied-over-granted", {"status": "denied"}, {"status": "granted"}, "denied"),
    (
        "revoked-in-place-over-denied",
        {"status": "granted", "revoked": at(-1)},
        {"status": "denied"},
        "revoked",
    ),
    (
        "policy-not-accepted-over-granted",
        {"policy": "v9"},
        {"policy": "v1"},
        "policy_version_not_accepted",
    ),
]


def _tie_cases() -> list[Case]:
    """Each tie in both input orders, and with the winner's id sorting last ("w" > "l") and
    first: restrictiveness, not the id, must decide."""
    cases = []
    for label, winner, loser, reason in TIES:
        for winner_id, loser_id in (("w", "l"), ("l", "w")):
            pair = (rec(winner_id, **winner), rec(loser_id, **loser))
            for order, records in (("winner-first", pair), ("loser-first", pair[::-1])):
                cases.append(
                    Case(
                        f"tie/{label}/{order}/winner-id-{winner_id}",
                        records=records,
                        decisions=(("a1", REC, reason, winner_id),),
                    )
                )
    return cases


RULE_4 = [
    Case(
        "latest-wins/grant-then-deny",
        records=(rec("r1", captured=at(-5)), rec("r2", status="denied", captured=at(-1))),
        decisions=(("a1", REC, "denied", "r2"),),
    ),
    Case(
        "latest-wins/deny-then-grant",
        records=(rec("r1", status="denied", captured=at(-5)), rec("r2", captured=at(-1))),
        decisions=(("a1", REC, "granted", "r2"),),
    ),
    *_tie_cases(),
    *[
        Case(
            f"tie/equal-grants-deterministic/{order}",
            records=records,
            decisions=(("a1", REC, "granted", "r2"),),
        )
        for order, records in [
            ("r1-first", (rec("r1", policy="v1"), rec("r2", policy="v2"))),
            ("r2-first", (rec("r2", policy="v2"), rec("r1", policy="v1"))),
        ]
    ],
]

# --- Rule 5: malformed, revoked, denied ------------------------------------------------------

RULE_5 = [
    *[
        Case(f"malformed/{label}", records=(record,), decisions=(("a1", REC, reason, record.id),))
        for label, record, reason in [
            ("upper-case", rec("r1", status="GRANTED"), "malformed_record"),
            ("whitespace", rec("r2", status="granted "), "malformed_record"),
            ("null-status", rec("r3", status=None), "malformed_record"),
            ("null-policy", rec("r4", policy=None), "malformed_record"),
            (
                "revoked-before-captured",
                rec("r5", captured=at(-5), revoked=at(-6)),
                "malformed_record",
            ),
            ("null-id", rec(None), "malformed_record"),
        ]
    ],
    Case(
        "malformed/a-denial-at-its-captured-at",
        records=(rec("r1", policy=None, captured=at(-5)), rec("r2", captured=at(-1))),
        decisions=(("a1", REC, "granted", "r2"),),
    ),
    Case(
        "duplicate-id/different-content-malformed-everywhere",
        records=(
            rec("dup", asset="a1"),
            rec("dup", asset="a2", user="u2"),
            rec("ok", asset="a3", user="u3"),
        ),
        assets=(asset("a1"), asset("a2", owner="u2"), asset("a3", owner="u3")),
        decisions=(
            ("a1", REC, "malformed_record", "dup"),
            ("a2", REC, "malformed_record", "dup"),
            ("a3", REC, "granted", "ok"),
        ),
    ),
    Case(
        "duplicate-id/conflict-in-another-use-case-counts",
        records=(rec("dup"), rec("dup", use_case="not_configured")),
        decisions=(("a1", REC, "malformed_record", "dup"),),
    ),
    Case(
        "duplicate-id/identical-content-one-record",
        records=(rec("dup"), rec("dup")),
        decisions=(("a1", REC, "granted", "dup"),),
    ),
    Case(
        "revoked/status",
        records=(rec("r1", status="revoked"),),
        decisions=(("a1", REC, "revoked", "r1"),),
    ),
    *[
        Case(
            f"revoked/in-place-{label}",
            records=(rec("r1", captured=at(-5), revoked=revoked),),
            decisions=(("a1", REC, reason, "r1"),),
        )
        for label, revoked, reason in [
            ("before-t", at(-1), "revoked"),
            ("at-t", T, "revoked"),
            ("after-t", at(1), "granted"),
        ]
    ],
    Case(
        "revoked/at-captured-at-is-a-revocation-not-malformed",
        records=(rec("r1", captured=at(-5), revoked=at(-5)),),
        decisions=(("a1", REC, "revoked", "r1"),),
    ),
    Case(
        "denied/status",
        records=(rec("r1", status="denied"),),
        decisions=(("a1", REC, "denied", "r1"),),
    ),
    Case(
        "revoked/before-denied-in-rule-order",
        records=(rec("r1", status="denied", revoked=at(-1)),),
        decisions=(("a1", REC, "revoked", "r1"),),
    ),
]

# --- Rules 6-8: policy version, jurisdiction, grant -----------------------------------------


def _jurisdiction_case(
    name: str,
    use_case: str,
    record_jurisdiction: str | None,
    asset_jurisdiction: str | None,
    reason: str,
    *,
    output_jurisdiction: tuple[str | None] | None = None,
) -> Case:
    """One record under ``use_case``'s first accepted policy version; ``output_jurisdiction``
    (a 1-tuple, since None is a value) is the jurisdiction the decision must carry."""
    fields: tuple[tuple[str, str, str, object], ...] = ()
    if output_jurisdiction is not None:
        fields = (("a1", use_case, "jurisdiction", output_jurisdiction[0]),)
    return Case(
        name,
        records=(
            rec(
                "r1",
                use_case=use_case,
                policy=USE_CASES[use_case].accepted_policy_versions[0],
                jurisdiction=record_jurisdiction,
            ),
        ),
        assets=(asset(jurisdiction=asset_jurisdiction),),
        decisions=(("a1", use_case, reason, "r1"),),
        scope=use_case,
        fields=fields,
    )


GRANT_TIME = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

RULES_6_8 = [
    Case(
        "policy-version-not-accepted",
        records=(rec("r1", use_case=GEN, policy="v1"),),
        decisions=(("a1", GEN, "policy_version_not_accepted", "r1"),),
        scope=GEN,
    ),
    *[
        _jurisdiction_case(
            f"jurisdiction/{uc}/record-{record_j or 'null'}/asset-{asset_j or 'null'}".lower(),
            uc,
            record_j,
            asset_j,
            reason,
        )
        for uc, record_j, asset_j, reason in [
            (GEN, None, None, "jurisdiction_unknown"),
            (GEN, "EU", "US", "jurisdiction_blocked"),
            (GEN, None, "EU", "jurisdiction_blocked"),
            (GEN, "US", "EU", "granted"),
            (GEN, None, "US", "granted"),
            (MOD, "EU", None, "jurisdiction_blocked"),
            (MOD, None, None, "jurisdiction_unknown"),
            (MOD, None, "US", "granted"),
            (REC, None, None, "granted"),
        ]
    ],
    # Issue #23 item 6: a code that does not read as one (config.JURISDICTION_PATTERN) is
    # unknown, and a record's unreadable code is not replaced by its asset's.
    *[
        _jurisdiction_case(f"jurisdiction-syntax/{label}", uc, record_j, asset_j, reason)
        for label, uc, record_j, asset_j, reason in [
            ("zero-width-space", GEN, "EU\u200b", "US", "jurisdiction_unknown"),
            ("inner-space", GEN, "E U", "US", "jurisdiction_unknown"),
            ("trailing-dot", GEN, "EU.", "US", "jurisdiction_unknown"),
            ("asset-unreadable", GEN, None, "EU.", "jurisdiction_unknown"),
            ("three-letters", MOD, "USA", "US", "jurisdiction_unknown"),
            ("subdivision", GEN, "US-CA", None, "granted"),
            ("subdivision-not-allowed", MOD, "US-CA", None, "jurisdiction_blocked"),
            ("without-rules-not-consulted", REC, "EU.", None, "granted"),
        ]
    ],
    # A grant carries its terms: every column of the decision.
    Case(
        "grant-carries-its-terms",
        records=(rec("r1", use_case=GEN, policy="v2", jurisdiction="US", captured=GRANT_TIME),),
        assets=(asset(jurisdiction="EU"),),
        decisions=(("a1", GEN, "granted", "r1"),),
        scope=GEN,
        fields=(
            ("a1", GEN, "policy_version", "v2"),
            ("a1", GEN, "captured_at", GRANT_TIME),
            ("a1", GEN, "jurisdiction", "US"),
        ),
    ),
    Case(
        "denial-without-a-decisive-record-carries-no-terms",
        records=(),
        assets=(asset(jurisdiction="EU"),),
        decisions=(("a1", REC, "no_consent_record", None),),
        fields=(
            ("a1", REC, "policy_version", None),
            ("a1", REC, "captured_at", None),
            ("a1", REC, "jurisdiction", "EU"),
        ),
    ),
]

# --- Rule 2: canonical values (case, surrounding whitespace, empty strings) ----------------

#: (use case, record jurisdiction, asset jurisdiction, reason[, output jurisdiction]);
#: generative_training denies EU, moderation allows only US, recommendation has no rules.
JURISDICTION_SPELLINGS: list[tuple[Any, ...]] = [
    (GEN, "eu", "US", "jurisdiction_blocked"),
    (GEN, "EU ", "US", "jurisdiction_blocked", "EU"),  # the output carries the canonical code
    (GEN, "\u00a0Eu\t", "US", "jurisdiction_blocked"),
    (GEN, "", "EU", "jurisdiction_blocked"),  # "" is null: the asset's EU applies
    (GEN, "", None, "jurisdiction_unknown", None),
    (GEN, "", "", "jurisdiction_unknown"),
    (GEN, None, "", "jurisdiction_unknown"),  # an asset's "" no longer hides it
    (GEN, None, "eu", "jurisdiction_blocked", "EU"),
    (GEN, None, " EU", "jurisdiction_blocked"),
    (GEN, "us", "EU", "malformed_record"),  # would grant through "us": never
    (GEN, None, "us", "malformed_record"),  # ... nor through the asset's "us"
    (GEN, "  ", "US", "malformed_record"),  # blank is a non-canonical null
    (GEN, "", "US", "granted", "US"),  # "" is plain null, and the asset's US is clean
    (MOD, "us", None, "malformed_record"),
    (MOD, " EU", "US", "jurisdiction_blocked"),
    (MOD, None, "us", "malformed_record"),
    (MOD, "", "US", "granted"),
    (REC, "eu", None, "malformed_record"),  # the record's own value, rules or not
    (REC, None, "us", "granted"),  # without rules the asset's is not consulted
]

#: Per asset: a clean grant, then a later record with a non-canonical status (and perhaps an
#: in-place revocation): (label, status, revoked_at, reason).
STATUS_SPELLINGS = [
    ("revoked-padded", " Revoked", None, "revoked"),
    ("revoked-upper-newline", "REVOKED\n", None, "revoked"),
    ("denied-padded", "Denied ", None, "denied"),
    ("granted-upper", "GRANTED", None, "malformed_record"),
    ("granted-padded", " granted", None, "malformed_record"),
    ("granted-padded-revoked-in-place", " granted", at(-0.5), "revoked"),  # restricts
    ("empty-is-null", "", None, "malformed_record"),
    ("blank-is-null", "\t", None, "malformed_record"),
]

#: (label, policy version, status, reason, output policy version).
POLICY_SPELLINGS = [
    ("padded", " v1", "granted", "malformed_record", "v1"),
    ("upper-case", "V1", "granted", "policy_version_not_accepted", "V1"),
    ("empty-is-null", "", "granted", "malformed_record", None),
    ("padded-revoked", " v1", "revoked", "revoked", "v1"),
    ("upper-case-padded", "V1 ", "granted", "policy_version_not_accepted", "V1"),
]

OWNER_UUID = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
ASSET_UUIDS = [f"3f2b8c1e-9a4d-4e7b-8c2a-1b2c3d4e5f6{i}" for i in range(5)]

RULE_2 = [
    *[
        _jurisdiction_case(
            f"jurisdiction-spelling/{i:02d}-{row[0]}",
            *row[:4],
            output_jurisdiction=(row[4],) if len(row) > 4 else None,
        )
        for i, row in enumerate(JURISDICTION_SPELLINGS)
    ],
    *[
        Case(
            f"status-spelling/{label}",
            records=(
                rec("g", captured=at(-5)),
                rec("x", status=status, captured=at(-1), revoked=revoked),
            ),
            decisions=(("a1", REC, reason, "x"),),
        )
        for label, status, revoked, reason in STATUS_SPELLINGS
    ],
    # Upper-case or padded ids revoke but never grant. Namespacing keeps their point: the
    # namespace goes after the padding and is lowercase, so these stay non-canonical.
    Case(
        "id-spelling/uppercase-or-padded-ids-revoke-but-never-grant",
        records=(
            # [0]: a clean grant, then a revocation written in upper case: revoked.
            rec("r0", user=OWNER_UUID, asset=ASSET_UUIDS[0], captured=at(-5)),
            rec(
                "R0-X",
                user=OWNER_UUID.upper(),
                asset=ASSET_UUIDS[0].upper(),
                status="revoked",
                captured=at(-1),
            ),
            # [1]: a grant through an upper-case asset id: malformed, and named canonically.
            rec("r1", user=OWNER_UUID, asset=ASSET_UUIDS[1].upper()),
            # [2]: a grant through a padded user id.
            rec("r2", user=f" {OWNER_UUID}", asset=ASSET_UUIDS[2]),
            # [3]: a grant through a non-canonical record id.
            rec(" R3", user=OWNER_UUID, asset=ASSET_UUIDS[3]),
            # [4]: a clean grant, then a denial by a padded, upper-case user: denied.
            rec("r4", user=OWNER_UUID, asset=ASSET_UUIDS[4], captured=at(-5)),
            rec(
                "r4-x",
                user=OWNER_UUID.upper() + "\t",
                asset=ASSET_UUIDS[4],
                status="denied",
                captured=at(-1),
            ),
        ),
        assets=tuple(asset(a, owner=OWNER_UUID) for a in ASSET_UUIDS),
        decisions=(
            (ASSET_UUIDS[0], REC, "revoked", "r0-x"),
            (ASSET_UUIDS[1], REC, "malformed_record", "r1"),
            (ASSET_UUIDS[2], REC, "malformed_record", "r2"),
            (ASSET_UUIDS[3], REC, "malformed_record", "r3"),
            (ASSET_UUIDS[4], REC, "denied", "r4-x"),
        ),
        ignored=counts(),
    ),
    Case(
        "use-case-spelling/restricts-but-never-grants",
        records=(
            rec("r1", asset="a1", captured=at(-5)),
            rec("r2", asset="a1", use_case=" Recommendation", status="revoked", captured=at(-1)),
            rec("r3", asset="a2", use_case="RECOMMENDATION"),
            rec("r4", asset="a3", use_case="recommendation\u00a0"),
            rec("r5", asset="a4", use_case="recommendations"),  # another use case: ignored
        ),
        assets=tuple(asset(a) for a in ("a1", "a2", "a3", "a4")),
        decisions=(
            ("a1", REC, "revoked", "r2"),
            ("a2", REC, "malformed_record", "r3"),
            ("a3", REC, "malformed_record", "r4"),
            ("a4", REC, "no_consent_record", None),
        ),
        ignored=counts(unknown_use_case=1),
    ),
    *[
        Case(
            f"policy-spelling/{label}",
            records=(rec("r1", policy=policy, status=status),),
            decisions=(("a1", REC, reason, "r1"),),
            fields=(("a1", REC, "policy_version", output),),
        )
        for label, policy, status, reason, output in POLICY_SPELLINGS
    ],
    Case(
        "duplicate-id/compared-in-canonical-form",
        records=(
            # One record, written twice: the same canonical content is not a conflict.
            rec("d1", asset="a1", status="revoked"),
            rec(" D1", asset="A1", status=" REVOKED"),
            # A clean grant and its non-canonical copy: the copy wins the tie and denies.
            rec("d2", asset="a2"),
            rec("D2", asset="a2"),
            # Canonically different content under one id: both malformed.
            rec("d3", asset="a3"),
            rec("D3", asset="a3", status="denied"),
        ),
        assets=tuple(asset(a) for a in ("a1", "a2", "a3")),
        decisions=(
            ("a1", REC, "revoked", "d1"),
            ("a2", REC, "malformed_record", "d2"),
            ("a3", REC, "malformed_record", "d3"),
        ),
    ),
    Case(
        "asset-spelling/noncanonical-rows-restrict-but-never-grant",
        records=(
            rec("r1", asset="a1"),
            rec("r2", asset="a2", user="u2", captured=at(-5)),
            rec("r2-x", asset="a2", user="u2", status="revoked", captured=at(-1)),
            rec("r3", asset="a3"),
            rec("r4", asset="a4", use_case=GEN, policy="v2"),
            rec("r5", asset="a5"),
        ),
        assets=(
            asset(" A1", owner="U1"),  # a grant would rest on its non-canonical id and owner
            asset("a2", owner="u2\t"),
            asset("a3 ", deleted=at(-1)),  # still deletes
            asset("a4", jurisdiction="EU"),  # two rows of one asset agreeing canonically
            asset("A4", jurisdiction="eu"),
            asset("a5"),  # clean: granted
        ),
        decisions=(
            ("a1", REC, "malformed_record", "r1"),
            ("a2", REC, "revoked", "r2-x"),
            ("a3", REC, "asset_deleted", None),
            ("a4", REC, "no_consent_record", None),
            ("a5", REC, "granted", "r5"),
        ),
        selected=(("a4", GEN, "jurisdiction_blocked", "r4"),),
        ignored=counts(),
    ),
    Case(
        "id-spelling/empty-and-blank-ids-are-null",
        records=(
            rec("r1", asset="a1", user=""),  # missing user
            rec("r2", asset="a1", user="  "),  # missing user (and non-canonical)
            rec("r3", asset=""),  # no asset
            rec("r4", asset=" \t"),
            rec("r5", asset="b1"),  # the owner is unknown: attributes nothing
            rec("r6", asset="a1", use_case=""),  # no use case
        ),
        assets=(asset("a1"), asset("b1", owner=""), asset("", owner="u1"), asset("  ")),
        extra=("", " A1 ", "X1"),
        decisions=(
            ("a1", REC, "no_consent_record", None),
            ("b1", REC, "no_consent_record", None),
            ("x1", REC, "asset_unknown", None),
        ),
        ignored=counts(unknown_use_case=1, asset_unknown=2, missing_user_id=2, not_owner=1),
    ),
    Case(
        "ignored-counts/compare-canonical-values",
        records=(
            rec("r1", use_case=" Recommendation"),  # configured, attributed
            rec("r2", use_case="recommendations"),  # unknown use case
            rec("r3", user=" U1 "),  # the owner
            rec("r4", user="u2"),  # not the owner
            rec("r5", asset=" A1"),  # a known asset
            rec("r6", asset="a1\u200b"),  # not whitespace: another, unknown asset
        ),
        ignored=counts(unknown_use_case=1, asset_unknown=1, not_owner=1),
    ),
    Case(
        "jurisdiction-rules/the-use-cases-own-code-syntax",
        records=(
            rec("r1", asset="a1", use_case="iso3", jurisdiction="USA"),
            rec("r2", asset="a2", use_case="iso3", jurisdiction="US"),
            rec("r3", asset="a3", use_case="iso3", jurisdiction="CAN"),
        ),
        assets=tuple(asset(a) for a in ("a1", "a2", "a3")),
        config="alpha-3",
        selected=(
            ("a1", "iso3", "granted", "r1"),
            ("a2", "iso3", "jurisdiction_unknown", "r2"),
            ("a3", "iso3", "jurisdiction_blocked", "r3"),
        ),
        matches_model=True,
    ),
    Case(
        "jurisdiction-rules/deny-codes-canonicalised-allow-codes-not",
        records=(
            rec("r1", asset="a1", use_case="deny", jurisdiction="EU"),
            rec("r2", asset="a2", use_case="deny", jurisdiction="US"),
            rec("r3", asset="a3", use_case="allow", jurisdiction="US"),
        ),
        assets=tuple(asset(a) for a in ("a1", "a2", "a3")),
        config="spelled-rules",
        selected=(
            ("a1", "deny", "jurisdiction_blocked", "r1"),
            ("a2", "deny", "granted", "r2"),
            ("a3", "allow", "jurisdiction_blocked", "r3"),
        ),
        matches_model=True,
    ),
]

CASES: list[Case] = [*RULE_1, *RULES_2_3, *RULE_4, *RULE_5, *RULES_6_8, *RULE_2]


@pytest.fixture(scope="module")
def batches(spark: SparkSession) -> Batches:
    return Batches(spark, CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(batches: Batches, case: Case) -> None:
    """One example, checked on its own slice of a shared run, everything it expects at once."""
    actual: dict[str, object] = {}
    expected: dict[str, object] = {}
    rows = batches.decisions(case) if case.evaluated else []
    if case.decisions is not None:
        in_scope = [row[:5] for row in rows if case.scope is None or row[1] == case.scope]
        actual["decisions"] = sorted(in_scope, key=repr)
        expected["decisions"] = _with_decision(case.decisions)
    if case.selected:
        keys = {(a, u) for a, u, _, _ in case.selected}
        actual["selected"] = sorted((row[:5] for row in rows if row[:2] in keys), key=repr)
        expected["selected"] = _with_decision(case.selected)
    if case.fields:
        actual["fields"] = {
            (a, u, column): [row[COLUMNS.index(column)] for row in rows if row[:2] == (a, u)]
            for a, u, column, _ in case.fields
        }
        expected["fields"] = {(a, u, column): [value] for a, u, column, value in case.fields}
    if case.matches_model:
        actual["model"] = sorted(rows, key=repr)
        expected["model"] = _model_decided(
            model.effective_consent(
                list(case.records),
                list(case.assets),
                use_cases=CONFIGS[case.config],
                as_of=case.as_of,
                extra_asset_ids=list(case.extra),
            )
        )
    if case.ignored is not None:
        actual["ignored"] = batches.ignored(case)
        expected["ignored"] = case.ignored
    assert actual == expected


def test_cases_cannot_interact() -> None:
    """Namespacing keeps every case's meaning: names are unique, and each namespaced id has
    the canonical form namespace + the original's (null stays null) and is non-canonical
    exactly when the original is, so padding and upper case still restrict and never grant."""
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        records, assets, extra = namespaced_case(case)
        pairs = [
            (getattr(o, f), getattr(n, f))
            for o, n in zip(case.records, records, strict=True)
            for f in ("id", "user_id", "asset_id")
        ]
        pairs += [
            (getattr(o, f), getattr(n, f))
            for o, n in zip(case.assets, assets, strict=True)
            for f in ("asset_id", "owner_user_id")
        ]
        pairs += list(zip(case.extra, extra, strict=True))
        for original, spaced in pairs:
            canonical = model.canonical(original, "lower")
            assert model.canonical(spaced, "lower") == (
                None if canonical is None else case.prefix + canonical
            ), (case.name, original)
            assert model.noncanonical(spaced, "lower") == model.noncanonical(original, "lower")


# --- Rule 2 in isolation: the canonical form itself ------------------------------------


def test_whitespace_is_what_str_isspace_means() -> None:
    every = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    assert every == consent.WHITESPACE
    assert consent.canonical_text("\u00a0 Eu\t\n", "upper") == "EU"
    assert consent.canonical_text(" Revoked", "lower") == "revoked"
    assert consent.canonical_text(" V1 ", "keep") == "V1"
    assert consent.canonical_text("", "lower") is None
    assert consent.canonical_text(" \u3000", "lower") is None
    # Only ASCII letters change case (never the JVM's locale); inner spaces stay.
    assert consent.canonical_text("\u0130 E U", "lower") == "\u0130 e u"
    for case in ("lower", "upper", "keep"):
        for value in ("", " a", "B\t", "\u00a0x\u2003", "US-ca", None):
            assert consent.canonical_text(value, case) == model.canonical(value, case)


def test_spark_trims_every_whitespace_character_and_only_those(spark: SparkSession) -> None:
    values: list[str | None] = [f"{c}Ab-{c}-Cd{c}{c}" for c in consent.WHITESPACE]
    # Not whitespace: zero-width space, BOM, a letter; and an empty and a blank string.
    values += ["\u200bAb", "\ufeffAb", "xAbx", "", " \t ", None]
    df = spark.createDataFrame([(v,) for v in values], "v string")
    actual = [r[0] for r in df.select(consent.canonical_id(F.col("v"))).collect()]
    assert actual == [model.canonical(v, "lower") for v in values]
    assert actual[: len(consent.WHITESPACE)] == [f"ab-{c}-cd" for c in consent.WHITESPACE]
    assert actual[len(consent.WHITESPACE) :] == ["\u200bab", "\ufeffab", "xabx", None, None, None]


# --- Bad and empty input, time zones, plan shape --------------------------------------------


def test_empty_tables_are_valid(spark: SparkSession) -> None:
    assert evaluate(spark, [], []).count() == 0
    assert_decisions(
        spark,
        evaluate(spark, [], [asset("a1"), asset("a2")]),
        [("a1", uc, "no_consent_record", None) for uc in (REC, GEN, MOD)]
        + [("a2", uc, "no_consent_record", None) for uc in (REC, GEN, MOD)],
        use_case=None,
    )
    assert set(ignored(spark, [], []).values()) == {0}


def test_wrong_column_type_names_table_and_column(spark: SparkSession) -> None:
    records = records_df(spark, [rec("r1")]).withColumn(
        "captured_at", F.col("captured_at").cast("string")
    )
    with pytest.raises(SchemaError, match=r"consent_records\.captured_at.*timestamp.*string"):
        consent.effective_consent(
            records, assets_df(spark, [asset()]), use_cases=USE_CASES, as_of=T
        )


def test_missing_column_names_table_and_column(spark: SparkSession) -> None:
    assets = assets_df(spark, [asset()]).drop("owner_user_id")
    with pytest.raises(SchemaError, match=r"assets\.owner_user_id.*missing"):
        consent.effective_consent(
            records_df(spark, [rec("r1")]), assets, use_cases=USE_CASES, as_of=T
        )
    with pytest.raises(SchemaError, match=r"assets\.owner_user_id"):
        consent.ignored_record_counts(
            records_df(spark, [rec("r1")]), assets, use_cases=USE_CASES, as_of=T
        )


def test_check_schema_accepts_extra_columns(spark: SparkSession) -> None:
    df = assets_df(spark, [asset()]).withColumn("extra", F.lit(1))
    consent.check_schema(df, consent.ASSETS_SCHEMA, table="assets")  # accepted: no SchemaError
    # The same frame is still checked: the extra column does not excuse a missing one.
    with pytest.raises(SchemaError, match=r"^assets\.owner_user_id: column is missing"):
        consent.check_schema(df.drop("owner_user_id"), consent.ASSETS_SCHEMA, table="assets")


@contextlib.contextmanager
def session_time_zone(spark: SparkSession, zone: str) -> Iterator[None]:
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", zone)
    try:
        yield
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous or "UTC")


def _comparable(df: DataFrame) -> list[tuple[object, ...]]:
    return sorted(
        tuple(row) for row in df.withColumn("captured_at", F.unix_micros("captured_at")).collect()
    )


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Pacific/Kiritimati"])
def test_results_are_utc_whatever_the_session_time_zone(spark: SparkSession, zone: str) -> None:
    # Instants a few microseconds around T and around midnight, where a zone shift would bite.
    t = datetime(2026, 3, 15, 0, 0, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    records = [
        rec("r1", asset="a1", captured=t - tick),
        rec("r2", asset="a2", captured=t + tick),
        rec("r3", asset="a3", captured=t - timedelta(hours=1), revoked=t),
        rec("r4", asset="a4", captured=t - timedelta(hours=1), revoked=t + tick),
    ]
    assets = [asset(a) for a in ("a1", "a2", "a3", "a4", "a5")] + [asset("a6", deleted=t - tick)]
    expected = _comparable(evaluate(spark, records, assets, as_of=t))
    with session_time_zone(spark, zone):
        shifted = _comparable(evaluate(spark, records, assets, as_of=t))
        naive = _comparable(evaluate(spark, records, assets, as_of=t.replace(tzinfo=None)))
    assert shifted == expected
    assert naive == expected
    reasons = {row[0]: row[3] for row in expected if row[1] == REC}
    assert reasons == {
        "a1": "granted",
        "a2": "no_consent_record",
        "a3": "revoked",
        "a4": "granted",
        "a5": "no_consent_record",
        "a6": "asset_deleted",
    }


def _plan(df: DataFrame) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        df.explain()
    return out.getvalue()


def test_plan_has_fixed_shuffles_and_no_python_udfs(spark: SparkSession) -> None:
    records = records_df(spark, [rec("r1")])
    assets = assets_df(spark, [asset()])
    counts = []
    for n in (1, 3):
        names = sorted(USE_CASES)[:n]
        plan = _plan(
            consent.effective_consent(
                records, assets, use_cases={k: USE_CASES[k] for k in names}, as_of=T
            )
        )
        assert "EvalPython" not in plan
        assert "BroadcastExchange" not in plan
        counts.append(len(re.findall(r"\bExchange\b", plan)))
    assert counts[0] == counts[1] == 3


# --- Property: the Spark result equals the pure-Python model --------------------------------

INSTANTS = [at(-48), at(-2), at(-1), T, at(1)]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Record], list[Asset], list[str]]:
    """One asset-platform history: a few assets, and records mostly by their owners.

    Most records are attributable (so that every rule gets exercised), with strangers, missing
    users, unknown assets and use cases, invalid statuses, null fields, ties on few instants,
    revocations before and after T, id clashes and exact duplicates mixed in.
    """
    assets = []
    for i in range(draw(st.integers(1, 3))):
        assets.append(
            Asset(
                f"a{i}",
                draw(st.sampled_from([f"u{i}"] * 4 + [None])),
                draw(st.sampled_from(["EU", "US", None])),
                at(-1000),
                draw(st.sampled_from([None] * 8 + [at(-1), T, at(1)])),
            )
        )
    if draw(st.integers(0, 9)) == 0:  # a second row for an asset, agreeing or not
        first = assets[0]
        assets.append(replace(first, owner_user_id=draw(st.sampled_from(["u0", "u9", None]))))
    records: list[Record] = []
    for k in range(draw(st.integers(0, 16))):
        asset_id = draw(st.sampled_from([*[a.asset_id for a in assets] * 4, "a9", None]))
        owner = next((a.owner_user_id for a in assets if a.asset_id == asset_id), None)
        records.append(
            Record(
                id=draw(st.sampled_from([f"r{k}"] * 11 + [None])),
                user_id=draw(st.sampled_from([owner] * 6 + ["stranger", None])),
                asset_id=asset_id,
                use_case=draw(st.sampled_from([REC] * 4 + [GEN] * 3 + [MOD, "other", None])),
                consent_status=draw(
                    st.sampled_from(
                        ["granted"] * 9 + ["denied", "revoked", "revoked", "Granted", "", None]
                    )
                ),
                policy_version=draw(st.sampled_from(["v1", "v2", "v2", "v2", "v3", None])),
                jurisdiction=draw(st.sampled_from(["EU", "US", "US", "BR", None, None])),
                captured_at=draw(st.sampled_from([*INSTANTS[:3] * 3, T, T, at(1), None])),
                revoked_at=draw(st.sampled_from([None] * 10 + [at(-50), at(-1), T, at(1)])),
            )
        )
    # Exact copies (the same record written twice) and id clashes with new content.
    for index in draw(st.lists(st.integers(0, 9), max_size=2)):
        if index < len(records):
            copy = records[index]
            if draw(st.booleans()):
                copy = replace(copy, captured_at=draw(st.sampled_from(INSTANTS)))
            records.append(copy)
    extra = draw(st.lists(st.sampled_from(["a0", "x1", "x2"]), max_size=2))
    return records, assets, extra


def _spark_rows(df: DataFrame) -> list[tuple[object, ...]]:
    return _comparable(df.select(*consent.EFFECTIVE_CONSENT_COLUMNS))


def _model_rows(decisions: list[model.Decision]) -> list[tuple[object, ...]]:
    return sorted(
        (
            d.asset_id,
            d.use_case,
            d.decision,
            d.reason,
            d.consent_record_id,
            d.policy_version,
            None if d.captured_at is None else consent.as_of_micros(d.captured_at),
            d.jurisdiction,
        )
        for d in decisions
    )


def _namespaced(
    h: int, history: tuple[list[Record], list[Asset], list[str]], prefix: str = "h"
) -> tuple[list[Record], list[Asset], list[str]]:
    """Prefix every id of one history so that several histories can share one Spark run."""

    def ns(value: str | None) -> str | None:
        return None if value is None else f"{prefix}{h}:{value}"

    records, assets, extra = history
    return (
        [replace(r, id=ns(r.id), user_id=ns(r.user_id), asset_id=ns(r.asset_id)) for r in records],
        [replace(a, asset_id=ns(a.asset_id), owner_user_id=ns(a.owner_user_id)) for a in assets],
        [f"{prefix}{h}:{x}" for x in extra],
    )


# Each example evaluates a batch of independent histories in one Spark run (ids are
# namespaced per history), so that many histories are checked without one run each: a run's
# fixed cost dominates, so few examples of large batches check the most histories per second.
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(histories(), min_size=1, max_size=14), as_of=st.sampled_from([at(-1), T]))
def test_spark_matches_reference_model(
    spark: SparkSession,
    batch: list[tuple[list[Record], list[Asset], list[str]]],
    as_of: datetime,
) -> None:
    records: list[Record] = []
    assets: list[Asset] = []
    extra: list[str] = []
    for h, history in enumerate(batch):
        r, a, x = _namespaced(h, history)
        records += r
        assets += a
        extra += x
    actual = _spark_rows(evaluate(spark, records, assets, as_of=as_of, extra=extra))
    expected = _model_rows(
        model.effective_consent(
            records, assets, use_cases=USE_CASES, as_of=as_of, extra_asset_ids=extra
        )
    )
    assert actual == expected
    assert ignored(spark, records, assets, as_of=as_of) == model.ignored_record_counts(
        records, assets, use_cases=USE_CASES, as_of=as_of
    )


# --- Property: no spelling of a value turns a denial into a grant ---------------------------

#: Surrounding whitespace a perturbation may add: ASCII and Unicode blanks, line breaks.
PADDING = ["", "", " ", "  ", "\t", "\n", " \r\n", "\u00a0", "\u2003", "\u3000"]


def _perturb(draw: st.DrawFn, value: str | None, case: str) -> str | None:
    """Another spelling of ``value``'s canonical value: re-cased (per ASCII letter, unless the
    case is significant) and padded; None perhaps "" or blank. A value that is already not
    canonical (the histories hold ``Granted``) is left alone: re-casing it could *fix* it."""
    if value is None:
        return draw(st.sampled_from([None, None, None, "", " ", "\t"]))
    if model.noncanonical(value, case):
        return value
    kind = draw(st.sampled_from(["same", "same", "case", "pad", "both"]))
    if kind in ("case", "both") and case != "keep":
        flips = draw(st.lists(st.booleans(), min_size=len(value), max_size=len(value)))
        value = "".join(
            c.swapcase() if f and c.isascii() else c for c, f in zip(value, flips, strict=True)
        )
    if kind in ("pad", "both"):
        value = draw(st.sampled_from(PADDING)) + value + draw(st.sampled_from(PADDING))
    return value


def _perturbed(
    draw: st.DrawFn, history: tuple[list[Record], list[Asset], list[str]]
) -> tuple[list[Record], list[Asset], list[str]]:
    """The same history with about half its records and assets spelled another way: each of
    their ids, use case, status, policy version and jurisdiction perhaps re-cased, padded, or
    (null) written "" or blank. The other half is left as is, so that grants remain."""
    records, assets, extra = history
    out_records = []
    for r in records:
        if draw(st.booleans()):
            spelled = {
                name: _perturb(draw, getattr(r, name), case)
                for name, case in model.RECORD_CASES.items()
            }
            r = replace(r, **cast(dict[str, Any], spelled))
        out_records.append(r)
    out_assets = []
    for a in assets:
        if draw(st.booleans()):
            a = replace(
                a,
                asset_id=_perturb(draw, a.asset_id, "lower"),
                owner_user_id=_perturb(draw, a.owner_user_id, "lower"),
                jurisdiction=_perturb(draw, a.jurisdiction, "upper"),
            )
        out_assets.append(a)
    return out_records, out_assets, [_perturb(draw, x, "lower") or "" for x in extra]


@st.composite
def _perturbations(
    draw: st.DrawFn, history: tuple[list[Record], list[Asset], list[str]]
) -> tuple[list[Record], list[Asset], list[str]]:
    return _perturbed(draw, history)


def _renamed(
    rows: list[tuple[object, ...]], prefix: str
) -> dict[tuple[object, ...], tuple[object, ...]]:
    """Rows of one namespace keyed by (asset_id, use_case) with the namespace removed."""

    def strip(value: object) -> object:
        return value[len(prefix) :] if isinstance(value, str) else value

    out: dict[tuple[object, ...], tuple[object, ...]] = {}
    for row in rows:
        if isinstance(row[0], str) and row[0].startswith(prefix):
            out[(strip(row[0]), row[1])] = (*row[2:4], strip(row[4]), *row[5:])
    return out


# Each example evaluates, in one Spark run, a batch of histories (namespace "o<h>:") next to
# copies of them with their values perturbed (namespace "p<h>:"). A grant on a perturbed copy
# must be exactly the grant of the original (it can only rest on values left canonical), and
# the model, which canonicalises separately, must agree with Spark on everything.
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(histories(), min_size=1, max_size=16),
    as_of=st.sampled_from([at(-1), T]),
    data=st.data(),
)
def test_no_perturbation_of_case_or_whitespace_turns_a_denial_into_a_grant(
    spark: SparkSession,
    batch: list[tuple[list[Record], list[Asset], list[str]]],
    as_of: datetime,
    data: st.DataObject,
) -> None:
    original: tuple[list[Record], list[Asset], list[str]] = ([], [], [])
    perturbed: tuple[list[Record], list[Asset], list[str]] = ([], [], [])
    for h, history in enumerate(batch):
        plain = _namespaced(h, history, prefix="o")
        spelled = data.draw(_perturbations(_namespaced(h, history, prefix="p")))
        for group, part in ((original, plain), (perturbed, spelled)):
            group[0].extend(part[0])
            group[1].extend(part[1])
            group[2].extend(part[2])
    records = original[0] + perturbed[0]
    assets = original[1] + perturbed[1]
    extra = original[2] + perturbed[2]

    actual = _spark_rows(evaluate(spark, records, assets, as_of=as_of, extra=extra))
    before, after = _renamed(actual, "o"), _renamed(actual, "p")
    assert set(after) == set(before)
    for key, row in after.items():
        if row[0] == "granted":
            assert before[key] == row, key
    assert actual == _model_rows(
        model.effective_consent(
            records, assets, use_cases=USE_CASES, as_of=as_of, extra_asset_ids=extra
        )
    )
    counts = ignored(spark, records, assets, as_of=as_of)
    assert counts == model.ignored_record_counts(records, assets, use_cases=USE_CASES, as_of=as_of)
    # Counting compares canonical values too: the perturbed copy counts exactly the same.
    assert model.ignored_record_counts(
        perturbed[0], perturbed[1], use_cases=USE_CASES, as_of=as_of
    ) == model.ignored_record_counts(original[0], original[1], use_cases=USE_CASES, as_of=as_of)
