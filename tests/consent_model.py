"""A small, obviously-correct, pure-Python model of DESIGN.md's "Effective consent".

It is deliberately naive — loops over lists, one rule per line in the contract's order — so
that it can be checked by reading it next to DESIGN.md, and the Spark implementation is then
checked against it by a property test. It also encodes the choices consentgate.consent
documents where the contract is silent (null id is malformed, duplicate ids are checked over
the whole table, duplicate asset rows are merged, ties among clean grants go to the most
restrictive outcome then the largest id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


def merge_assets(assets: list[Asset]) -> dict[str, MergedAsset]:
    """Several rows for one asset id: keep owner/jurisdiction only if all rows agree."""
    rows: dict[str, list[Asset]] = {}
    for asset in assets:
        if asset.asset_id is not None:
            rows.setdefault(asset.asset_id, []).append(asset)
    merged = {}
    for asset_id, group in rows.items():
        owners = {a.owner_user_id for a in group}
        jurisdictions = {a.jurisdiction for a in group}
        deletions = [a.deleted_at for a in group if a.deleted_at is not None]
        merged[asset_id] = MergedAsset(
            owner_user_id=owners.pop() if len(owners) == 1 else None,
            jurisdiction=jurisdictions.pop() if len(jurisdictions) == 1 else None,
            deleted_at=min(deletions) if deletions else None,
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
) -> str:
    """Rules 5-8 applied to one record, as if it were the latest."""
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
        if jurisdiction is None:
            return "jurisdiction_unknown"
        if not config.jurisdictions.permits(jurisdiction):
            return "jurisdiction_blocked"
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
    conflicting = malformed_ids(records)
    ids = set(merged)
    ids |= {r.asset_id for r in records if r.asset_id is not None}
    ids |= {a for a in extra_asset_ids or [] if a is not None}

    out = []
    for asset_id in sorted(ids):
        for use_case in sorted(use_cases):
            out.append(_decide(asset_id, use_case, records, merged, conflicting, use_cases, as_of))
    return out


def _decide(
    asset_id: str,
    use_case: str,
    records: list[Record],
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
    for record in records:
        if record.asset_id != asset_id or record.use_case != use_case:
            continue
        if record.captured_at is None or record.captured_at > as_of:
            continue
        if record.user_id is None or asset.owner_user_id is None:
            continue
        if record.user_id != asset.owner_user_id:
            continue
        candidates.append(record)

    # Rule 3.
    if not candidates:
        return denied("no_consent_record", asset.jurisdiction)

    # Rule 4: latest, then most restrictive, then the largest (id, policy, jurisdiction).
    config = use_cases[use_case]

    def jurisdiction_of(record: Record) -> str | None:
        return record.jurisdiction if record.jurisdiction is not None else asset.jurisdiction

    def sort_key(record: Record) -> tuple[object, ...]:
        outcome = own_outcome(record, is_malformed(record, conflicting), asset, config, as_of)
        restrictiveness = len(RESTRICTIVENESS) - RESTRICTIVENESS.index(outcome)
        # None sorts lowest, as Spark orders nulls in max(struct).
        return (
            record.captured_at,
            restrictiveness,
            (record.id is not None, record.id or ""),
            (record.policy_version is not None, record.policy_version or ""),
            (jurisdiction_of(record) is not None, jurisdiction_of(record) or ""),
        )

    latest = max(candidates, key=sort_key)
    # Rules 5-8.
    reason = own_outcome(latest, is_malformed(latest, conflicting), asset, config, as_of)
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
