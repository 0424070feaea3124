"""Inclusion and exclusion proofs for one asset against one gate run's allowlist.

Why: a creator (or their lawyer) should be able to ask "was my track used to train model X,
and under which of my consent records?" and check the answer offline, trusting nothing but the
allowlist root printed in the manifest. Presence reveals the asset's own allowlist entry (the
consent record id, policy version, captured_at and jurisdiction it rests on); absence is proved
by the two neighbouring leaves (RFC 6962 audit paths for both).

Decisions (issue #12):

* **Exclusion proofs disclose nothing about other creators.** The tree (allowlist scheme
  ``consentgate-allowlist/2``, ``docs/manifest.md`` section 4) is keyed by
  ``SHA-256(domain || asset_id)`` and each leaf is that key hash followed by a digest of the
  entry, so a neighbour is revealed only as its key hash and entry digest: never its asset id,
  consent record id, capture time or jurisdiction. A verifier holding the asset id computes its
  key hash and checks it lies strictly between the neighbours' with the root alone. Residual,
  inherent to any proof checkable without a secret: someone who already knows another asset's
  id can hash it and recognise it as a neighbour (i.e. learn it was in the run); asset ids are
  random UUIDs, which cannot be guessed, and the entry digest additionally hides the consent
  record id (another UUID) and everything else in the entry.
* **A bad asset id is bad input (exit 2), checked before Spark starts.** DESIGN gives ids no
  format beyond "string (UUID)" and rule 2's canonical form, and lakes may use any opaque
  string, so "bad" means *not in canonical form* (``consent.canonical_text(id, "lower")``):
  empty, surrounding whitespace (Python's ``str.isspace`` set) or an ASCII capital. Every id
  in an allowlist is canonical (the gate evaluates canonical ids), so such an id could never be
  in one: an exclusion proof for ``" A1"`` would be true but would answer the wrong question
  when ``a1`` was included. A canonical id that merely is not a UUID (``not-a-uuid``) gets a
  proof: under scheme 2 that proof reveals nothing about anyone else, and the answer (not in
  the run) is true. The message never repeats the id.
* Manifests written before scheme 2 (no ``allowlist.scheme``) get no new proofs: their tree is
  keyed by raw asset ids, so an exclusion proof from it would disclose the neighbours. ``prove``
  refuses them (exit 2); proofs already made for them still verify (``verify-proof``).

Proofs are built on the executors from the run's stored allowlist table
(:func:`consentgate.digest.allowlist_proof`); only the one or two chunks around the asset's key
reach the driver, and the raw id never enters a Spark plan. Checking needs no Spark:
:func:`verify_proof` reads the manifest's root and runs the pure-Python verifier
(:func:`consentgate.verifier.verify_allowlist_proof`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from consentgate import digest, lake, verifier
from consentgate.canonical import check_manifest_digest
from consentgate.config import Config
from consentgate.consent import WHITESPACE, canonical_text
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


def check_asset_id(asset_id: str) -> str:
    """Refuse an asset id that cannot name an allowlisted asset: it is not in canonical form.

    See the module docstring for why canonical form (and not, say, UUID syntax) is the rule.
    The message names the defect, never the id (ids stay out of logs).

    Returns:
        ``asset_id``, unchanged.

    Raises:
        ConsentgateError: (exit 2) empty or blank, or not in canonical form.
    """
    canonical = canonical_text(asset_id, "lower")
    if canonical is None:
        raise ConsentgateError("--asset: an asset id is required (got an empty value)")
    if canonical != asset_id:
        defects = []
        if asset_id != asset_id.strip(WHITESPACE):
            defects.append("surrounding whitespace")
        if any(c.isascii() and c.isupper() for c in asset_id):
            defects.append("upper-case letters")
        raise ConsentgateError(
            f"--asset: the asset id is not in canonical form ({', '.join(defects)}); asset ids "
            "are compared lowercase with no surrounding whitespace (DESIGN.md rule 2), so no "
            "allowlist can hold it"
        )
    return asset_id


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
        ``consentgate-proof/2``) naming the manifest it was made for.

    Raises:
        ConsentgateError: (exit 2) ``asset_id`` is not in canonical form
            (:func:`check_asset_id`), the manifest is unreadable, belongs to another lake,
            predates allowlist scheme 2, or its allowlist table is gone.
    """
    check_asset_id(asset_id)
    path = Path(manifest_path).resolve()
    manifest = load_manifest(path)
    if lake_root_of(path) != config.lake_root.resolve():
        raise ConsentgateError(f"--manifest: {path} does not belong to lake {config.lake_root}")
    allowlist = manifest.get("allowlist")
    scheme = allowlist.get("scheme") if isinstance(allowlist, dict) else None
    if scheme is None:
        raise ConsentgateError(
            f"--manifest: {path} predates {verifier.ALLOWLIST_SCHEME}: its allowlist tree is "
            "keyed by raw asset ids, so an exclusion proof from it would disclose other "
            "creators' entries; proofs are made only for runs gated since (re-run the gate)"
        )
    if scheme != verifier.ALLOWLIST_SCHEME:
        raise ConsentgateError(f"--manifest: {path} has unknown allowlist scheme {scheme!r}")
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
        "asset_id": proof.get("asset_id", proof.get("key")) if isinstance(proof, dict) else None,
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


__all__ = ["check_asset_id", "prove", "verify_proof"]
