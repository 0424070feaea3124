"""The manifest registry: an append-only, hash-chained list of published gate runs.

Why it exists: a manifest on its own proves what one run used; the registry proves *which runs
exist and in what order*, so a manifest cannot be silently dropped, replaced or re-ordered, and
the nightly purge can find every published training snapshot and keep it compliant.

Storage (decided here, documented in ``docs/manifest.md``): a small Delta table at
``<lake_root>/_consentgate/registry`` with ``delta.appendOnly=true``, one row per published run:

========================== ============================================================
column                     meaning
========================== ============================================================
seq (long)                 position in the chain, 0, 1, 2, ... without gaps
run_id (string)            the gate run id
use_case (string)          the use case the run gated for
model_version (string)     the model version the snapshots were cut for
manifest_path (string)     the manifest file, relative to ``lake_root``
manifest_sha256 (string)   the manifest's own digest (``canonical.manifest_digest``)
previous_manifest_sha256   the previous entry's ``manifest_sha256`` (null for seq 0)
created_at (timestamp)     when the entry was published (UTC)
snapshots (array<struct>)  each snapshot: name, dataset, path (relative to ``lake_root``),
                           version, use_case, key, asset_column, retention_days,
                           derived_at_column
========================== ============================================================

The chain is ``entry[i].previous_manifest_sha256 == entry[i-1].manifest_sha256`` and the same
value is sealed inside each manifest, so re-ordering, dropping or inserting entries breaks it
in two places. Appends are serialised with an exclusive ``flock`` on
``_consentgate/registry.lock`` held from reading the tail to committing the new row (only the
driver writes the registry; on a cluster the lake root is a shared mount). After committing, the
writer re-reads the table and fails if anyone appended past the lock (a fork is never hidden).

Entries are read with delta-rs into pyarrow: the registry grows by one row per gate run, not
with the data, so reading it whole on the driver is fine.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from pyspark.sql import SparkSession
from pyspark.sql.types import (
    ArrayType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from consentgate import heads, lake
from consentgate.config import Config, DatasetConfig
from consentgate.errors import CheckFailed, ConsentgateError
from consentgate.manifest import check_registry_chain, registry_path_at
from consentgate.state import file_lock

#: Prefix of every snapshot dataset name: ``snapshot/<model_version>/<dataset>``.
SNAPSHOT_PREFIX: Final = "snapshot/"

#: Model versions become directory names; keep them to a portable, unambiguous alphabet.
_MODEL_VERSION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_SNAPSHOT_STRUCT: Final = StructType(
    [
        StructField("name", StringType(), False),
        StructField("dataset", StringType(), False),
        StructField("path", StringType(), False),
        StructField("version", LongType(), False),
        StructField("use_case", StringType(), False),
        StructField("key", StringType(), False),
        StructField("asset_column", StringType(), True),
        StructField("retention_days", IntegerType(), True),
        StructField("derived_at_column", StringType(), True),
    ]
)

#: Spark schema of the registry table.
REGISTRY_SCHEMA: Final = StructType(
    [
        StructField("seq", LongType(), False),
        StructField("run_id", StringType(), False),
        StructField("use_case", StringType(), False),
        StructField("model_version", StringType(), False),
        StructField("manifest_path", StringType(), False),
        StructField("manifest_sha256", StringType(), False),
        StructField("previous_manifest_sha256", StringType(), True),
        StructField("created_at", TimestampType(), False),
        StructField("snapshots", ArrayType(_SNAPSHOT_STRUCT, False), False),
    ]
)


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot table a run published, with what the purge needs to keep it compliant."""

    name: str
    dataset: str
    path: str
    version: int
    use_case: str
    key: str
    asset_column: str | None = None
    retention_days: int | None = None
    derived_at_column: str | None = None

    def dataset_config(self, config: Config) -> DatasetConfig:
        """This snapshot as a dataset of its use case (absolute path).

        Retention is the stricter of what the snapshot was published with and what the
        config says of its dataset now: a shortened retention must reach the copies a gate
        already cut, or a snapshot would keep rows its source may no longer hold. A dataset
        that was dropped from the config, or lost its retention, keeps the published one
        (a config change never lengthens how long a copy is kept).
        """
        retention, derived_at = self.retention_days, self.derived_at_column
        current = config.datasets.get(self.dataset)
        if (
            current is not None
            and current.retention_days is not None
            and (retention is None or current.retention_days < retention)
        ):
            retention = current.retention_days
            derived_at = derived_at or current.derived_at_column
        return DatasetConfig(
            path=str(config.resolve(self.path)),
            use_case=self.use_case,
            key=self.key,
            asset_column=self.asset_column,
            retention_days=retention,
            derived_at_column=derived_at,
        )


@dataclass(frozen=True)
class RegistryEntry:
    """One published gate run."""

    seq: int
    run_id: str
    use_case: str
    model_version: str
    manifest_path: str
    manifest_sha256: str
    previous_manifest_sha256: str | None
    created_at: dt.datetime
    snapshots: tuple[SnapshotRecord, ...] = field(default_factory=tuple)

    def to_row(self) -> dict[str, Any]:
        """The entry as a row of :data:`REGISTRY_SCHEMA`."""
        row = asdict(self)
        row["snapshots"] = [asdict(s) for s in self.snapshots]
        return row


# --------------------------------------------------------------------------------------------
# Names and paths


def check_model_version(model_version: str) -> str:
    """Refuse a model version that cannot safely be a directory name.

    Raises:
        ConsentgateError: (exit 2) naming ``--model-version``.
    """
    if not _MODEL_VERSION_RE.fullmatch(model_version):
        raise ConsentgateError(
            f"--model-version: {model_version!r} must match {_MODEL_VERSION_RE.pattern} "
            "(it names the snapshot directory)"
        )
    return model_version


def registry_path(config: Config) -> Path:
    """The registry's Delta table."""
    return registry_path_at(config.lake_root)


def manifests_dir(config: Config) -> Path:
    """Where manifests (and their datasheets) are written."""
    return config.state_dir / "manifests"


def snapshots_root(config: Config, model_version: str | None = None) -> Path:
    """``_consentgate/snapshots`` or, given a model version, that version's directory."""
    root = config.state_dir / "snapshots"
    return root if model_version is None else root / check_model_version(model_version)


def snapshot_name(model_version: str, dataset: str) -> str:
    """The registered dataset name of a snapshot: ``snapshot/<model_version>/<dataset>``."""
    return f"{SNAPSHOT_PREFIX}{model_version}/{dataset}"


def snapshot_path(config: Config, model_version: str, dataset: str) -> Path:
    """Absolute path of a model version's snapshot of ``dataset``."""
    return snapshots_root(config, model_version) / dataset


def lineage_dataset(name: str) -> str:
    """The dataset whose lineage edges describe ``name``'s rows.

    A snapshot copies rows of its source dataset with their keys unchanged, so the lineage of
    ``snapshot/<V>/<dataset>`` is the lineage of ``<dataset>``: a dataset without an
    ``asset_column`` must look its sources up under the source name, not the snapshot's.
    """
    if name.startswith(SNAPSHOT_PREFIX):
        parts = name[len(SNAPSHOT_PREFIX) :].split("/", 1)
        if len(parts) == 2 and parts[1]:
            return parts[1]
    return name


def relative_to_lake(config: Config, path: Path) -> str:
    """``path`` relative to ``lake_root`` (manifests and the registry never store absolutes,
    so a lake can be moved or mounted elsewhere and still verify)."""
    return Path(path).resolve().relative_to(config.lake_root.resolve()).as_posix()


# --------------------------------------------------------------------------------------------
# Reading


def _snapshot_from(row: Mapping[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        name=str(row["name"]),
        dataset=str(row["dataset"]),
        path=str(row["path"]),
        version=int(row["version"]),
        use_case=str(row["use_case"]),
        key=str(row["key"]),
        asset_column=row.get("asset_column"),
        retention_days=None if row.get("retention_days") is None else int(row["retention_days"]),
        derived_at_column=row.get("derived_at_column"),
    )


def read_entries(config: Config, *, ordered: bool = True) -> list[RegistryEntry]:
    """Every registry entry (sorted by ``seq`` unless ``ordered`` is false); [] when empty.

    Raises:
        TableError: the registry exists but cannot be read.
    """
    return read_entries_at(config.lake_root, ordered=ordered)


def read_entries_at(lake_root: Path, *, ordered: bool = True) -> list[RegistryEntry]:
    """:func:`read_entries` for the lake at ``lake_root``, without a config."""
    path = registry_path_at(lake_root)
    if not lake.is_table(path):
        return []
    table = lake.open_table(path).to_pyarrow_table()
    entries = [
        RegistryEntry(
            seq=int(row["seq"]),
            run_id=str(row["run_id"]),
            use_case=str(row["use_case"]),
            model_version=str(row["model_version"]),
            manifest_path=str(row["manifest_path"]),
            manifest_sha256=str(row["manifest_sha256"]),
            previous_manifest_sha256=row["previous_manifest_sha256"],
            created_at=row["created_at"],
            snapshots=tuple(_snapshot_from(s) for s in row["snapshots"] or ()),
        )
        for row in table.to_pylist()
    ]
    return sorted(entries, key=lambda e: e.seq) if ordered else entries


def check_chain(entries: Sequence[RegistryEntry]) -> list[str]:
    """Problems with the chain, in ``seq`` order; [] when it is intact.

    The rules live with the Spark-free verifier (:func:`consentgate.manifest.check_registry_chain`)
    so that publishing and verifying can never disagree.
    """
    return check_registry_chain(entries)


def find_entry(config: Config, *, model_version: str) -> RegistryEntry | None:
    """The published run for ``model_version``, if any."""
    for entry in read_entries(config):
        if entry.model_version == model_version:
            return entry
    return None


def snapshot_datasets(config: Config) -> dict[str, DatasetConfig]:
    """Every published snapshot as a dataset, keyed ``snapshot/<model_version>/<dataset>``.

    The purge treats these like configured datasets, so a snapshot cut before a revocation is
    cleaned like any other derivative (the manifest stays as the record of what was used).
    A snapshot whose rows reach assets only through lineage has no ``asset_column``: look its
    sources up under :func:`lineage_dataset` of its name.

    Raises:
        CheckFailed: the registry's hash chain does not verify, or the registry ends before
            the head the head file publishes (issue #23 item 2): an entry removed or altered
            would silently drop or redirect a snapshot from every purge.
    """
    entries = read_entries(config)
    problems = check_chain(entries)
    # and its newest entries are all there (issue #23: a removed entry would drop its
    # snapshot from this purge and every later one)
    problems += heads.check_published(
        config.lake_root, "registry", [e.manifest_sha256 for e in entries]
    )
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CheckFailed(
            f"registry {registry_path(config)}: its hash chain does not verify: "
            f"{problems[0]}{more}; which training snapshots the purge must cover is not "
            "guessed from a registry that was altered (restore it from its Delta history, "
            "then run again)"
        )
    out: dict[str, DatasetConfig] = {}
    for entry in entries:
        for snap in entry.snapshots:
            out[snap.name] = snap.dataset_config(config)
    return out


# --------------------------------------------------------------------------------------------
# Writing


@contextmanager
def registry_lock(config: Config) -> Iterator[None]:
    """Hold the registry's exclusive lock (blocking) for a read-tail-then-append section."""
    with file_lock(config.state_dir / "registry.lock"):
        yield


def append_entry(spark: SparkSession, config: Config, entry: RegistryEntry) -> int:
    """Append ``entry`` (call under :func:`registry_lock`) and check the chain still holds.

    Args:
        spark: Session used to write the row through the lake layer.
        config: The lake.
        entry: The new tail; its ``seq`` and ``previous_manifest_sha256`` must continue the
            current tail (read under the same lock).

    Returns:
        The registry table version that contains the entry.

    Raises:
        CheckFailed: the entry does not continue the tail, or the chain is broken after the
            append (someone wrote past the lock).
    """
    current = read_entries(config)
    expected_seq = len(current)
    expected_previous = current[-1].manifest_sha256 if current else None
    if entry.seq != expected_seq or entry.previous_manifest_sha256 != expected_previous:
        raise CheckFailed(
            f"registry: new entry for run {entry.run_id} does not continue the chain "
            f"(seq {entry.seq}, expected {expected_seq})"
        )
    frame = spark.createDataFrame([entry.to_row()], REGISTRY_SCHEMA)
    path = registry_path(config)
    version = lake.write_table(
        frame,
        path,
        mode="append" if lake.is_table(path) else "error",
        commit_metadata={"consentgate.op": "registry.append", "consentgate.run_id": entry.run_id},
        configuration={"delta.appendOnly": "true"},
    )
    problems = check_chain(read_entries(config))
    if problems:
        raise CheckFailed("; ".join(problems))
    heads.publish(config.lake_root, "registry", heads.Head(entry.seq, entry.manifest_sha256))
    return version


def next_link(config: Config) -> tuple[int, str | None]:
    """``(seq, previous_manifest_sha256)`` for the next entry (call under the lock).

    Raises:
        CheckFailed: the existing chain is broken; nothing new is chained onto it.
    """
    current = read_entries(config)
    problems = check_chain(current)
    if problems:
        raise CheckFailed("; ".join(problems))
    return len(current), (current[-1].manifest_sha256 if current else None)


__all__ = [
    "REGISTRY_SCHEMA",
    "SNAPSHOT_PREFIX",
    "RegistryEntry",
    "SnapshotRecord",
    "append_entry",
    "check_chain",
    "check_model_version",
    "find_entry",
    "lineage_dataset",
    "manifests_dir",
    "next_link",
    "read_entries",
    "read_entries_at",
    "registry_lock",
    "registry_path",
    "registry_path_at",
    "relative_to_lake",
    "snapshot_datasets",
    "snapshot_name",
    "snapshot_path",
    "snapshots_root",
]
