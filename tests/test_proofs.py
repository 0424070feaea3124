"""Proof checking needs only the manifest's root: forged, relabelled or misplaced proofs fail."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

from consentgate import merkle, verifier
from consentgate.manifest import write_manifest
from consentgate.proofs import verify_proof

T = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
ASSETS = ["a-10", "a-20", "a-30", "a-40", "a-50"]


def _entries(assets: list[str]) -> list[tuple[str, bytes]]:
    leaves = [(a, verifier.allowlist_leaf(a, f"rec-{a}", "2026-03", T, "US")) for a in assets]
    return merkle.sort_entries(leaves)


def _manifest(tmp_path: Path, run: str, assets: list[str]) -> Path:
    entries = _entries(assets)
    root = merkle.merkle_root([merkle.leaf_hash(d) for _, d in entries]).hex()
    path = tmp_path / "lake" / "_consentgate" / "manifests" / run / "manifest.json"
    body = {
        "format": "consentgate-manifest/1",
        "run_id": run,
        "model_version": run,
        "allowlist": {"asset_count": len(assets), "merkle_root": root},
    }
    write_manifest(path, body)
    return path


def _proof(assets: list[str], key: str) -> dict[str, Any]:
    return verifier.annotate_allowlist_proof(merkle.build_proof(_entries(assets), key))


def test_inclusion_and_exclusion_verify(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "r1", ASSETS)
    inclusion = _proof(ASSETS, "a-30")
    assert inclusion["included"] and inclusion["leaf"]["record"]["consent_record_id"] == "rec-a-30"
    result = verify_proof(inclusion, manifest_path=manifest)
    assert result["ok"] and result["included"] and result["run_id"] == "r1"
    for key in ("a-00", "a-35", "a-99"):  # before, between, after every leaf
        exclusion = _proof(ASSETS, key)
        assert not exclusion["included"]
        assert verify_proof(exclusion, manifest_path=manifest)["ok"], key


def test_forgeries_fail(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "r1", ASSETS)
    good = _proof(ASSETS, "a-30")

    relabelled = copy.deepcopy(good)
    relabelled["key"] = relabelled["leaf"]["key"] = "a-31"
    assert not verify_proof(relabelled, manifest_path=manifest)["ok"]

    edited_record = copy.deepcopy(good)
    edited_record["leaf"]["record"]["policy_version"] = "2099-01"
    assert not verify_proof(edited_record, manifest_path=manifest)["ok"]

    # Exclusion built from a tree without a-30 but checked against the real root.
    other = _proof([a for a in ASSETS if a != "a-30"], "a-30")
    other["tree_size"] = len(ASSETS)
    assert not verify_proof(other, manifest_path=manifest)["ok"]

    # Non-adjacent neighbours cannot prove absence.
    skip = _proof(ASSETS, "a-25")
    skip["right"] = _proof(ASSETS, "a-40")["leaf"]
    assert not verify_proof(skip, manifest_path=manifest)["ok"]


def test_wrong_root_and_edited_manifest_fail(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "r1", ASSETS)
    other = _manifest(tmp_path, "r2", [*ASSETS[:-1], "a-60"])
    proof = _proof(ASSETS, "a-20")
    assert verify_proof(proof, manifest_path=manifest)["ok"]
    result = verify_proof(proof, manifest_path=other)
    assert not result["ok"] and "root" in result["reason"]

    data = json.loads(manifest.read_bytes())
    data["model_version"] = "forged"
    manifest.write_text(json.dumps(data))
    result = verify_proof(proof, manifest_path=manifest)
    assert not result["ok"] and "SHA-256" in result["reason"]
