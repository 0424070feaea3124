"""The quiescence certificate: a night with nothing to remove, proven without deciding again.

Why: most nights nothing changed since the last purge. A full purge then still reads consent,
lineage and every table, decides every row (about 30 Spark jobs), and lists every table for
VACUUM, only to find nothing, as the last night did. A data-platform team could skip such a
night; consentgate instead proves it may, and says so in the audit log.

**What is certified.** After a full purge (or backfill) whose every table was purged, erased
and verified, with consentgate's own deciders, and during which *nothing but the night itself
changed the lake* (:func:`changed_only_by`: consent, assets, lineage, registry, configuration
and code as they were when it started; a purge target or key table changed only by commits of
this run), the run writes ``<state_dir>/quiescence.json``. A night that removed rows certifies
too: every row it kept was decided "keep" from the same inputs, and the rows it removed are
gone, so deciding again at a later ``as_of`` within the bounds below finds nothing. The
certificate holds:

* ``as_of``: ``T0``, the instant the run decided at;
* ``fingerprint``: of the lake as the night left it, SHA-256 of everything a decision reads —
  the configuration, consentgate's own code, and the files (relative path, size, modification
  time, ``_delta_log`` included) of
  ``consent_records``, ``assets``, ``lineage``, the snapshot registry, every purge target and
  every target's removed-key table. The audit table is not in it: the runs append to it;
* ``erasure_holds_until``: the first wall-clock instant a full run's erasure would do
  something: a committed purge attempt leaves its erasure window (REORG and a new proof), or a
  file no snapshot references becomes old enough for VACUUM (its modification time, and for a
  tombstoned file its tombstone, plus the window: delta-spark's ``VacuumCommand`` keeps files
  of unexpired tombstones). ``null``: nothing waits (every such file is gone);
* ``decisions_hold_until``: the first ``as_of`` at which a decision could change although no
  input did: the earliest ``captured_at`` or ``revoked_at`` after ``T0`` (a record dated in the
  future, a scheduled revocation), or a retained row reaching its retention, in microseconds
  since the epoch (``null``: never). Read from the Delta log's file statistics where they
  answer, else with one Spark aggregation in the certifying night's session
  (:mod:`consentgate.flips`);
* per table: rows, files, bytes, version (from the log) and the erasure receipt.

**When it is used.** A ``purge`` (not a dry run, with erasure, with consentgate's deciders)
whose ``as_of`` is not before ``T0`` and before ``decisions_hold_until``, started before
``erasure_holds_until``, over a lake whose fingerprint is unchanged. Deciding again at such an
``as_of`` reads the same bytes under the same rules with the same time-dependent outcomes as at
``T0``, where the run left nothing to remove; erasing again would find nothing to remove and
the same proof. So the night records that (one audit commit: each table's receipt, carried with
``unchanged_since``, and the purge entry with ``unchanged_since``) and reports every table with
nothing deleted. Such a night needs no Spark: the checks read files and logs, and the audit
entry is appended with delta-rs (:func:`consentgate.lake.append_rows`), so the command line
does not even start the JVM (:func:`consentgate.purge.run_purge` takes a session factory).
Anything else — any file touched, a clock past either bound, a failed read —
runs the full purge, which deletes the certificate first and writes a new one when it
succeeds. Backfills and dry runs always run in full (a backfill exists because policy
changed; a dry run must show the plan).

Decided: file modification times, not contents, are fingerprinted: hashing the data would cost
what it saves. A writer that replaces a file keeping its path, size and modification time to
the nanosecond defeats it; Delta never rewrites a file in place, and such a writer also
defeats Delta's own snapshot. The CLI and :func:`consentgate.purge.run_purge` use it, and so
does the nightly DAG (its ``quiescent`` task answers a covered night; ``audit_summary``
certifies, from the start state the ``quiescent`` task pushed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from consentgate import audit, lake, maintenance
from consentgate.config import Config
from consentgate.consent import as_of_micros
from consentgate.erasure import erasure_audit_payload, purge_attempt_commits
from consentgate.logs import step
from consentgate.runtime import iso, now_utc, parse_instant
from consentgate.state import CERTIFICATE_FILE

log = logging.getLogger(__name__)

FORMAT: Final = 1
FILE: Final = CERTIFICATE_FILE


def certificate_path(config: Config) -> Path:
    """Where the certificate lives: ``<state_dir>/quiescence.json``."""
    return config.state_dir / FILE


def discard(config: Config) -> None:
    """Remove the certificate (a full run starts: whatever it certified may change now)."""
    certificate_path(config).unlink(missing_ok=True)


def _code_digest() -> str:
    """SHA-256 of consentgate's own modules: new code may decide differently."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for module in sorted(package.rglob("*.py")):
        digest.update(module.relative_to(package).as_posix().encode() + b"\0")
        digest.update(module.read_bytes())
    return digest.hexdigest()


def _listing(root: Path) -> Iterator[str]:
    """One line per file under ``root``: relative path, size, modification time (ns)."""
    if not root.exists():
        yield "missing"
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            stat = (here / name).stat()
            rel = (here / name).relative_to(root).as_posix()
            yield f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}"


def inputs(config: Config) -> dict[str, Path]:
    """Every table a purge decision reads, by a name of its own (purge targets by theirs)."""
    from consentgate.purge import key_table_path, target_path, targets
    from consentgate.registry import registry_path

    out: dict[str, Path] = {
        "tables/consent_records": config.table_path("consent_records"),
        "tables/assets": config.table_path("assets"),
        "tables/lineage": config.table_path("lineage"),
        "registry": registry_path(config),
    }
    for name, dataset in targets(config).items():
        out[f"target/{name}"] = target_path(config, name, dataset)
        out[f"keys/{name}"] = key_table_path(config, name)
    return out


def _input_digests(config: Config) -> dict[str, str]:
    """SHA-256 of each input's file listing, by the input's name (:func:`inputs`)."""
    out: dict[str, str] = {}
    for name, root in sorted(inputs(config).items()):
        where = (
            root.relative_to(config.lake_root) if root.is_relative_to(config.lake_root) else root
        )
        digest = hashlib.sha256(f"\0{name}\0{where}\0".encode())
        for line in _listing(root):
            digest.update(line.encode() + b"\n")
        out[name] = digest.hexdigest()
    return out


def _fingerprint_of(config: Config, digests: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    portable = config.model_copy(update={"lake_root": Path(".")})
    settings = portable.model_dump_json(exclude={"source"})  # where the file is, not what it says
    digest.update(settings.encode() + b"\0" + _code_digest().encode())
    for name, value in sorted(digests.items()):
        digest.update(f"\0{name}\0{value}".encode())
    return digest.hexdigest()


def fingerprint(config: Config) -> str:
    """SHA-256 of the configuration, the code and every input's file listing (module doc).

    Paths inside ``lake_root`` count relative to it: a lake copied elsewhere with its files'
    times (``cp -a``, ``rsync -a``) decides exactly as the original, certificate included.
    """
    return _fingerprint_of(config, _input_digests(config))


#: Inputs a night may change itself: purge targets and their removed-key tables.
_WRITTEN: Final = ("target/", "keys/")


def start(config: Config) -> str:
    """The lake as a full night starts, for :func:`changed_only_by` at its end: a JSON text
    (it travels as an XCom between Airflow tasks) of digests and versions, never a path or an
    id: the :func:`fingerprint`, each input's listing digest, and the Delta version of every
    table the night may write (-1: not a table yet).

    The versions are read before the listings: a commit landing in between is then a version
    after the recorded one, which :func:`changed_only_by` sees, never one counted as already
    there.
    """
    versions = {
        name: _version(root) for name, root in inputs(config).items() if name.startswith(_WRITTEN)
    }
    digests = _input_digests(config)
    return json.dumps(
        {"fingerprint": _fingerprint_of(config, digests), "inputs": digests, "versions": versions},
        sort_keys=True,
        separators=(",", ":"),
    )


def _version(root: Path) -> int:
    """The table's version; -1 when it is not a table yet (a key table a night creates)."""
    return int(lake.open_table(root).version()) if lake.is_table(root) else -1


def changed_only_by(config: Config, started_from: str, *, run_id: str) -> bool:
    """Whether the lake is the one the night started from (:func:`start`) but for the night's
    own writes: then deciding again finds nothing, and the night may certify it.

    Consent, assets, lineage, the registry, the configuration and the code must be exactly as
    they were. A purge target or key table may differ only through commits that carry this run
    (``consentgate.run`` in ``userMetadata``: the purge's rewrites, the key records, the
    erasure's REORG and VACUUM), with every active file of its latest version on disk. Files a VACUUM
    removed leave no commit; removing inactive files changes no decision. Decided: a data file
    rewritten in place, keeping its path, during a night that rewrote the same table is not
    detected (Delta never does that; see the module doc for the same limit of the fingerprint).
    """
    try:
        before = json.loads(started_from)
        digests: dict[str, str] = before["inputs"]
        versions: dict[str, int] = before["versions"]
    except (ValueError, KeyError, TypeError):
        log.info("quiescence: not certified: the night's start state is unreadable")
        return False
    if _fingerprint_of(config, digests) != before.get("fingerprint"):
        log.info("quiescence: not certified: the configuration or the code changed")
        return False
    now = _input_digests(config)
    if set(now) != set(digests):
        return False
    roots = inputs(config)
    for name, value in now.items():
        if value == digests[name]:
            continue
        if not name.startswith(_WRITTEN) or not _only_ours_since(
            roots[name], versions.get(name), run_id
        ):
            log.info("quiescence: not certified: %s changed during the night", name)
            return False
    return True


def _only_ours_since(root: Path, version: int | None, run_id: str) -> bool:
    """Every commit of ``root`` after ``version`` is ``run_id``'s and its active files exist
    (all of them, from version 0, for a table the night created)."""
    if version is None or not lake.is_table(root):
        return False
    table = lake.open_table(root)
    latest = int(table.version())
    newer = [
        e for e in lake.history(root, limit=latest - version + 1) if int(e["version"]) > version
    ]
    if len(newer) != latest - version:
        return False
    if any(e.get("consentgate.run") != run_id for e in newer):
        return False
    paths = lake.active_files(table).column("path").to_pylist()
    return all((root / unquote(p)).is_file() for p in paths)


def erasure_holds_until(
    config: Config, names: list[str], *, now: dt.datetime
) -> dt.datetime | None:
    """The first instant after ``now`` (the erasure that just ran) at which a full erasure of
    ``names`` would remove or prove something new (module doc); ``None`` when nothing waits.

    Attempts whose window ended by ``now`` are erased and proven already: they stay so. A
    file VACUUM could delete by ``now`` is still counted (it should be gone): the certificate
    then never holds.
    """
    from consentgate.purge import target_path, targets

    window_ms = config.erasure.window_hours * 3_600_000
    now_ms = int(now.timestamp() * 1000)
    flips: list[int] = []  # milliseconds since the epoch
    all_targets = targets(config)
    for name in names:
        path = target_path(config, name, all_targets[name])
        for _attempt, committed in purge_attempt_commits(path):
            if committed + window_ms > now_ms:
                flips.append(committed + window_ms)
        tombstones = maintenance.tombstones(path)
        for rel, (mtime, _size) in maintenance.inactive_files(path).items():
            flips.append(max(int(mtime * 1000), tombstones.get(rel, 0)) + window_ms)
    if not flips:
        return None
    return dt.datetime.fromtimestamp(min(flips) / 1000, tz=dt.UTC)


def certify(
    config: Config,
    *,
    run_id: str,
    as_of: dt.datetime,
    receipts: Mapping[str, Mapping[str, Any]],
    started_from: str,
    decisions_hold_until: int | None,
) -> dict[str, Any] | None:
    """Write the certificate after a successful full night. Spark-free.

    Args:
        receipts: The night's erasure receipts, every one verified, one per purge target.
        started_from: :func:`start`, taken before the night decided anything.
        decisions_hold_until: :func:`decision_flips` at ``as_of``, read by the caller's Spark
            session after ``started_from`` (so that a night the certificate covers needs no
            Spark at all).

    Returns:
        What was written (its fingerprint is the lake as the night left it), or ``None`` when
        anything but the night itself changed the lake meanwhile (:func:`changed_only_by`):
        only then does deciding again find nothing. The next full night certifies.
    """
    from consentgate.purge import target_path, targets

    all_targets = targets(config)
    if set(receipts) != set(all_targets):
        log.info("quiescence: not certified: the night did not erase every purge target")
        return None
    certified_at = now_utc()
    names = list(receipts)
    holds = erasure_holds_until(config, names, now=certified_at)
    tables = {
        name: {
            **lake.table_inventory(target_path(config, name, all_targets[name])),
            "receipt": dict(receipts[name]),
        }
        for name in names
    }
    # The lake as certified, then checked against the night's start: what the tables said
    # above and this fingerprint are then the lake the night left (a later write is seen).
    ended_with = fingerprint(config)
    if not changed_only_by(config, started_from, run_id=run_id):
        log.info("quiescence: not certified: the lake changed during the night")
        return None
    certificate = {
        "format": FORMAT,
        "run_id": run_id,
        "as_of": iso(as_of),
        "certified_at": iso(certified_at),
        "fingerprint": ended_with,
        "erasure_holds_until": None if holds is None else iso(holds),
        "decisions_hold_until": decisions_hold_until,
        "tables": tables,
    }
    _write(config, certificate)
    return certificate


def _write(config: Config, certificate: Mapping[str, Any]) -> None:
    path = certificate_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(certificate, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load(config: Config) -> dict[str, Any] | None:
    """The certificate, or ``None`` (none, unreadable or of another format: logged)."""
    path = certificate_path(config)
    try:
        certificate = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("quiescence: certificate unreadable (%s): running the full purge", exc)
        return None
    if not isinstance(certificate, dict) or certificate.get("format") != FORMAT:
        log.info("quiescence: certificate of another format: running the full purge")
        return None
    return certificate


@dataclass(frozen=True)
class QuietNight:
    """What a certified night reports: the tables' results and erasure receipts, the audit
    events to record with the run's entry, and when the lake last changed."""

    datasets: dict[str, dict[str, Any]]
    erasure: dict[str, Any]
    events: list[audit.Event]
    unchanged_since: str


def quiet_night(config: Config, *, as_of: dt.datetime, run_id: str) -> QuietNight | None:
    """This night from the certificate, or ``None`` (logged, with why) when it must run in
    full. Spark-free; nothing is written here (the caller records the night)."""
    started = time.monotonic()
    certificate = load(config)
    if certificate is None:
        return None
    now = now_utc()
    try:
        why = why_not(config, certificate, as_of=as_of, now=now)
        tables: dict[str, Any] = certificate["tables"]
        unchanged_since = str(certificate["certified_at"])
    except Exception as exc:  # fail closed: any doubt runs the full purge
        why = f"certificate not usable ({type(exc).__name__}: {exc})"
    if why is not None:
        log.info("quiescence: %s: running the full purge", why)
        return None
    datasets: dict[str, dict[str, Any]] = {}
    receipts: dict[str, dict[str, Any]] = {}
    events: list[audit.Event] = []
    for name, table in tables.items():
        datasets[name] = _unchanged(table)
        receipt = _carried(table["receipt"], at=now, unchanged_since=unchanged_since)
        receipts[name] = receipt
        events.append(audit.Event("erasure", run_id, erasure_audit_payload(receipt), now))
    step(log, "quiescent", run_id=run_id, tables=len(datasets), jobs=0, tasks=0, since=started)
    return QuietNight(
        datasets=datasets,
        erasure={"ok": True, "datasets": receipts},
        events=events,
        unchanged_since=unchanged_since,
    )


def why_not(
    config: Config, certificate: Mapping[str, Any], *, as_of: dt.datetime, now: dt.datetime
) -> str | None:
    """Why the certificate does not cover a night at ``as_of`` started at ``now``, or ``None``
    when it does (cheapest checks first; Spark-free)."""
    t0 = parse_instant(str(certificate["as_of"]), name="certificate as_of")
    holds = certificate["erasure_holds_until"]
    decisions = certificate["decisions_hold_until"]
    if as_of < t0:
        return f"as_of {iso(as_of)} is before the certified {iso(t0)}"
    if decisions is not None and as_of_micros(as_of) >= int(decisions):
        return "a consent record or a retention takes effect by this as_of"
    if holds is not None and now >= parse_instant(str(holds), name="erasure_holds_until"):
        return f"the erasure window of a removal ends at {holds}"
    if not lake.is_table(audit.audit_path(config)):
        return "the audit log is missing"
    if fingerprint(config) != certificate["fingerprint"]:
        return "an input, the configuration or the code changed since it was certified"
    return None


def _unchanged(table: Mapping[str, Any]) -> dict[str, Any]:
    """A table's result on a certified night: what :func:`consentgate.purge.purge_dataset`
    returns when it removes nothing, its counts from the certified log."""
    return {
        "rows_before": table["rows"],
        "rows_deleted": 0,
        "rows_after": table["rows"],
        "version_before": table["version"],
        "version_after": table["version"],
        "reasons": {},
        "files_rewritten": 0,
        "bytes_rewritten": 0,
        "files_total": table["files"],
        "bytes_total": table["bytes"],
        "bytes_written": 0,
        "deletion_vectors_added": 0,
        "commits": [],
        "attempts": [],
        "conflicts": 0,
        "recovered": 0,
    }


def _carried(
    receipt: Mapping[str, Any], *, at: dt.datetime, unchanged_since: str
) -> dict[str, Any]:
    """The certified receipt, re-dated: nothing left the disk tonight; the proof stands."""
    return {
        **receipt,
        "at": iso(at),
        "files_removed": 0,
        "bytes_removed": 0,
        "files_reorganised": 0,
        "tombstoned_removed": 0,
        "orphans_removed": 0,
        "log_cleaned": False,
        "unchanged_since": unchanged_since,
    }
