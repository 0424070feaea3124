"""Spark-native row encoding, row digests, leaf hashes and Merkle roots.

The same bytes as :mod:`consentgate.verifier` (the Spark-free reference), built only from Spark
SQL built-in functions so hashing runs inside the JVM on the executors, with no Python UDF and
no row leaving the cluster. Format (details in ``docs/manifest.md``)::

    ROW    = u32(field count) || for each field: u32(len(name)) || name (UTF-8) || VALUE
    VALUE  = 0x00 (null) | tag || payload

Column names are part of every row's encoding (rather than a separate schema digest), so a
content root commits to names, order and types as well as values, and a leaf is decodable on its
own. The encoding is assembled as an uppercase hex string (``hex``/``lpad``/``concat``/
``array_join``, all linear) and turned into bytes once with ``unhex``; float bits come from
``java.lang.Float.floatToIntBits`` / ``Double.doubleToLongBits`` through ``java_method``, which
canonicalise NaN exactly as the reference does and keep ``-0.0`` distinct from ``0.0``.

Digests are returned as 32-byte binary columns (hex only at the JSON boundary).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consentgate import merkle, verifier
from consentgate.errors import CheckFailed, SchemaError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType, StructType

#: Column names of the allowlist leaf, in encoding order (see ``verifier.ALLOWLIST_FIELDS``).
ALLOWLIST_COLUMNS: tuple[str, ...] = tuple(name for name, _ in verifier.ALLOWLIST_FIELDS)


def _hex_const(data: bytes) -> Column:
    from pyspark.sql import functions as F

    return F.lit(data.hex().upper())


def _u32_hex(n: Column) -> Column:
    """Unsigned 32-bit big-endian length/count, as 8 hex digits."""
    from pyspark.sql import functions as F

    return F.lpad(F.hex(n.cast("long")), 8, "0")


def _int_hex(value: Column, width: int) -> Column:
    """Two's-complement big-endian integer of ``width`` bytes, as ``2*width`` hex digits.

    ``hex`` of a negative long is its 64-bit two's complement (16 digits); the low ``width``
    bytes of that are the narrower type's two's complement.
    """
    from pyspark.sql import functions as F

    return F.substring(F.lpad(F.hex(value.cast("long")), 16, "0"), 17 - 2 * width, 2 * width)


def _tag(tag: int) -> Column:
    return _hex_const(bytes([tag]))


def _name_hex(name: str) -> str:
    raw = name.encode("utf-8")
    return (len(raw).to_bytes(4, "big") + raw).hex().upper()


def _value_hex(c: Column, typ: DataType, where: str) -> Column:
    """VALUE encoding of a column of Spark type ``typ`` as a hex string column (never null)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    payload: Column
    if isinstance(typ, T.BooleanType):
        payload = F.concat(_tag(verifier.TAG_BOOLEAN), F.when(c, "01").otherwise("00"))
    elif isinstance(typ, T.ByteType):
        payload = F.concat(_tag(verifier.TAG_TINYINT), _int_hex(c, 1))
    elif isinstance(typ, T.ShortType):
        payload = F.concat(_tag(verifier.TAG_SMALLINT), _int_hex(c, 2))
    elif isinstance(typ, T.IntegerType):
        payload = F.concat(_tag(verifier.TAG_INT), _int_hex(c, 4))
    elif isinstance(typ, T.LongType):
        payload = F.concat(_tag(verifier.TAG_BIGINT), _int_hex(c, 8))
    elif isinstance(typ, T.FloatType):
        # java_method returns the result as a string; coalesce keeps a null out of a primitive
        # parameter (the null case is handled by the outer CASE anyway).
        bits = F.java_method(
            F.lit("java.lang.Float"),
            F.lit("floatToIntBits"),
            F.coalesce(c, F.lit(0.0).cast("float")),
        )
        payload = F.concat(_tag(verifier.TAG_FLOAT), _int_hex(bits, 4))
    elif isinstance(typ, T.DoubleType):
        bits = F.java_method(
            F.lit("java.lang.Double"),
            F.lit("doubleToLongBits"),
            F.coalesce(c, F.lit(0.0).cast("double")),
        )
        payload = F.concat(_tag(verifier.TAG_DOUBLE), _int_hex(bits, 8))
    elif isinstance(typ, T.StringType):
        raw = c.cast("binary")
        payload = F.concat(_tag(verifier.TAG_STRING), _u32_hex(F.octet_length(raw)), F.hex(raw))
    elif isinstance(typ, T.BinaryType):
        payload = F.concat(_tag(verifier.TAG_BINARY), _u32_hex(F.octet_length(c)), F.hex(c))
    elif isinstance(typ, T.DateType):
        payload = F.concat(_tag(verifier.TAG_DATE), _int_hex(F.unix_date(c), 4))
    elif isinstance(typ, T.TimestampType) and not isinstance(typ, T.TimestampNTZType):
        payload = F.concat(_tag(verifier.TAG_TIMESTAMP), _int_hex(F.unix_micros(c), 8))
    elif isinstance(typ, T.ArrayType):
        element = typ.elementType
        _check_supported(element, f"{where}[]")
        encode_element: Callable[[Column], Column] = lambda e: _value_hex(e, element, where)  # noqa: E731
        payload = F.concat(
            _tag(verifier.TAG_ARRAY),
            _u32_hex(F.size(c)),
            F.array_join(F.transform(c, encode_element), ""),
        )
    elif isinstance(typ, T.StructType):
        payload = F.concat(_tag(verifier.TAG_STRUCT), _row_hex(typ, c.getField, where))
    else:
        raise SchemaError(f"column {where!r}: type {typ.simpleString()} has no row encoding")
    return F.when(c.isNull(), F.lit("00")).otherwise(payload)


def _check_supported(typ: DataType, where: str) -> None:
    from pyspark.sql import types as T

    scalars = (
        T.BooleanType,
        T.ByteType,
        T.ShortType,
        T.IntegerType,
        T.LongType,
        T.FloatType,
        T.DoubleType,
        T.StringType,
        T.BinaryType,
        T.DateType,
    )
    if isinstance(typ, T.TimestampNTZType):
        raise SchemaError(f"column {where!r}: timestamp_ntz has no instant; use timestamp (UTC)")
    if isinstance(typ, (*scalars, T.TimestampType)):
        return
    if isinstance(typ, T.ArrayType):
        _check_supported(typ.elementType, f"{where}[]")
        return
    if isinstance(typ, T.StructType):
        for field in typ.fields:
            _check_supported(field.dataType, f"{where}.{field.name}")
        return
    raise SchemaError(f"column {where!r}: type {typ.simpleString()} has no row encoding")


def _row_hex(schema: StructType, get: Callable[[str], Column], prefix: str = "") -> Column:
    from pyspark.sql import functions as F

    parts: list[Column] = [_hex_const(len(schema.fields).to_bytes(4, "big"))]
    for field in schema.fields:
        where = f"{prefix}.{field.name}" if prefix else field.name
        _check_supported(field.dataType, where)
        parts.append(F.lit(_name_hex(field.name)))
        parts.append(_value_hex(get(field.name), field.dataType, where))
    return F.concat(*parts)


def _top_level(name: str) -> Column:
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def row_encoding_column(schema: StructType) -> Column:
    """Binary column with each row's ROW encoding, columns in ``schema`` order.

    Args:
        schema: The table schema (``df.schema``); its order is the encoding's order.

    Raises:
        SchemaError: a column has a type the encoding does not define (decimal, map,
            timestamp_ntz, ...), named in the message.
    """
    from pyspark.sql import functions as F

    return F.unhex(_row_hex(schema, _top_level))


def row_digest_column(schema: StructType) -> Column:
    """32-byte binary column: ``SHA-256(ROW)`` of each row."""
    from pyspark.sql import functions as F

    return F.unhex(F.sha2(row_encoding_column(schema), 256))


def leaf_hash_column(schema: StructType) -> Column:
    """32-byte binary column: RFC 6962 leaf hash ``SHA-256(0x00 || ROW)`` of each row."""
    from pyspark.sql import functions as F

    return F.unhex(F.sha2(F.concat(F.lit(b"\x00"), row_encoding_column(schema)), 256))


def content_merkle_root(
    df: DataFrame, *, chunk_log2: int = 16, known_rows: int | None = None
) -> tuple[str, int]:
    """Content Merkle root of a snapshot: leaf per row, leaves ordered by leaf hash.

    Ordering by leaf hash (not a dataset key) makes the root independent of how the snapshot's
    files happen to be split and ordered, works for any key type and for duplicate rows, and lets
    the Spark-free verifier reproduce it without knowing the key.

    Args:
        df: The rows.
        chunk_log2: See :func:`consentgate.merkle.spark_merkle_root`.
        known_rows: The row count when the Delta log gives it (only the work split depends on
            it: :func:`consentgate.merkle.spark_merkle_root`'s ``known_leaves``).

    Returns:
        ``(root_hex, row_count)``, the count as hashed.
    """
    leaves = df.select(leaf_hash_column(df.schema).alias("leaf_hash"))
    return merkle.spark_merkle_root(
        leaves,
        key_col="leaf_hash",
        leaf_hash_col="leaf_hash",
        chunk_log2=chunk_log2,
        known_leaves=known_rows,
    )


def _allowlist_frame(df: DataFrame) -> DataFrame:
    from pyspark.sql import types as T

    expected: dict[str, Any] = {
        "asset_id": T.StringType,
        "consent_record_id": T.StringType,
        "policy_version": T.StringType,
        "captured_at": T.TimestampType,
        "jurisdiction": T.StringType,
    }
    for name, typ in expected.items():
        if name not in df.columns:
            raise SchemaError(f"allowlist is missing column {name!r} (have {df.columns})")
        actual = df.schema[name].dataType
        if not isinstance(actual, typ) or isinstance(actual, T.TimestampNTZType):
            raise SchemaError(
                f"allowlist column {name!r} must be {typ().simpleString()}, "
                f"found {actual.simpleString()}"
            )
    return df.select(*[_top_level(n) for n in ALLOWLIST_COLUMNS])


def allowlist_entry_column(df: DataFrame) -> Column:
    """Binary column of allowlist entries: ROW of the five ``ALLOWLIST_COLUMNS`` in order.

    Args:
        df: Has at least ``asset_id, consent_record_id, policy_version`` (string),
            ``captured_at`` (timestamp) and ``jurisdiction`` (string, nullable); other columns
            are ignored.
    """
    return row_encoding_column(_allowlist_frame(df).schema)


def allowlist_key_column(df: DataFrame) -> Column:
    """String column: the tree key ``hex(SHA-256(key domain || asset_id))`` (lowercase).

    A Spark expression (``sha2`` over the UTF-8 bytes), so ordering by it runs on the executors
    like any sort. Lowercase hex sorts exactly as the digest bytes (``verifier.allowlist_key``).
    A null ``asset_id`` fails the job: such a row could be no creator's leaf.
    """
    from pyspark.sql import functions as F

    _allowlist_frame(df)  # checks the schema
    asset_id = _top_level("asset_id")
    hashed = F.sha2(F.concat(F.lit(verifier.ALLOWLIST_KEY_DOMAIN), asset_id.cast("binary")), 256)
    return F.when(
        asset_id.isNull(), F.raise_error(F.lit("allowlist row without asset_id"))
    ).otherwise(hashed)


def allowlist_leaf_column(df: DataFrame) -> Column:
    """Binary column of allowlist leaf data: key hash (32 bytes) || entry digest (32 bytes).

    The same bytes as ``verifier.allowlist_leaf``: the entry itself (ids, times, jurisdiction)
    is only under a hash, so a revealed neighbour discloses nothing about its creator.
    """
    from pyspark.sql import functions as F

    entry = F.concat(F.lit(verifier.ALLOWLIST_ENTRY_DOMAIN), allowlist_entry_column(df))
    return F.unhex(F.concat(allowlist_key_column(df), F.sha2(entry, 256)))


def allowlist_merkle_root(
    df: DataFrame, *, chunk_log2: int = 16, known_assets: int | None = None
) -> tuple[str, int]:
    """Allowlist Merkle root (scheme ``verifier.ALLOWLIST_SCHEME``): one leaf per granted asset.

    Leaves are :func:`allowlist_leaf_column`, ordered by :func:`allowlist_key_column`.
    ``known_assets`` (the row count the Delta log gives) only chooses the work split, as
    :func:`consentgate.merkle.spark_merkle_root`'s ``known_leaves``.

    Returns:
        ``(root_hex, asset_count)``, the count as hashed.
    """
    from pyspark.sql import functions as F

    frame = _allowlist_frame(df)
    leaves = frame.select(
        allowlist_key_column(frame).alias("key"),
        F.unhex(F.sha2(F.concat(F.lit(b"\x00"), allowlist_leaf_column(frame)), 256)).alias("h"),
    )
    return merkle.spark_merkle_root(
        leaves, key_col="key", leaf_hash_col="h", chunk_log2=chunk_log2, known_leaves=known_assets
    )


def allowlist_proof(df: DataFrame, asset_id: str, *, chunk_log2: int = 16) -> dict[str, Any]:
    """Inclusion or exclusion proof for ``asset_id`` in the allowlist ``df``.

    The tree proof is for the asset's key hash, so neither the raw id nor any other creator's
    entry enters a query plan or the proof: the driver receives the neighbours' 64-byte leaves
    and, for an inclusion proof, the asset's own entry (one row, selected by key hash).

    Returns:
        The proof as ``verifier.annotate_allowlist_proof`` shapes it; check it with
        ``verifier.verify_allowlist_proof`` against the manifest's allowlist root.

    Raises:
        CheckFailed: the stored entry does not hash to the leaf the tree proof revealed.
    """
    from pyspark.sql import functions as F

    frame = _allowlist_frame(df)
    key = verifier.allowlist_key(asset_id)
    leaves = frame.select(
        allowlist_key_column(frame).alias("key"),
        allowlist_leaf_column(frame).alias("leaf"),
        allowlist_entry_column(frame).alias("entry"),
    )
    proof = merkle.spark_prove(
        leaves.drop("entry"), key, key_col="key", leaf_col="leaf", chunk_log2=chunk_log2
    )
    entry: bytes | None = None
    if proof["kind"] == merkle.INCLUSION:
        rows = leaves.where(F.col("key") == F.lit(key)).select("entry").limit(2).collect()
        if len(rows) != 1:
            raise CheckFailed(f"allowlist: {len(rows)} entries under one key")
        entry = bytes(rows[0]["entry"])
    try:
        return verifier.annotate_allowlist_proof(proof, asset_id=asset_id, entry=entry)
    except ValueError as exc:
        raise CheckFailed(
            f"allowlist proof is inconsistent with the stored allowlist: {exc}"
        ) from None
