"""Spark-free reference implementation of consentgate's row encoding, leaves and proofs.

This module is deliberately small and depends only on the standard library, pyarrow and
delta-rs (``deltalake``, to read Delta tables as delta-spark wrote them, deletion vectors
included), so a creator or auditor can read it top to bottom and check a snapshot, a manifest
or a proof without Spark, a JVM, a cluster, or trust in consentgate's Spark code.
``consentgate.digest`` produces the same bytes with Spark SQL functions; the test suite proves
the two agree. The byte format is specified in ``docs/manifest.md``; in short::

    ROW    = u32(field count) || for each field: u32(len(name)) || name (UTF-8) || VALUE
    VALUE  = 0x00                                   (null, any type)
           | tag || payload                         (see TAGS below)

All integers are big-endian; ``u32`` is unsigned, the value payloads are two's complement.
Content leaf data is ``ROW`` of a snapshot row (columns in table-schema order); leaf hash is
``SHA-256(0x00 || ROW)``; the content tree orders leaves by leaf hash. The allowlist tree
(scheme ``consentgate-allowlist/2``) is keyed by ``SHA-256(domain || asset_id)`` and its leaf
data is that key followed by a digest of the entry, so an exclusion proof reveals neighbours
only as hashes (see "Allowlist leaves and proofs" below).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import TableNotFoundError

from consentgate import merkle
from consentgate.errors import SchemaError, TableError

#: Type tags. Shared with ``consentgate.digest`` so both implementations use one table.
TAG_NULL = 0x00
TAG_BOOLEAN = 0x01
TAG_TINYINT = 0x02
TAG_SMALLINT = 0x03
TAG_INT = 0x04
TAG_BIGINT = 0x05
TAG_FLOAT = 0x06
TAG_DOUBLE = 0x07
TAG_STRING = 0x08
TAG_BINARY = 0x09
TAG_DATE = 0x0A
TAG_TIMESTAMP = 0x0B
TAG_ARRAY = 0x10
TAG_STRUCT = 0x11

#: Canonical NaN bit patterns (Java's ``floatToIntBits`` / ``doubleToLongBits``).
FLOAT_NAN = b"\x7f\xc0\x00\x00"
DOUBLE_NAN = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"

#: The allowlist leaf: these fields, in this order, encoded as a ROW.
ALLOWLIST_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("asset_id", pa.string()),
    ("consent_record_id", pa.string()),
    ("policy_version", pa.string()),
    ("captured_at", pa.timestamp("us", tz="UTC")),
    ("jurisdiction", pa.string()),
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(1970, 1, 1)
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


class UnsupportedType(ValueError):
    """A column type the row encoding does not define (decimal, map, naive timestamp, ...)."""


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _encode_value(value: Any, typ: pa.DataType) -> bytes:
    """VALUE encoding of one Python value (as pyarrow's ``to_pylist`` gives it) of Arrow type."""
    if value is None:
        return b"\x00"
    if pa.types.is_boolean(typ):
        return bytes([TAG_BOOLEAN, 1 if value else 0])
    if pa.types.is_int8(typ):
        return bytes([TAG_TINYINT]) + struct.pack(">b", value)
    if pa.types.is_int16(typ):
        return bytes([TAG_SMALLINT]) + struct.pack(">h", value)
    if pa.types.is_int32(typ):
        return bytes([TAG_INT]) + struct.pack(">i", value)
    if pa.types.is_int64(typ):
        return bytes([TAG_BIGINT]) + struct.pack(">q", value)
    if pa.types.is_float32(typ):
        return bytes([TAG_FLOAT]) + (FLOAT_NAN if math.isnan(value) else struct.pack(">f", value))
    if pa.types.is_float64(typ):
        return bytes([TAG_DOUBLE]) + (DOUBLE_NAN if math.isnan(value) else struct.pack(">d", value))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        raw = str(value).encode("utf-8")
        return bytes([TAG_STRING]) + _u32(len(raw)) + raw
    if (
        pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
        or pa.types.is_fixed_size_binary(typ)
        or pa.types.is_binary_view(typ)
    ):
        raw = bytes(value)
        return bytes([TAG_BINARY]) + _u32(len(raw)) + raw
    if pa.types.is_date32(typ) or pa.types.is_date64(typ):
        return bytes([TAG_DATE]) + struct.pack(">i", (value - _EPOCH_DAY).days)
    if pa.types.is_timestamp(typ):
        return bytes([TAG_TIMESTAMP]) + struct.pack(">q", timestamp_micros(value))
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        element = typ.value_type
        return (
            bytes([TAG_ARRAY])
            + _u32(len(value))
            + b"".join(_encode_value(v, element) for v in value)
        )
    if pa.types.is_struct(typ):
        fields = [(typ.field(i).name, typ.field(i).type) for i in range(typ.num_fields)]
        return bytes([TAG_STRUCT]) + encode_row([value[name] for name, _ in fields], fields)
    raise UnsupportedType(f"type {typ} has no consentgate row encoding")


def timestamp_micros(value: dt.datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z of an aware datetime (exact, any year 1..9999)."""
    if value.tzinfo is None:
        raise UnsupportedType("naive timestamps have no instant; only UTC-adjusted ones encode")
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


_SCALAR_TYPES = (
    pa.types.is_boolean,
    pa.types.is_int8,
    pa.types.is_int16,
    pa.types.is_int32,
    pa.types.is_int64,
    pa.types.is_float32,
    pa.types.is_float64,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_string_view,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
    pa.types.is_binary_view,
    pa.types.is_date32,
    pa.types.is_date64,
)


def _check_type(typ: pa.DataType, where: str) -> None:
    """Refuse, up front and by column name, types the encoding does not define."""
    if pa.types.is_timestamp(typ):
        if typ.tz is None:
            raise UnsupportedType(f"{where}: timestamp without time zone is not supported")
        if typ.unit not in _US_PER_UNIT:
            raise UnsupportedType(f"{where}: timestamp unit {typ.unit!r} is finer than micros")
        return
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        _check_type(typ.value_type, f"{where}[]")
        return
    if pa.types.is_struct(typ):
        for i in range(typ.num_fields):
            _check_type(typ.field(i).type, f"{where}.{typ.field(i).name}")
        return
    if not any(check(typ) for check in _SCALAR_TYPES):
        raise UnsupportedType(f"{where}: type {typ} has no consentgate row encoding")


def encode_row(values: Sequence[Any], fields: Sequence[tuple[str, pa.DataType]]) -> bytes:
    """ROW encoding: field count, then each field's name and VALUE, in the given order."""
    out = [_u32(len(fields))]
    for value, (name, typ) in zip(values, fields, strict=True):
        raw = name.encode("utf-8")
        out.append(_u32(len(raw)))
        out.append(raw)
        out.append(_encode_value(value, typ))
    return b"".join(out)


def _fields(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    fields = [(f.name, f.type) for f in schema]
    for name, typ in fields:
        _check_type(typ, name)
    return fields


def iter_row_encodings(table: pa.Table | pa.RecordBatch) -> Iterable[bytes]:
    """ROW encoding of every row of an Arrow table, columns in the table's order."""
    fields = _fields(table.schema)
    columns = [column.to_pylist() for column in table.columns]
    for values in zip(*columns, strict=True):
        yield encode_row(values, fields)


def row_digests(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """SHA-256 of each row's ROW encoding (``digest.row_digest_column`` computes the same)."""
    return [hashlib.sha256(row).digest() for row in iter_row_encodings(table)]


def row_leaf_hashes(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """RFC 6962 leaf hash ``SHA-256(0x00 || ROW)`` of each row."""
    return [merkle.leaf_hash(row) for row in iter_row_encodings(table)]


def content_root(tables: Iterable[pa.Table | pa.RecordBatch]) -> tuple[str, int]:
    """Content Merkle root over all rows of some tables: leaves sorted by leaf hash.

    Returns:
        ``(root_hex, row_count)``, equal to ``digest.content_merkle_root`` over the same rows.
    """
    hashes: list[bytes] = []
    for table in tables:
        hashes.extend(row_leaf_hashes(table))
    hashes.sort()
    return merkle.merkle_root(hashes).hex(), len(hashes)


def read_parquet_batches(
    paths: Iterable[str | Path], *, columns: Sequence[str] | None = None
) -> Iterable[pa.RecordBatch]:
    """Stream record batches from Parquet files, optionally reordering columns.

    Args:
        paths: Data files of one snapshot (from the manifest).
        columns: The table schema's column order; defaults to each file's own order (which is
            the table's when Spark wrote it). Partition columns are not stored in Parquet
            files: snapshots are written unpartitioned.
    """
    for path in paths:
        with pq.ParquetFile(str(path)) as handle:
            yield from handle.iter_batches(columns=list(columns) if columns else None)


def content_root_of_files(
    paths: Iterable[str | Path], *, columns: Sequence[str] | None = None
) -> tuple[str, int]:
    """Content Merkle root of the rows in some Parquet files (see :func:`content_root`)."""
    return content_root(read_parquet_batches(paths, columns=columns))


# --------------------------------------------------------------------------------------------
# Decoding (for proofs: a leaf's fields are read back from its bytes, never trusted as given)
# --------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated encoding")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])


_FIXED: dict[int, tuple[str, int]] = {
    TAG_TINYINT: (">b", 1),
    TAG_SMALLINT: (">h", 2),
    TAG_INT: (">i", 4),
    TAG_BIGINT: (">q", 8),
    TAG_FLOAT: (">f", 4),
    TAG_DOUBLE: (">d", 8),
}


def _decode_value(reader: _Reader) -> Any:
    tag = reader.take(1)[0]
    if tag == TAG_NULL:
        return None
    if tag == TAG_BOOLEAN:
        flag = reader.take(1)[0]
        if flag > 1:
            raise ValueError("boolean byte is neither 0 nor 1")
        return flag == 1
    if tag in _FIXED:
        fmt, width = _FIXED[tag]
        return struct.unpack(fmt, reader.take(width))[0]
    if tag == TAG_STRING:
        return reader.take(reader.u32()).decode("utf-8")
    if tag == TAG_BINARY:
        return reader.take(reader.u32())
    if tag == TAG_DATE:
        return _EPOCH_DAY + dt.timedelta(days=struct.unpack(">i", reader.take(4))[0])
    if tag == TAG_TIMESTAMP:
        return _EPOCH + dt.timedelta(microseconds=struct.unpack(">q", reader.take(8))[0])
    if tag == TAG_ARRAY:
        return [_decode_value(reader) for _ in range(reader.u32())]
    if tag == TAG_STRUCT:
        return dict(_decode_fields(reader))
    raise ValueError(f"unknown type tag 0x{tag:02x}")


def _decode_fields(reader: _Reader) -> list[tuple[str, Any]]:
    count = reader.u32()
    return [
        (reader.take(reader.u32()).decode("utf-8"), _decode_value(reader)) for _ in range(count)
    ]


def decode_row(data: bytes) -> list[tuple[str, Any]]:
    """Decode a ROW encoding back to ``(name, value)`` pairs; raises ValueError if malformed."""
    reader = _Reader(data)
    fields = _decode_fields(reader)
    if reader.pos != len(data):
        raise ValueError("trailing bytes after row")
    return fields


# --------------------------------------------------------------------------------------------
# Allowlist leaves and proofs
#
# Scheme 2 (``consentgate-allowlist/2``, every manifest since issue #12): the tree is keyed by a
# hash of the asset id and each leaf holds only that hash and a digest of the entry, so the two
# neighbours an exclusion proof must reveal are revealed as hashes, never as another creator's
# asset id, consent record id, capture time or jurisdiction. Scheme 1 (keyed by the raw asset
# id, the leaf *was* the entry) is kept only to re-check manifests and proofs made before.

#: The allowlist tree scheme a manifest records in ``allowlist.scheme``.
ALLOWLIST_SCHEME = "consentgate-allowlist/2"
#: Scheme of manifests written before ``allowlist.scheme`` existed (tree keyed by raw asset id).
LEGACY_ALLOWLIST_SCHEME = "consentgate-allowlist/1"
#: Format tag of allowlist proofs (``"format"`` member); ``/1`` proofs are the legacy scheme's.
PROOF_FORMAT = "consentgate-proof/2"
LEGACY_PROOF_FORMAT = "consentgate-proof/1"
#: Domain prefixes: a key hash can never be mistaken for an entry digest or an RFC 6962 node.
ALLOWLIST_KEY_DOMAIN = b"consentgate-allowlist/2 key:"
ALLOWLIST_ENTRY_DOMAIN = b"consentgate-allowlist/2 entry:"


def allowlist_entry(
    asset_id: str,
    consent_record_id: str,
    policy_version: str,
    captured_at: dt.datetime,
    jurisdiction: str | None,
) -> bytes:
    """One allowlist entry: ROW of the five ``ALLOWLIST_FIELDS`` in order.

    Scheme 2 reveals these bytes only in an inclusion proof, to the creator of ``asset_id``;
    under the legacy scheme they were the leaf data itself.
    """
    values = (asset_id, consent_record_id, policy_version, captured_at, jurisdiction)
    return encode_row(values, ALLOWLIST_FIELDS)


def allowlist_key(asset_id: str) -> str:
    """The tree key of an asset: lowercase hex ``SHA-256(ALLOWLIST_KEY_DOMAIN || asset_id)``.

    Why a hash: the neighbours of an absent key are revealed by an exclusion proof, and a hash
    of their ids says nothing about them that the prover's root did not already commit to.
    Anyone holding ``asset_id`` can compute it, so a proof is still checkable with the root
    alone. Lowercase hex orders exactly as the digest bytes do.
    """
    return hashlib.sha256(ALLOWLIST_KEY_DOMAIN + asset_id.encode("utf-8")).hexdigest()


def allowlist_entry_digest(entry: bytes) -> bytes:
    """``SHA-256(ALLOWLIST_ENTRY_DOMAIN || entry)``: what a leaf commits to about the entry."""
    return hashlib.sha256(ALLOWLIST_ENTRY_DOMAIN + entry).digest()


def allowlist_record(data: bytes) -> dict[str, Any]:
    """Decode an allowlist entry to a JSON-able record (``captured_at`` as ISO-8601 UTC).

    Raises:
        ValueError: the bytes are not an allowlist entry (wrong fields, order or types).
    """
    fields = decode_row(data)
    if [name for name, _ in fields] != [name for name, _ in ALLOWLIST_FIELDS]:
        raise ValueError("not an allowlist entry: unexpected fields")
    record = dict(fields)
    if encode_row([record[n] for n, _ in ALLOWLIST_FIELDS], ALLOWLIST_FIELDS) != data:
        raise ValueError("not an allowlist entry: unexpected field types")
    if not isinstance(record["asset_id"], str):
        raise ValueError("allowlist entry without an asset_id")
    captured = record["captured_at"]
    record["captured_at"] = (
        captured.isoformat().replace("+00:00", "Z") if isinstance(captured, dt.datetime) else None
    )
    return record


def allowlist_leaf(entry: bytes) -> bytes:
    """Leaf data of an entry: ``bytes.fromhex(allowlist_key(asset_id)) || entry digest``.

    64 bytes. The key hash sits inside the leaf so that a revealed neighbour's key is bound to
    its place in the tree (relabelling it changes the leaf hash and breaks its audit path).

    Raises:
        ValueError: ``entry`` is not an allowlist entry.
    """
    asset_id = allowlist_record(entry)["asset_id"]
    return bytes.fromhex(allowlist_key(asset_id)) + allowlist_entry_digest(entry)


def allowlist_leaf_key(data: bytes) -> str:
    """The tree key carried by scheme-2 leaf data (its first 32 bytes, hex): ``key_of``."""
    if len(data) != 64:
        raise ValueError("allowlist leaf is not 64 bytes (key hash || entry digest)")
    return data[:32].hex()


def allowlist_tree_entries(entries: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """``(key, leaf data)`` of each entry, in tree order (``merkle.sort_entries``)."""
    return merkle.sort_entries(
        [(allowlist_leaf_key(leaf), leaf) for leaf in map(allowlist_leaf, entries)]
    )


def annotate_allowlist_proof(
    proof: Mapping[str, Any], *, asset_id: str, entry: bytes | None = None
) -> dict[str, Any]:
    """Wrap a tree proof for ``allowlist_key(asset_id)`` as a self-describing allowlist proof.

    Adds ``format``, ``tree``, ``scheme``, ``asset_id`` and ``included``; an inclusion proof
    also carries the asset's own ``entry`` (hex) and its decoded ``record`` (consent record id,
    policy version, captured_at, jurisdiction) in its ``leaf`` item. Exclusion items stay as the
    tree gives them: index, key hash, 64-byte leaf data (key hash and entry digest) and path.

    Raises:
        ValueError: ``proof`` is not for ``asset_id``'s key, or ``entry`` is missing from an
            inclusion proof or is not the entry the revealed leaf commits to.
    """
    if proof["key"] != allowlist_key(asset_id):
        raise ValueError("the tree proof is not for this asset's key")
    included = proof["kind"] == merkle.INCLUSION
    out: dict[str, Any] = {
        "format": PROOF_FORMAT,
        "tree": "allowlist",
        "scheme": ALLOWLIST_SCHEME,
        "asset_id": asset_id,
        **proof,
        "included": included,
    }
    if included:
        if entry is None or allowlist_leaf(entry).hex() != proof["leaf"]["leaf"]:
            raise ValueError("inclusion proof without the entry its leaf commits to")
        out["leaf"] = {**proof["leaf"], "entry": entry.hex(), "record": allowlist_record(entry)}
    return out


def build_allowlist_proof(entries: Iterable[bytes], asset_id: str) -> dict[str, Any]:
    """Reference (in-memory) allowlist proof for ``asset_id`` over all ``entries``.

    ``digest.allowlist_proof`` builds the same object on Spark without collecting the allowlist.
    """
    all_entries = list(entries)
    tree = allowlist_tree_entries(all_entries)
    proof = merkle.build_proof(tree, allowlist_key(asset_id))
    own = [e for e in all_entries if allowlist_record(e)["asset_id"] == asset_id]
    return annotate_allowlist_proof(proof, asset_id=asset_id, entry=own[0] if own else None)


def is_canonical_id(text: str) -> bool:
    """Whether ``text`` is an id in canonical form (DESIGN rule 2, Spark-free): non-empty, no
    surrounding whitespace (Python's ``str.isspace`` set, as :mod:`consentgate.consent`), no
    ASCII upper-case letter. Every allowlisted id is; a proof about another spelling of one
    (``" A1"`` for ``a1``) is true of a string no allowlist holds, so it proves nothing."""
    return (
        bool(text) and text == text.strip() and not any(c.isascii() and c.isupper() for c in text)
    )


def verify_allowlist_proof(proof: Mapping[str, Any], root: str | bytes) -> bool:
    """Check an allowlist inclusion or exclusion proof against the manifest's allowlist root.

    Scheme 2 (``consentgate-proof/2``): ``key`` must be ``allowlist_key(asset_id)``; every
    revealed leaf is 64 bytes whose first half is its key; inclusion additionally needs the
    entry: its digest must be the leaf's second half, its ``asset_id`` the proof's, and a
    ``record`` given for people must be what the entry decodes to. Then the tree proof is
    checked (:func:`consentgate.merkle.verify_proof`): the neighbours' keys bracket the asset's
    key strictly, they are adjacent, and every path leads to ``root``. Legacy
    ``consentgate-proof/1`` proofs (tree keyed by raw asset id) are checked as they always were;
    a legacy proof cannot verify against a scheme-2 root (its leaves are not 64-byte leaves).

    Never raises on malformed input; returns False instead.
    """
    try:
        if proof.get("format") == LEGACY_PROOF_FORMAT:
            return _verify_legacy_allowlist_proof(proof, root)
        if proof.get("format") != PROOF_FORMAT or proof.get("tree") != "allowlist":
            return False
        if proof.get("scheme") != ALLOWLIST_SCHEME:
            return False
        asset_id = proof["asset_id"]
        if not isinstance(asset_id, str) or not is_canonical_id(asset_id):
            return False  # true of another spelling, it would answer the wrong question
        if proof["key"] != allowlist_key(asset_id):
            return False
        included = proof["kind"] == merkle.INCLUSION
        if proof.get("included") is not included:
            return False
        if included:
            item = proof["leaf"]
            entry = bytes.fromhex(item["entry"])
            record = allowlist_record(entry)
            if record["asset_id"] != asset_id or allowlist_leaf(entry).hex() != item["leaf"]:
                return False
            if "record" in item and item["record"] != record:
                return False
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return merkle.verify_proof(proof, root, key_of=allowlist_leaf_key)


def _legacy_key_of(data: bytes) -> str:
    return str(allowlist_record(data)["asset_id"])


def _verify_legacy_allowlist_proof(proof: Mapping[str, Any], root: str | bytes) -> bool:
    """Scheme-1 proofs, handed out before scheme 2: leaf data is the entry, key the raw id."""
    try:
        if proof.get("tree", "allowlist") != "allowlist":
            return False
        if "included" in proof and proof["included"] != (proof.get("kind") == merkle.INCLUSION):
            return False
        for side in ("leaf", "left", "right"):
            item = proof.get(side)
            if (
                isinstance(item, Mapping)
                and "record" in item
                and item["record"] != allowlist_record(bytes.fromhex(item["leaf"]))
            ):
                return False
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return merkle.verify_proof(proof, root, key_of=_legacy_key_of)


# --------------------------------------------------------------------------------------------
# Reading Delta tables without a JVM (delta-rs)
# --------------------------------------------------------------------------------------------
#
# Rows are read through delta-rs's query engine (``deltalake.QueryBuilder``), which honours
# what delta-spark writes (deletion vectors, column mapping, partitions); ``to_pyarrow_*``
# would refuse deletion vectors. The log itself (add actions, deletion-vector keep-masks,
# history) is read with ``deltalake.DeltaTable``.


def open_delta(path: str | Path, *, version: int | None = None) -> DeltaTable:
    """Open a Delta table (latest, or ``version``) with delta-rs, or fail naming the path.

    Raises:
        TableError: the path holds no Delta table or the version does not exist.
    """
    location = str(path)
    try:
        table = DeltaTable(location)
        if version is not None:
            table.load_as_version(int(version))
    except TableNotFoundError:
        raise TableError(f"{location}: not a Delta table (no _delta_log)") from None
    except Exception as exc:  # delta-rs raises several types for a bad version
        raise TableError(f"{location}: cannot open Delta table: {exc}") from None
    return table


def is_delta_table(path: str | Path) -> bool:
    """Whether ``path`` holds a Delta table."""
    return bool(DeltaTable.is_deltatable(str(path)))


def data_files(table: DeltaTable) -> list[str]:
    """The data files of the table's loaded version, relative to the table as the log's add
    actions spell them (what a manifest records), sorted."""
    actions = pa.table(table.get_add_actions(flatten=True))
    return sorted(str(p) for p in actions.column("path").to_pylist())


def deletion_vector_masks(table: DeltaTable) -> dict[str, list[bool]]:
    """Keep-masks of the files that carry a deletion vector at the loaded version.

    Returns:
        ``relative path (as in :func:`data_files`) -> keep mask`` (``True`` = the row at that
        position is visible, ``False`` = a deletion vector hides it); files without a vector
        are absent.
    """
    if "deletionVectors" not in (table.protocol().reader_features or ()):
        return {}
    vectors = pa.table(table.deletion_vectors())
    by_name: dict[str, list[tuple[str, list[bool]]]] = {}
    for uri, mask in zip(
        vectors.column("filepath").to_pylist(),
        vectors.column("selection_vector").to_pylist(),
        strict=True,
    ):
        bare = unquote(str(uri))
        by_name.setdefault(bare.rsplit("/", 1)[-1], []).append((bare, [bool(k) for k in mask]))
    masks: dict[str, list[bool]] = {}
    for rel in data_files(table):
        plain = unquote(rel)
        for bare, mask in by_name.get(plain.rsplit("/", 1)[-1], ()):
            if bare.endswith("/" + plain):  # delta-rs names files by absolute URI here
                masks[rel] = mask
    return masks


def commit_history(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Commit infos of the table, newest first, with ``version`` and our ``userMetadata`` keys
    (``consentgate.*``) merged in at the top level (what ``lake.history`` returns).

    Read from the latest version: delta-rs numbers history entries from the loaded version.
    """
    out: list[dict[str, Any]] = []
    for entry in open_delta(path).history(limit):
        merged = dict(entry)
        merged.update(user_metadata(entry.get("userMetadata")))
        out.append(merged)
    return out


def user_metadata(text: Any) -> dict[str, Any]:
    """Our keys from a commit's ``userMetadata`` (empty when it is absent or not ours)."""
    if not isinstance(text, str) or not text.startswith("{"):
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {k: v for k, v in parsed.items() if k.startswith("consentgate.")}


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scan(table: DeltaTable, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the rows a Delta reader sees at the table's loaded version.

    Deletion vectors are applied (a hidden row is not returned), column mapping and partition
    columns resolved, by delta-rs's query engine.

    Args:
        table: An opened table (see :func:`open_delta`).
        columns: Logical column names, in the order wanted; default all, in schema order.

    Raises:
        TableError: the query fails (a named column does not exist, a file is unreadable).
    """
    select = ", ".join(_identifier(c) for c in columns) if columns is not None else "*"
    try:
        stream = QueryBuilder().register("t", table).execute(f"SELECT {select} FROM t")
        reader = pa.RecordBatchReader.from_stream(stream)
        yield from reader
    except Exception as exc:  # DeltaError / ArrowInvalid / OSError from the engine
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise TableError(f"{table.table_uri}: cannot read rows: {first}") from None


def snapshot_content_root(
    path: str | Path, version: int, *, columns: Sequence[str] | None = None
) -> tuple[str, int]:
    """Content Merkle root and row count of a Delta table at ``version``, without Spark.

    Equal to ``digest.content_merkle_root(lake.read_table(spark, path, version=version))``:
    rows hidden by a deletion vector are not leaves (and not counted).

    Args:
        path: Table directory.
        version: The committed version to read.
        columns: The table schema's column order (a manifest's recorded schema); default the
            table's own.

    Raises:
        TableError: the table or version cannot be read.
        UnsupportedType: a column type the row encoding does not define.
    """
    return content_root(scan(open_delta(path, version=version), columns))


def _is_string(typ: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    )


def allowlist_root_of_batches(
    batches: Iterable[pa.RecordBatch], *, scheme: str = ALLOWLIST_SCHEME
) -> tuple[str, int]:
    """Allowlist Merkle root over rows holding (at least) the five ``ALLOWLIST_FIELDS``.

    Scheme 2: leaves are :func:`allowlist_leaf` of each row's :func:`allowlist_entry`, ordered
    by :func:`allowlist_key` (ties, impossible for unique ids, by leaf hash); equal to
    ``digest.allowlist_merkle_root``. The legacy scheme (for manifests written before it):
    leaves are the entries, ordered by ``asset_id``'s UTF-8 bytes.

    Returns:
        ``(root_hex, asset_count)``.

    Raises:
        SchemaError: a column is missing or has a type other than the leaf's, a scheme-2 row has
            no ``asset_id``, or ``scheme`` is unknown.
    """
    if scheme not in (ALLOWLIST_SCHEME, LEGACY_ALLOWLIST_SCHEME):
        raise SchemaError(f"unknown allowlist scheme {scheme!r}")
    tokens: list[tuple[bytes, bytes]] = []
    for batch in batches:
        for name, expected in ALLOWLIST_FIELDS:
            index = batch.schema.get_field_index(name)
            if index < 0:
                raise SchemaError(f"allowlist is missing column {name!r}")
            actual = batch.schema.field(index).type
            ok = (
                _is_string(actual)
                if _is_string(expected)
                else pa.types.is_timestamp(actual) and actual.tz is not None
            )
            if not ok:
                raise SchemaError(f"allowlist column {name!r} must be {expected}, found {actual}")
        columns = [batch.column(name).to_pylist() for name, _ in ALLOWLIST_FIELDS]
        for values in zip(*columns, strict=True):
            entry = encode_row(values, ALLOWLIST_FIELDS)
            key = values[0]
            if scheme == ALLOWLIST_SCHEME:
                if key is None:
                    raise SchemaError("allowlist has a row without an asset_id")
                key_hash = hashlib.sha256(ALLOWLIST_KEY_DOMAIN + str(key).encode("utf-8")).digest()
                leaf = key_hash + allowlist_entry_digest(entry)
                tokens.append((key_hash, merkle.leaf_hash(leaf)))
            else:
                # Spark's ascending order puts a null key first; no gate allowlist has one.
                token = b"" if key is None else b"\x01" + str(key).encode("utf-8")
                tokens.append((token, merkle.leaf_hash(entry)))
    tokens.sort()
    return merkle.merkle_root([h for _, h in tokens]).hex(), len(tokens)


def allowlist_root_of_table(
    path: str | Path, version: int, *, scheme: str = ALLOWLIST_SCHEME
) -> tuple[str, int]:
    """Allowlist Merkle root and asset count of an allowlist Delta table at ``version``."""
    table = open_delta(path, version=version)
    names = [name for name, _ in ALLOWLIST_FIELDS]
    return allowlist_root_of_batches(scan(table, names), scheme=scheme)
