"""Inclusion and exclusion proofs for one asset against one gate run's allowlist.

Why: a creator (or their lawyer) should be able to ask "was my track used to train model X,
and under which of my consent records?" and check the answer offline, trusting nothing but the
allowlist root printed in the manifest. The allowlist leaves are sorted by asset id, so absence
is proved by the two neighbouring leaves (RFC 6962 audit paths for both); presence reveals the
leaf, i.e. the consent record id, policy version, captured_at and jurisdiction it rests on.

Proofs are built on the executors from the run's stored allowlist table
(:func:`consentgate.digest.allowlist_proof`); only the one or two chunks around the asset reach
the driver. Checking needs no Spark: :func:`verify_proof` reads the manifest's root and runs the
pure-Python verifier (:func:`consentgate.verifier.verify_allowlist_proof`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from consentgate import digest, lake, verifier
from consentgate.canonical import check_manifest_digest
from consentgate.config import Config
from consentgate.errors import ConsentgateError
from consentgate.manifest import lake_root_of, load_manifest


def _manifest_facts(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "run_id": manifest.get("run_id"),
        "model_version": manifest.get("model_version"),
        "use_case": manifest.get("use_case"),
        "manifest_sha256": manifest.get("manifest_sha256"),
        "allowlist_root": manifest.get("allowlist", {}).get("merkle_root"),
        "allowlist_assets": manifest.get("allowlist", {}).get("asset_count"),
    }


def prove(
    spark: SparkSession, config: Config, *, manifest_path: str | Path, asset_id: str
) -> dict[str, Any]:
    """Inclusion proof (asset in the run's allowlist) or exclusion proof (it was not).

    Args:
        spark: Session whose executors read the stored allowlist.
        config: The lake; the manifest must belong to it.
        manifest_path: The run's manifest.
        asset_id: The asset to prove; never logged.

    Returns:
        ``{"included": bool, "proof": {...}}``; ``proof`` is self-contained JSON (format
        ``consentgate-proof/1``) naming the manifest it was made for.

    Raises:
        ConsentgateError: (exit 2) the manifest is unreadable, belongs to another lake, or its
            allowlist table is gone.
    """
    path = Path(manifest_path).resolve()
    manifest = load_manifest(path)
    if lake_root_of(path) != config.lake_root.resolve():
        raise ConsentgateError(f"--manifest: {path} does not belong to lake {config.lake_root}")
    if not asset_id:
        raise ConsentgateError("--asset: an asset id is required")
    try:
        table = manifest["allowlist"]["table"]
        frame = lake.read_table(spark, config.resolve(table["path"]), version=int(table["version"]))
    except (KeyError, TypeError) as exc:
        raise ConsentgateError(f"--manifest: {path} has no allowlist table ({exc!r})") from None
    proof = digest.allowlist_proof(frame, asset_id)
    proof["manifest"] = _manifest_facts(manifest, path)
    return {"included": bool(proof["included"]), "proof": proof}


def verify_proof(proof: dict[str, Any], *, manifest_path: str | Path) -> dict[str, Any]:
    """Check a proof against the allowlist root in ``manifest_path`` and nothing else.

    The proof's own claims about which manifest it belongs to are reported but never trusted:
    only the root read from the given manifest decides. A manifest whose own SHA-256 does not
    match is refused too, since its root could have been edited to fit a forged proof.

    Returns:
        ``{"ok", "included", "asset_id", "run_id", "model_version", "allowlist_root",
        "reason"}``; ``reason`` says why ``ok`` is false.
    """
    path = Path(manifest_path).resolve()
    manifest = load_manifest(path)
    facts = _manifest_facts(manifest, path)
    out: dict[str, Any] = {
        "ok": False,
        "included": proof.get("included") if isinstance(proof, dict) else None,
        "asset_id": proof.get("key") if isinstance(proof, dict) else None,
        "run_id": facts["run_id"],
        "model_version": facts["model_version"],
        "allowlist_root": facts["allowlist_root"],
        "reason": None,
    }
    if not check_manifest_digest(manifest):
        out["reason"] = f"manifest {path}: own SHA-256 does not match its content"
        return out
    root = facts["allowlist_root"]
    if not isinstance(root, str):
        out["reason"] = f"manifest {path}: no allowlist root"
        return out
    if not isinstance(proof, dict):
        out["reason"] = "proof is not a JSON object"
        return out
    if proof.get("tree_size") != facts["allowlist_assets"]:
        out["reason"] = (
            f"proof is for a tree of {proof.get('tree_size')} leaves; this manifest's allowlist "
            f"has {facts['allowlist_assets']}"
        )
        return out
    if not verifier.verify_allowlist_proof(proof, root):
        out["reason"] = "proof does not lead to this manifest's allowlist root"
        return out
    out["ok"] = True
    return out


__all__ = ["prove", "verify_proof"]
