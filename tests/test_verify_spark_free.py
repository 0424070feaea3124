"""Manifest verification needs no JVM: files hashed with hashlib, Delta tables read with
delta-rs (deletion vectors honoured), roots recomputed by the Spark-free verifier.

Spark appears here only to *make* what is verified (a gate run, a table with a deletion
vector, the reference roots), exactly as delta-spark writes it in production.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from consentgate import digest, gate, lake, manifest, merkle, registry, verifier
from consentgate.canonical import canonical_json
from consentgate.config import Config, load_config
from consentgate.errors import SchemaError
from tests.lakes import copy_small_lake

UTC = dt.UTC
REPO = Path(__file__).resolve().parents[1]


@dataclass
class SmallGate:
    root: Path
    config: Config
    result: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return Path(self.result["manifest_path"])


@pytest.fixture(scope="module")
def small_gate(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, pristine_small_lake: Path
) -> Iterator[SmallGate]:
    root = tmp_path_factory.mktemp("spark_free") / "lake"
    config = load_config(copy_small_lake(pristine_small_lake, root))
    result = gate.run_gate(
        spark,
        config,
        use_case="recommendation",
        model_version="m1",
        as_of=dt.datetime(2026, 6, 1, tzinfo=UTC),
    )
    yield SmallGate(root, config, result)


# --------------------------------------------------------------------------------------------
# No pyspark, no JVM


_VERIFY_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from consentgate.cli import main
    status = None
    try:
        main(["verify", sys.argv[1], "--json"])
    except SystemExit as exc:
        status = exc.code
    loaded = sorted(
        m for m in sys.modules if m.split(".")[0] in {"pyspark", "py4j", "delta"}
    )
    sys.stderr.write("\\nLOADED " + json.dumps({"status": status, "loaded": loaded}) + "\\n")
    """
)


def _no_java_env() -> dict[str, str]:
    """The test's environment with Java made unusable: a JVM start would fail loudly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env["JAVA_HOME"] = "/nonexistent-java-home"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_verify_command_imports_no_pyspark(small_gate: SmallGate) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _VERIFY_IN_A_FRESH_PROCESS, str(small_gate.manifest_path)],
        capture_output=True,
        text=True,
        env=_no_java_env(),
        timeout=300,
        check=False,
    )
    marker = [line for line in done.stderr.splitlines() if line.startswith("LOADED ")]
    assert marker, done.stderr
    facts = json.loads(marker[-1][len("LOADED ") :])
    report = json.loads(done.stdout)
    assert report["ok"] is True, report["problems"]
    assert report["checked"] == {"files": 1, "snapshots": 1}
    assert facts == {"status": 0, "loaded": []}, facts


def test_verify_console_script_imports_no_pyspark(small_gate: SmallGate) -> None:
    script = Path(sys.executable).with_name("consentgate")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "verify", str(small_gate.manifest_path)],
        capture_output=True,
        text=True,
        env=_no_java_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "consentgate.manifest" in imported and "deltalake" in imported
    assert not [m for m in imported if m.split(".")[0] in {"pyspark", "py4j", "delta"}]


def test_gate_manifest_verifies_against_the_recorded_roots(
    small_gate: SmallGate, tmp_path: Path
) -> None:
    report = manifest.verify_manifest(small_gate.manifest_path)
    assert report["ok"], report["problems"]
    assert report["checked"] == {"files": 1, "snapshots": 1} and report["erased"] == []

    data = manifest.load_manifest(small_gate.manifest_path)
    snap = next(iter(data["snapshots"].values()))
    table_dir = small_gate.root / snap["path"]
    # The recorded files hash the same with hashlib as on the executors.
    recorded = [(f["path"], table_dir / f["path"]) for f in snap["files"]]
    local = manifest.hash_files_local([*recorded, ("gone", table_dir / "no-such.parquet")])
    assert local["gone"] == (False, -1, "")
    for f in snap["files"]:
        assert local[f["path"]] == (True, f["size"], f["sha256"])
    # The snapshot content root recomputed without Spark equals the one the gate recorded.
    assert verifier.snapshot_content_root(table_dir, int(snap["version"])) == (
        snap["content_merkle_root"],
        snap["rows"],
    )
    allow = data["allowlist"]
    assert verifier.allowlist_root_of_table(
        small_gate.root / allow["table"]["path"], int(allow["table"]["version"])
    ) == (allow["merkle_root"], allow["asset_count"])


def _copy_lake(small_gate: SmallGate, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "lake"
    shutil.copytree(small_gate.root, copy)
    return copy, copy / small_gate.manifest_path.relative_to(small_gate.root)


def _snapshot_file(manifest_path: Path) -> tuple[str, str, Path]:
    data = manifest.load_manifest(manifest_path)
    name, snap = next(iter(data["snapshots"].items()))
    rel = snap["files"][0]["path"]
    return name, rel, manifest.lake_root_of(manifest_path) / snap["path"] / rel


def test_tampered_value_is_caught(small_gate: SmallGate, tmp_path: Path) -> None:
    _, copy = _copy_lake(small_gate, tmp_path)
    name, rel, file = _snapshot_file(copy)
    table = pq.read_table(file)
    index = table.schema.get_field_index("embedding_id")
    ids = [f"{v}-tampered" for v in table.column(index).to_pylist()]
    pq.write_table(table.set_column(index, table.schema.field(index), [ids]), file)
    file.with_name(f".{file.name}.crc").unlink(missing_ok=True)
    report = manifest.verify_manifest(copy)
    assert not report["ok"]
    problems = report["problems"]
    assert any(name in p and rel in p and "SHA-256" in p for p in problems), problems
    assert any(name in p and "content Merkle root" in p for p in problems), problems


def test_deleted_file_edited_manifest_and_registry_are_caught(
    small_gate: SmallGate, tmp_path: Path
) -> None:
    root, copy = _copy_lake(small_gate, tmp_path)
    name, rel, file = _snapshot_file(copy)
    file.unlink()
    problems = manifest.verify_manifest(copy)["problems"]
    assert f"dataset {name}: file {rel} is missing from {file.parent}" in problems
    assert f"dataset {name}: content Merkle root not recomputable (1 missing)" in problems

    root, copy = _copy_lake(small_gate, tmp_path / "edited")
    data = json.loads(copy.read_bytes())
    data["model_version"] = "m1-edited"
    copy.write_text(json.dumps(data))
    problems = manifest.verify_manifest(copy)["problems"]
    assert any("does not match its content" in p for p in problems), problems
    assert any("RFC 8785 canonical form" in p for p in problems), problems
    assert any("records manifest SHA-256" in p for p in problems), problems

    root, copy = _copy_lake(small_gate, tmp_path / "registry")
    path = manifest.registry_path_at(root)
    table = pa.table(
        next(iter(verifier.scan(verifier.open_delta(path)))).to_pydict()
    )  # the registry as delta-rs reads it
    index = table.schema.get_field_index("previous_manifest_sha256")
    table = table.set_column(index, "previous_manifest_sha256", [["0" * 64]])
    shutil.rmtree(path)
    write_deltalake(str(path), table)
    problems = manifest.verify_manifest(copy)["problems"]
    assert any("registry" in p and "names previous manifest" in p for p in problems), problems


def test_registry_read_with_delta_rs_agrees_with_the_registry_module(
    small_gate: SmallGate,
) -> None:
    """Verification reads the registry through delta-rs's query engine, publishing through
    the registry module: both must see the same entries (the chain rules are one function)."""
    entries = registry.read_entries_at(small_gate.root)
    links = manifest.read_registry_links(small_gate.root)
    fields = [f.name for f in dataclasses.fields(manifest.RegistryLink)]
    assert [tuple(getattr(e, n) for n in fields) for e in entries] == [
        tuple(getattr(link, n) for n in fields) for link in links
    ]
    assert len(links) == 1
    (entry,) = entries
    broken = [
        entry,
        dataclasses.replace(entry, seq=2, previous_manifest_sha256="f" * 64),
        dataclasses.replace(entry, seq=2, run_id="other", model_version="m2"),
    ]
    problems = manifest.check_registry_chain(broken)
    assert any("seq values [0, 2, 2]" in p for p in problems), problems
    assert any("names previous manifest" in p for p in problems), problems
    assert manifest.check_registry_chain(links) == []


# --------------------------------------------------------------------------------------------
# Deletion vectors


ROWS_DDL = (
    "key string, n int, b bigint, t tinyint, s smallint, f float, d double, ok boolean, "
    "bin binary, day date, at timestamp, arr array<int>, st struct<name:string,score:double>, "
    "tags array<struct<k:string,v:bigint>>"
)


def _rows(count: int) -> list[tuple[Any, ...]]:
    base = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    return [
        (
            f"k{i:02d}",
            i,
            -(2**40) + i,
            i - 3,
            -300 + i,
            math.nan if i == 2 else 0.5 * i,
            -0.0 if i == 3 else 1e300 / (i + 1),
            i % 2 == 0,
            None if i % 3 == 0 else bytes([i, 0, 255]),
            dt.date(1969, 12, 31) + dt.timedelta(days=i),
            None if i == 4 else base + dt.timedelta(microseconds=i * 1001),
            [i, None, -i],
            {"name": f"é{i}", "score": i / 7},
            [{"k": "a", "v": i}] if i % 2 else [],
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def dv_table(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int, int]:
    """A table with deletion vectors on, in two files, then one row deleted by a MERGE (which
    writes a deletion vector, not a new file). Returns ``(path, version before, after)``."""
    path = tmp_path_factory.mktemp("dv") / "table"
    frame = spark.createDataFrame(_rows(8), ROWS_DDL).repartition(2, "key")
    before = lake.write_table(frame, path, configuration={"delta.enableDeletionVectors": "true"})
    keys = spark.createDataFrame([("k05",)], "key string")
    result = lake.merge_delete(spark, path, keys, condition=F.col("t.key") == F.col("s.key"))
    return path, before, result.version


def test_deletion_vector_hidden_row_is_not_counted(
    spark: SparkSession, dv_table: tuple[Path, int, int]
) -> None:
    path, before, after = dv_table
    table = verifier.open_delta(path, version=after)
    files = verifier.data_files(table)
    masks = verifier.deletion_vector_masks(table)
    # The MERGE hid exactly one row behind a deletion vector and rewrote no file.
    assert files == verifier.data_files(verifier.open_delta(path, version=before))
    assert len(masks) == 1 and sum(not keep for mask in masks.values() for keep in mask) == 1
    assert set(masks) <= set(files)

    spark_root, spark_rows = digest.content_merkle_root(lake.read_table(spark, path, version=after))
    assert spark_rows == 7
    assert verifier.snapshot_content_root(path, after) == (spark_root, spark_rows)

    # The raw Parquet rows still include the hidden one: a different root, one row more.
    raw_root, raw_rows = verifier.content_root_of_files([path / rel for rel in files])
    assert raw_rows == 8 and raw_root != spark_root
    # ...and are exactly the table before the delete (time travel agrees too).
    before_root = digest.content_merkle_root(lake.read_table(spark, path, version=before))
    assert verifier.snapshot_content_root(path, before) == before_root == (raw_root, raw_rows)
    # The lake layer's log-only row count subtracts the same hidden row.
    visible = lake.active_files(lake.open_table(path, version=after)).column("rows").to_pylist()
    assert sum(visible) == 7


def test_describe_snapshot_and_the_verifier_agree_on_a_deletion_vector(
    spark: SparkSession, dv_table: tuple[Path, int, int]
) -> None:
    path, _, after = dv_table
    described = manifest.describe_snapshot(spark, path, after)
    assert described["rows"] == 7
    assert manifest.check_snapshot_content(path, described, where="dataset dv") == []

    # The whole per-snapshot check (file digests, log file set, content) as verify runs it.
    snapshots = {"dv": {**described, "path": path.name}}
    checked: dict[str, Any] = {"files": 0, "snapshots": 0}
    assert manifest._check_snapshots(path.parent, snapshots, checked) == []
    assert checked == {"files": len(described["files"]), "snapshots": 1}

    # A manifest that recorded the raw Parquet rows (the hidden row counted) is refused.
    files = [path / f["path"] for f in described["files"]]
    raw_root, raw_rows = verifier.content_root_of_files(files)
    wrong = {**described, "content_merkle_root": raw_root, "rows": raw_rows}
    problems = manifest.check_snapshot_content(path, wrong, where="dataset dv")
    assert problems == [
        "dataset dv: 7 rows in the files, manifest says 8",
        f"dataset dv: content Merkle root {described['content_merkle_root']} recomputed from "
        f"the files, manifest says {raw_root}",
    ]


# --------------------------------------------------------------------------------------------
# Allowlist


ALLOWLIST_ARROW = pa.schema(
    [
        ("asset_id", pa.string()),
        ("consent_record_id", pa.string()),
        ("policy_version", pa.string()),
        ("captured_at", pa.timestamp("us", tz="UTC")),
        ("jurisdiction", pa.string()),
    ]
)


def _allowlist_batch(n: int) -> pa.RecordBatch:
    at = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    rows = [
        {
            "asset_id": f"asset-{i:02d}",
            "consent_record_id": f"rec-{i:02d}",
            "policy_version": "2026-03",
            "captured_at": at + dt.timedelta(seconds=i),
            "jurisdiction": None if i % 3 == 0 else "US-CA",
        }
        for i in range(n)
    ]
    return pa.RecordBatch.from_pylist(rows, schema=ALLOWLIST_ARROW)


def merkle_root_of(leaves: list[bytes]) -> str:
    return merkle.merkle_root([merkle.leaf_hash(d) for d in leaves]).hex()


def test_allowlist_leaf_vector_in_the_docs() -> None:
    """The worked example of docs/manifest.md section 4, byte for byte."""
    entry = verifier.allowlist_entry(
        "a1", "r1", "2026-03", dt.datetime(2026, 3, 1, 12, tzinfo=UTC), None
    )
    assert entry.hex() == (
        "00000005"
        "0000000861737365745f6964" "08000000026131"
        "00000011636f6e73656e745f7265636f72645f6964" "08000000027231"
        "0000000e706f6c6963795f76657273696f6e" "0800000007323032362d3033"
        "0000000b63617074757265645f6174" "0b00064bf535af1000"
        "0000000c6a7572697364696374696f6e" "00"
    )  # fmt: skip
    key = "74ce1e8a6d3c07d6ce6128f537ee03ea39cd6136e6955f44ae0f52566b5bbb75"
    assert verifier.allowlist_key("a1") == key
    assert key == hashlib.sha256(b"consentgate-allowlist/2 key:a1").hexdigest()
    digest_ = "0d75672f46bc3607231dba48344ad93061374064f7d7be2bf800c16c8884171a"
    assert verifier.allowlist_entry_digest(entry).hex() == digest_
    assert digest_ == hashlib.sha256(b"consentgate-allowlist/2 entry:" + entry).hexdigest()
    leaf = verifier.allowlist_leaf(entry)
    assert leaf.hex() == key + digest_
    assert hashlib.sha256(b"\x00" + leaf).hexdigest() == (
        "82deea7043c0d9ab998dad72c93bbb3c543f4dd08d75bf3282c763ba5dda7af4"
    )


def test_allowlist_root_is_keyed_by_asset_id_hash() -> None:
    """Scheme 2 from its definition (hashlib only): leaves ``H(key domain || id) ||
    H(entry domain || ROW)``, ordered by the key hash, not by the id."""
    batch = _allowlist_batch(11)
    leaves = []
    for row in batch.to_pylist():
        entry = verifier.encode_row(list(row.values()), verifier.ALLOWLIST_FIELDS)
        key = hashlib.sha256(b"consentgate-allowlist/2 key:" + row["asset_id"].encode()).digest()
        leaves.append(key + hashlib.sha256(b"consentgate-allowlist/2 entry:" + entry).digest())
    by_key = sorted(leaves)
    expected = (merkle_root_of(by_key), 11)
    assert verifier.allowlist_root_of_batches([batch]) == expected
    # the order matters: the same leaves ordered by asset id give another root
    assert by_key != leaves
    assert merkle_root_of(leaves) != expected[0]


def test_legacy_allowlist_root_still_recomputes(tmp_path: Path) -> None:
    """Manifests written before scheme 2 keep verifying: their root (leaves = entries ordered
    by asset id) is recomputed on request, from batches and from a Delta table."""
    batch = _allowlist_batch(7)
    entries = [
        verifier.encode_row(list(row.values()), verifier.ALLOWLIST_FIELDS)
        for row in batch.to_pylist()
    ]
    legacy = (merkle_root_of(entries), 7)  # asset-00 .. asset-06 are already in id order
    scheme = verifier.LEGACY_ALLOWLIST_SCHEME
    assert verifier.allowlist_root_of_batches([batch], scheme=scheme) == legacy
    write_deltalake(str(tmp_path / "allow"), pa.Table.from_batches([batch]))
    assert verifier.allowlist_root_of_table(tmp_path / "allow", 0, scheme=scheme) == legacy
    current = verifier.allowlist_root_of_table(tmp_path / "allow", 0)
    assert current == verifier.allowlist_root_of_batches([batch]) and current != legacy
    with pytest.raises(SchemaError, match="unknown allowlist scheme"):
        verifier.allowlist_root_of_batches([batch], scheme="consentgate-allowlist/9")


def test_allowlist_row_without_asset_id_is_refused() -> None:
    rows = _allowlist_batch(2).to_pylist()
    rows[1]["asset_id"] = None
    batch = pa.RecordBatch.from_pylist(rows, schema=ALLOWLIST_ARROW)
    with pytest.raises(SchemaError, match="without an asset_id"):
        verifier.allowlist_root_of_batches([batch])


def test_allowlist_root_agrees_with_spark(spark: SparkSession, tmp_path: Path) -> None:
    at = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    rows = [
        (asset, f"rec-{i}", "2026-03", at + dt.timedelta(seconds=i), None if i % 2 else "US-CA", i)
        for i, asset in enumerate(["z", "é", "A", "a", "ä", "a1", "ab", "\u00e9\u0301"])
    ]
    frame = spark.createDataFrame(
        rows,
        "asset_id string, consent_record_id string, policy_version string, "
        "captured_at timestamp, jurisdiction string, extra int",
    )
    version = lake.write_table(frame, tmp_path / "allow")
    expected = digest.allowlist_merkle_root(lake.read_table(spark, tmp_path / "allow"))
    assert verifier.allowlist_root_of_table(tmp_path / "allow", version) == expected
    assert expected[1] == len(rows)


def test_edited_canonical_manifest_is_not_reported_non_canonical(
    small_gate: SmallGate, tmp_path: Path
) -> None:
    """Issue #12: an edit written back in canonical form breaks the seal, and only the seal:
    the canonical-form diagnostic is about the bytes on disk, not about a re-sealed copy."""
    _, copy = _copy_lake(small_gate, tmp_path / "edited")
    data = json.loads(copy.read_bytes())
    data["model_version"] = "m1-edited"
    copy.write_bytes(canonical_json(data))
    problems = manifest.verify_manifest(copy)["problems"]
    assert any("does not match its content" in p for p in problems), problems
    assert not any("canonical form" in p for p in problems), problems

    # The same content, unedited but re-indented: the seal holds, the form does not.
    _, copy = _copy_lake(small_gate, tmp_path / "indented")
    copy.write_text(json.dumps(json.loads(copy.read_bytes()), indent=2))
    problems = manifest.verify_manifest(copy)["problems"]
    assert any("RFC 8785 canonical form" in p for p in problems), problems
    assert not any("does not match its content" in p for p in problems), problems
