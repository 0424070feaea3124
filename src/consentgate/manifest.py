"""Gate manifests: build, write and verify the evidence of one training snapshot.

A manifest answers "which exact assets trained model version X, and under what consent
terms?" in a form anyone can re-check later without trusting consentgate: RFC 8785 canonical
JSON sealed with its own SHA-256 (:mod:`consentgate.canonical`), RFC 6962 Merkle roots for the
allowlist and each snapshot's content (:mod:`consentgate.digest`), a SHA-256 per data file, and
a link to the previous manifest in the registry (:mod:`consentgate.registry`). The format is
specified in ``docs/manifest.md``; :data:`FORMAT` names its version.

Layout: ``<lake_root>/_consentgate/manifests/<run_id>/manifest.json`` with the datasheet next to
it. Every path inside a manifest is relative (tables to ``lake_root``, data files to their
table), so a lake can be moved or mounted elsewhere and still verify; :func:`lake_root_of` finds
the lake from the manifest's own location.

Building (:func:`describe_snapshot`, called by the gate) hashes on the executors: file digests
by a ``mapPartitions`` over the file list, Merkle roots through :mod:`consentgate.digest`; only
digests and counts reach the driver. Verifying (:func:`verify_manifest`) needs no JVM: files are
hashed locally with hashlib, Delta tables are read with delta-rs and the roots recomputed with
:mod:`consentgate.verifier`, the Spark-free twin of :mod:`consentgate.digest`. This module
therefore imports neither pyspark nor the Spark half of the lake layer at import time.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from consentgate import removals, verifier
from consentgate.canonical import (
    MANIFEST_DIGEST_FIELD,
    canonical_json,
    check_manifest_digest,
    manifest_bytes,
    manifest_digest,
    sha256_file,
)
from consentgate.config import outside_root
from consentgate.errors import CheckFailed, ConsentgateError
from consentgate.heads import Head, check_published
from consentgate.logs import step
from consentgate.state import STATE_DIR

if TYPE_CHECKING:  # the build half needs Spark; verification must not import it
    from pyspark.sql import SparkSession

#: Version tag of the manifest format (``docs/manifest.md``).
FORMAT: Final = "consentgate-manifest/1"
#: File name of a manifest inside its run directory.
MANIFEST_FILE: Final = "manifest.json"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Paths


def manifest_dir(config_state_dir: Path, run_id: str) -> Path:
    """The directory holding one run's manifest and datasheet."""
    return config_state_dir / "manifests" / run_id


def lake_root_of(manifest_path: str | Path) -> Path:
    """The lake root a manifest belongs to: the parent of the enclosing ``_consentgate``.

    Raises:
        ConsentgateError: the manifest is not inside a ``_consentgate`` directory.
    """
    path = Path(manifest_path).resolve()
    for parent in path.parents:
        if parent.name == STATE_DIR:
            return parent.parent
    raise ConsentgateError(
        f"MANIFEST: {manifest_path} is not under a lake's _consentgate/manifests directory"
    )


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest file as JSON.

    Raises:
        ConsentgateError: (exit 2) the file is missing or not a JSON object, naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise ConsentgateError(f"MANIFEST: {file} does not exist")
    try:
        data = json.loads(file.read_bytes())
    except ValueError as exc:
        raise ConsentgateError(f"MANIFEST: {file} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConsentgateError(f"MANIFEST: {file} is not a JSON object")
    return data


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> str:
    """Seal ``manifest`` and write its canonical bytes atomically (temp file + rename).

    The file gets the mode every other file of the run gets (``0o666`` less the umask, so
    ``0644`` under the usual ``022``): the manifest is the public evidence of the run, meant to
    be read by whoever may read its snapshots and datasheet, so it is not private to the writer
    the way a ``mkstemp`` file (``0600``) would be.

    Returns:
        The manifest's own SHA-256.

    Raises:
        ConsentgateError: a manifest already exists at ``path`` (manifests are never rewritten).
    """
    if path.exists():
        raise ConsentgateError(f"{path}: a manifest already exists; manifests are immutable")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = manifest_bytes(manifest)
    tmp = path.parent / f".manifest-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # fails if the target appeared meanwhile: never overwrite
    finally:
        os.unlink(tmp)
    return manifest_digest(manifest)


# --------------------------------------------------------------------------------------------
# Hashing


def _file_hasher() -> Callable[[Iterable[tuple[str, str]]], Iterator[tuple[str, bool, int, str]]]:
    """Executor-side hasher, built as a closure so it pickles by value (needs only stdlib)."""

    def hash_files(items: Iterable[tuple[str, str]]) -> Iterator[tuple[str, bool, int, str]]:
        import hashlib as _hashlib
        import os as _os

        buffer = bytearray(8 << 20)
        view = memoryview(buffer)
        for token, full in items:
            try:
                size = _os.path.getsize(full)
                sha = _hashlib.sha256()
                with open(full, "rb", buffering=0) as handle:
                    while True:
                        n = handle.readinto(view)
                        if not n:
                            break
                        sha.update(view[:n])
                yield token, True, size, sha.hexdigest()
            except FileNotFoundError:
                yield token, False, -1, ""

    return hash_files


def hash_files(
    spark: SparkSession, files: Sequence[tuple[str, Path]]
) -> dict[str, tuple[bool, int, str]]:
    """SHA-256 and size of each file, computed on the executors (the gate's build path).

    Args:
        spark: Session whose executors read the files (paths must be visible to them).
        files: ``(token, absolute path)``; the token keys the result.

    Returns:
        ``token -> (exists, size, sha256 hex)``; one small tuple per file crosses to the driver.
    """
    if not files:
        return {}
    slices = max(1, min(len(files), spark.sparkContext.defaultParallelism * 2))
    rdd = spark.sparkContext.parallelize([(t, str(p)) for t, p in files], slices)
    out = rdd.mapPartitions(_file_hasher()).collect()
    return {token: (exists, size, sha) for token, exists, size, sha in out}


def hash_files_local(
    files: Sequence[tuple[str, Path]], *, workers: int | None = None
) -> dict[str, tuple[bool, int, str]]:
    """SHA-256 and size of each file, hashed on this machine with hashlib (no JVM).

    Same result as :func:`hash_files`. A few threads overlap reading and hashing (hashlib
    releases the GIL while it hashes a large buffer).

    Args:
        files: ``(token, absolute path)``; the token keys the result.
        workers: Threads; default ``min(4, CPUs, files)``.

    Returns:
        ``token -> (exists, size, sha256 hex)``; a missing file is ``(False, -1, "")``.
    """
    if not files:
        return {}

    def one(item: tuple[str, Path]) -> tuple[str, tuple[bool, int, str]]:
        token, full = item
        try:
            size = os.path.getsize(full)
            return token, (True, size, sha256_file(full))
        except (FileNotFoundError, NotADirectoryError):
            return token, (False, -1, "")

    threads = workers or max(1, min(4, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cg-hash") as pool:
        return dict(pool.map(one, files))


def describe_snapshot(spark: SparkSession, path: Path, version: int) -> dict[str, Any]:
    """Facts about one committed snapshot table version: rows, content root, schema, files.

    The content root is computed from the table as committed (read back at ``version`` with
    delta-spark, so rows a deletion vector hides are not leaves), not from the plan that
    produced it, so the manifest certifies the rows readers will see;
    :func:`verify_manifest` recomputes the same root without Spark
    (:func:`consentgate.verifier.snapshot_content_root`).
    """
    from consentgate import digest, lake  # the Spark half, only when building

    table = lake.open_table(path, version=version)
    files = lake.active_files(table)
    rels = sorted(files.column("path").to_pylist()) if files.num_rows else []
    digests = hash_files(spark, [(rel, path / rel) for rel in rels])
    frame = lake.read_table(spark, path, version=version)
    logged = int(sum(files.column("rows").to_pylist())) if files.num_rows else 0
    root, rows = digest.content_merkle_root(frame, known_rows=logged)
    file_entries = []
    for rel in rels:
        exists, size, sha = digests[rel]
        if not exists:
            raise CheckFailed(f"{path}: data file {rel} vanished while hashing")
        file_entries.append({"path": rel, "size": size, "sha256": sha})
    return {
        "version": version,
        "rows": rows,
        "content_merkle_root": root,
        "schema": json.loads(frame.schema.json()),
        "files": file_entries,
    }


# --------------------------------------------------------------------------------------------
# Verification (no JVM: hashlib, delta-rs and consentgate.verifier)


def verify_manifest(path: str | Path, *, expect_head: Head | None = None) -> dict[str, Any]:
    """Re-check a published manifest and everything it certifies, without Spark or a JVM.

    Checks, each failure becoming one problem that names the dataset and file at fault:
    the manifest's own SHA-256; its registry entry (digest, path, previous link) and the whole
    registry chain, held to its published head (the lake's head file and ``expect_head``:
    :mod:`consentgate.heads`); for each snapshot the Delta log at the recorded version (the same file set),
    every data file's existence, size and SHA-256, and the content Merkle root and row count
    recomputed from the rows a Delta reader sees at that version (the recorded files, minus the
    rows their deletion vectors hide); the allowlist's Merkle root and asset count recomputed
    from the allowlist table at its recorded version.

    Files are hashed locally with hashlib; Delta tables are read with delta-rs; leaves and roots
    come from :mod:`consentgate.verifier`. Neither pyspark nor a JVM is loaded.

    Returns:
        ``{"ok", "problems": [...], "manifest", "run_id", "model_version", "manifest_sha256",
        "erased": [...], "checked": {...}}``.
    """
    started = time.monotonic()
    manifest_path = Path(path).resolve()
    manifest = load_manifest(manifest_path)
    root = lake_root_of(manifest_path)
    problems: list[str] = []
    label = str(manifest_path)
    checked: dict[str, Any] = {"files": 0, "snapshots": 0}

    claimed = manifest.get(MANIFEST_DIGEST_FIELD)
    if not check_manifest_digest(manifest):
        problems.append(
            f"manifest {label}: its SHA-256 ({claimed}) does not match its content "
            f"(recomputed {manifest_digest(manifest)}): it was edited after sealing"
        )
    if manifest.get("format") != FORMAT:
        problems.append(f"manifest {label}: unknown format {manifest.get('format')!r}")
    # The bytes on disk against the canonical form of what they hold - not of the re-sealed
    # manifest: an edited but still canonical file is reported once, by the seal above.
    if manifest_path.read_bytes() != canonical_json(manifest):
        problems.append(f"manifest {label}: file is not in RFC 8785 canonical form")

    problems.extend(_check_registry(root, manifest_path, manifest, expect_head))
    snapshots = manifest.get("snapshots")
    if not isinstance(snapshots, dict) or not snapshots:
        problems.append(f"manifest {label}: no snapshots recorded")
        snapshots = {}
    try:
        problems.extend(_check_snapshots(root, snapshots, checked))
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"manifest {label}: malformed snapshots section: {exc!r}")
    problems.extend(_check_datasheet(manifest_path, manifest))
    try:
        problems.extend(_check_allowlist(root, manifest))
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"manifest {label}: malformed allowlist section: {exc!r}")
    level = logging.WARNING if problems else logging.INFO
    files, snapshots = checked.get("files"), checked.get("snapshots")
    step(
        log,
        "verify",
        snapshots=snapshots,
        files=files,
        problems=len(problems),
        since=started,
        level=level,
    )
    return {
        "ok": not problems,
        "problems": problems,
        "manifest": str(manifest_path),
        "run_id": manifest.get("run_id"),
        "model_version": manifest.get("model_version"),
        "manifest_sha256": claimed,
        "erased": checked.pop("erased", []),
        "checked": checked,
    }


# The registry's location and chain rules, without Spark: ``consentgate.registry`` (which
# builds Spark schemas at import time) uses these same functions to publish.


class ChainLink(Protocol):
    """What the chain rules read of an entry (a :class:`RegistryLink` or a registry entry)."""

    @property
    def seq(self) -> int: ...
    @property
    def run_id(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def manifest_sha256(self) -> str: ...
    @property
    def previous_manifest_sha256(self) -> str | None: ...


@dataclass(frozen=True)
class RegistryLink:
    """The columns of one registry entry that verification checks."""

    seq: int
    run_id: str
    model_version: str
    manifest_path: str
    manifest_sha256: str
    previous_manifest_sha256: str | None


def registry_path_at(lake_root: Path) -> Path:
    """The registry table of the lake at ``lake_root``."""
    return lake_root / STATE_DIR / "registry"


def read_registry_links(lake_root: Path) -> list[RegistryLink]:
    """The registry's entries in ``seq`` order, read with delta-rs; [] when there is none.

    Raises:
        TableError: the registry exists but cannot be read.
    """
    path = registry_path_at(lake_root)
    if not verifier.is_delta_table(path):
        return []
    names = [
        "seq",
        "run_id",
        "model_version",
        "manifest_path",
        "manifest_sha256",
        "previous_manifest_sha256",
    ]
    links = [
        RegistryLink(
            seq=int(row["seq"]),
            run_id=str(row["run_id"]),
            model_version=str(row["model_version"]),
            manifest_path=str(row["manifest_path"]),
            manifest_sha256=str(row["manifest_sha256"]),
            previous_manifest_sha256=row["previous_manifest_sha256"],
        )
        for batch in verifier.scan(verifier.open_delta(path), names)
        for row in batch.to_pylist()
    ]
    return sorted(links, key=lambda e: e.seq)


def check_registry_chain(entries: Sequence[ChainLink]) -> list[str]:
    """Problems with the chain, in ``seq`` order; [] when intact.

    Checks: ``seq`` runs 0..n-1 exactly once each, the first entry has no predecessor, each
    later entry names its predecessor's digest, and no digest, run id or model version repeats.
    """
    problems: list[str] = []
    ordered = sorted(entries, key=lambda e: e.seq)
    seqs = [e.seq for e in ordered]
    if seqs != list(range(len(ordered))):
        problems.append(f"registry: seq values {seqs} are not 0..{len(ordered) - 1}")
    for kind, values in (
        ("manifest_sha256", [e.manifest_sha256 for e in ordered]),
        ("run_id", [e.run_id for e in ordered]),
        ("model_version", [e.model_version for e in ordered]),
    ):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            problems.append(f"registry: {kind} repeated: {dupes}")
    previous: str | None = None
    for entry in ordered:
        if entry.previous_manifest_sha256 != previous:
            problems.append(
                f"registry: entry seq {entry.seq} (run {entry.run_id}) names previous manifest "
                f"{entry.previous_manifest_sha256}, but the entry before it has {previous}"
            )
        previous = entry.manifest_sha256
    return problems


def _check_registry(
    root: Path, manifest_path: Path, manifest: Mapping[str, Any], expect: Head | None
) -> list[str]:
    problems: list[str] = []
    where = f"registry {registry_path_at(root)}"
    try:
        entries = read_registry_links(root)
    except ConsentgateError as exc:
        return [f"{where}: unreadable: {exc}"]
    problems.extend(f"{where}: {p}" for p in check_registry_chain(entries))
    digests = [e.manifest_sha256 for e in entries]
    problems.extend(
        f"{where}: {p}" for p in check_published(root, "registry", digests, expect=expect)
    )
    run_id = manifest.get("run_id")
    mine = [e for e in entries if e.run_id == run_id]
    if len(mine) != 1:
        problems.append(f"{where}: {len(mine)} entries for run {run_id} (expected exactly 1)")
        return problems
    entry = mine[0]
    recomputed = manifest_digest(manifest)
    if entry.manifest_sha256 != recomputed:
        problems.append(
            f"{where}: entry seq {entry.seq} records manifest SHA-256 {entry.manifest_sha256}, "
            f"but {manifest_path} hashes to {recomputed}"
        )
    rel = manifest_path.relative_to(root.resolve()).as_posix()
    if entry.manifest_path != rel:
        problems.append(f"{where}: entry seq {entry.seq} points at {entry.manifest_path}")
    link = manifest.get("registry", {})
    if entry.previous_manifest_sha256 != manifest.get("previous_manifest_sha256"):
        problems.append(
            f"{where}: entry seq {entry.seq} links to {entry.previous_manifest_sha256}, "
            f"the manifest to {manifest.get('previous_manifest_sha256')}"
        )
    if isinstance(link, Mapping) and link.get("seq") != entry.seq:
        problems.append(
            f"{where}: manifest claims registry position {link.get('seq')}, "
            f"the registry has it at {entry.seq}"
        )
    if entry.seq > 0:
        previous = [e for e in entries if e.seq == entry.seq - 1]
        if previous:
            prev_path = root / previous[0].manifest_path
            try:
                prev_digest = manifest_digest(load_manifest(prev_path))
            except ConsentgateError as exc:
                problems.append(f"{where}: previous manifest unreadable: {exc}")
            else:
                if prev_digest != manifest.get("previous_manifest_sha256"):
                    problems.append(
                        f"manifest chain: previous manifest {prev_path} hashes to {prev_digest}, "
                        f"not the {manifest.get('previous_manifest_sha256')} this manifest names"
                    )
    return problems


def check_snapshot_content(table_dir: Path, snap: Mapping[str, Any], *, where: str) -> list[str]:
    """Recompute one snapshot's content Merkle root and row count at its recorded version.

    The rows are those a Delta reader sees at ``snap["version"]`` (read with delta-rs: rows a
    deletion vector hides are not leaves), columns in the recorded schema's order; leaves and
    root by :func:`consentgate.verifier.content_root`. Unreadable rows are a finding, not a
    crash (fail closed).

    Args:
        table_dir: The snapshot table.
        snap: The manifest's record of it (``version``, ``rows``, ``content_merkle_root``,
            ``schema``), as :func:`describe_snapshot` built it.
        where: How problems name the snapshot (``dataset <name>``).

    Returns:
        Problems; [] when the root and row count match.
    """
    columns = [str(field["name"]) for field in snap["schema"]["fields"]]
    try:
        content_root, rows = verifier.snapshot_content_root(
            table_dir, int(snap["version"]), columns=columns
        )
    except Exception as exc:  # unreadable bytes are a finding, not a crash (fail closed)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        return [f"{where}: content Merkle root not recomputable: {first}"]
    problems = []
    if rows != snap["rows"]:
        problems.append(f"{where}: {rows} rows in the files, manifest says {snap['rows']}")
    if content_root != snap["content_merkle_root"]:
        problems.append(
            f"{where}: content Merkle root {content_root} recomputed from the files, "
            f"manifest says {snap['content_merkle_root']}"
        )
    return problems


def _check_snapshots(
    root: Path, snapshots: Mapping[str, Any], checked: dict[str, Any]
) -> list[str]:
    problems: list[str] = []
    # A path that leaves the lake (``..``, an absolute path, a symlink) is tampering: it is
    # reported and never read (issue #23 item 4).
    escaping = {
        name: why
        for name, snap in snapshots.items()
        for why in [
            outside_root(root, root / snap["path"]),
            *(outside_root(root, root / snap["path"] / f["path"]) for f in snap["files"]),
        ]
        if why is not None
    }
    problems += [f"dataset {name}: {why}" for name, why in sorted(escaping.items())]
    snapshots = {n: s for n, s in snapshots.items() if n not in escaping}
    wanted: list[tuple[str, Path]] = []
    for name, snap in sorted(snapshots.items()):
        table_dir = root / snap["path"]
        for f in snap["files"]:
            wanted.append((f"{name}\x00{f['path']}", table_dir / f["path"]))
    digests = hash_files_local(wanted)
    checked["files"] = len(wanted)
    for name, snap in sorted(snapshots.items()):
        checked["snapshots"] += 1
        where = f"dataset {name}"
        table_dir = root / snap["path"]
        recorded = {f["path"]: f for f in snap["files"]}
        missing = []
        # files removed since the manifest, each only by an audited purge whose key record
        # covers its rows; anything else that changed the snapshot is a problem (removals)
        purged, changes = removals.account(root, snap, table_dir, where)
        problems.extend(changes)
        for rel, f in sorted(recorded.items()):
            exists, size, sha = digests[f"{name}\x00{rel}"]
            if not exists and rel in purged:
                checked.setdefault("erased", []).append(
                    {"dataset": name, "file": rel, "removed_in_version": purged[rel]}
                )
                missing.append(rel)
            elif not exists:
                missing.append(rel)
                problems.append(f"{where}: file {rel} is missing from {table_dir}")
            elif size != f["size"] or sha != f["sha256"]:
                problems.append(
                    f"{where}: file {rel} has SHA-256 {sha} ({size} bytes), manifest says "
                    f"{f['sha256']} ({f['size']} bytes)"
                )
        try:
            active = set(
                verifier.data_files(verifier.open_delta(table_dir, version=int(snap["version"])))
            )
        except ConsentgateError as exc:
            problems.append(
                f"{where}: snapshot table unreadable at version {snap['version']}: {exc}"
            )
            # Without the log at that version no Delta reader can say which rows it holds.
            continue
        for rel in sorted(active - set(recorded)):
            problems.append(f"{where}: file {rel} is in the Delta log but not the manifest")
        for rel in sorted(set(recorded) - active):
            problems.append(f"{where}: file {rel} is in the manifest but not the Delta log")
        if missing:
            unexplained = [rel for rel in missing if rel not in purged]
            if unexplained:
                problems.append(
                    f"{where}: content Merkle root not recomputable ({len(unexplained)} missing)"
                )
            # Files a purge removed were erased on purpose (the creator's right to erasure
            # outranks re-hashing); their digests in the manifest remain the record of use.
            continue
        problems.extend(check_snapshot_content(table_dir, snap, where=where))
    return problems


def _check_datasheet(manifest_path: Path, manifest: Mapping[str, Any]) -> list[str]:
    problems = []
    sheet = manifest.get("datasheet")
    if not isinstance(sheet, Mapping):
        return [f"manifest {manifest_path}: no datasheet recorded"]
    for kind, item in sorted(sheet.items()):
        file = manifest_path.parent / str(item.get("path"))
        if not file.is_file():
            problems.append(f"datasheet: file {file} is missing")
        elif sha256_file(file) != item.get("sha256"):
            problems.append(f"datasheet: file {file} ({kind}) does not match its SHA-256")
    return problems


def _check_allowlist(root: Path, manifest: Mapping[str, Any]) -> list[str]:
    allowlist = manifest["allowlist"]
    table_dir = root / allowlist["table"]["path"]
    where = f"allowlist {table_dir}"
    escaped = outside_root(root, table_dir)
    if escaped is not None:
        return [f"allowlist: {escaped}"]
    # A manifest from before allowlist.scheme was recorded is scheme 1; it keeps verifying.
    scheme = allowlist.get("scheme", verifier.LEGACY_ALLOWLIST_SCHEME)
    if scheme not in (verifier.ALLOWLIST_SCHEME, verifier.LEGACY_ALLOWLIST_SCHEME):
        return [f"{where}: unknown allowlist scheme {scheme!r}"]
    try:
        computed, count = verifier.allowlist_root_of_table(
            table_dir, int(allowlist["table"]["version"]), scheme=scheme
        )
    except ConsentgateError as exc:
        return [f"{where}: unreadable: {exc}"]
    problems = []
    if count != allowlist["asset_count"]:
        problems.append(f"{where}: {count} leaves, manifest says {allowlist['asset_count']}")
    if computed != allowlist["merkle_root"]:
        problems.append(
            f"{where}: Merkle root {computed} recomputed, manifest says {allowlist['merkle_root']}"
        )
    return problems


__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "RegistryLink",
    "check_registry_chain",
    "check_snapshot_content",
    "describe_snapshot",
    "hash_files",
    "hash_files_local",
    "lake_root_of",
    "load_manifest",
    "manifest_dir",
    "read_registry_links",
    "registry_path_at",
    "verify_manifest",
    "write_manifest",
]
