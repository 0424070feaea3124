"""End to end on a small demo lake: two gate runs around a revocation, then every check.

One lake per module, a copy of the run's shared 80-asset demo lake (built once per test run):
gate ``m1`` at the demo's "now", revoke one asset that ``m1`` used, gate ``m2`` two days later.
Tamper tests work on copies of that lake, so they never disturb each other or the happy path.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from consentgate import gate, lake, registry
from consentgate.config import Config, load_config
from consentgate.demo import DEMO_NOW, POLICY_AFTER
from consentgate.errors import (
    AsOfRefused,
    CheckFailed,
    ConflictError,
    ConsentgateError,
    TableError,
)
from consentgate.manifest import load_manifest, verify_manifest
from consentgate.proofs import prove, verify_proof
from tests.airflow_fixtures import copy_lake
from tests.demo_expectations import DEMO_TABLES, check_gate_run, read, read_inputs
from tests.lakes import copy_small_lake, write_small_lake

pytestmark = pytest.mark.slow

MICRO = dt.timedelta(microseconds=1)
USE_CASE = "recommendation"
DATASETS = ["stem_embeddings", "track_embeddings"]
AFTER = DEMO_NOW + dt.timedelta(days=2)


@dataclass
class Gated:
    root: Path
    config: Config
    first: dict[str, Any]
    second: dict[str, Any]
    revoked: str


def _revoke(spark: SparkSession, config: Config, asset_id: str) -> None:
    owner = (
        lake.read_table(spark, config.table_path("assets"))
        .where(F.col("asset_id") == asset_id)
        .first()
    )
    assert owner is not None
    row = (
        str(uuid.uuid4()),
        owner["owner_user_id"],
        asset_id,
        USE_CASE,
        "revoked",
        POLICY_AFTER,
        None,
        DEMO_NOW + dt.timedelta(days=1),
        None,
    )
    records = lake.read_table(spark, config.table_path("consent_records"))
    lake.write_table(
        spark.createDataFrame([row], records.schema),
        config.table_path("consent_records"),
        mode="append",
    )


@pytest.fixture(scope="module")
def gated(
    spark: SparkSession, pristine_lake: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gated]:
    """A copy of the run's 80-asset demo lake (``tests/airflow_fixtures.pristine_lake``, built
    once per test run), gated twice around a revocation."""
    root = tmp_path_factory.mktemp("gate") / "lake"
    config = load_config(copy_lake(pristine_lake, root))
    first = gate.run_gate(
        spark, config, use_case=USE_CASE, model_version="m1", datasets=DATASETS, as_of=DEMO_NOW
    )
    snap = lake.read_table(spark, first["snapshots"]["snapshot/m1/track_embeddings"])
    used = snap.select("asset_id").distinct().orderBy("asset_id").first()
    assert used is not None
    revoked = str(used["asset_id"])
    _revoke(spark, config, revoked)
    second = gate.run_gate(
        spark, config, use_case=USE_CASE, model_version="m2", datasets=DATASETS, as_of=AFTER
    )
    yield Gated(root, config, first, second, revoked)


def test_revoked_asset_leaves_the_second_allowlist(spark: SparkSession, gated: Gated) -> None:
    assert gated.first["allowlist_assets"] == gated.second["allowlist_assets"] + 1
    # exclusions count what was left out: the revoked asset, never the grants
    assert "granted" not in gated.second["exclusions"]
    assert gated.second["exclusions"].get("revoked", 0) >= 1
    for name, path in gated.first["snapshots"].items():
        assert Path(path).is_dir() and name.startswith("snapshot/m1/")
    first_rows = lake.read_table(spark, gated.first["snapshots"]["snapshot/m1/track_embeddings"])
    second_rows = lake.read_table(spark, gated.second["snapshots"]["snapshot/m2/track_embeddings"])
    assert first_rows.where(F.col("asset_id") == gated.revoked).count() > 0
    assert second_rows.where(F.col("asset_id") == gated.revoked).count() == 0
    # Snapshots are registered as datasets of the use case, for the nightly purge.
    datasets = registry.snapshot_datasets(gated.config)
    assert set(datasets) == {f"snapshot/{v}/{d}" for v in ("m1", "m2") for d in DATASETS}
    assert all(d.use_case == USE_CASE for d in datasets.values())


def test_allowlists_and_snapshots_are_exactly_the_independent_computation(
    spark: SparkSession, gated: Gated
) -> None:
    """Absolutely, not one run against the other: each run's allowlist (every leaf column),
    its count per reason, and each snapshot's rows (bit for bit) are what the reference model
    and a hand-written lineage walk say (``tests/demo_expectations.py``)."""
    inputs = read_inputs(spark, gated.root)
    figures = {}
    for run, version, as_of in ((gated.first, "m1", DEMO_NOW), (gated.second, "m2", AFTER)):
        figures[version] = check_gate_run(
            spark,
            lake_root=gated.root,
            manifest_path=run["manifest_path"],
            inputs=inputs,
            sources_root=gated.root,
            use_case=USE_CASE,
            model_version=version,
            datasets=DATASETS,
            as_of=as_of,
        )
        assert run["allowlist_assets"] == figures[version]["allowlist"]
    # The lake makes this bite: rows are excluded on both paths (asset column, two lineage
    # hops) for withdrawals, and the revocation between the runs shows up absolutely.
    totals = {d: read(spark, gated.root / DEMO_TABLES[d].path).count() for d in DATASETS}
    for dataset in DATASETS:
        assert 0 < figures["m1"]["kept"][dataset] < totals[dataset], dataset
    assert {"revoked", "denied"} <= set(figures["m1"]["reasons"])
    assert figures["m2"]["reasons"]["revoked"] == figures["m1"]["reasons"]["revoked"] + 1


def test_both_manifests_verify_and_chain(spark: SparkSession, gated: Gated) -> None:
    for run in (gated.first, gated.second):
        report = verify_manifest(run["manifest_path"])
        assert report["ok"], report["problems"]
        assert report["checked"]["files"] > 0
    m1 = load_manifest(gated.first["manifest_path"])
    m2 = load_manifest(gated.second["manifest_path"])
    assert m1["previous_manifest_sha256"] is None
    assert m2["previous_manifest_sha256"] == m1["manifest_sha256"]
    assert [e.model_version for e in registry.read_entries(gated.config)] == ["m1", "m2"]
    assert (
        m1["source_tables"]["consent_records"]["version"]
        < (m2["source_tables"]["consent_records"]["version"])
    )
    for field in ("run_id", "use_case", "model_version", "evaluated_at", "created_at", "versions"):
        assert m1[field]
    assert m1["filter"]["accepted_policy_versions"]
    assert m1["exclusions"]["assets"] and m1["exclusions"]["rows"]
    snap = m1["snapshots"]["track_embeddings"]
    assert snap["rows"] > 0 and snap["assets"] > 0 and len(snap["content_merkle_root"]) == 64
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in snap["files"])
    sheet_dir = Path(gated.first["manifest_path"]).parent
    assert (sheet_dir / "exclusions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Opt-in rate per jurisdiction" in (sheet_dir / "datasheet.md").read_text()
    assert "<table>" in (sheet_dir / "datasheet.html").read_text()


def test_proofs(spark: SparkSession, gated: Gated) -> None:
    m1, m2 = gated.first["manifest_path"], gated.second["manifest_path"]
    inclusion = prove(spark, gated.config, manifest_path=m1, asset_id=gated.revoked)
    assert inclusion["included"] is True
    assert inclusion["proof"]["leaf"]["record"]["asset_id"] == gated.revoked
    assert verify_proof(inclusion["proof"], manifest_path=m1)["ok"]
    exclusion = prove(spark, gated.config, manifest_path=m2, asset_id=gated.revoked)
    assert exclusion["included"] is False
    assert verify_proof(exclusion["proof"], manifest_path=m2)["ok"]
    # Checked against the wrong root (the other run's manifest) both fail.
    assert not verify_proof(inclusion["proof"], manifest_path=m2)["ok"]
    assert not verify_proof(exclusion["proof"], manifest_path=m1)["ok"]
    # A never-seen asset gets an exclusion proof too.
    unknown = prove(spark, gated.config, manifest_path=m1, asset_id="zzzz-not-an-asset")
    assert unknown["included"] is False
    assert verify_proof(unknown["proof"], manifest_path=m1)["ok"]


def test_explain_model_and_impact(spark: SparkSession, gated: Gated) -> None:
    m1 = gate.explain_model(spark, gated.config, model_version="m1", limit=None)
    m2 = gate.explain_model(spark, gated.config, model_version="m2", limit=None)
    ids1 = {a["asset_id"] for a in m1["assets"]}
    ids2 = {a["asset_id"] for a in m2["assets"]}
    assert gated.revoked in ids1 and gated.revoked not in ids2
    entry = next(a for a in m1["assets"] if a["asset_id"] == gated.revoked)
    assert entry["consent_record_id"] and entry["policy_version"] and entry["captured_at"]
    assert m1["assets_total"] == len(ids1) and not m1["truncated"]
    capped = gate.explain_model(spark, gated.config, model_version="m1", limit=2)
    assert len(capped["assets"]) == 2 and capped["truncated"]
    with pytest.raises(ConsentgateError, match="not in the registry"):
        gate.explain_model(spark, gated.config, model_version="nope")

    report = gate.impact(spark, gated.config, as_of=AFTER)
    assert report["runs_checked"] == 2
    assert [r["model_version"] for r in report["runs"]] == ["m1"]
    assert report["runs"][0]["reasons"] == {"revoked": 1}


def test_refusals(spark: SparkSession, gated: Gated) -> None:
    with pytest.raises(CheckFailed, match="already has snapshots"):
        gate.run_gate(spark, gated.config, use_case=USE_CASE, model_version="m1", as_of=AFTER)
    with pytest.raises(ConsentgateError, match="gen_shards") as info:
        gate.run_gate(
            spark,
            gated.config,
            use_case=USE_CASE,
            model_version="m3",
            datasets=["gen_shards"],
            as_of=AFTER,
        )
    assert info.value.exit_code == 2
    assert not (gated.config.state_dir / "snapshots" / "m3").exists()


# --------------------------------------------------------------------------------------------
# Tampering, each on its own copy of the lake


def _copy(gated: Gated, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "lake"
    shutil.copytree(gated.root, copy)
    rel = Path(gated.first["manifest_path"]).relative_to(gated.root)
    return copy, copy / rel


def _problems(manifest: Path) -> list[str]:
    report = verify_manifest(manifest)
    assert not report["ok"]
    return list(report["problems"])


def _first_file(manifest: Path, dataset: str) -> tuple[str, Path]:
    m = load_manifest(manifest)
    snap = m["snapshots"][dataset]
    rel = snap["files"][0]["path"]
    return rel, manifest.parents[3] / snap["path"] / rel


def test_tamper_one_value(spark: SparkSession, gated: Gated, tmp_path: Path) -> None:
    _, manifest = _copy(gated, tmp_path)
    rel, file = _first_file(manifest, "track_embeddings")
    table = pq.read_table(file)
    models = table.column("model").to_pylist()
    models[0] = str(models[0]) + "-tampered"
    index = table.schema.get_field_index("model")
    pq.write_table(table.set_column(index, table.schema.field(index), [models]), file)
    # A careful forger also drops Hadoop's checksum sidecar, so the rows really are re-read.
    file.with_name(f".{file.name}.crc").unlink(missing_ok=True)
    problems = _problems(manifest)
    assert any("track_embeddings" in p and rel in p and "SHA-256" in p for p in problems)
    assert any("track_embeddings" in p and "content Merkle root" in p for p in problems)


def test_tamper_deleted_file(spark: SparkSession, gated: Gated, tmp_path: Path) -> None:
    _, manifest = _copy(gated, tmp_path)
    rel, file = _first_file(manifest, "stem_embeddings")
    file.unlink()
    problems = _problems(manifest)
    assert any("stem_embeddings" in p and rel in p and "missing" in p for p in problems)


def test_tamper_manifest_field(spark: SparkSession, gated: Gated, tmp_path: Path) -> None:
    _, manifest = _copy(gated, tmp_path)
    data = json.loads(manifest.read_bytes())
    data["evaluated_at"] = "2020-01-01T00:00:00.000000Z"
    manifest.write_text(json.dumps(data))
    problems = _problems(manifest)
    assert any(str(manifest) in p and "does not match its content" in p for p in problems)


def test_tamper_snapshot_path_outside_the_lake(
    spark: SparkSession, gated: Gated, tmp_path: Path
) -> None:
    """Issue #23 item 4: a manifest whose snapshot path leaves the lake is reported as such,
    and nothing outside the lake is read."""
    _, manifest = _copy(gated, tmp_path)
    data = json.loads(manifest.read_bytes())
    outside = tmp_path / "outside"
    outside.mkdir()
    data["snapshots"]["track_embeddings"]["path"] = "../" * 8 + str(outside).lstrip("/")
    manifest.write_text(json.dumps(data))
    problems = _problems(manifest)
    assert any(
        p.startswith("dataset track_embeddings:") and "outside lake_root" in p for p in problems
    ), problems
    assert not any("track_embeddings" in p and "missing" in p for p in problems)


def test_tamper_registry_order(spark: SparkSession, gated: Gated, tmp_path: Path) -> None:
    copy, manifest = _copy(gated, tmp_path)
    path = registry.registry_path_at(copy)
    table = lake.open_table(path).to_pyarrow_table()
    seqs = table.column("seq").to_pylist()
    reordered = table.set_column(
        table.schema.get_field_index("seq"), "seq", [[1 - s for s in seqs]]
    )
    shutil.rmtree(path)
    write_deltalake(str(path), reordered)
    problems = _problems(manifest)
    assert any("registry" in p and "previous" in p for p in problems)
    # The purge refuses to take its snapshot targets from the altered registry (issue #23
    # item 2): a dropped or redirected entry would silently leave a snapshot unpurged.
    from consentgate import purge

    moved = gated.config.model_copy(update={"lake_root": copy})
    with pytest.raises(CheckFailed, match=r"registry .* hash chain does not verify"):
        purge.targets(moved)


def test_forged_purge_commit_does_not_excuse_a_deleted_file(
    spark: SparkSession, gated: Gated, tmp_path: Path
) -> None:
    """Issue #23 item 3: a snapshot file deleted behind a one-line commit that says
    ``consentgate.purge`` is tampering: no audit entry names its attempt, no key record covers
    its rows. (Before, any commit with that operation excused the removal.)"""
    _, manifest = _copy(gated, tmp_path)
    rel, file = _first_file(manifest, "track_embeddings")
    file.unlink()
    table = file.parent
    newest = max(int(p.stem) for p in (table / "_delta_log").glob("*.json"))
    forged = {
        "consentgate.operation": "consentgate.purge",
        "consentgate.attempt": "forged-attempt",
        "consentgate.run": "purge-20261101T000000Z-00000000",
    }
    actions = [
        {"commitInfo": {"timestamp": 1, "operation": "MERGE", "userMetadata": json.dumps(forged)}},
        {"remove": {"path": rel, "deletionTimestamp": 1, "dataChange": True}},
    ]
    (table / "_delta_log" / f"{newest + 1:020d}.json").write_text(
        "\n".join(json.dumps(a) for a in actions) + "\n"
    )
    problems = _problems(manifest)
    assert any(
        "track_embeddings" in p and "forged-attempt has no audit entry" in p for p in problems
    ), problems
    assert any("track_embeddings" in p and rel in p and "missing" in p for p in problems)


def test_rows_added_to_a_snapshot_after_its_manifest_fail(
    spark: SparkSession, gated: Gated, tmp_path: Path
) -> None:
    """Issue #23 item 3: data appended to a snapshot after its manifest fails verification,
    although every file the manifest lists is intact."""
    _, manifest = _copy(gated, tmp_path)
    _, file = _first_file(manifest, "track_embeddings")
    table = file.parent
    lake.read_table(spark, table).limit(1).write.format("delta").mode("append").save(str(table))
    problems = _problems(manifest)
    assert any(
        "track_embeddings" in p and "commit" in p and "data changed after the manifest" in p
        for p in problems
    ), problems


def _drop_newest_commit(table: Path) -> None:
    """Delete a Delta table's newest commit (and its checksum): what is left is an earlier
    version of the table, consistent in itself."""
    log = table / "_delta_log"
    newest = max(log.glob("*.json"))
    newest.unlink()
    newest.with_suffix(".crc").unlink(missing_ok=True)


def test_registry_truncation_shows_against_its_published_head(
    spark: SparkSession, gated: Gated, tmp_path: Path
) -> None:
    """Issue #23 item 2 (heads): each append publishes the registry's head; a registry whose
    newest entry was removed still chains, but not up to its head: ``verify`` reports it and
    the purge refuses the registry. With the head file rolled back too, only a head kept
    elsewhere (``--expect-head``) shows it."""
    from consentgate import purge
    from consentgate.heads import heads_path, parse_expected, read_heads

    copy, manifest = _copy(gated, tmp_path)  # the first gate's manifest, registry seq 0
    head = read_heads(copy)["registry"]
    assert (head.seq, head.sha256) == (1, gated.second["manifest_sha256"])
    assert gated.second["heads"]["registry"] == head.text()  # in the run's result too
    kept = tmp_path / "heads-kept.json"
    shutil.copy(heads_path(copy), kept)
    assert verify_manifest(manifest)["ok"]
    _drop_newest_commit(registry.registry_path_at(copy))
    assert registry.check_chain(registry.read_entries_at(copy)) == []  # still a chain
    problems = _problems(manifest)
    assert any("registry" in p and "newest entries were removed" in p for p in problems)
    moved = gated.config.model_copy(update={"lake_root": copy})
    with pytest.raises(CheckFailed, match="newest entries were removed"):
        purge.targets(moved)
    # the attacker rolls the head file back as well
    data = json.loads(heads_path(copy).read_text())
    data["registry"] = {"seq": 0, "sha256": gated.first["manifest_sha256"]}
    heads_path(copy).write_text(json.dumps(data))
    assert verify_manifest(manifest)["ok"]
    report = verify_manifest(manifest, expect_head=parse_expected(str(kept), "registry"))
    assert not report["ok"]
    assert any("--expect-head" in p and "seq 1" in p for p in report["problems"])


def test_refused_gate_publishes_nothing(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_small_lake(spark, tmp_path / "small", records=[])
    config = load_config(conf)
    with pytest.raises(CheckFailed, match="0 granted assets") as info:
        gate.run_gate(spark, config, use_case=USE_CASE, model_version="m1")
    assert info.value.exit_code == 1
    state = config.state_dir
    assert not (state / "snapshots").exists()
    assert not list((state / "manifests").glob("*")) if (state / "manifests").exists() else True
    assert registry.read_entries(config) == []
    assert not any((state / "allowlists").glob("*")) if (state / "allowlists").exists() else True
    assert not any((state / "gate_runs").glob("*")) if (state / "gate_runs").exists() else True


def test_back_dated_as_of_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #12: an explicit instant before a recorded revocation (a2's, a day after T0) or
    deletion (a3's, two days after) would cut a snapshot that ignores them: refused, exit 2,
    naming how many later changes, nothing written; at the latest change it is accepted."""
    from tests.lakes import T0

    assets = [
        ("a1", "u1", "US", T0, None),
        ("a2", "u2", "EU", T0, None),
        ("a3", "u3", "US", T0, T0 + dt.timedelta(days=2)),
    ]
    config = load_config(write_small_lake(spark, tmp_path / "small", assets=assets))
    state = config.state_dir
    with pytest.raises(AsOfRefused) as info:
        gate.run_gate(
            spark,
            config,
            use_case=USE_CASE,
            model_version="m-back",
            as_of=T0 + dt.timedelta(hours=12),
        )
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "--as-of" in message and "2 later change(s)" in message, message
    assert "1 consent record(s)" in message and "1 asset deletion(s)" in message, message
    assert not re.search(r"\b(?:a[1-3]|u[1-9]|r[1-4])\b", message), message  # no raw ids
    assert registry.read_entries(config) == []
    for written in ("snapshots", "manifests", "allowlists", "gate_runs"):
        assert not (state / written).exists() or not any((state / written).iterdir()), written
    # A string instant is explicit too; one change later than it is still one too many.
    with pytest.raises(AsOfRefused, match=r"1 later change\(s\)"):
        gate.run_gate(
            spark,
            config,
            use_case=USE_CASE,
            model_version="m-back",
            as_of="2026-01-02T12:00:00Z",
        )
    # An orchestrator's filled-in run start (issue #23 item 7): changes recorded since it mean
    # the instant is stale (a retried evaluate long after validate), refused with its own
    # message; at the latest change it is accepted.
    from consentgate import evaluate

    def filled_in(at: dt.datetime) -> dict[str, Any]:
        return gate.prepare_gate(
            spark,
            config,
            use_case=USE_CASE,
            model_version="m-implicit",
            as_of=at,
            as_of_explicit=False,
        )

    start = T0 + dt.timedelta(hours=12)
    with pytest.raises(AsOfRefused) as stale:
        filled_in(start)
    assert "fixed when the run started" in str(stale.value) and "2 change(s)" in str(stale.value)
    assert "--as-of" not in str(stale.value)
    # Within the grace, what is recorded after the run's start is after its evaluation: not
    # even read (a platform recording consent every second would otherwise refuse every gate).
    sources = evaluate.load_sources(spark, config)
    gate._refuse_back_dated(sources, start, explicit=False, now=start + gate.FILLED_IN_GRACE)
    with pytest.raises(AsOfRefused, match="fixed when the run started"):
        gate._refuse_back_dated(
            sources, start, explicit=False, now=start + gate.FILLED_IN_GRACE + MICRO
        )
    prepared = filled_in(T0 + dt.timedelta(days=2))
    assert prepared["model_version"] == "m-implicit"
    # At the latest recorded change nothing is ignored: the gate runs.
    done = gate.run_gate(
        spark, config, use_case=USE_CASE, model_version="m-at", as_of=T0 + dt.timedelta(days=2)
    )
    assert done["allowlist_assets"] == 1
    assert [e.model_version for e in registry.read_entries(config)] == ["m-at"]


def test_a_future_as_of_is_refused_before_anything_is_taken(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Issue #23 item 7: at a future instant a grant dated before it would outweigh today's
    revocation: refused (exit 2) before the claim is taken, nothing written, whoever chose the
    instant; a few seconds ahead (another machine's clock) is accepted."""
    from consentgate.runtime import now_utc

    config = load_config(write_small_lake(spark, tmp_path / "small"))
    later = now_utc() + gate.FUTURE_SKEW + dt.timedelta(minutes=1)
    for explicit in (True, False):
        with pytest.raises(AsOfRefused, match="later than now") as info:
            gate.prepare_gate(
                spark,
                config,
                use_case=USE_CASE,
                model_version="m-future",
                as_of=later,
                as_of_explicit=explicit,
            )
        assert info.value.exit_code == 2
    assert not gate.claim_path(config, "m-future").exists()
    assert registry.read_entries(config) == []
    done = gate.run_gate(
        spark,
        config,
        use_case=USE_CASE,
        model_version="m-now",
        as_of=now_utc() + dt.timedelta(seconds=30),
    )
    assert [e.model_version for e in registry.read_entries(config)] == ["m-now"]
    assert done["allowlist_assets"] >= 1


# --------------------------------------------------------------------------------------------
# Two gates for one model version (issue #12 item 6)

RACE_SCRIPT = """
import json, sys
from consentgate import gate
from consentgate.config import load_config
from consentgate.errors import ConflictError
config = load_config(sys.argv[1], check_paths=False)
try:
    claim = gate.claim_model_version(config, model_version=sys.argv[2], run_id=sys.argv[3])
except ConflictError as exc:
    print(json.dumps({"won": False, "message": str(exc)}))
else:
    print(json.dumps({"won": True, "pid": claim.pid}))
"""


def _spark_free_config(root: Path) -> Path:
    """A config whose lake has no tables: enough for the claim, which needs only state_dir."""
    root.mkdir(parents=True)
    conf = root / "consentgate.yaml"
    conf.write_text(
        "lake_root: .\n"
        "use_cases: {recommendation: {accepted_policy_versions: ['2026-03']}}\n"
        "datasets:\n"
        "  track_embeddings: {path: derived/track_embeddings, use_case: recommendation,"
        " key: embedding_id, asset_column: asset_id}\n"
    )
    return conf


def test_claim_is_exclusive_across_processes(tmp_path: Path) -> None:
    """Gates racing from separate processes: exactly one gets the model version, every other
    one is told who holds it; only the holder can release it. Spark-free."""
    import subprocess
    import sys

    conf = _spark_free_config(tmp_path / "lake")
    config = load_config(conf, check_paths=False)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, str(conf), "m-race", f"gate-racer-{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = []
    for racer in racers:
        out, _ = racer.communicate(timeout=120)
        assert racer.returncode == 0, out
        results.append(json.loads(out))
    winners = [i for i, r in enumerate(results) if r["won"]]
    assert len(winners) == 1, results
    holder = gate.read_claim(config, "m-race")
    assert holder is not None and holder.run_id == f"gate-racer-{winners[0]}"
    assert holder.pid == results[winners[0]]["pid"] and holder.host and holder.claimed_at
    for loser in (r for r in results if not r["won"]):
        assert "being cut by another gate run" in loser["message"]
        assert holder.run_id in loser["message"] and "wrote nothing" in loser["message"]
        assert str(gate.claim_path(config, "m-race")) in loser["message"]
    # Ours now: refused with exit 1, naming the holder; a non-holder's release is a no-op.
    with pytest.raises(ConflictError, match=holder.run_id) as info:
        gate.claim_model_version(config, model_version="m-race", run_id="gate-late")
    assert info.value.exit_code == 1
    assert not gate.release_claim(config, model_version="m-race", run_id="gate-late")
    assert gate.holds_claim(config, model_version="m-race", run_id=holder.run_id)
    # Another model version is independent.
    gate.claim_model_version(config, model_version="m-other", run_id="gate-late")
    assert gate.release_claim(config, model_version="m-race", run_id=holder.run_id)
    assert gate.read_claim(config, "m-race") is None
    claim = gate.claim_model_version(config, model_version="m-race", run_id="gate-late")
    assert claim.run_id == "gate-late"


def test_unreadable_claim_still_blocks(tmp_path: Path) -> None:
    """A claim file caught between create and write (or damaged) is held by nobody we know:
    it blocks every run and no run may release it. Spark-free."""
    config = load_config(_spark_free_config(tmp_path / "lake"), check_paths=False)
    path = gate.claim_path(config, "m-torn")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    holder = gate.read_claim(config, "m-torn")
    assert holder is not None and holder.run_id == "(unreadable)"
    with pytest.raises(ConflictError, match="being cut by another gate run"):
        gate.claim_model_version(config, model_version="m-torn", run_id="gate-a")
    for run_id in ("gate-a", "(unreadable)"):
        assert not gate.holds_claim(config, model_version="m-torn", run_id=run_id)
        assert not gate.release_claim(config, model_version="m-torn", run_id=run_id)
    assert path.exists()


def test_second_gate_for_a_claimed_model_version_fails_fast(
    spark: SparkSession, tmp_path: Path, pristine_small_lake: Path
) -> None:
    """Issue #12 item 6: a second gate started while the first holds the model version (before
    and after the first cut its snapshot) fails at once, writes nothing, removes nothing; the
    first one's snapshot files all stay and its manifest verifies."""
    from consentgate.runtime import new_run_id

    config = load_config(copy_small_lake(pristine_small_lake, tmp_path / "small"))
    state = config.state_dir
    version = "m-race"
    winner = gate.prepare_gate(spark, config, use_case=USE_CASE, model_version=version)
    holder = gate.read_claim(config, version)
    assert holder is not None and holder.run_id == winner["run_id"]

    def lose() -> str:
        with pytest.raises(ConflictError) as info:
            gate.run_gate(spark, config, use_case=USE_CASE, model_version=version)
        assert info.value.exit_code == 1
        return str(info.value)

    messages = [lose()]
    # A torn earlier attempt of the holder's snapshot step (files, no Delta commit) is its own:
    # the retry starts over instead of failing for good.
    torn = registry.snapshot_path(config, version, "track_embeddings")
    torn.mkdir(parents=True)
    (torn / "part-torn.snappy.parquet").write_bytes(b"half a file")
    snap = gate.snapshot_dataset(spark, config, run=winner, dataset="track_embeddings")
    table = config.resolve(snap["path"])
    assert table == torn and not (torn / "part-torn.snappy.parquet").exists()
    before = sorted(str(p.relative_to(table)) for p in table.rglob("*"))
    assert any(p.endswith(".parquet") for p in before)
    messages.append(lose())
    for message in messages:
        assert "being cut by another gate run" in message and winner["run_id"] in message
        assert str(gate.claim_path(config, version)) in message and "wrote nothing" in message
    # The losers wrote nothing of their own: only the winner's allowlist and work tables.
    assert [p.name for p in (state / "allowlists").iterdir()] == [winner["run_id"]]
    assert [p.name for p in (state / "gate_runs").iterdir()] == [winner["run_id"]]
    assert sorted(str(p.relative_to(table)) for p in table.rglob("*")) == before
    # A rollback by a run that does not hold the claim (a losing run's Airflow rollback task)
    # removes no snapshot, and leaves the claim to its holder.
    other = new_run_id("gate")
    other_allowlist = registry.relative_to_lake(config, gate.allowlist_path(config, other))
    result = gate.rollback_gate(
        config,
        {**winner, "run_id": other, "allowlist": {**winner["allowlist"], "path": other_allowlist}},
    )
    assert result == {
        "run_id": other,
        "published": False,
        "held_claim": False,
        "removed_snapshots": [],
    }
    assert sorted(str(p.relative_to(table)) for p in table.rglob("*")) == before
    assert gate.holds_claim(config, model_version=version, run_id=winner["run_id"])
    # The winner publishes; every file it cut is there and verifies; the claim is released and
    # the registry now refuses the model version for good.
    published = gate.publish_gate(spark, config, run=winner, snapshots=[snap])
    report = verify_manifest(published["manifest_path"])
    assert report["ok"], report["problems"]
    assert report["checked"]["files"] == len(snap["files"]) > 0
    assert gate.read_claim(config, version) is None
    with pytest.raises(CheckFailed, match="already has snapshots"):
        gate.run_gate(spark, config, use_case=USE_CASE, model_version=version)
    assert [e.model_version for e in registry.read_entries(config)] == [version]


def test_failed_gate_removes_only_what_it_created(spark: SparkSession, tmp_path: Path) -> None:
    """Issue #12 item 6: a gate whose second snapshot write fails (something it did not write
    appeared at that path while it ran, here a Delta table written by a process that ignores
    the claim) removes its own first snapshot, its allowlist and work tables, and releases the
    claim - and leaves the table it did not write exactly as it was."""
    import threading
    import time

    import pyarrow as pa
    from deltalake import DeltaTable

    from tests.lakes import T0

    dataset = {
        "use_case": "recommendation",
        "key": "embedding_id",
        "asset_column": "asset_id",
        "retention_days": 365,
        "derived_at_column": "derived_at",
    }
    root = tmp_path / "small"
    conf = write_small_lake(
        spark,
        root,
        conf={
            "datasets": {
                "track_embeddings": {"path": "derived/track_embeddings", **dataset},
                "voice_embeddings": {"path": "derived/voice_embeddings", **dataset},
            }
        },
    )
    lake.write_table(
        spark.createDataFrame(
            [("v1", "a1", T0), ("v3", "a3", T0)],
            "embedding_id string, asset_id string, derived_at timestamp",
        ),
        root / "derived" / "voice_embeddings",
    )
    config = load_config(conf)
    state = config.state_dir
    version = "m-partial"
    foreign = registry.snapshot_path(config, version, "voice_embeddings")
    outcome: dict[str, BaseException] = {}

    def cut() -> None:
        try:
            gate.run_gate(spark, config, use_case=USE_CASE, model_version=version)
        except BaseException as exc:  # the outcome under test
            outcome["error"] = exc

    worker = threading.Thread(target=cut, name="gate-under-test")
    worker.start()
    # Once the run holds the claim and writes its work tables, its leftover check is behind
    # it; its snapshots (track_embeddings first, then voice_embeddings) are still to come.
    deadline = time.monotonic() + 600
    run_id = ""
    while not run_id:
        holder = gate.read_claim(config, version)
        if holder is not None and gate.work_dir(config, holder.run_id).exists():
            run_id = holder.run_id
        else:
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.02)
    foreign.mkdir(parents=True)
    write_deltalake(str(foreign), pa.table({"embedding_id": ["not-this-run"]}))
    before = sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*"))
    worker.join(timeout=600)
    assert not worker.is_alive()

    error = outcome.get("error")
    assert isinstance(error, TableError), repr(error)
    assert "voice_embeddings" in str(error) and f"run {run_id} did not write it" in str(error)
    # What it did not write: untouched.
    assert sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*")) == before
    assert DeltaTable(str(foreign)).to_pyarrow_table().column("embedding_id").to_pylist() == [
        "not-this-run"
    ]
    # What it wrote: gone (its first snapshot, allowlist, work tables, manifest directory).
    assert not registry.snapshot_path(config, version, "track_embeddings").exists()
    assert [p.name for p in registry.snapshots_root(config, version).iterdir()] == [
        "voice_embeddings"
    ]
    for written in ("allowlists", "gate_runs", "manifests"):
        assert not (state / written / run_id).exists(), written
    assert gate.read_claim(config, version) is None
    assert registry.read_entries(config) == []
