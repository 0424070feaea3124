"""RFC 6962 Merkle trees: roots, inclusion and exclusion proofs, pure Python and on Spark.

Why RFC 6962 (Certificate Transparency's tree): it is specified precisely enough that an auditor
can re-implement it in an afternoon, it domain-separates leaves from interior nodes (so a leaf can
never be passed off as a node), and its proofs are logarithmic. Definitions, with ``H`` = SHA-256::

    MTH({})        = H(b"")
    MTH({d0})      = H(0x00 || d0)                         # the *leaf hash* of leaf data d0
    MTH(D[0:n])    = H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  # k = largest power of two < n

Leaves are ordered by key (ties, which only happen for duplicate keys, by leaf hash) so that two
adjacent leaves prove a key's absence. All hashes in proofs are lowercase hex, so proof objects
are plain JSON that a creator can keep and check offline against a manifest's root alone.

The Spark entry points (:func:`spark_merkle_root`, :func:`spark_prove`) never collect more than
one chunk: executors reduce each aligned chunk of ``2**chunk_log2`` consecutive leaves to its
subtree root, and only those chunk roots (plus, for a proof, one or two chunks' leaves) reach the
driver. A tree the caller knows to fit in one chunk (a snapshot or allowlist whose row count the
Delta log gives) is that one chunk: its sorted leaf hashes are taken in one job and reduced here.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from consentgate.errors import CheckFailed, SchemaError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: Root of the empty tree, ``SHA-256("")``.
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

#: Proof kinds, the value of a proof's ``"kind"`` member.
INCLUSION = "inclusion"
EXCLUSION = "exclusion"

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


# --------------------------------------------------------------------------------------------
# Pure Python
# --------------------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash ``H(0x00 || data)`` of one leaf's data."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node ``H(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 tree head over already-hashed leaves (``MTH``), in the order given.

    Computed level by level: adjacent pairs are combined and an unpaired last node is promoted
    unchanged to the next level. This builds exactly the largest-power-of-two split tree of RFC
    6962 (every level's pairs are aligned power-of-two blocks; the promoted node is the root of
    the right-hand remainder), in O(n) hashes and without recursion.

    The same function combines *subtree roots* of aligned power-of-two chunks (see
    :func:`spark_merkle_root`), since those are nodes of the same tree.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 audit path ``PATH(index, D[n])``, nearest-to-the-leaf sibling first.

    Args:
        leaf_hashes: All leaf hashes of the tree, in tree order.
        index: Zero-based position of the leaf to prove.

    Raises:
        IndexError: ``index`` is outside the tree.
    """
    if not 0 <= index < len(leaf_hashes):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaf_hashes)} leaves")
    path: list[bytes] = []
    level = list(leaf_hashes)
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):  # a promoted last node has no sibling at this level
            path.append(level[sibling])
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        position //= 2
    return path


def root_from_inclusion(
    index: int, tree_size: int, leaf_hash_: bytes, path: Sequence[bytes]
) -> bytes | None:
    """Recompute the root implied by an audit path (RFC 9162 section 2.1.3.2).

    Returns ``None`` when the path cannot belong to a tree of ``tree_size`` leaves at ``index``
    (wrong length or index out of range), so a caller cannot mistake garbage for a root.
    """
    if not 0 <= index < tree_size:
        return None
    fn, sn, node = index, tree_size - 1, leaf_hash_
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return node if sn == 0 else None


def verify_inclusion(
    index: int, tree_size: int, leaf_hash_: bytes, path: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``path`` proves that ``leaf_hash_`` is leaf ``index`` of the tree with ``root``."""
    return root_from_inclusion(index, tree_size, leaf_hash_, path) == root


def _key_bytes(key: str) -> bytes:
    # Keys are ordered by their UTF-8 bytes: the order Spark's default (UTF8_BINARY) string
    # comparison uses, and the same as Python's code point order.
    return key.encode("utf-8")


def _sort_token(key: str, data: bytes) -> tuple[bytes, bytes]:
    return _key_bytes(key), leaf_hash(data)


def sort_entries(entries: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Order ``(key, leaf_data)`` pairs the way every consentgate tree is ordered.

    By key's UTF-8 bytes, then (only for duplicate keys) by leaf hash, so the order is total up
    to identical leaves and Spark and Python agree on it.
    """
    return sorted(entries, key=lambda e: _sort_token(*e))


def _item(index: int, key: str, data: bytes, path: Sequence[bytes]) -> dict[str, Any]:
    return {"index": index, "key": key, "leaf": data.hex(), "path": [p.hex() for p in path]}


def build_proof(entries: Sequence[tuple[str, bytes]], key: str) -> dict[str, Any]:
    """Inclusion proof for ``key`` if present, else an exclusion proof, from all leaves.

    This is the in-memory reference (used by tests and small trees); :func:`spark_prove` builds
    the identical object from a DataFrame without collecting it.

    Args:
        entries: ``(key, leaf_data)`` pairs already in tree order (:func:`sort_entries`).
        key: The key to prove.

    Returns:
        A JSON-able proof; see ``docs/manifest.md`` for the format.

    Raises:
        ValueError: ``entries`` is not in tree order.
    """
    tokens = [_sort_token(k, d) for k, d in entries]
    if any(a > b for a, b in itertools.pairwise(tokens)):
        raise ValueError("entries are not sorted by (key, leaf hash)")
    hashes = [t[1] for t in tokens]
    n = len(entries)
    target = _key_bytes(key)
    # insertion point: number of leaves whose key is < key
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if tokens[mid][0] < target:
            lo = mid + 1
        else:
            hi = mid
    if lo < n and tokens[lo][0] == target:
        k, data = entries[lo]
        return {
            "kind": INCLUSION,
            "key": key,
            "tree_size": n,
            "leaf": _item(lo, k, data, inclusion_path(hashes, lo)),
        }

    def side(i: int) -> dict[str, Any] | None:
        if not 0 <= i < n:
            return None
        k, data = entries[i]
        return _item(i, k, data, inclusion_path(hashes, i))

    return {"kind": EXCLUSION, "key": key, "tree_size": n, "left": side(lo - 1), "right": side(lo)}


def _check_item(
    item: Any, tree_size: int, root: bytes, key_of: Callable[[bytes], str]
) -> tuple[int, str]:
    """Verify one revealed leaf and return its (index, key); raise ValueError on any defect."""
    if not isinstance(item, Mapping):
        raise ValueError("leaf item is not an object")
    index, key, leaf_hex, path = item["index"], item["key"], item["leaf"], item["path"]
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(key, str):
        raise ValueError("bad index or key")
    if not isinstance(leaf_hex, str) or not isinstance(path, list):
        raise ValueError("bad leaf or path")
    data = bytes.fromhex(leaf_hex)
    if key_of(data) != key:
        raise ValueError("the leaf's data does not carry the claimed key")
    nodes = [bytes.fromhex(p) for p in path]
    if any(len(p) != 32 for p in nodes):
        raise ValueError("path element is not a SHA-256 digest")
    if not verify_inclusion(index, tree_size, leaf_hash(data), nodes, root):
        raise ValueError("audit path does not lead to the root")
    return index, key


def verify_proof(
    proof: Mapping[str, Any], root: bytes | str, *, key_of: Callable[[bytes], str]
) -> bool:
    """Check an inclusion or exclusion proof against a root alone. Never raises on bad input.

    Inclusion: the revealed leaf carries ``key`` (per ``key_of``) and its audit path leads to
    ``root``. Exclusion: every revealed neighbour verifies; the left one's key is strictly below
    ``key`` and the right one's strictly above; they are adjacent (``right.index ==
    left.index + 1``), or the only neighbour is leaf 0 (key below every leaf) or leaf
    ``tree_size - 1`` (key above every leaf); an empty tree proves absence by its root being
    ``H("")``. Because the tree is sorted by key, adjacent bracketing leaves leave no room for
    ``key``.

    Args:
        proof: A proof from :func:`build_proof` or :func:`spark_prove`.
        root: The trusted root (bytes or hex), e.g. from a manifest.
        key_of: Extracts the key from a leaf's data; binding key to leaf is what stops a prover
            from relabelling a leaf.
    """
    try:
        root_bytes = bytes.fromhex(root) if isinstance(root, str) else bytes(root)
        kind, key, size = proof["kind"], proof["key"], proof["tree_size"]
        if not isinstance(key, str) or not isinstance(size, int) or isinstance(size, bool):
            return False
        if size < 0:
            return False
        target = _key_bytes(key)
        if kind == INCLUSION:
            _, leaf_key = _check_item(proof["leaf"], size, root_bytes, key_of)
            return leaf_key == key
        if kind != EXCLUSION:
            return False
        left, right = proof.get("left"), proof.get("right")
        if size == 0:
            return left is None and right is None and root_bytes == EMPTY_ROOT
        if left is None and right is None:
            return False
        left_index = right_index = None
        if left is not None:
            left_index, left_key = _check_item(left, size, root_bytes, key_of)
            if not _key_bytes(left_key) < target:
                return False
        if right is not None:
            right_index, right_key = _check_item(right, size, root_bytes, key_of)
            if not target < _key_bytes(right_key):
                return False
        if left_index is not None and right_index is not None:
            return right_index == left_index + 1
        if left_index is None:
            return right_index == 0
        return left_index == size - 1
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------

_K, _H, _D, _IDX, _CHUNK = "_cg_key", "_cg_leaf_hash", "_cg_leaf", "_cg_idx", "_cg_chunk"


def _chunk_root_udf() -> Callable[[Any], Any]:
    """Build the executor-side reducer: one chunk's leaf hashes -> its subtree root.

    Defined as a closure that only needs ``hashlib`` and ``pyarrow`` so that it pickles by value
    and runs on executors that do not have consentgate installed.
    """

    def reduce_chunk(table: Any) -> Any:
        import hashlib as _hashlib

        import pyarrow as _pa

        table = table.sort_by(_IDX)
        idx = table.column(_IDX).to_pylist()
        level: list[bytes] = table.column(_H).to_pylist()
        sha = _hashlib.sha256
        while len(level) > 1:
            nxt = [
                sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return _pa.table(
            {
                "chunk": _pa.array([table.column(_CHUNK)[0].as_py()], _pa.int64()),
                "root": _pa.array([level[0]], _pa.binary()),
                "n": _pa.array([len(idx)], _pa.int64()),
                "lo": _pa.array([idx[0]], _pa.int64()),
                "hi": _pa.array([idx[-1]], _pa.int64()),
                "distinct": _pa.array([len(set(idx))], _pa.int64()),
            }
        )

    return reduce_chunk


class _IndexedLeaves:
    """Leaves sorted by (key, leaf hash) with a dense global index, persisted while in use.

    The index is ``offset[partition] + position in partition`` from one sorted, persisted pass,
    so the counting job and every later job see the same rows in the same places (a re-run sort
    could partition ties differently). The chunk reducer re-checks density anyway.
    """

    def __init__(self, df: DataFrame, *, chunk_log2: int) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        self.chunk_log2 = chunk_log2
        ordered = df.orderBy(_K, _H).select(
            "*",
            F.spark_partition_id().alias("_cg_pid"),
            F.monotonically_increasing_id().alias("_cg_mid"),
        )
        self._persisted = ordered.persist(StorageLevel.MEMORY_AND_DISK)
        counts = {
            int(r["_cg_pid"]): int(r["count"])
            for r in self._persisted.groupBy("_cg_pid").count().collect()
        }
        offsets: dict[int, int] = {}
        running = 0
        for pid in sorted(counts):
            offsets[pid] = running
            running += counts[pid]
        self.size = running
        if offsets:
            offset_map = F.create_map(
                *[x for pid, off in offsets.items() for x in (F.lit(pid), F.lit(off))]
            )
            offset = F.element_at(offset_map, F.col("_cg_pid"))
        else:
            offset = F.lit(0)
        local = F.col("_cg_mid") - F.shiftleft(F.col("_cg_pid").cast("long"), 33)
        self.df = (
            self._persisted.withColumn(_IDX, (offset + local).cast("long"))
            .withColumn(_CHUNK, F.shiftright(F.col(_IDX), chunk_log2))
            .drop("_cg_pid", "_cg_mid")
        )

    def chunk_roots(self) -> list[bytes]:
        """Subtree roots of every aligned chunk, in order, computed on the executors."""
        if self.size == 0:
            return []
        rows = (
            self.df.select(_CHUNK, _IDX, _H)
            .groupBy(_CHUNK)
            .applyInArrow(
                _chunk_root_udf(),
                "chunk long, root binary, n long, lo long, hi long, distinct long",
            )
            .collect()
        )
        rows.sort(key=lambda r: int(r["chunk"]))
        width = 1 << self.chunk_log2
        expected_chunks = (self.size + width - 1) // width
        if [int(r["chunk"]) for r in rows] != list(range(expected_chunks)):
            raise CheckFailed("Merkle chunking lost or duplicated a chunk (leaf index not dense)")
        for r in rows:
            j = int(r["chunk"])
            lo, hi = j * width, min((j + 1) * width, self.size) - 1
            n = hi - lo + 1
            if (int(r["n"]), int(r["distinct"]), int(r["lo"]), int(r["hi"])) != (n, n, lo, hi):
                raise CheckFailed(f"Merkle chunk {j} is not the dense index range {lo}..{hi}")
        return [bytes(r["root"]) for r in rows]

    def chunk_leaves(self, chunk: int) -> list[tuple[int, str, bytes, bytes]]:
        """(index, key, leaf hash, leaf data) of one chunk: at most ``2**chunk_log2`` rows."""
        from pyspark.sql import functions as F

        rows = self.df.filter(F.col(_CHUNK) == chunk).select(_IDX, _K, _H, _D).collect()
        out = [(int(r[_IDX]), str(r[_K]), bytes(r[_H]), bytes(r[_D])) for r in rows]
        out.sort()
        return out

    def close(self) -> None:
        self._persisted.unpersist()


def _check_binary(df: DataFrame, column: str) -> None:
    from pyspark.sql.types import BinaryType

    if column not in df.columns:
        raise SchemaError(f"column {column!r} not found (have {df.columns})")
    if not isinstance(df.schema[column].dataType, BinaryType):
        raise SchemaError(
            f"column {column!r} must be binary, found {df.schema[column].dataType.simpleString()}"
        )


def spark_merkle_root(
    df: DataFrame,
    *,
    key_col: str,
    leaf_hash_col: str,
    chunk_log2: int = 16,
    known_leaves: int | None = None,
) -> tuple[str, int]:
    """RFC 6962 root over a DataFrame's leaves, sorted by key, with hashing on the executors.

    The leaves are sorted by ``(key_col, leaf_hash_col)`` and given a dense index; executors
    reduce each aligned chunk ``[j*C, (j+1)*C)`` (``C = 2**chunk_log2``, last chunk possibly
    shorter) to its subtree root; the driver combines the ``m = ceil(n/C)`` chunk roots with
    :func:`merkle_root`. Only ``m`` hashes are collected.

    Why combining chunk roots gives the leaf-level root (induction on ``m``): if ``m == 1`` the
    one chunk is the whole tree. Otherwise ``n > C``; RFC 6962 splits at ``k``, the largest power
    of two below ``n``. Since ``C`` is a power of two and ``C < n``, ``k >= C``, so ``k = k'C``
    with ``k'`` a power of two. From ``k < n <= 2k``: ``k' < n/C <= m`` and ``m = ceil(n/C) <=
    2k'``, so ``k'`` is exactly the largest power of two below ``m`` - the split
    :func:`merkle_root` makes over chunk roots. The left part ``D[0:k]`` is the first ``k'``
    full chunks and the right part ``D[k:n]`` is the remaining chunks, still aligned relative to
    ``k`` (a multiple of ``C``), each side with fewer than ``m`` chunks: the induction applies.

    Args:
        df: The leaves; other columns are ignored.
        key_col: Ordering key (any orderable type; strings order by UTF-8 bytes).
        leaf_hash_col: Binary column holding each leaf's ``H(0x00 || leaf_data)``.
        chunk_log2: log2 of the chunk size; memory per executor task is ``32 * 2**chunk_log2``.
        known_leaves: The number of leaves when the caller knows it (from the Delta log). It
            only chooses the work split, never the result: at most one chunk's worth, and the
            sorted leaf hashes (at most ``32 * 2**chunk_log2`` bytes, what one executor task
            holds anyway) are taken in one job (a top-``C + 1`` sort, no sampling, no counting
            job, no Python worker) and reduced here; if more leaves turn up than one chunk
            holds, the chunked path runs as without it. Measured on the three-asset test
            lake's gate: its hash steps ran 5 -> 3 jobs (allowlist) and 6 -> 4 (snapshot).

    Returns:
        ``(root_hex, leaf_count)``; the empty tree gives ``(sha256("").hex(), 0)``.
    """
    from pyspark.sql import functions as F

    if not 0 <= chunk_log2 <= 30:
        raise ValueError(f"chunk_log2 must be in 0..30, got {chunk_log2}")
    _check_binary(df, leaf_hash_col)
    if key_col not in df.columns:
        raise SchemaError(f"key column {key_col!r} not found (have {df.columns})")
    leaves = df.select(F.col(key_col).alias(_K), F.col(leaf_hash_col).alias(_H))
    width = 1 << chunk_log2
    if known_leaves is not None and known_leaves <= width:
        # Limit over a sort is one TakeOrderedAndProject job: a bounded top-(C + 1) per task.
        head = leaves.orderBy(_K, _H).select(_H).limit(width + 1).collect()
        if len(head) <= width:
            return merkle_root([bytes(r[_H]) for r in head]).hex(), len(head)
    indexed = _IndexedLeaves(leaves, chunk_log2=chunk_log2)
    try:
        return merkle_root(indexed.chunk_roots()).hex(), indexed.size
    finally:
        indexed.close()


def spark_prove(
    df: DataFrame, key: str, *, key_col: str, leaf_col: str, chunk_log2: int = 16
) -> dict[str, Any]:
    """Inclusion or exclusion proof for ``key`` from a DataFrame of leaves, without collecting it.

    Produces exactly what :func:`build_proof` produces over the same sorted leaves. The driver
    receives the chunk roots, the index of the key (or the count of smaller keys), and the
    leaves of the one or two chunks holding the leaf or its neighbours; an audit path is the path
    inside the chunk followed by the chunk's path among the chunk roots (RFC 6962 paths list the
    deepest sibling first, and a chunk is a node of the tree - see :func:`spark_merkle_root`).

    Args:
        df: The leaves.
        key: The key to prove (string keys only: proofs are for humans holding an id).
        key_col: String key column; must be the same key the tree was built over.
        leaf_col: Binary leaf data; its leaf hash is computed here.
        chunk_log2: Must not change the result; only the work split.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    _check_binary(df, leaf_col)
    if key_col not in df.columns or not isinstance(df.schema[key_col].dataType, StringType):
        raise SchemaError(f"key column {key_col!r} must be a string column of the leaves")
    leaves = df.select(
        F.col(key_col).alias(_K),
        F.unhex(F.sha2(F.concat(F.lit(_LEAF_PREFIX), F.col(leaf_col)), 256)).alias(_H),
        F.col(leaf_col).alias(_D),
    )
    indexed = _IndexedLeaves(leaves, chunk_log2=chunk_log2)
    try:
        roots = indexed.chunk_roots()
        n = indexed.size
        first = indexed.df.filter(F.col(_K) == key).agg(F.min(_IDX).alias("i")).collect()
        hits = first[0]["i"] is not None
        wanted: list[int]
        if hits:
            position = int(first[0]["i"])
            wanted = [position]
        else:
            position = indexed.df.filter(F.col(_K) < F.lit(key)).count()
            wanted = [i for i in (position - 1, position) if 0 <= i < n]
        width = 1 << chunk_log2
        chunks = {i >> chunk_log2: indexed.chunk_leaves(i >> chunk_log2) for i in wanted}

        def item(i: int) -> dict[str, Any]:
            members = chunks[i >> chunk_log2]
            base = (i >> chunk_log2) * width
            idx, leaf_key, _, data = members[i - base]
            if idx != i:
                raise CheckFailed(f"leaf index {i} not found in its chunk")
            inner = inclusion_path([m[2] for m in members], i - base)
            outer = inclusion_path(roots, i >> chunk_log2)
            return _item(i, leaf_key, data, inner + outer)

        if hits:
            return {"kind": INCLUSION, "key": key, "tree_size": n, "leaf": item(position)}
        return {
            "kind": EXCLUSION,
            "key": key,
            "tree_size": n,
            "left": item(position - 1) if position - 1 >= 0 else None,
            "right": item(position) if position < n else None,
        }
    finally:
        indexed.close()
