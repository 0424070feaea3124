"""Proof checking needs only the manifest's root: forged, relabelled or misplaced proofs fail;
an exclusion proof discloses nothing about other creators; bad asset ids are bad input."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from consentgate import merkle, verifier
from consentgate.errors import ConsentgateError
from consentgate.manifest import write_manifest
from consentgate.proofs import check_asset_id, verify_proof

T = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
ASSETS = ["a-10", "a-20", "a-30", "a-40", "a-50"]


def _entry(asset: str) -> bytes:
    return verifier.allowlist_entry(asset, f"rec-{asset}", "2026-03", T, "US")


def _root(entries: list[bytes]) -> str:
    tree = verifier.allowlist_tree_entries(entries)
    return merkle.merkle_root([merkle.leaf_hash(d) for _, d in tree]).hex()


def _manifest(tmp_path: Path, run: str, entries: list[bytes], **allowlist: Any) -> Path:
    path = tmp_path / "lake" / "_consentgate" / "manifests" / run / "manifest.json"
    body = {
        "format": "consentgate-manifest/1",
        "run_id": run,
        "model_version": run,
        "allowlist": {
            "asset_count": len(entries),
            "merkle_root": _root(entries),
            "scheme": verifier.ALLOWLIST_SCHEME,
            **allowlist,
        },
    }
    write_manifest(path, body)
    return path


def _proof(assets: list[str], asset: str) -> dict[str, Any]:
    return verifier.build_allowlist_proof([_entry(a) for a in assets], asset)


def _ordered(assets: list[str]) -> list[str]:
    """The assets in tree order (by key hash), so a test can pick true neighbours."""
    return sorted(assets, key=verifier.allowlist_key)


def test_inclusion_and_exclusion_verify(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "r1", [_entry(a) for a in ASSETS])
    inclusion = _proof(ASSETS, "a-30")
    assert inclusion["included"] and inclusion["leaf"]["record"]["consent_record_id"] == "rec-a-30"
    result = verify_proof(inclusion, manifest_path=manifest)
    assert result["ok"] and result["included"] and result["run_id"] == "r1"
    assert result["asset_id"] == "a-30"
    keys = sorted(verifier.allowlist_key(a) for a in ASSETS)
    probes = ["a-00", "a-35", "a-99", "not-a-uuid", str(uuid.UUID(int=7))]
    sides = set()
    for asset in probes:
        exclusion = _proof(ASSETS, asset)
        assert not exclusion["included"]
        assert verify_proof(exclusion, manifest_path=manifest)["ok"], asset
        sides.add((exclusion["left"] is None, exclusion["right"] is None))
    # below every key, above every key and between two are all exercised somewhere
    below = next(a for a in (f"p{i}" for i in range(999)) if verifier.allowlist_key(a) < keys[0])
    above = next(a for a in (f"p{i}" for i in range(999)) if verifier.allowlist_key(a) > keys[-1])
    for asset in (below, above):
        exclusion = _proof(ASSETS, asset)
        assert verify_proof(exclusion, manifest_path=manifest)["ok"], asset
        sides.add((exclusion["left"] is None, exclusion["right"] is None))
    assert sides == {(True, False), (False, True), (False, False)}


def test_exclusion_proof_discloses_no_other_creators_data(tmp_path: Path) -> None:
    """Issue #12: the neighbours of an absent asset are revealed as hashes only - no asset id,
    consent record id, capture time or jurisdiction of anyone else, not even hex-encoded."""
    people = [
        (str(uuid.UUID(int=i * 7919 + 1)), str(uuid.UUID(int=10**30 + i)), f"XQ-{i:04d}")
        for i in range(9)
    ]
    times = [T + dt.timedelta(seconds=i, microseconds=i * 37) for i in range(len(people))]
    entries = [
        verifier.allowlist_entry(asset, record, "2026-03", at, region)
        for (asset, record, region), at in zip(people, times, strict=True)
    ]
    manifest = _manifest(tmp_path, "r1", entries)
    secrets: list[str] = []
    for (asset, record, region), at in zip(people, times, strict=True):
        micros = int((at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() * 1_000_000)
        for text in (asset, record, region):
            secrets += [text, text.encode().hex()]
        secrets += [at.isoformat(), at.isoformat().replace("+00:00", "Z"), f"{micros:016x}"]
    for probe in ["not-a-uuid", str(uuid.UUID(int=3)), "a1", "zzzz"]:
        proof = verifier.build_allowlist_proof(entries, probe)
        assert proof["included"] is False
        assert verify_proof(proof, manifest_path=manifest)["ok"], probe
        text = json.dumps(proof)
        leaked = [s for s in secrets if s in text]
        assert not leaked, (probe, leaked)
        for side in ("left", "right"):
            item = proof[side]
            if item is not None:
                assert set(item) == {"index", "key", "leaf", "path"}
                assert len(bytes.fromhex(item["leaf"])) == 64
                assert item["leaf"][:64] == item["key"]


def test_forgeries_fail(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "r1", [_entry(a) for a in ASSETS])

    def ok(proof: dict[str, Any]) -> bool:
        return bool(verify_proof(proof, manifest_path=manifest)["ok"])

    good = _proof(ASSETS, "a-30")
    assert ok(good)

    relabelled = copy.deepcopy(good)
    relabelled["asset_id"] = "a-31"
    assert not ok(relabelled)
    relabelled["key"] = verifier.allowlist_key("a-31")
    assert not ok(relabelled)  # the entry still says a-30

    edited_record = copy.deepcopy(good)
    edited_record["leaf"]["record"]["policy_version"] = "2099-01"
    assert not ok(edited_record)

    forged_entry = copy.deepcopy(good)
    other = verifier.allowlist_entry("a-30", "rec-forged", "2099-01", T, "US")
    forged_entry["leaf"]["entry"] = other.hex()
    del forged_entry["leaf"]["record"]
    assert not ok(forged_entry)  # the leaf commits to the real entry
    forged_entry["leaf"]["leaf"] = verifier.allowlist_leaf(other).hex()
    assert not ok(forged_entry)  # and a leaf for the forged entry is not in the tree

    no_entry = copy.deepcopy(good)
    del no_entry["leaf"]["entry"]
    assert not ok(no_entry)

    # Exclusion built from a tree without a-30 but checked against the real root.
    without = _proof([a for a in ASSETS if a != "a-30"], "a-30")
    without["tree_size"] = len(ASSETS)
    assert not ok(without)

    # A neighbour whose key is edited no longer lies on its path.
    ordered = _ordered(ASSETS)
    between = _proof(ASSETS, "a-35")
    assert ok(between)
    moved = copy.deepcopy(between)
    side = "left" if moved["left"] is not None else "right"
    moved[side]["key"] = "0" * 64 if side == "left" else "f" * 64
    assert not ok(moved)
    moved[side]["leaf"] = moved[side]["key"] + moved[side]["leaf"][64:]
    assert not ok(moved)

    # Non-adjacent neighbours cannot prove absence: prove a-35 with leaves 0 and 2.
    first = _proof(ASSETS, ordered[0])["leaf"]
    third = _proof(ASSETS, ordered[2])["leaf"]
    skip = copy.deepcopy(between)
    skip["left"] = {k: first[k] for k in ("index", "key", "leaf", "path")}
    skip["right"] = {k: third[k] for k in ("index", "key", "leaf", "path")}
    target = next(
        a
        for a in (f"q{i}" for i in range(9999))
        if verifier.allowlist_key(ordered[0]) < verifier.allowlist_key(a)
        and verifier.allowlist_key(a) < verifier.allowlist_key(ordered[2])
    )
    skip["asset_id"], skip["key"] = target, verifier.allowlist_key(target)
    assert not ok(skip)

    # An honest exclusion proof for one asset is no proof for another asset's absence.
    for asset in ASSETS:
        reused = copy.deepcopy(between)
        reused["asset_id"], reused["key"] = asset, verifier.allowlist_key(asset)
        assert not ok(reused), asset

    # Claiming inclusion with an exclusion proof, and the other way round.
    assert not ok({**between, "included": True})
    assert not ok({**good, "included": False})
    # Format and scheme are part of what is checked.
    assert not ok({**good, "scheme": "consentgate-allowlist/9"})
    assert not ok({**good, "format": "consentgate-proof/9"})


def test_wrong_root_and_edited_manifest_fail(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "r1", [_entry(a) for a in ASSETS])
    other = _manifest(tmp_path, "r2", [_entry(a) for a in [*ASSETS[:-1], "a-60"]])
    proof = _proof(ASSETS, "a-20")
    assert verify_proof(proof, manifest_path=manifest)["ok"]
    result = verify_proof(proof, manifest_path=other)
    assert not result["ok"] and "root" in result["reason"]

    data = json.loads(manifest.read_bytes())
    data["model_version"] = "forged"
    manifest.write_text(json.dumps(data))
    result = verify_proof(proof, manifest_path=manifest)
    assert not result["ok"] and "SHA-256" in result["reason"]


def test_legacy_proofs_keep_verifying_against_their_own_root_only(tmp_path: Path) -> None:
    """Proofs handed out before scheme 2 (tree keyed by raw asset id, leaf = entry) still
    check against the manifest they were made for, and never against a scheme-2 root."""
    entries = [_entry(a) for a in ASSETS]
    legacy_tree = merkle.sort_entries([(a, e) for a, e in zip(ASSETS, entries, strict=True)])
    legacy_root = merkle.merkle_root([merkle.leaf_hash(d) for _, d in legacy_tree]).hex()
    legacy_manifest = tmp_path / "old" / "_consentgate" / "manifests" / "r0" / "manifest.json"
    write_manifest(
        legacy_manifest,
        {
            "format": "consentgate-manifest/1",
            "run_id": "r0",
            "allowlist": {"asset_count": len(ASSETS), "merkle_root": legacy_root},
        },
    )
    new_manifest = _manifest(tmp_path, "r1", entries)
    for asset in ("a-30", "a-35"):
        tree_proof = merkle.build_proof(legacy_tree, asset)
        legacy = {
            "format": verifier.LEGACY_PROOF_FORMAT,
            "tree": "allowlist",
            **tree_proof,
            "included": tree_proof["kind"] == merkle.INCLUSION,
        }
        assert verify_proof(legacy, manifest_path=legacy_manifest)["ok"], asset
        assert not verify_proof(legacy, manifest_path=new_manifest)["ok"], asset
        # and a scheme-2 proof does not verify against the legacy root
        assert not verify_proof(_proof(ASSETS, asset), manifest_path=legacy_manifest)["ok"]


@pytest.mark.parametrize(
    "asset", ["a1", "not-a-uuid", "0b7e6f1c-3d0a-4c55-9b7e-2f1d1a6c9e42", "é-1", "a b"]
)
def test_canonical_asset_ids_are_accepted(asset: str) -> None:
    assert check_asset_id(asset) == asset


@pytest.mark.parametrize(
    ("asset", "message"),
    [
        ("", "an asset id is required"),
        ("   ", "an asset id is required"),
        ("\u00a0", "an asset id is required"),
        (" a1", "not in canonical form (surrounding whitespace)"),
        ("a1\n", "not in canonical form (surrounding whitespace)"),
        ("a1\u2003", "not in canonical form (surrounding whitespace)"),
        ("A1", "not in canonical form (upper-case letters)"),
        ("0B7E6F1C-3D0A-4C55-9B7E-2F1D1A6C9E42", "not in canonical form (upper-case letters)"),
        (" Xy", "(surrounding whitespace, upper-case letters)"),
    ],
)
def test_non_canonical_asset_ids_are_bad_input(asset: str, message: str) -> None:
    """Issue #12: an id no allowlist can hold is bad input (exit 2), and the message does not
    repeat it (ids stay out of logs)."""
    with pytest.raises(ConsentgateError) as caught:
        check_asset_id(asset)
    assert caught.value.exit_code == 2
    assert message in str(caught.value)
    if asset.strip():
        assert asset.strip() not in str(caught.value)


@pytest.mark.parametrize("spelling", ["A-30", " a-30", "a-30\u00a0", "a-3O".upper()])
def test_a_proof_about_another_spelling_of_an_id_does_not_verify(
    tmp_path: Path, spelling: str
) -> None:
    """A prover could hand a creator a true exclusion proof for the upper-cased or padded form
    of an included id; the verifier refuses it (no allowlist holds such a spelling)."""
    manifest = _manifest(tmp_path, "r1", [_entry(a) for a in ASSETS])
    exclusion = _proof(ASSETS, spelling)
    assert not exclusion["included"]
    assert not verifier.is_canonical_id(spelling)
    assert not verify_proof(exclusion, manifest_path=manifest)["ok"]
    assert (
        verifier.is_canonical_id("a-30")
        and verify_proof(_proof(ASSETS, "a-30"), manifest_path=manifest)["ok"]
    )
