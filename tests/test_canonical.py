"""RFC 8785 canonical JSON, the manifest's own digest, and streaming file hashes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentgate import canonical

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def shuffled(value: Any, rng: random.Random) -> Any:
    """Same JSON value, every object's members inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@given(json_values, st.integers(0, 2**32))
def test_canonical_json_ignores_key_order(value: Any, seed: int) -> None:
    assert canonical.canonical_json(value) == canonical.canonical_json(
        shuffled(value, random.Random(seed))
    )


@given(json_values)
def test_canonical_json_is_a_fixed_point(value: Any) -> None:
    # Re-parsing and re-canonicalising changes nothing. JCS numbers are IEEE doubles (so
    # 7.018134691028221e16 is written 70181346910282210): parse them back as doubles.
    once = canonical.canonical_json(value)
    assert canonical.canonical_json(json.loads(once, parse_int=float)) == once


def test_rfc8785_example_shapes() -> None:
    assert canonical.canonical_json({"b": [1, 2.0, "x"], "a": {"d": None, "c": True}}) == (
        b'{"a":{"c":true,"d":null},"b":[1,2,"x"]}'
    )
    # keys are sorted by UTF-16 code units, not by code point
    assert (
        canonical.canonical_json({"\U0001f600": 1, "\uffff": 2}) == '{"😀":1,"\uffff":2}'.encode()
    )
    assert canonical.canonical_json(1e21) == b"1e+21"


def test_out_of_range_values_are_refused() -> None:
    import rfc8785

    # The documented type (canonical_json's docstring), not any exception (issue #26 item 5).
    with pytest.raises(rfc8785.CanonicalizationError, match=r"safe integer"):
        canonical.canonical_json({"n": 2**60})
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical.canonical_json(float("nan"))


def test_sha256_hex() -> None:
    assert canonical.sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_manifest_digest_excludes_its_own_field() -> None:
    manifest = {"run_id": "r1", "counts": {"granted": 3}, "files": [{"path": "a", "size": 1}]}
    digest = canonical.manifest_digest(manifest)
    expected = hashlib.sha256(
        b'{"counts":{"granted":3},"files":[{"path":"a","size":1}],"run_id":"r1"}'
    )
    assert digest == expected.hexdigest()
    sealed = canonical.seal_manifest(manifest)
    assert sealed[canonical.MANIFEST_DIGEST_FIELD] == digest
    assert canonical.manifest_digest(sealed) == digest  # idempotent: the field is ignored
    assert canonical.check_manifest_digest(sealed)
    assert not canonical.check_manifest_digest(manifest)  # unsealed
    assert json.loads(canonical.manifest_bytes(manifest)) == sealed
    assert canonical.manifest_bytes(manifest) == canonical.canonical_json(sealed)


@given(json_values.filter(lambda v: isinstance(v, dict) and len(v) > 0), st.data())
def test_any_edit_breaks_the_seal(manifest: dict[str, Any], data: Any) -> None:
    manifest.pop(canonical.MANIFEST_DIGEST_FIELD, None)
    if not manifest:
        return
    sealed = canonical.seal_manifest(manifest)
    key = data.draw(st.sampled_from(sorted(manifest)))
    edited = {**sealed, key: [sealed[key]]}
    assert not canonical.check_manifest_digest(edited)
    assert canonical.check_manifest_digest(
        json.loads(canonical.manifest_bytes(manifest), parse_int=float)
    )


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5000, 3 * 1024 * 1024 + 7])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert canonical.sha256_file(path) == expected
    assert canonical.sha256_file(str(path), chunk=1024) == expected
    assert canonical.sha256_file(path, chunk=1) == expected if size < 5000 else True
    with pytest.raises(ValueError):
        canonical.sha256_file(path, chunk=0)
