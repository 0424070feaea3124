"""Canonical JSON (RFC 8785), SHA-256 helpers and the manifest's own digest.

A manifest is evidence: two people who hash "the same" manifest must get the same bytes, whatever
JSON library or key order produced it. RFC 8785 (JSON Canonicalization Scheme, JCS) fixes that:
object keys sorted by UTF-16 code units, no insignificant whitespace, ES6 number formatting,
minimal string escaping. We delegate to the ``rfc8785`` package rather than hand-roll it.

The manifest's own digest (``manifest_sha256``) is computed over the JCS bytes of the manifest
*with the top-level ``manifest_sha256`` member removed* (not set to ``""`` or ``null``: removed),
then stored back into that member. Anyone can re-check it by deleting the member, canonicalising
and hashing. Nested objects are hashed as they are; only the top-level member is excluded.

JCS restricts integers to the IEEE-754 safe range (|n| <= 2**53 - 1); byte sizes and row counts
fit comfortably, and anything larger is refused by ``rfc8785`` rather than silently rounded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import rfc8785

#: Top-level manifest member that carries the manifest's own SHA-256 (lowercase hex).
MANIFEST_DIGEST_FIELD = "manifest_sha256"

#: Default read size for :func:`sha256_file`: large reads keep the per-call overhead negligible
#: next to the hashing itself, so we run at OpenSSL speed (what ``sha256sum`` does too).
DEFAULT_FILE_CHUNK = 8 * 1024 * 1024


def canonical_json(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Args:
        obj: A JSON-able value (dict with string keys, list, str, int in the safe range, float,
            bool, None).

    Raises:
        rfc8785.CanonicalizationError: (or a subclass) for values JCS cannot represent, e.g.
            NaN, infinities, integers beyond 2**53 - 1, non-string keys.
    """
    return rfc8785.dumps(obj)


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data`` — the one digest format used in manifests and proofs."""
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """Compute a manifest's own SHA-256, ignoring any ``manifest_sha256`` member it already has.

    The digest is ``sha256(JCS(manifest minus its top-level "manifest_sha256" member))``, so the
    value can be stored inside the very object it certifies.

    Args:
        manifest: The manifest, sealed or not.

    Returns:
        Lowercase hex SHA-256.
    """
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST_FIELD}
    return sha256_hex(canonical_json(body))


def seal_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``manifest`` with ``manifest_sha256`` set to its own digest."""
    sealed = dict(manifest)
    sealed[MANIFEST_DIGEST_FIELD] = manifest_digest(manifest)
    return sealed


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Return the bytes to write to disk for a manifest: JCS of the sealed manifest.

    The file is exactly ``canonical_json(seal_manifest(manifest))`` with no trailing newline, so
    ``sha256sum`` of the file is a stable fingerprint too (the registry may chain on either; the
    manifest's own digest is the one that survives re-serialisation).
    """
    return canonical_json(seal_manifest(manifest))


def check_manifest_digest(manifest: Mapping[str, Any]) -> bool:
    """True when ``manifest`` carries a ``manifest_sha256`` equal to its recomputed digest."""
    claimed = manifest.get(MANIFEST_DIGEST_FIELD)
    return isinstance(claimed, str) and claimed == manifest_digest(manifest)


def sha256_file(path: str | os.PathLike[str], *, chunk: int = DEFAULT_FILE_CHUNK) -> str:
    """Stream a file through SHA-256 and return the lowercase hex digest.

    Reads with ``readinto`` into one reusable buffer (no per-chunk allocation, unbuffered file
    object so there is no extra copy), and hands hashlib a memoryview slice; hashlib releases the
    GIL for large updates, so several files can be hashed in threads.

    Args:
        path: File to hash.
        chunk: Read size in bytes (default 8 MiB).

    Returns:
        Lowercase hex SHA-256 of the file's contents.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            read = handle.readinto(view)
            if not read:
                break
            digest.update(view[:read])
    return digest.hexdigest()
