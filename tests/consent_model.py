"""A small, obviously-correct, pure-Python model of DESIGN.md's "Effective consent".

It is deliberately naive — loops over lists, one rule per line in the contract's order — so
that it can be checked by reading it next to DESIGN.md, and the Spark implementation is then
checked against it by a property test. It also encodes the choices consentgate.consent
documents where the contract is silent (null id is malformed, duplicate ids are checked over
the whole table, duplicate asset rows are merged, ties among clean grants go to the most
restrictive outcome then the largest id).

Rule 2's canonical values are modelled first and separately: every record and asset is
replaced by its canonical form (ids, use cases and statuses lowercase, jurisdictions uppercase,
policy versions only trimmed; whitespace is what ``str.strip()`` removes; only ASCII letters
change case; an empty string is None) together with flags saying which values were not
canonical. Everything after that is the old model on canonical values, plus one last rule: a
record that would be granted but relies on a non-canonical value (any of its own, its asset's
id or owner, or its asset's jurisdiction when the use case's jurisdiction rules consult it) is
``malformed_record``. Deny-list codes in the config are canonicalised too.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from consentgate.config import UseCaseConfig

STATUSES = ("granted", "denied", "revoked")
# The tie-break order of a record's own outcome, most restrictive first.
RESTRICTIVENESS = (
    "revoked",
    "malformed_record",
    "denied",
    "policy_version_not_accepted",
    "jurisdiction_unknown",
    "jurisdiction_blocked",
    "granted",
)


_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def spelled(value: str | None, case: str) -> str | None:
    """Trimmed and ASCII-case-folded, before "" becomes None."""
    if value is None:
        return None
    value = value.strip()
    if case == "lower":
        return value.translate(_LOWER)
    if case == "upper":
        return value.translate(_UPPER)
    return value


def canonical(value: str | None, case: str) -> str | None:
    return spelled(value, case) or None


def noncanonical(value: str | None, case: str) -> bool:
    return value is not None and value != spelled(value, case)


RECORD_CASES = {
    "id": "lower",
    "user_id": "lower",
    "asset_id": "lower",
    "use_case": "lower",
    "consent_status": "lower",
    "policy_version": "keep",
    "jurisdiction": "upper",
}


@dataclass(frozen=True)
class Record:
    id: str | None
    user_id: str | None
    asset_id: str | None
    use_case: str | None
    consent_status: str | None
    policy_version: str | None
    jurisdiction: str | None
    captured_at: datetime | None
    revoked_at: datetime | None

    def content(self) -> tuple[object, ...]:
        return (
            self.user_id,
            self.asset_id,
            self.use_case,
            self.consent_status,
            self.policy_version,
            self.jurisdiction,
            self.captured_at,
            self.revoked_at,
        )


@dataclass(frozen=True)
class Asset:
    asset_id: str | None
    owner_user_id: str | None
    jurisdiction: str | None
    created_at: datetime | None
    deleted_at: datetime | None


def canonical_record(record: Record) -> tuple[Record, bool]:
    """The record in canonical form, and whether any of its values was not canonical."""
    values: dict[str, Any] = {name: getattr(record, name) for name in RECORD_CASES}
    fields: dict[str, Any] = {name: canonical(v, RECORD_CASES[name]) for name, v in values.items()}
    clean = replace(record, **fields)
    return clean, any(noncanonical(v, RECORD_CASES[name]) for name, v in values.items())


def canonical_asset(asset: Asset) -> tuple[Asset, bool, bool]:
    """The asset in canonical form, whether its id or owner was not canonical, and whether its
    jurisdiction was not."""
    clean = replace(
        asset,
        asset_id=canonical(asset.asset_id, "lower"),
        owner_user_id=canonical(asset.owner_user_id, "lower"),
        jurisdiction=canonical(asset.jurisdiction, "upper"),
    )
    ids = noncanonical(asset.asset_id, "lower") or noncanonical(asset.owner_user_id, "lower")
    return clean, ids, noncanonical(asset.jurisdiction, "upper")


def permits(config: UseCaseConfig, jurisdiction: str) -> bool:
    """The use case's jurisdiction rules; allow-list codes as written, deny-list canonical."""
    rules = config.jurisdictions
    assert rules is not None
    if rules.allow is not None:
        return jurisdiction in rules.allow
    return jurisdiction not in {canonical(code, "upper") for code in rules.deny or ()}


@dataclass(frozen=True)
class Decision:
    asset_id: str
    use_case: str
    decision: str
    reason: str
    consent_record_id: str | None
    policy_version: str | None
    captured_at: datetime | None
    jurisdiction: str | None


@dataclass(frozen=True)
class MergedAsset:
    owner_user_id: str | None
    jurisdiction: str | None
    deleted_at: datetime | None
    ids_noncanonical: bool = False
    jurisdiction_noncanonical: bool = False


def merge_assets(assets: list[Asset]) -> dict[str, MergedAsset]:
    """Several rows for one (canonical) asset id: keep owner/jurisdiction only if all rows
    agree (canonically); an asset is non-canonical if any of its rows is."""
    rows: dict[str, list[tuple[Asset, bool, bool]]] = {}
    for asset in assets:
        clean, ids, jurisdiction = canonical_asset(asset)
        if clean.asset_id is not None:
            rows.setdefault(clean.asset_id, []).append((clean, ids, jurisdiction))
    merged = {}
    for asset_id, group in rows.items():
        owners = {a.owner_user_id for a, _, _ in group}
        jurisdictions = {a.jurisdiction for a, _, _ in group}
        deletions = [a.deleted_at for a, _, _ in group if a.deleted_at is not None]
        merged[asset_id] = MergedAsset(
            owner_user_id=owners.pop() if len(owners) == 1 else None,
            jurisdiction=jurisdictions.pop() if len(jurisdictions) == 1 else None,
            deleted_at=min(deletions) if deletions else None,
            ids_noncanonical=any(ids for _, ids, _ in group),
            jurisdiction_noncanonical=any(j for _, _, j in group),
        )
    return merged


def malformed_ids(records: list[Record]) -> set[str]:
    """Ids shared by rows with different content (over the whole table)."""
    contents: dict[str, set[tuple[object, ...]]] = {}
    for record in records:
        if record.id is not None:
            contents.setdefault(record.id, set()).add(record.content())
    return {rid for rid, seen in contents.items() if len(seen) > 1}


def is_malformed(record: Record, conflicting: set[str]) -> bool:
    if record.id is None or record.id in conflicting:
        return True
    if record.consent_status not in STATUSES:
        return True
    if record.policy_version is None:
        return True
    return (
        record.revoked_at is not None
        and record.captured_at is not None
        and record.revoked_at < record.captured_at
    )


def own_outcome(
    record: Record,
    malformed: bool,
    asset: MergedAsset,
    config: UseCaseConfig,
    as_of: datetime,
    record_noncanonical: bool = False,
) -> str:
    """Rules 5-8 applied to one (canonical) record, as if it were the latest."""
    if malformed:
        return "malformed_record"
    if record.consent_status == "revoked" or (
        record.revoked_at is not None and record.revoked_at <= as_of
    ):
        return "revoked"
    if record.consent_status == "denied":
        return "denied"
    if record.policy_version not in config.accepted_policy_versions:
        return "policy_version_not_accepted"
    jurisdiction = record.jurisdiction if record.jurisdiction is not None else asset.jurisdiction
    if config.jurisdictions is not None:
        # A code without the syntax of one (issue #23 item 6) is no better than none.
        if jurisdiction is None or not config.jurisdictions.readable(jurisdiction):
            return "jurisdiction_unknown"
        if not permits(config, jurisdiction):
            return "jurisdiction_blocked"
    # Rule 2: a non-canonical value may restrict (above) but never grant.
    if record_noncanonical or asset.ids_noncanonical:
        return "malformed_record"
    if (
        config.jurisdictions is not None
        and record.jurisdiction is None
        and asset.jurisdiction_noncanonical
    ):
        return "malformed_record"
    return "granted"


def effective_consent(
    records: list[Record],
    assets: list[Asset],
    *,
    use_cases: dict[str, UseCaseConfig],
    as_of: datetime,
    extra_asset_ids: list[str] | None = None,
) -> list[Decision]:
    merged = merge_assets(assets)
    flagged = [canonical_record(r) for r in records]  # (canonical record, non-canonical?)
    conflicting = malformed_ids([r for r, _ in flagged])
    ids = set(merged)
    ids |= {r.asset_id for r, _ in flagged if r.asset_id is not None}
    ids |= {a for a in (canonical(x, "lower") for x in extra_asset_ids or []) if a is not None}

    out = []
    for asset_id in sorted(ids):
        for use_case in sorted(use_cases):
            out.append(_decide(asset_id, use_case, flagged, merged, conflicting, use_cases, as_of))
    return out


def _decide(
    asset_id: str,
    use_case: str,
    records: list[tuple[Record, bool]],
    merged: dict[str, MergedAsset],
    conflicting: set[str],
    use_cases: dict[str, UseCaseConfig],
    as_of: datetime,
) -> Decision:
    def denied(reason: str, jurisdiction: str | None) -> Decision:
        return Decision(asset_id, use_case, "denied", reason, None, None, None, jurisdiction)

    # Rule 1.
    if asset_id not in merged:
        return denied("asset_unknown", None)
    asset = merged[asset_id]
    if asset.deleted_at is not None and asset.deleted_at <= as_of:
        return denied("asset_deleted", asset.jurisdiction)

    # Rule 2: candidates, attributable to the owner.
    candidates = []
    for record, record_noncanonical in records:
        if record.asset_id != asset_id or record.use_case != use_case:
            continue
        if record.captured_at is None or record.captured_at > as_of:
            continue
        if record.user_id is None or asset.owner_user_id is None:
            continue
        if record.user_id != asset.owner_user_id:
            continue
        candidates.append((record, record_noncanonical))

    # Rule 3.
    if not candidates:
        return denied("no_consent_record", asset.jurisdiction)

    # Rule 4: latest, then most restrictive, then the largest (id, policy, jurisdiction).
    config = use_cases[use_case]

    def jurisdiction_of(record: Record) -> str | None:
        return record.jurisdiction if record.jurisdiction is not None else asset.jurisdiction

    def outcome_of(candidate: tuple[Record, bool]) -> str:
        record, record_noncanonical = candidate
        malformed = is_malformed(record, conflicting)
        return own_outcome(record, malformed, asset, config, as_of, record_noncanonical)

    def sort_key(candidate: tuple[Record, bool]) -> tuple[object, ...]:
        record = candidate[0]
        outcome = outcome_of(candidate)
        restrictiveness = len(RESTRICTIVENESS) - RESTRICTIVENESS.index(outcome)
        # None sorts lowest, as Spark orders nulls in max(struct).
        return (
            record.captured_at,
            restrictiveness,
            (record.id is not None, record.id or ""),
            (record.policy_version is not None, record.policy_version or ""),
            (jurisdiction_of(record) is not None, jurisdiction_of(record) or ""),
        )

    best = max(candidates, key=sort_key)
    latest = best[0]
    # Rules 5-8.
    reason = outcome_of(best)
    return Decision(
        asset_id,
        use_case,
        "granted" if reason == "granted" else "denied",
        reason,
        latest.id,
        latest.policy_version,
        latest.captured_at,
        jurisdiction_of(latest),
    )


def ignored_record_counts(
    records: list[Record],
    assets: list[Asset],
    *,
    use_cases: dict[str, UseCaseConfig],
    as_of: datetime,
) -> dict[str, int]:
    merged = merge_assets(assets)
    records = [canonical_record(r)[0] for r in records]
    counts = dict.fromkeys(
        (
            "unknown_use_case",
            "asset_unknown",
            "missing_captured_at",
            "captured_after_as_of",
            "missing_user_id",
            "not_owner",
        ),
        0,
    )
    for record in records:
        if record.use_case not in use_cases:
            counts["unknown_use_case"] += 1
        elif record.asset_id not in merged:
            counts["asset_unknown"] += 1
        elif record.captured_at is None:
            counts["missing_captured_at"] += 1
        elif record.captured_at > as_of:
            counts["captured_after_as_of"] += 1
        elif record.user_id is None:
            counts["missing_user_id"] += 1
        elif record.user_id != merged[record.asset_id].owner_user_id:
            counts["not_owner"] += 1
    return counts
