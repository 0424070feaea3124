"""What happened to a snapshot after its manifest, accounted for without Spark (``verify``).

A snapshot stays the record of what a model was trained on, but the nightly purge removes rows
whose consent was later withdrawn, and the erasure then deletes their files. ``verify`` must
tell that lawful removal from tampering, after the removed files are gone (erasing them is the
point), so from the Delta log, the audit log and the key record, not from the removed rows.
Every commit after the manifest's version that adds or removes data files is accepted only as
one of (DESIGN.md, "Audit log"; issue #23 item 3):

* **an audited purge**: its ``userMetadata`` names a purge attempt; the audit log holds a
  ``purge`` (or ``recovery``) entry for this snapshot and that attempt; the rows it removed
  (the removed files' rows, from the log's ``numRecords``, less the rows of the files it
  wrote) are exactly the rows of that attempt's key record
  (``_consentgate/purge_keys/<name>``); and no row of the files it wrote (while they exist)
  has a key the record says was removed;
* **a rewrite** that keeps the row count (our erasure's ``REORG``, a user's ``OPTIMIZE``).

Anything else is reported naming the commit: a one-line forged commit that says
``consentgate.purge`` (no audit entry, or no key record behind it), an append or any commit
that adds rows after the manifest, a removal that is no purge. Files removed by a commit that
is not accepted count as missing, so the content check reports them too.

Decisions: counts, not rows, are compared across a purge (its removed rows are erased); keys
are hashed as the purge hashes them (``"k:" + key``; :func:`key_text`), for string and integer
keys: a snapshot keyed by another type cannot have the written files checked, which is
reported (fail closed). Deletion vectors: a commit that only changes a file's vector changes
no file and is not looked at here (the manifest's files and rows are checked at its version);
the gate writes snapshots without them, and the log's ``numRecords`` of a file with a vector
counts its hidden rows too, so a later rewrite of such a file (REORG) reads as a changed row
count and is reported (fail closed). Cost: each commit after the manifest is looked at once,
by loading the table at its version and the one before (delta-rs replays the log); nights of
VACUUM bookkeeping add commits that change no file and are skipped after that comparison.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from consentgate import verifier
from consentgate.errors import ConsentgateError
from consentgate.state import STATE_DIR

PURGE_OPERATION: Final = "consentgate.purge"


def key_table_dir(root: Path, name: str) -> Path:
    """The key record of table ``name`` (``purge.key_table_path``, without a config)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "__" for c in name)
    return root / STATE_DIR / "purge_keys" / safe


def key_text(value: Any) -> str:
    """What the purge hashes for a key (``purge.key_digest``): ``"k:" + key`` or ``"n:"``.

    Raises:
        TypeError: a key type whose string form Spark and Python may spell differently.
    """
    if value is None:
        return "n:"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"key type {type(value).__name__}")
    return f"k:{value}"


def audited_attempts(root: Path) -> set[tuple[str, str]]:
    """(table, attempt) of every purge and recovery entry of the audit log, read with delta-rs
    (two small columns of a log that grows with runs, not with data)."""
    path = root / STATE_DIR / "audit"
    if not verifier.is_delta_table(path):
        return set()
    log = verifier.open_delta(path).to_pyarrow_table(columns=["kind", "payload_json"])
    out: set[tuple[str, str]] = set()
    for kind, text in zip(
        log.column("kind").to_pylist(), log.column("payload_json").to_pylist(), strict=True
    ):
        if kind in ("purge", "recovery"):
            payload = json.loads(text)
            if payload.get("dataset") and payload.get("attempt"):
                out.add((str(payload["dataset"]), str(payload["attempt"])))
    return out


def _recorded_keys(root: Path, name: str, attempt: str) -> list[str]:
    """The key digests the attempt recorded for table ``name`` (one per removed row)."""
    path = key_table_dir(root, name)
    if not verifier.is_delta_table(path):
        return []
    table = verifier.open_delta(path).to_pyarrow_table(columns=["key_sha256", "attempt"])
    return [
        str(k)
        for k, a in zip(
            table.column("key_sha256").to_pylist(), table.column("attempt").to_pylist(), strict=True
        )
        if a == attempt
    ]


def _files(table_dir: Path, version: int) -> dict[str, int]:
    """Data files at ``version`` with their row counts (the log's ``numRecords``)."""
    actions = pa.table(
        verifier.open_delta(table_dir, version=version).get_add_actions(flatten=True)
    )
    return {
        str(p): int(n or 0)
        for p, n in zip(
            actions.column("path").to_pylist(),
            actions.column("num_records").to_pylist(),
            strict=True,
        )
    }


def _written_keys(table_dir: Path, files: list[str], key: str) -> set[str] | None:
    """Key digests of the rows in ``files`` (None when one of them is gone: erased since)."""
    out: set[str] = set()
    for rel in files:
        path = table_dir / rel
        if not path.is_file():
            return None
        for batch in verifier.read_parquet_batches([path], columns=[key]):
            out.update(
                hashlib.sha256(key_text(v).encode()).hexdigest()
                for v in batch.column(0).to_pylist()
            )
    return out


def account(
    root: Path, snap: Mapping[str, Any], table_dir: Path, where: str
) -> tuple[dict[str, int], list[str]]:
    """Check every commit of the snapshot after its manifest's version (see the module).

    Returns:
        The files removed by accepted commits (``relative path -> version``: missing on disk,
        they were erased lawfully) and the problems, each naming the commit.
    """
    after = int(snap["version"])
    try:
        latest = int(verifier.open_delta(table_dir).version())
        history = verifier.commit_history(table_dir)
    except ConsentgateError as exc:
        return {}, [f"{where}: history unreadable after version {after}: {exc}"]
    commits = sorted((int(e["version"]), e) for e in history if after < int(e["version"]) <= latest)
    key, name = str(snap.get("key") or ""), str(snap.get("name") or "")
    audited: set[tuple[str, str]] | None = None
    removed: dict[str, int] = {}
    problems: list[str] = []
    for version, entry in commits:
        label = f"{where}: commit {version} ({entry.get('operation')})"
        try:
            before, now = _files(table_dir, version - 1), _files(table_dir, version)
        except ConsentgateError:
            problems.append(f"{label}: the log around it is gone; its changes are unaccounted")
            continue
        gone = sorted(set(before) - set(now))
        new = sorted(set(now) - set(before))
        if not gone and not new:
            continue
        rows_gone = sum(before[f] for f in gone)
        rows_new = sum(now[f] for f in new)
        attempt = str(entry.get("consentgate.attempt") or "")
        if entry.get("consentgate.operation") != PURGE_OPERATION or not attempt:
            if rows_new != rows_gone:
                problems.append(
                    f"{label}: {rows_gone} rows removed and {rows_new} written by a commit that "
                    "is no purge: data changed after the manifest"
                )
                continue
        else:
            if audited is None:
                audited = audited_attempts(root)
            if (name, attempt) not in audited:
                problems.append(
                    f"{label}: purge attempt {attempt} has no audit entry for {name}: its "
                    "removal is not accounted for"
                )
                continue
            keys = _recorded_keys(root, name, attempt)
            if rows_gone - rows_new != len(keys):
                problems.append(
                    f"{label}: removed {rows_gone - rows_new} rows, but purge attempt {attempt}'s "
                    f"key record holds {len(keys)}"
                )
                continue
            try:
                written = _written_keys(table_dir, new, key)
            except (ConsentgateError, TypeError, KeyError, ValueError, OSError) as exc:
                problems.append(f"{label}: the rows it wrote cannot be checked ({exc})")
                continue
            if written is not None and written & set(keys):
                problems.append(
                    f"{label}: the files it wrote hold keys its key record says it removed"
                )
                continue
        for rel in gone:
            removed.setdefault(rel, version)
    return removed, problems
