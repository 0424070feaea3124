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
``SHA-256(0x00 || ROW)``; the content tree orders leaves by leaf hash.
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
# --------------------------------------------------------------------------------------------


def allowlist_leaf(
    asset_id: str,
    consent_record_id: str,
    policy_version: str,
    captured_at: dt.datetime,
    jurisdiction: str | None,
) -> bytes:
    """Leaf data of one allowlist entry: ROW of the five ``ALLOWLIST_FIELDS`` in order."""
    values = (asset_id, consent_record_id, policy_version, captured_at, jurisdiction)
    return encode_row(values, ALLOWLIST_FIELDS)


def allowlist_record(data: bytes) -> dict[str, Any]:
    """Decode allowlist leaf data to a JSON-able record (``captured_at`` as ISO-8601 UTC).

    Raises:
        ValueError: the bytes are not an allowlist leaf (wrong fields, order or types).
    """
    fields = decode_row(data)
    if [name for name, _ in fields] != [name for name, _ in ALLOWLIST_FIELDS]:
        raise ValueError("not an allowlist leaf: unexpected fields")
    record = dict(fields)
    if encode_row([record[n] for n, _ in ALLOWLIST_FIELDS], ALLOWLIST_FIELDS) != data:
        raise ValueError("not an allowlist leaf: unexpected field types")
    captured = record["captured_at"]
    record["captured_at"] = (
        captured.isoformat().replace("+00:00", "Z") if isinstance(captured, dt.datetime) else None
    )
    return record


def allowlist_key(data: bytes) -> str:
    """The key (``asset_id``) of allowlist leaf data; the binding that proofs rely on."""
    asset_id = allowlist_record(data)["asset_id"]
    if not isinstance(asset_id, str):
        raise ValueError("allowlist leaf without an asset_id")
    return asset_id


def annotate_allowlist_proof(proof: Mapping[str, Any]) -> dict[str, Any]:
    """Add human-readable ``record`` members (decoded from each revealed leaf) and a header.

    The records are for people reading the proof; :func:`verify_allowlist_proof` re-derives them
    from the leaf bytes and rejects a proof whose records disagree.
    """
    out: dict[str, Any] = {"format": "consentgate-proof/1", "tree": "allowlist", **proof}
    out["included"] = proof["kind"] == merkle.INCLUSION
    for side in ("leaf", "left", "right"):
        item = proof.get(side)
        if item is not None:
            out[side] = {**item, "record": allowlist_record(bytes.fromhex(item["leaf"]))}
    return out


def verify_allowlist_proof(proof: Mapping[str, Any], root: str | bytes) -> bool:
    """Check an allowlist inclusion or exclusion proof against the manifest's allowlist root.

    Never raises on malformed input; returns False instead.
    """
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
    return merkle.verify_proof(proof, root, key_of=allowlist_key)


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


def allowlist_root_of_batches(batches: Iterable[pa.RecordBatch]) -> tuple[str, int]:
    """Allowlist Merkle root over rows holding (at least) the five ``ALLOWLIST_FIELDS``.

    Leaves are :func:`allowlist_leaf` of each row, ordered by ``asset_id`` (UTF-8 bytes, ties by
    leaf hash: ``merkle.sort_entries``); equal to ``digest.allowlist_merkle_root``.

    Returns:
        ``(root_hex, asset_count)``.

    Raises:
        SchemaError: a column is missing or has a type other than the leaf's.
    """
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
            data = encode_row(values, ALLOWLIST_FIELDS)
            key = values[0]
            # Spark's ascending order puts a null key first; no gate allowlist has one.
            token = b"" if key is None else b"\x01" + str(key).encode("utf-8")
            tokens.append((token, merkle.leaf_hash(data)))
    tokens.sort()
    return merkle.merkle_root([h for _, h in tokens]).hex(), len(tokens)


def allowlist_root_of_table(path: str | Path, version: int) -> tuple[str, int]:
    """Allowlist Merkle root and asset count of an allowlist Delta table at ``version``."""
    table = open_delta(path, version=version)
    names = [name for name, _ in ALLOWLIST_FIELDS]
    return allowlist_root_of_batches(scan(table, names))
