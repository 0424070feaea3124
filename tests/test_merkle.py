"""RFC 6962 Merkle trees: known vectors, proof properties, and Spark == pure Python."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession

from consentgate import merkle
from consentgate.errors import SchemaError

# Certificate Transparency's reference test leaves and roots (also used by Trillian).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, transcribed literally (recursive split) as an independent oracle."""
    n = len(leaves)
    if n == 0:
        return H(b"")
    if n == 1:
        return H(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return H(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1 PATH(m, D[n]), transcribed literally."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def key_of(data: bytes) -> str:
    return data.decode("utf-8")


def entries_for(keys: list[str]) -> list[tuple[str, bytes]]:
    return merkle.sort_entries([(k, k.encode()) for k in keys])


# ---- vectors -------------------------------------------------------------------------------


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert merkle.merkle_root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert merkle.leaf_hash(b"") == H(b"\x00")
    assert merkle.node_hash(b"a", b"b") == H(b"\x01ab")


@pytest.mark.parametrize("n", range(1, 9))
def test_ct_reference_roots(n: int) -> None:
    hashes = [merkle.leaf_hash(x) for x in CT_LEAVES[:n]]
    assert merkle.merkle_root(hashes).hex() == CT_ROOTS[n - 1]
    assert mth(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]


def test_hand_computed_three_leaf_tree() -> None:
    a, b, c = (merkle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    root = H(b"\x01" + H(b"\x01" + a + b) + c)
    assert merkle.merkle_root([a, b, c]) == root
    assert merkle.inclusion_path([a, b, c], 2) == [H(b"\x01" + a + b)]
    assert merkle.inclusion_path([a, b, c], 0) == [b, c]


def test_ct_reference_inclusion_path() -> None:
    hashes = [merkle.leaf_hash(x) for x in CT_LEAVES]
    assert [p.hex() for p in merkle.inclusion_path(hashes, 0)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]


def test_inclusion_path_rejects_out_of_range_index() -> None:
    with pytest.raises(IndexError):
        merkle.inclusion_path([merkle.leaf_hash(b"x")], 1)


# ---- properties ----------------------------------------------------------------------------

leaf_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@given(leaf_lists)
def test_root_and_paths_match_the_rfc_definition(leaves: list[bytes]) -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    assert merkle.merkle_root(hashes) == mth(leaves)
    for i in range(len(leaves)):
        assert merkle.inclusion_path(hashes, i) == path(i, leaves)


@given(leaf_lists, st.data())
def test_inclusion_proofs_verify_and_tampering_fails(leaves: list[bytes], data: Any) -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    n, root = len(hashes), merkle.merkle_root(hashes)
    i = data.draw(st.integers(0, n - 1))
    audit = merkle.inclusion_path(hashes, i)
    assert merkle.verify_inclusion(i, n, hashes[i], audit, root)
    # wrong root
    assert not merkle.verify_inclusion(i, n, hashes[i], audit, H(root))
    # wrong leaf
    assert not merkle.verify_inclusion(i, n, H(hashes[i]), audit, root)
    # tampered path element
    if audit:
        j = data.draw(st.integers(0, len(audit) - 1))
        bad = [*audit]
        bad[j] = H(bad[j])
        assert not merkle.verify_inclusion(i, n, hashes[i], bad, root)
        # truncated / extended paths
        assert not merkle.verify_inclusion(i, n, hashes[i], audit[:-1], root)
    assert not merkle.verify_inclusion(i, n, hashes[i], [*audit, root], root)
    # wrong index or size (unless the tree happens to contain an identical leaf there)
    other = data.draw(st.integers(0, n))
    if other != i and (other >= n or hashes[other] != hashes[i]):
        assert not merkle.verify_inclusion(other, n, hashes[i], audit, root)
    assert not merkle.verify_inclusion(i, i, hashes[i], audit, root)


keys = st.text(alphabet="abcdeé€😀", min_size=1, max_size=4)


@given(st.lists(keys, unique=True, max_size=40), keys)
def test_build_proof_verifies_for_present_and_absent_keys(present: list[str], key: str) -> None:
    entries = entries_for(present)
    root = merkle.merkle_root([merkle.leaf_hash(d) for _, d in entries])
    proof = merkle.build_proof(entries, key)
    assert proof["kind"] == (merkle.INCLUSION if key in present else merkle.EXCLUSION)
    assert merkle.verify_proof(proof, root, key_of=key_of)
    assert merkle.verify_proof(proof, root.hex(), key_of=key_of)
    assert not merkle.verify_proof(proof, H(root), key_of=key_of)
    # an inclusion proof is about its key only
    if proof["kind"] == merkle.INCLUSION:
        assert not merkle.verify_proof({**proof, "key": key + "x"}, root, key_of=key_of)


@given(st.lists(keys, unique=True, min_size=1, max_size=40), st.data())
def test_exclusion_proofs_cannot_be_forged_for_present_keys(present: list[str], data: Any) -> None:
    entries = entries_for(present)
    hashes = [merkle.leaf_hash(d) for _, d in entries]
    root, n = merkle.merkle_root(hashes), len(entries)
    i = data.draw(st.integers(0, n - 1))
    key = entries[i][0]

    def item(j: int) -> dict[str, Any] | None:
        if not 0 <= j < n:
            return None
        k, d = entries[j]
        return {
            "index": j,
            "key": k,
            "leaf": d.hex(),
            "path": [p.hex() for p in merkle.inclusion_path(hashes, j)],
        }

    forgeries = [
        (item(i - 1), item(i + 1)),  # skip the leaf: not adjacent
        (item(i - 1), item(i)),  # right neighbour's key equals key
        (item(i), item(i + 1)),  # left neighbour's key equals key
        (None, item(i + 1)),
        (item(i - 1), None),
    ]
    for left, right in forgeries:
        if left is None and right is None:
            continue
        proof = {"kind": merkle.EXCLUSION, "key": key, "tree_size": n, "left": left, "right": right}
        assert not merkle.verify_proof(proof, root, key_of=key_of)
    # an honest exclusion proof from the tree without the key does not verify against this root
    without = [e for e in entries if e[0] != key]
    proof = merkle.build_proof(without, key)
    assert merkle.verify_proof(
        proof, merkle.merkle_root([merkle.leaf_hash(d) for _, d in without]), key_of=key_of
    )
    assert not merkle.verify_proof(proof, root, key_of=key_of)


def test_exclusion_proof_edge_cases() -> None:
    empty = merkle.build_proof([], "k")
    assert empty == {"kind": "exclusion", "key": "k", "tree_size": 0, "left": None, "right": None}
    assert merkle.verify_proof(empty, merkle.EMPTY_ROOT, key_of=key_of)
    assert not merkle.verify_proof(empty, merkle.leaf_hash(b""), key_of=key_of)
    entries = entries_for(["b", "d"])
    root = merkle.merkle_root([merkle.leaf_hash(d) for _, d in entries])
    below, between, above = (merkle.build_proof(entries, k) for k in ("a", "c", "e"))
    assert below["left"] is None and below["right"]["index"] == 0
    assert between["left"]["key"] == "b" and between["right"]["key"] == "d"
    assert above["left"]["index"] == 1 and above["right"] is None
    for p in (below, between, above):
        assert merkle.verify_proof(p, root, key_of=key_of)
    # dropping one side of a two-sided proof breaks it
    assert not merkle.verify_proof({**between, "right": None}, root, key_of=key_of)
    assert not merkle.verify_proof({**between, "left": None}, root, key_of=key_of)
    # claiming an empty tree for a non-empty root fails
    assert not merkle.verify_proof({**empty, "key": "c"}, root, key_of=key_of)


def test_leaf_must_carry_the_claimed_key() -> None:
    entries = entries_for(["a", "b", "c"])
    root = merkle.merkle_root([merkle.leaf_hash(d) for _, d in entries])
    proof = merkle.build_proof(entries, "b")
    forged = {**proof, "key": "z", "leaf": {**proof["leaf"], "key": "z"}}
    assert not merkle.verify_proof(forged, root, key_of=key_of)


@pytest.mark.parametrize(
    "garbage",
    [
        {},
        {"kind": "inclusion"},
        {"kind": "inclusion", "key": "a", "tree_size": 3, "leaf": "nope"},
        {
            "kind": "inclusion",
            "key": "a",
            "tree_size": 3,
            "leaf": {"index": 0, "key": "a", "leaf": "zz", "path": []},
        },
        {"kind": "exclusion", "key": "a", "tree_size": -1, "left": None, "right": None},
        {"kind": "other", "key": "a", "tree_size": 1},
    ],
)
def test_malformed_proofs_are_rejected_not_raised(garbage: dict[str, Any]) -> None:
    assert not merkle.verify_proof(garbage, merkle.EMPTY_ROOT, key_of=key_of)


def test_sort_entries_breaks_key_ties_by_leaf_hash() -> None:
    entries = merkle.sort_entries([("k", b"2"), ("k", b"1"), ("a", b"9")])
    assert entries[0] == ("a", b"9")
    assert [merkle.leaf_hash(d) for _, d in entries[1:]] == sorted(
        merkle.leaf_hash(d) for d in (b"1", b"2")
    )
    with pytest.raises(ValueError, match="not sorted"):
        merkle.build_proof([("b", b"b"), ("a", b"a")], "a")


# ---- Spark ---------------------------------------------------------------------------------


def leaf_frame(spark: SparkSession, entries: list[tuple[str, bytes]]) -> Any:
    rows = [(k, bytearray(d), bytearray(merkle.leaf_hash(d))) for k, d in entries]
    return spark.createDataFrame(rows, "k string, leaf binary, h binary").repartition(3)


def python_root(entries: list[tuple[str, bytes]]) -> str:
    return merkle.merkle_root([merkle.leaf_hash(d) for _, d in merkle.sort_entries(entries)]).hex()


@pytest.mark.parametrize(
    ("chunk_log2", "sizes"),
    [
        # empty, single, within one chunk, exactly k chunks, one past, partial last chunks
        (2, [0, 1, 3, 4, 5, 8, 9, 12, 13, 16, 17, 33]),
        (3, [7, 9, 17, 64, 65]),
        (0, [5]),
    ],
)
def test_spark_root_equals_python_root(
    spark: SparkSession, chunk_log2: int, sizes: list[int]
) -> None:
    for n in sizes:
        entries = [(f"key-{(i * 7919) % 1009:05d}", f"v{i}".encode()) for i in range(n)]
        df = leaf_frame(spark, entries)
        root, count = merkle.spark_merkle_root(
            df, key_col="k", leaf_hash_col="h", chunk_log2=chunk_log2
        )
        assert (root, count) == (python_root(entries), n), f"n={n}"


def test_known_leaves_changes_the_work_never_the_root(spark: SparkSession) -> None:
    """With ``known_leaves`` a tree of at most one chunk is reduced on the driver from one
    sorted take; a count that is wrong (too small, too large, absent) never changes the root:
    more leaves than one chunk fall back to the chunked path."""
    entries = [(f"key-{(i * 7919) % 1009:05d}", f"v{i}".encode()) for i in range(9)]
    entries += [("key-00007", b"dup-a"), ("key-00007", b"dup-b")]  # ties ordered by leaf hash
    df = leaf_frame(spark, entries)
    expected = (python_root(entries), len(entries))
    for chunk_log2, known in ((4, 11), (4, 0), (4, 16), (2, 11), (2, 3), (4, None)):
        root = merkle.spark_merkle_root(
            df, key_col="k", leaf_hash_col="h", chunk_log2=chunk_log2, known_leaves=known
        )
        assert root == expected, (chunk_log2, known)
    assert merkle.spark_merkle_root(
        leaf_frame(spark, []), key_col="k", leaf_hash_col="h", known_leaves=0
    ) == (merkle.EMPTY_ROOT.hex(), 0)


def test_spark_root_with_duplicate_keys_is_deterministic(spark: SparkSession) -> None:
    entries = [(f"k{i % 3}", f"v{i}".encode()) for i in range(13)]
    df = leaf_frame(spark, entries)
    root, count = merkle.spark_merkle_root(df, key_col="k", leaf_hash_col="h", chunk_log2=2)
    assert (root, count) == (python_root(entries), 13)


def test_spark_root_default_chunk_and_validation(spark: SparkSession) -> None:
    entries = [(f"{i:04d}", bytes([i % 256])) for i in range(100)]
    df = leaf_frame(spark, entries)
    assert merkle.spark_merkle_root(df, key_col="k", leaf_hash_col="h") == (
        python_root(entries),
        100,
    )
    with pytest.raises(SchemaError, match="must be binary"):
        merkle.spark_merkle_root(df, key_col="h", leaf_hash_col="k")
    with pytest.raises(SchemaError, match="nope"):
        merkle.spark_merkle_root(df, key_col="nope", leaf_hash_col="h")


def test_spark_prove_equals_build_proof(spark: SparkSession) -> None:
    present = [f"a{i:03d}" for i in range(0, 46, 2)]  # 23 leaves: chunks of 4, last one short
    entries = entries_for(present)
    df = leaf_frame(spark, entries)
    root = python_root(entries)
    # first leaf, leaf opening a chunk, last leaf, neighbours in different chunks, below, above
    for key in ["a000", "a008", "a044", "a007", "0", "z"]:
        proof = merkle.spark_prove(df, key, key_col="k", leaf_col="leaf", chunk_log2=2)
        assert proof == merkle.build_proof(entries, key), key
        assert merkle.verify_proof(proof, root, key_of=key_of)


def test_spark_prove_on_empty_tree(spark: SparkSession) -> None:
    df = leaf_frame(spark, [])
    proof = merkle.spark_prove(df, "k", key_col="k", leaf_col="leaf", chunk_log2=2)
    assert proof == merkle.build_proof([], "k")
    assert merkle.verify_proof(proof, merkle.EMPTY_ROOT, key_of=key_of)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(keys, unique=True, max_size=20), keys, st.integers(0, 3))
def test_spark_prove_property(
    spark: SparkSession, present: list[str], key: str, chunk_log2: int
) -> None:
    entries = entries_for(present)
    proof = merkle.spark_prove(
        leaf_frame(spark, entries), key, key_col="k", leaf_col="leaf", chunk_log2=chunk_log2
    )
    assert proof == merkle.build_proof(entries, key)
    assert merkle.verify_proof(proof, python_root(entries), key_of=key_of)
