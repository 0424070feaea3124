"""Effective consent: one test per rule and tie-break, edge cases, and a model-based property."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from chispa import assert_df_equality
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

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
) -> DataFrame:
    extra_df = (
        None if extra is None else spark.createDataFrame([(a,) for a in extra], "asset_id string")
    )
    return consent.effective_consent(
        records_df(spark, records),
        assets_df(spark, assets),
        use_cases=USE_CASES,
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


# --- Rule 1: asset unknown / deleted -------------------------------------------------------


def test_asset_unknown_for_records_and_lineage_ids(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1", asset="a9")], [asset("a1")], extra=["x1", "a1"])
    assert_decisions(
        spark,
        result,
        [
            ("a1", REC, "no_consent_record", None),
            ("a9", REC, "asset_unknown", None),
            ("x1", REC, "asset_unknown", None),
        ],
    )
    assert ignored(spark, [rec("r1", asset="a9"), rec("r2", asset=None)])["asset_unknown"] == 2


def test_asset_unknown_covers_every_use_case(spark: SparkSession) -> None:
    result = evaluate(spark, [], [], extra=["x1"])
    assert_decisions(
        spark,
        result,
        [("x1", uc, "asset_unknown", None) for uc in (REC, GEN, MOD)],
        use_case=None,
    )


def test_asset_deleted_at_or_before_t(spark: SparkSession) -> None:
    cases = [("d1", at(-1), "asset_deleted", None), ("d2", T, "asset_deleted", None)]
    cases += [("d3", at(1), "granted", "r3")]
    records = [rec(f"r{a[1]}", asset=a) for a, _, _, _ in cases]
    assets = [asset(a, deleted=deleted) for a, deleted, _, _ in cases]
    assert_decisions(
        spark,
        evaluate(spark, records, assets),
        [(a, REC, reason, rid) for a, _, reason, rid in cases],
    )


# --- Rules 2-3: candidates and attribution ---------------------------------------------------


def test_no_consent_record(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1", use_case=GEN)], [asset()])
    assert_decisions(spark, result, [("a1", REC, "no_consent_record", None)])


def test_unattributable_records_are_ignored_and_counted(spark: SparkSession) -> None:
    # One asset per way of not being attributable; each is counted once under its reason.
    records = [
        rec("r1", asset="i1", user="stranger"),
        rec("r2", asset="i2", user=None),
        Record("r3", "u1", "i3", REC, "granted", "v1", None, None, None),
        rec("r4", asset="i4", captured=at(1)),
        rec("r5", asset="i5", use_case="training_of_robots"),
        rec("r6", asset="i6", use_case=None),
        rec("r7", asset="nowhere"),
    ]
    assets = [asset(f"i{i}") for i in range(1, 7)]
    assert_decisions(
        spark,
        evaluate(spark, records, assets),
        [(f"i{i}", REC, "no_consent_record", None) for i in range(1, 7)]
        + [("nowhere", REC, "asset_unknown", None)],
    )
    assert ignored(spark, records, assets) == {
        "unknown_use_case": 2,
        "asset_unknown": 1,
        "missing_captured_at": 1,
        "captured_after_as_of": 1,
        "missing_user_id": 1,
        "not_owner": 1,
    }


def test_stranger_cannot_revoke_for_the_owner(spark: SparkSession) -> None:
    records = [
        rec("r1", captured=at(-5)),
        rec("r2", user="stranger", status="revoked", captured=at(-1)),
    ]
    assert_decisions(spark, evaluate(spark, records), [("a1", REC, "granted", "r1")])


def test_asset_without_owner_attributes_nothing(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1")], [asset(owner=None)])
    assert_decisions(spark, result, [("a1", REC, "no_consent_record", None)])
    assert ignored(spark, [rec("r1")], [asset(owner=None)])["not_owner"] == 1


def test_conflicting_asset_rows_attribute_nothing(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1")], [asset(owner="u1"), asset(owner="u2")])
    assert_decisions(spark, result, [("a1", REC, "no_consent_record", None)])


def test_identical_asset_rows_are_one_asset(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1")], [asset(), asset()])
    assert_decisions(spark, result, [("a1", REC, "granted", "r1")])


def test_records_captured_after_t_are_ignored(spark: SparkSession) -> None:
    records = [rec("r1", captured=at(-1)), rec("r2", status="denied", captured=at(1))]
    assert_decisions(spark, evaluate(spark, records), [("a1", REC, "granted", "r1")])
    # An audit at an earlier instant does not see the later grant either.
    assert_decisions(
        spark, evaluate(spark, records, as_of=at(-2)), [("a1", REC, "no_consent_record", None)]
    )
    # A record captured exactly at T counts.
    assert_decisions(
        spark, evaluate(spark, [rec("r3", captured=T)]), [("a1", REC, "granted", "r3")]
    )


# --- Rule 4: latest record, ties -----------------------------------------------------------


def test_latest_record_wins(spark: SparkSession) -> None:
    grant_then_deny = [rec("r1", captured=at(-5)), rec("r2", status="denied", captured=at(-1))]
    deny_then_grant = [rec("r1", status="denied", captured=at(-5)), rec("r2", captured=at(-1))]
    assert_decisions(spark, evaluate(spark, grant_then_deny), [("a1", REC, "denied", "r2")])
    assert_decisions(spark, evaluate(spark, deny_then_grant), [("a1", REC, "granted", "r2")])


TIES = [
    (rec("w", status="revoked"), rec("l", status=None), "revoked"),
    (rec("w", status="revoked"), rec("l", status="denied"), "revoked"),
    (rec("w", status="bogus"), rec("l", status="denied"), "malformed_record"),
    (rec("w", status="denied"), rec("l", status="granted"), "denied"),
    (rec("w", status="granted", revoked=at(-1)), rec("l", status="denied"), "revoked"),
    (rec("w", policy="v9"), rec("l", policy="v1"), "policy_version_not_accepted"),
]


def test_tie_goes_to_the_most_restrictive(spark: SparkSession) -> None:
    # Each tie on its own asset, in both input orders; the same instant for both records.
    records, assets, expected = [], [], []
    for i, (winner, loser, reason) in enumerate(TIES):
        for order, pair in enumerate(([winner, loser], [loser, winner])):
            a = f"t{i}{order}"
            records += [replace(r, id=f"{r.id}{a}", asset_id=a) for r in pair]
            assets.append(asset(a))
            expected.append((a, REC, reason, f"w{a}"))
    assert_decisions(spark, evaluate(spark, records, assets), expected)


def test_tie_between_equal_grants_is_deterministic(spark: SparkSession) -> None:
    records = [rec("r1", policy="v1"), rec("r2", policy="v2")]
    assert_decisions(spark, evaluate(spark, records), [("a1", REC, "granted", "r2")])
    assert_decisions(spark, evaluate(spark, records[::-1]), [("a1", REC, "granted", "r2")])


# --- Rule 5: malformed, revoked, denied ------------------------------------------------------


def test_malformed_record_never_grants(spark: SparkSession) -> None:
    bad = {
        "upper-case": rec("r1", status="GRANTED"),
        "whitespace": rec("r2", status="granted "),
        "null-status": rec("r3", status=None),
        "null-policy": rec("r4", policy=None),
        "revoked-before-captured": rec("r5", captured=at(-5), revoked=at(-6)),
        "null-id": rec(None),
    }
    records = [replace(r, asset_id=name) for name, r in bad.items()]
    assert_decisions(
        spark,
        evaluate(spark, records, [asset(name) for name in bad]),
        [(name, REC, "malformed_record", r.id) for name, r in bad.items()],
    )


def test_malformed_is_a_denial_at_its_captured_at(spark: SparkSession) -> None:
    later_grant = [rec("r1", policy=None, captured=at(-5)), rec("r2", captured=at(-1))]
    assert_decisions(spark, evaluate(spark, later_grant), [("a1", REC, "granted", "r2")])


def test_duplicate_id_with_different_content_is_malformed_everywhere(
    spark: SparkSession,
) -> None:
    records = [
        rec("dup", asset="a1"),
        rec("dup", asset="a2", user="u2"),
        rec("ok", asset="a3", user="u3"),
    ]
    assets = [asset("a1"), asset("a2", owner="u2"), asset("a3", owner="u3")]
    assert_decisions(
        spark,
        evaluate(spark, records, assets),
        [
            ("a1", REC, "malformed_record", "dup"),
            ("a2", REC, "malformed_record", "dup"),
            ("a3", REC, "granted", "ok"),
        ],
    )


def test_duplicate_id_conflict_in_another_use_case_still_counts(spark: SparkSession) -> None:
    records = [rec("dup"), rec("dup", use_case="not_configured")]
    assert_decisions(spark, evaluate(spark, records), [("a1", REC, "malformed_record", "dup")])


def test_duplicate_id_with_identical_content_is_one_record(spark: SparkSession) -> None:
    records = [rec("dup"), rec("dup")]
    assert_decisions(spark, evaluate(spark, records), [("a1", REC, "granted", "dup")])


def test_revoked_status(spark: SparkSession) -> None:
    assert_decisions(
        spark, evaluate(spark, [rec("r1", status="revoked")]), [("a1", REC, "revoked", "r1")]
    )


def test_in_place_revocation(spark: SparkSession) -> None:
    cases = {"before-t": (at(-1), "revoked"), "at-t": (T, "revoked"), "after-t": (at(1), "granted")}
    records = [rec(f"r-{a}", asset=a, captured=at(-5), revoked=r) for a, (r, _) in cases.items()]
    assert_decisions(
        spark,
        evaluate(spark, records, [asset(a) for a in cases]),
        [(a, REC, reason, f"r-{a}") for a, (_, reason) in cases.items()],
    )


def test_revoked_at_equal_to_captured_at_is_a_revocation_not_malformed(
    spark: SparkSession,
) -> None:
    result = evaluate(spark, [rec("r1", captured=at(-5), revoked=at(-5))])
    assert_decisions(spark, result, [("a1", REC, "revoked", "r1")])


def test_denied_status(spark: SparkSession) -> None:
    assert_decisions(
        spark, evaluate(spark, [rec("r1", status="denied")]), [("a1", REC, "denied", "r1")]
    )


def test_revoked_before_denied_in_rule_order(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1", status="denied", revoked=at(-1))])
    assert_decisions(spark, result, [("a1", REC, "revoked", "r1")])


# --- Rules 6-8: policy version, jurisdiction, grant -----------------------------------------


def test_policy_version_not_accepted(spark: SparkSession) -> None:
    result = evaluate(spark, [rec("r1", use_case=GEN, policy="v1")])
    assert_decisions(
        spark, result, [("a1", GEN, "policy_version_not_accepted", "r1")], use_case=GEN
    )


def test_jurisdiction_rules_and_fallback(spark: SparkSession) -> None:
    cases = [
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
    records, assets, expected = [], [], []
    for i, (use_case, record_jurisdiction, asset_jurisdiction, reason) in enumerate(cases):
        policy = USE_CASES[use_case].accepted_policy_versions[0]
        records.append(
            rec(
                f"r{i}",
                asset=f"j{i}",
                use_case=use_case,
                policy=policy,
                jurisdiction=record_jurisdiction,
            )
        )
        assets.append(asset(f"j{i}", jurisdiction=asset_jurisdiction))
        expected.append((f"j{i}", use_case, reason, f"r{i}"))
    result = evaluate(spark, records, assets)
    assert_decisions(
        spark,
        result.join(
            spark.createDataFrame(
                [(a, u) for a, u, _, _ in expected], "asset_id string, use_case string"
            ),
            on=["asset_id", "use_case"],
        ),
        expected,
        use_case=None,
    )


def test_grant_carries_its_terms(spark: SparkSession) -> None:
    captured = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    record = rec("r1", use_case=GEN, policy="v2", jurisdiction="US", captured=captured)
    result = evaluate(spark, [record], [asset(jurisdiction="EU")]).filter(F.col("use_case") == GEN)
    schema = StructType(
        [
            StructField(c, TimestampType() if c == "captured_at" else StringType(), True)
            for c in consent.EFFECTIVE_CONSENT_COLUMNS
        ]
    )
    expected = spark.createDataFrame(
        [("a1", GEN, "granted", "granted", "r1", "v2", captured, "US")], schema
    )
    assert_df_equality(result, expected, ignore_nullable=True)


def test_denials_without_a_decisive_record_carry_no_terms(spark: SparkSession) -> None:
    row = evaluate(spark, [], [asset(jurisdiction="EU")]).filter(F.col("use_case") == REC).first()
    assert row is not None
    assert row.asDict() == {
        "asset_id": "a1",
        "use_case": REC,
        "decision": "denied",
        "reason": "no_consent_record",
        "consent_record_id": None,
        "policy_version": None,
        "captured_at": None,
        "jurisdiction": "EU",
    }


# --- Rule 2: canonical values (case, surrounding whitespace, empty strings) ----------------


def assert_selected(
    spark: SparkSession,
    result: DataFrame,
    expected: Sequence[tuple[str, str, str, str | None]],
) -> None:
    """Like :func:`assert_decisions`, for just the listed (asset_id, use_case) rows."""
    keys = spark.createDataFrame(
        [(a, u) for a, u, _, _ in expected], "asset_id string, use_case string"
    )
    assert_decisions(spark, result.join(keys, on=["asset_id", "use_case"]), expected, use_case=None)


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


def test_jurisdiction_case_whitespace_and_empty_string_cannot_bypass_rules(
    spark: SparkSession,
) -> None:
    # (use case, record jurisdiction, asset jurisdiction, reason); generative_training denies
    # EU, moderation allows only US, recommendation has no rules.
    cases = [
        (GEN, "eu", "US", "jurisdiction_blocked"),
        (GEN, "EU ", "US", "jurisdiction_blocked"),
        (GEN, "\u00a0Eu\t", "US", "jurisdiction_blocked"),
        (GEN, "", "EU", "jurisdiction_blocked"),  # "" is null: the asset's EU applies
        (GEN, "", None, "jurisdiction_unknown"),
        (GEN, "", "", "jurisdiction_unknown"),
        (GEN, None, "", "jurisdiction_unknown"),  # an asset's "" no longer hides it
        (GEN, None, "eu", "jurisdiction_blocked"),
        (GEN, None, " EU", "jurisdiction_blocked"),
        (GEN, "us", "EU", "malformed_record"),  # would grant through "us": never
        (GEN, None, "us", "malformed_record"),  # ... nor through the asset's "us"
        (GEN, "  ", "US", "malformed_record"),  # blank is a non-canonical null
        (GEN, "", "US", "granted"),  # "" is plain null, and the asset's US is clean
        (MOD, "us", None, "malformed_record"),
        (MOD, " EU", "US", "jurisdiction_blocked"),
        (MOD, None, "us", "malformed_record"),
        (MOD, "", "US", "granted"),
        (REC, "eu", None, "malformed_record"),  # the record's own value, rules or not
        (REC, None, "us", "granted"),  # without rules the asset's is not consulted
    ]
    records, assets, expected = [], [], []
    for i, (use_case, record_jurisdiction, asset_jurisdiction, reason) in enumerate(cases):
        records.append(
            rec(
                f"r{i}",
                asset=f"j{i}",
                use_case=use_case,
                policy=USE_CASES[use_case].accepted_policy_versions[0],
                jurisdiction=record_jurisdiction,
            )
        )
        assets.append(asset(f"j{i}", jurisdiction=asset_jurisdiction))
        expected.append((f"j{i}", use_case, reason, f"r{i}"))
    result = evaluate(spark, records, assets)
    assert_selected(spark, result, expected)
    # The output carries the canonical jurisdiction.
    jurisdictions = {
        (r["asset_id"], r["use_case"]): r["jurisdiction"]
        for r in result.select("asset_id", "use_case", "jurisdiction").collect()
    }
    assert jurisdictions[("j1", GEN)] == "EU"
    assert jurisdictions[("j7", GEN)] == "EU"
    assert jurisdictions[("j4", GEN)] is None
    assert jurisdictions[("j12", GEN)] == "US"


def test_status_case_and_whitespace_restricts_but_never_grants(spark: SparkSession) -> None:
    # Each asset: a clean grant, then a later record with a non-canonical status.
    later = {
        "s1": (" Revoked", None, "revoked"),
        "s2": ("REVOKED\n", None, "revoked"),
        "s3": ("Denied ", None, "denied"),
        "s4": ("GRANTED", None, "malformed_record"),
        "s5": (" granted", None, "malformed_record"),
        "s6": (" granted", at(-0.5), "revoked"),  # revoked in place: restricts
        "s7": ("", None, "malformed_record"),  # "" is a null status
        "s8": ("\t", None, "malformed_record"),
    }
    records, expected = [], []
    for a, (status, revoked, reason) in later.items():
        records.append(rec(f"g-{a}", asset=a, captured=at(-5)))
        records.append(rec(f"x-{a}", asset=a, status=status, captured=at(-1), revoked=revoked))
        expected.append((a, REC, reason, f"x-{a}"))
    assert_decisions(spark, evaluate(spark, records, [asset(a) for a in later]), expected)


def test_uppercase_or_padded_ids_revoke_but_never_grant(spark: SparkSession) -> None:
    owner = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
    ids = [f"3f2b8c1e-9a4d-4e7b-8c2a-1b2c3d4e5f6{i}" for i in range(5)]
    records = [
        # ids[0]: a clean grant, then a revocation written in upper case: revoked.
        rec("r0", user=owner, asset=ids[0], captured=at(-5)),
        rec("R0-X", user=owner.upper(), asset=ids[0].upper(), status="revoked", captured=at(-1)),
        # ids[1]: a grant through an upper-case asset id: malformed, and named canonically.
        rec("r1", user=owner, asset=ids[1].upper()),
        # ids[2]: a grant through a padded user id.
        rec("r2", user=f" {owner}", asset=ids[2]),
        # ids[3]: a grant through a non-canonical record id.
        rec(" R3", user=owner, asset=ids[3]),
        # ids[4]: a clean grant, then a denial by a padded, upper-case user: denied.
        rec("r4", user=owner, asset=ids[4], captured=at(-5)),
        rec("r4-x", user=owner.upper() + "\t", asset=ids[4], status="denied", captured=at(-1)),
    ]
    assets = [asset(a, owner=owner) for a in ids]
    result = evaluate(spark, records, assets)
    assert_decisions(
        spark,
        result,
        [
            (ids[0], REC, "revoked", "r0-x"),
            (ids[1], REC, "malformed_record", "r1"),
            (ids[2], REC, "malformed_record", "r2"),
            (ids[3], REC, "malformed_record", "r3"),
            (ids[4], REC, "denied", "r4-x"),
        ],
    )
    assert set(ignored(spark, records, assets).values()) == {0}


def test_use_case_case_and_whitespace_restricts_but_never_grants(spark: SparkSession) -> None:
    records = [
        rec("r1", asset="a1", captured=at(-5)),
        rec("r2", asset="a1", use_case=" Recommendation", status="revoked", captured=at(-1)),
        rec("r3", asset="a2", use_case="RECOMMENDATION"),
        rec("r4", asset="a3", use_case="recommendation\u00a0"),
        rec("r5", asset="a4", use_case="recommendations"),  # another use case: ignored
    ]
    assets = [asset(a) for a in ("a1", "a2", "a3", "a4")]
    assert_decisions(
        spark,
        evaluate(spark, records, assets),
        [
            ("a1", REC, "revoked", "r2"),
            ("a2", REC, "malformed_record", "r3"),
            ("a3", REC, "malformed_record", "r4"),
            ("a4", REC, "no_consent_record", None),
        ],
    )
    assert ignored(spark, records, assets)["unknown_use_case"] == 1


def test_policy_version_is_trimmed_but_its_case_is_kept(spark: SparkSession) -> None:
    cases = {
        "p1": (" v1", "granted", "malformed_record"),
        "p2": ("V1", "granted", "policy_version_not_accepted"),
        "p3": ("", "granted", "malformed_record"),  # "" is a null policy version
        "p4": (" v1", "revoked", "revoked"),
        "p5": ("V1 ", "granted", "policy_version_not_accepted"),
    }
    records = [
        rec(f"r-{a}", asset=a, policy=policy, status=status)
        for a, (policy, status, _) in cases.items()
    ]
    result = evaluate(spark, records, [asset(a) for a in cases])
    assert_decisions(spark, result, [(a, REC, r, f"r-{a}") for a, (_, _, r) in cases.items()])
    policies = {
        r["asset_id"]: r["policy_version"]
        for r in result.filter(F.col("use_case") == REC)
        .select("asset_id", "policy_version")
        .collect()
    }
    assert policies == {"p1": "v1", "p2": "V1", "p3": None, "p4": "v1", "p5": "V1"}


def test_duplicate_ids_are_compared_in_canonical_form(spark: SparkSession) -> None:
    records = [
        # One record, written twice: the same canonical content is not a conflict.
        rec("d1", asset="a1", status="revoked"),
        rec(" D1", asset="A1", status=" REVOKED"),
        # A clean grant and its non-canonical copy: the copy wins the tie and denies.
        rec("d2", asset="a2"),
        rec("D2", asset="a2"),
        # Canonically different content under one id: both malformed.
        rec("d3", asset="a3"),
        rec("D3", asset="a3", status="denied"),
    ]
    assets = [asset(a) for a in ("a1", "a2", "a3")]
    assert_decisions(
        spark,
        evaluate(spark, records, assets),
        [
            ("a1", REC, "revoked", "d1"),
            ("a2", REC, "malformed_record", "d2"),
            ("a3", REC, "malformed_record", "d3"),
        ],
    )


def test_noncanonical_assets_rows_restrict_but_never_grant(spark: SparkSession) -> None:
    assets = [
        asset(" A1", owner="U1"),  # a grant would rest on its non-canonical id and owner
        asset("a2", owner="u2\t"),
        asset("a3 ", deleted=at(-1)),  # still deletes
        asset("a4", jurisdiction="EU"),  # two rows of one asset agreeing canonically
        asset("A4", jurisdiction="eu"),
        asset("a5"),  # clean: granted
    ]
    records = [
        rec("r1", asset="a1"),
        rec("r2", asset="a2", user="u2", captured=at(-5)),
        rec("r2-x", asset="a2", user="u2", status="revoked", captured=at(-1)),
        rec("r3", asset="a3"),
        rec("r4", asset="a4", use_case=GEN, policy="v2"),
        rec("r5", asset="a5"),
    ]
    result = evaluate(spark, records, assets)
    assert_decisions(
        spark,
        result,
        [
            ("a1", REC, "malformed_record", "r1"),
            ("a2", REC, "revoked", "r2-x"),
            ("a3", REC, "asset_deleted", None),
            ("a4", REC, "no_consent_record", None),
            ("a5", REC, "granted", "r5"),
        ],
    )
    assert_selected(spark, result, [("a4", GEN, "jurisdiction_blocked", "r4")])
    assert set(ignored(spark, records, assets).values()) == {0}


def test_empty_and_blank_ids_are_null(spark: SparkSession) -> None:
    assets = [asset("a1"), asset("b1", owner=""), asset("", owner="u1"), asset("  ")]
    records = [
        rec("r1", asset="a1", user=""),  # missing user
        rec("r2", asset="a1", user="  "),  # missing user (and non-canonical)
        rec("r3", asset=""),  # no asset
        rec("r4", asset=" \t"),
        rec("r5", asset="b1"),  # the owner is unknown: attributes nothing
        rec("r6", asset="a1", use_case=""),  # no use case
    ]
    result = evaluate(spark, records, assets, extra=["", " A1 ", "X1"])
    assert_decisions(
        spark,
        result,
        [
            ("a1", REC, "no_consent_record", None),
            ("b1", REC, "no_consent_record", None),
            ("x1", REC, "asset_unknown", None),
        ],
    )
    assert ignored(spark, records, assets) == {
        "unknown_use_case": 1,
        "asset_unknown": 2,
        "missing_captured_at": 0,
        "captured_after_as_of": 0,
        "missing_user_id": 2,
        "not_owner": 1,
    }


def test_ignored_counts_compare_canonical_values(spark: SparkSession) -> None:
    records = [
        rec("r1", use_case=" Recommendation"),  # configured, attributed
        rec("r2", use_case="recommendations"),  # unknown use case
        rec("r3", user=" U1 "),  # the owner
        rec("r4", user="u2"),  # not the owner
        rec("r5", asset=" A1"),  # a known asset
        rec("r6", asset="a1\u200b"),  # not whitespace: another, unknown asset
    ]
    assert ignored(spark, records) == {
        "unknown_use_case": 1,
        "asset_unknown": 1,
        "missing_captured_at": 0,
        "captured_after_as_of": 0,
        "missing_user_id": 0,
        "not_owner": 1,
    }


def test_deny_list_codes_are_canonicalised_allow_list_codes_are_not(
    spark: SparkSession,
) -> None:
    # Built without validation: whatever config validation accepts, a deny entry restricts.
    use_cases = {
        "deny": UseCaseConfig.model_construct(
            accepted_policy_versions=("v1",),
            jurisdictions=JurisdictionRules.model_construct(allow=None, deny=(" eu",)),
        ),
        "allow": UseCaseConfig.model_construct(
            accepted_policy_versions=("v1",),
            jurisdictions=JurisdictionRules.model_construct(allow=("us",), deny=None),
        ),
    }
    records = [
        rec("r1", asset="a1", use_case="deny", jurisdiction="EU"),
        rec("r2", asset="a2", use_case="deny", jurisdiction="US"),
        rec("r3", asset="a3", use_case="allow", jurisdiction="US"),
    ]
    assets = [asset(a) for a in ("a1", "a2", "a3")]
    result = consent.effective_consent(
        records_df(spark, records), assets_df(spark, assets), use_cases=use_cases, as_of=T
    )
    assert_selected(
        spark,
        result,
        [
            ("a1", "deny", "jurisdiction_blocked", "r1"),
            ("a2", "deny", "granted", "r2"),
            ("a3", "allow", "jurisdiction_blocked", "r3"),
        ],
    )
    assert _spark_rows(result) == _model_rows(
        model.effective_consent(records, assets, use_cases=use_cases, as_of=T)
    )


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
    consent.check_schema(df, consent.ASSETS_SCHEMA, table="assets")


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
