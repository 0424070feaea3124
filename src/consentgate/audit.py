"""The audit log: an append-only, hash-chained Delta table of every gate, purge, vacuum, verify,
backfill and erasure event.

Why a chain: the log is evidence that a removal or a training snapshot happened under given
terms. Each entry carries the SHA-256 of the previous entry, and its own SHA-256 is computed over
the RFC 8785 (JCS) canonical JSON of the entry without ``entry_sha256``::

    {"at": "<ISO-8601 UTC, microseconds, Z>", "kind": ..., "payload": {...},
     "previous_sha256": "<hex or empty string for the first entry>", "run_id": ..., "seq": n}

so editing, dropping or reordering an entry breaks every later link, and anyone can recompute
it with any JCS implementation. The table is created with ``delta.appendOnly=true`` so a Delta
writer that honours the protocol refuses to remove its files.

Decisions:

* One small driver-side row per event (events grow with runs, not with data).
* Appends are serialised by an advisory file lock next to the table (``audit.lock``) so that two
  processes on one machine never fork the chain; on a cluster the driver is the only writer. A
  fork that happens anyway (two writers without a shared filesystem lock) is caught by
  :func:`verify_chain` (duplicate ``seq`` or a broken ``previous_sha256`` link).
* Payloads must never carry raw asset or user ids. Every string in a payload is checked and a
  UUID-shaped value (what asset, user and consent-record ids are) is refused, fail closed:
  counts, dataset names, run ids and hashes pass.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from consentgate import heads, lake
from consentgate.canonical import canonical_json, sha256_hex
from consentgate.config import Config
from consentgate.errors import ConsentgateError
from consentgate.runtime import iso, now_utc
from consentgate.state import file_lock, missing_audit_problem

#: Event kinds written by consentgate itself (others may add theirs, e.g. ``airflow_run``).
KINDS: Final[frozenset[str]] = frozenset(
    {"gate", "purge", "vacuum", "verify", "backfill", "erasure", "recovery", "impact"}
)
#: What any kind must look like: lower-case snake case, so kinds stay greppable.
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")

SCHEMA: Final = StructType(
    [
        StructField("seq", LongType(), False),
        StructField("at", TimestampType(), False),
        StructField("kind", StringType(), False),
        StructField("run_id", StringType(), False),
        StructField("payload_json", StringType(), False),
        StructField("previous_sha256", StringType(), False),
        StructField("entry_sha256", StringType(), False),
    ]
)

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ISO_MICROS = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"


def audit_path(config: Config) -> Path:
    """Where the audit table lives: ``<state_dir>/audit``."""
    return config.state_dir / "audit"


def entry_digest(
    *, seq: int, at: str, kind: str, run_id: str, payload: Mapping[str, Any], previous: str
) -> str:
    """SHA-256 (hex) of the JCS canonical JSON of one entry without its own hash."""
    body = {
        "seq": seq,
        "at": at,
        "kind": kind,
        "run_id": run_id,
        "payload": dict(payload),
        "previous_sha256": previous,
    }
    return sha256_hex(canonical_json(body))


def _check_payload(value: Any, where: str = "payload") -> None:
    """Refuse values that could be raw ids, or that JSON cannot carry faithfully."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConsentgateError(f"audit {where}: key {key!r} is not a string")
            if _UUID.search(key):
                raise ConsentgateError(f"audit {where}: key looks like a raw id; refusing it")
            _check_payload(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_payload(item, f"{where}[{index}]")
    elif isinstance(value, str):
        if _UUID.search(value):
            raise ConsentgateError(
                f"audit {where}: value looks like a raw asset/user id (UUID); audit payloads "
                "carry counts, names and hashes only"
            )
    elif value is None or isinstance(value, bool | int | float):
        return
    else:
        raise ConsentgateError(f"audit {where}: {type(value).__name__} is not JSON")


@contextmanager
def _locked(config: Config) -> Iterator[None]:
    with file_lock(config.state_dir / "audit.lock"):
        yield


def _last_entry(path: Path) -> tuple[int, str] | None:
    """The tail's seq and hash, read with delta-rs: two small columns of a log that grows by
    one row per event, not with the data, so a Spark job per append would be pure overhead."""
    if not lake.is_table(path):
        return None
    tail = lake.open_table(path).to_pyarrow_table(columns=["seq", "entry_sha256"])
    if tail.num_rows == 0:
        return None
    rows = tail.to_pylist()
    last = max(rows, key=lambda r: int(r["seq"]))
    return int(last["seq"]), str(last["entry_sha256"])


@dataclass(frozen=True)
class Event:
    """One entry to append: what :func:`append_event` takes, for :func:`append_events`."""

    kind: str
    run_id: str
    payload: Mapping[str, Any]
    at: dt.datetime | None = None


def append_event(
    spark: SparkSession,
    config: Config,
    *,
    kind: str,
    run_id: str,
    payload: Mapping[str, Any],
    at: dt.datetime | None = None,
) -> str:
    """Append one event to the audit log, chained to the previous entry.

    Args:
        spark: Session used to read the last entry and write the new one.
        config: Locates the audit table (``state_dir/audit``).
        kind: Lower-case snake case, e.g. one of :data:`KINDS`.
        run_id: The run the event belongs to.
        payload: JSON-able facts: counts, dataset names, versions, hashes. Never raw ids.
        at: Event instant (default: now, UTC).

    Returns:
        The new entry's SHA-256 (hex).

    Raises:
        ConsentgateError: a malformed kind, or a payload that is not JSON or looks like raw ids.
    """
    (digest,) = append_events(spark, config, [Event(kind, run_id, payload, at)])
    return digest


def append_events(spark: SparkSession | None, config: Config, events: Sequence[Event]) -> list[str]:
    """Append ``events`` in order, each chained to the one before, in one Delta commit.

    Why: each append is a Delta commit (about half a second on a local session); a step that
    records one event per table (erasure receipts) pays that once instead of once a table. The
    entries are exactly those :func:`append_event` would write one by one (same ``seq``, links
    and hashes), and one commit means they are recorded all together or not at all. Every
    event is checked before anything is written: one bad payload writes none of them.

    Without ``spark`` (a run that otherwise needs no JVM) the entries are appended with
    delta-rs (:func:`consentgate.lake.append_rows`): the same rows, chain and commit metadata;
    the table must exist then (it is created by a Spark write, with its properties).

    Returns:
        The new entries' SHA-256 (hex), in order; nothing is written for no events.

    Raises:
        ConsentgateError: as :func:`append_event`, for any of the events.
        TableError: no ``spark`` and no audit table yet.
    """
    if not events:
        return []
    prepared = []
    for event in events:
        if not _KIND.fullmatch(event.kind):
            raise ConsentgateError(f"audit kind {event.kind!r}: expected lower-case snake case")
        _check_payload(event.payload)
        instant = (event.at or now_utc()).astimezone(dt.UTC)
        prepared.append((event, instant, canonical_json(dict(event.payload)).decode("utf-8")))
    path = audit_path(config)
    kinds = sorted({event.kind for event in events})
    runs = sorted({event.run_id for event in events})
    with _locked(config):
        last = _last_entry(path)
        seq, previous = (0, "") if last is None else (last[0] + 1, last[1])
        rows = []
        digests: list[str] = []
        for event, instant, payload_json in prepared:
            digest = entry_digest(
                seq=seq,
                at=iso(instant),
                kind=event.kind,
                run_id=event.run_id,
                payload=event.payload,
                previous=previous,
            )
            rows.append((seq, instant, event.kind, event.run_id, payload_json, previous, digest))
            digests.append(digest)
            seq, previous = seq + 1, digest
        metadata = {"consentgate.audit.kind": ",".join(kinds), "consentgate.run": ",".join(runs)}
        if spark is None:
            lake.append_rows(rows, SCHEMA, path, commit_metadata=metadata)
        else:
            lake.write_table(
                spark.createDataFrame(rows, SCHEMA).coalesce(1),
                path,
                mode="append" if lake.is_table(path) else "error",
                commit_metadata=metadata,
                configuration={"delta.appendOnly": "true"},
            )
        # still under the lock: the head file never names an older head than the table's
        heads.publish(config.lake_root, "audit", heads.Head(seq - 1, digests[-1]))
    return digests


def verify_chain(
    spark: SparkSession, config: Config, *, expect: heads.Head | None = None
) -> dict[str, Any]:
    """Recompute every entry's hash and link, in ``seq`` order, and hold the chain to its
    published heads (:mod:`consentgate.heads`: the lake's head file, and ``expect``).

    Returns:
        ``{"ok": bool, "entries": n, "head": last hash or None, "head_seq": its seq or None,
        "problems": [...]}``; a missing log is ``ok`` with zero entries only where nothing
        audited has happened yet (:func:`consentgate.state.missing_audit_problem`), else a
        problem. Each problem names the ``seq`` that failed.
    """
    path = audit_path(config)
    if not lake.is_table(path):
        missing = missing_audit_problem(config.lake_root)
        found = [] if missing is None else [missing]
        if expect is not None:
            found += heads.check("audit", [], expect, source="--expect-head")
        return {
            "ok": not found,
            "entries": 0,
            "head": None,
            "head_seq": None,
            "problems": found,
        }
    problems: list[str] = []
    table = lake.open_table(path)
    if not lake.append_only(table):
        problems.append("audit table is not delta.appendOnly")
    frame = lake.read_table(spark, path).select(
        "seq",
        F.date_format("at", _ISO_MICROS).alias("at"),
        "kind",
        "run_id",
        "payload_json",
        "previous_sha256",
        "entry_sha256",
    )
    previous = ""
    expected_seq = 0
    entries = 0
    digests: list[str] = []
    for row in frame.orderBy("seq").toLocalIterator():
        entries += 1
        digests.append(str(row["entry_sha256"]))
        seq = int(row["seq"])
        if seq != expected_seq:
            problems.append(f"seq {seq}: expected seq {expected_seq} (missing or duplicate entry)")
        if row["previous_sha256"] != previous:
            problems.append(f"seq {seq}: previous_sha256 does not match the entry before it")
        try:
            payload = json.loads(row["payload_json"])
        except (TypeError, ValueError):
            problems.append(f"seq {seq}: payload_json is not JSON")
            payload = None
        if payload is not None:
            digest = entry_digest(
                seq=seq,
                at=row["at"],
                kind=row["kind"],
                run_id=row["run_id"],
                payload=payload,
                previous=row["previous_sha256"],
            )
            if digest != row["entry_sha256"]:
                problems.append(f"seq {seq}: entry_sha256 does not match its content")
        previous = row["entry_sha256"]
        expected_seq = seq + 1
    problems += heads.check_published(config.lake_root, "audit", digests, expect=expect)
    return {
        "ok": not problems,
        "entries": entries,
        "head": previous or None,
        "head_seq": entries - 1 if entries else None,
        "problems": problems,
    }


def events(spark: SparkSession, config: Config, *, kind: str | None = None) -> list[dict[str, Any]]:
    """The log's entries (``seq``, ``at``, ``kind``, ``run_id``, ``payload``) in order.

    Meant for reports and tests; the log grows with runs, not with data.
    """
    path = audit_path(config)
    if not lake.is_table(path):
        return []
    frame = lake.read_table(spark, path)
    if kind is not None:
        frame = frame.where(F.col("kind") == kind)
    out = []
    for row in frame.orderBy("seq").collect():
        out.append(
            {
                "seq": int(row["seq"]),
                "kind": row["kind"],
                "run_id": row["run_id"],
                "payload": json.loads(row["payload_json"]),
                "entry_sha256": row["entry_sha256"],
            }
        )
    return out
