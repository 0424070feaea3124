"""The EU AI Act training summary, from a real gate and a real purge on a small lake.

One lake per module, one gate run (Spark is shared on two cores): five assets, two of them
granted (a1 in US, a4 in EU), a2 revoked, a3 granted by someone who is not its owner, a5
granted from a jurisdiction the use case does not allow. Gate ``m1``; then a4's owner revokes
and the nightly purge (erasure window 0) removes a4's row from the snapshot and every
non-granted row from the source dataset, erases the files and writes its receipts. What the
summary says is compared with the manifest, with the audit log, and with counts taken from
the lake itself with Spark before and after the purge. Tamper tests work on copies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession

from consentgate import audit, gate, lake, purge, registry, verifier
from consentgate.canonical import canonical_json, manifest_bytes, manifest_digest
from consentgate.config import Config, load_config
from consentgate.errors import ConsentgateError
from consentgate.manifest import load_manifest
from consentgate.training_summary import (
    FORMAT,
    NOT_RECORDED,
    Figure,
    TrainingSummary,
    TrainingSummaryError,
    audit_entry_digest,
    json_pointer,
    load_record,
    read_audit,
    render_markdown,
    resolve_pointer,
    training_summary,
    write_summary,
)
from tests.lakes import RECORDS_DDL, T0, write_small_lake

pytestmark = pytest.mark.slow

UTC = dt.UTC
REPO = Path(__file__).resolve().parents[1]
AS_OF = dt.datetime(2026, 6, 1, tzinfo=UTC)
REVOKED_AT = dt.datetime(2026, 6, 2, tzinfo=UTC)
PURGE_AS_OF = dt.datetime(2026, 6, 3, tzinfo=UTC)
DATASET = "track_embeddings"
SNAPSHOT = f"snapshot/m1/{DATASET}"


def _record(rid: str, user: str, asset: str, status: str, at: dt.datetime = T0) -> tuple[Any, ...]:
    return (rid, user, asset, "recommendation", status, "2026-03", None, at, None)


RECORDS = [
    _record("r1", "u1", "a1", "granted"),
    _record("r2", "u2", "a2", "granted"),
    _record("r3", "u2", "a2", "revoked", T0 + dt.timedelta(days=1)),
    _record("r4", "u9", "a3", "granted"),  # not the owner's: never grants
    _record("r5", "u4", "a4", "granted"),
    _record("r6", "u5", "a5", "granted"),  # CN: not an allowed jurisdiction
]
ASSETS = [
    ("a1", "u1", "US", T0, None),
    ("a2", "u2", "EU", T0, None),
    ("a3", "u3", "US", T0, None),
    ("a4", "u4", "EU", T0, None),
    ("a5", "u5", "CN", T0, None),
]
USE_CASES = {
    "recommendation": {
        "accepted_policy_versions": ["2026-03"],
        "jurisdictions": {"allow": ["EU", "US"]},
    }
}


@dataclass
class Lake:
    """The module's lake after the gate and the purge, with counts taken from it by Spark."""

    root: Path
    config: Config
    gated: dict[str, Any]
    purged: dict[str, Any]
    counts: dict[str, int]

    @property
    def manifest(self) -> dict[str, Any]:
        return load_manifest(self.gated["manifest_path"])


def _rows(path: Path, version: int | None = None) -> list[dict[str, Any]]:
    """A small table's rows as a Delta reader sees them (deletion vectors applied), read with
    delta-rs: a reader independent of the manifest, and no Spark job."""
    table = verifier.open_delta(path, version=version)
    return [row for batch in verifier.scan(table) for row in batch.to_pylist()]


@pytest.fixture(scope="module")
def lake_after(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    root = tmp_path_factory.mktemp("training_summary") / "lake"
    conf_path = write_small_lake(
        spark, root, records=RECORDS, assets=ASSETS, conf={"use_cases": USE_CASES}
    )
    lake.write_table(
        spark.createDataFrame(
            [("e4", "a4", T0)], "embedding_id string, asset_id string, derived_at timestamp"
        ),
        root / "derived" / DATASET,
        mode="append",
    )
    config = load_config(conf_path)
    gated = gate.run_gate(spark, config, use_case="recommendation", model_version="m1", as_of=AS_OF)
    published = load_manifest(gated["manifest_path"])
    snap = published["snapshots"][DATASET]
    allow = published["allowlist"]["table"]
    snapshot_path = root / snap["path"]
    source_path = config.dataset_path(DATASET)
    # Counted from the lake, not the manifest, before the purge erases the published files.
    snapshot_rows = _rows(snapshot_path, int(snap["version"]))
    allowlist_rows = _rows(root / allow["path"], int(allow["version"]))
    counts = {
        "snapshot_rows": len(snapshot_rows),
        "snapshot_assets": len({r["asset_id"] for r in snapshot_rows}),
        "allowlist_rows": len(allowlist_rows),
        "assets_rows": len(_rows(config.table_path("assets"))),
        "source_rows_before": len(_rows(source_path)),
    }
    for row in allowlist_rows:
        key = f"granted_{row['jurisdiction']}"
        counts[key] = counts.get(key, 0) + 1
    # a4's owner withdraws after the gate; the nightly purge follows.
    lake.write_table(
        spark.createDataFrame([_record("r7", "u4", "a4", "revoked", REVOKED_AT)], RECORDS_DDL),
        config.table_path("consent_records"),
        mode="append",
    )
    purged = purge.run_purge(spark, config, as_of=PURGE_AS_OF)
    counts["snapshot_rows_after"] = len(_rows(snapshot_path))
    counts["source_rows_after"] = len(_rows(source_path))
    counts["purge_runs"] = sum(
        1
        for r in _rows(root / "_consentgate" / "audit")
        if r["kind"] == "purge" and "datasets" in json.loads(r["payload_json"])
    )
    yield Lake(root, config, gated, purged, counts)


@pytest.fixture(scope="module")
def summary(lake_after: Lake) -> TrainingSummary:
    return training_summary(lake_after.root, "m1")


def _copy(lake_after: Lake, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the lake and the path of m1's manifest in it."""
    copy = tmp_path / "lake"
    shutil.copytree(lake_after.root, copy)
    return copy, copy / Path(lake_after.gated["manifest_path"]).relative_to(lake_after.root)


# --------------------------------------------------------------------------------------------
# What the summary says


def test_user_data_figures_match_the_manifest_and_the_lake(
    lake_after: Lake, summary: TrainingSummary
) -> None:
    manifest, counts = lake_after.manifest, lake_after.counts
    assert summary.model_version == "m1" and summary.use_case == "recommendation"
    assert summary.run_id == manifest["run_id"] == lake_after.gated["run_id"]
    assert summary.manifest_sha256 == manifest["manifest_sha256"] == manifest_digest(manifest)
    assert summary.registry_seq == 0 and summary.registry_entries == 1

    def value(key: str) -> Any:
        return summary.figure(key).value

    assert value("user_data.used") == "yes"
    assert value("user_data.use_case") == "recommendation"
    assert value("user_data.datasets") == (DATASET,)
    assert value("user_data.opt_in.accepted_policy_versions") == ("2026-03",)
    assert value("user_data.opt_in.jurisdictions") == {"allow": ("EU", "US")}
    # allowlist: a1 and a4, counted in the allowlist table itself
    assert value("user_data.assets.allowlisted") == manifest["allowlist"]["asset_count"] == 2
    assert counts["allowlist_rows"] == 2
    assert value("user_data.assets.evaluated") == manifest["evaluation"]["assets"]
    assert value("user_data.assets.evaluated") == counts["assets_rows"] == 5
    granted = value("user_data.opt_in.granted_by_jurisdiction")
    assert granted == {
        j: c.get("granted", 0) for j, c in manifest["evaluation"]["by_jurisdiction"].items()
    }
    assert {j: n for j, n in granted.items() if n} == {"EU": 1, "US": 1}
    assert granted["CN"] == 0  # a5's grant: its jurisdiction is not allowed
    assert counts["granted_EU"] == counts["granted_US"] == 1
    snap = manifest["snapshots"][DATASET]
    assert value(f"user_data.dataset.{DATASET}.rows") == snap["rows"] == counts["snapshot_rows"]
    assert value(f"user_data.dataset.{DATASET}.assets") == snap["assets"]
    assert snap["assets"] == counts["snapshot_assets"] == 2
    assert value(f"user_data.dataset.{DATASET}.source") == {
        "keys_evaluated": 4,
        "path": "derived/track_embeddings",
        "version": snap["source"]["version"],
    }
    assert value(f"user_data.dataset.{DATASET}.columns") == (
        "embedding_id: string",
        "asset_id: string",
        "derived_at: timestamp",
    )
    assert value("user_data.dates.consent_evaluated_at") == "2026-06-01T00:00:00.000000Z"
    assert value("user_data.dates.published_at") == manifest["created_at"]
    assert value("user_data.allowlist_root") == manifest["allowlist"]["merkle_root"]


def test_gate_purge_and_erasure_figures_match_the_audit_log_and_the_lake(
    lake_after: Lake, summary: TrainingSummary
) -> None:
    manifest, counts, purged = lake_after.manifest, lake_after.counts, lake_after.purged

    def value(key: str) -> Any:
        return summary.figure(key).value

    assert value("opt_outs.gate.assets_excluded") == manifest["exclusions"]["assets"]
    assert value("opt_outs.gate.assets_excluded") == {
        "jurisdiction_blocked": 1,
        "no_consent_record": 1,
        "revoked": 1,
    }
    assert value(f"opt_outs.gate.rows_excluded.{DATASET}") == {
        "no_consent_record": 1,
        "revoked": 1,
    }
    assert value(f"opt_outs.gate.retention.{DATASET}") == {
        "derived_at_column": "derived_at",
        "retention_days": 365,
    }
    assert value("opt_outs.gate.audited")["outcome"] == "published"
    # the purge, measured: one run since the gate, per reason, and what the tables lost
    assert value("opt_outs.purge.runs_since_gate") == counts["purge_runs"] == 1
    assert value("opt_outs.purge.last_run_at") is not None
    snapshot_removed = value("opt_outs.purge.snapshot_rows_removed")
    assert snapshot_removed == {"revoked": 1} == purged["datasets"][SNAPSHOT]["reasons"]
    assert sum(snapshot_removed.values()) == counts["snapshot_rows"] - counts["snapshot_rows_after"]
    source_removed = value("opt_outs.purge.source_rows_removed")
    assert source_removed == {"no_consent_record": 1, "revoked": 2}
    assert sum(source_removed.values()) == (
        counts["source_rows_before"] - counts["source_rows_after"]
    )
    assert value("opt_outs.purge.failed_runs") == 0
    # the erasure: the window the receipts carry, both receipts verified, every key checked
    receipts = purged["erasure"]["datasets"]
    assert value("opt_outs.erasure.window_hours") == lake_after.config.erasure.window_hours == 0
    assert value("opt_outs.erasure.receipts") == {"verified": 2} and len(receipts) == 2
    assert value("opt_outs.erasure.keys_checked") == sum(
        int(r["keys_checked"]) for r in receipts.values()
    )
    assert value("opt_outs.erasure.keys_checked") == 4  # e2, e3, e4 and the snapshot's e4


def test_what_the_record_does_not_hold_is_said_not_invented(summary: TrainingSummary) -> None:
    assert set(summary.not_recorded) == {
        "user_data.services",
        "user_data.content_types",
        "user_data.opt_in.granted_by_policy_version",
        "user_data.creators",
        "user_data.dates.first_consent",
        "user_data.dates.last_consent",
        "user_data.dates.collection_period",
        "opt_outs.latency",
        "opt_outs.machine_readable_signals",
    }
    for key in summary.not_recorded:
        fig = summary.figure(key)
        assert fig.value is None and fig.cites == ()
        assert fig.note is not None and fig.note.startswith(f"{NOT_RECORDED}: ")


def _entry_document(entry: Any) -> dict[str, Any]:
    """An audit entry as the document its citations' JSON pointers point into."""
    return {
        "seq": entry.seq,
        "at": entry.at,
        "kind": entry.kind,
        "run_id": entry.run_id,
        "payload": entry.payload,
    }


def _cited_audit_values(fig: Figure, entries: dict[int, Any]) -> list[Any]:
    """The values the figure's audit citations point at (the head citation excepted)."""
    values = []
    for cite in fig.cites:
        if cite.source != "audit" or cite.pointer in ("", None):
            continue
        entry = entries[cite.seq]
        values.append(resolve_pointer(_entry_document(entry), cite.pointer))
    return values


def _check_audit_derivation(fig: Figure, entries: dict[int, Any]) -> bool:
    """Issue #26 item 6: an audit-derived figure equals what its cited values give, recomputed
    here from the cited entries alone (sums of counts or of per-reason counts, counts per
    value), not only "the pointer leads somewhere"."""
    if fig.derivation is None or not any(c.source == "audit" for c in fig.cites):
        return False
    values = _cited_audit_values(fig, entries)
    if fig.derivation.startswith("sum over the cited"):
        if isinstance(fig.value, dict):
            totals: dict[str, int] = {}
            for reasons in values:
                for reason, n in reasons.items():
                    totals[reason] = totals.get(reason, 0) + int(n)
            assert fig.value == totals, fig.key
        else:
            assert fig.value == sum(int(v) for v in values), fig.key
    elif fig.derivation == "count of the cited receipts per result":
        counts: dict[str, int] = {}
        for value in values:
            counts[str(value)] = counts.get(str(value), 0) + 1
        assert fig.value == counts, fig.key
    else:
        return False
    return True


def test_every_figure_cites_sealed_evidence_that_holds_it(
    lake_after: Lake, summary: TrainingSummary
) -> None:
    record = load_record(lake_after.root, "m1")
    assert record.audit is not None
    entries = {e.seq: e for e in record.audit}
    manifest = lake_after.manifest
    recomputed = set()
    for fig in summary.figures():
        if not fig.recorded:
            continue
        for cite in fig.cites:
            if cite.source == "manifest":
                assert cite.sha256 == manifest["manifest_sha256"], fig.key
                held = resolve_pointer(manifest, cite.pointer)
                if fig.derivation is None and len(fig.cites) == 1:
                    assert json.loads(json.dumps(held)) == json.loads(
                        json.dumps(fig.to_json()["value"])
                    ), fig.key
            elif cite.source == "registry":
                assert (cite.seq, cite.sha256) == (0, record.link.manifest_sha256), fig.key
                assert resolve_pointer(dataclasses.asdict(record.link), cite.pointer) == fig.value
            else:
                assert cite.seq is not None
                entry = entries[cite.seq]
                assert cite.sha256 == entry.entry_sha256, fig.key
                resolve_pointer(_entry_document(entry), cite.pointer)  # leads somewhere
        if _check_audit_derivation(fig, entries):
            recomputed.add(fig.key)
    assert {
        "opt_outs.purge.snapshot_rows_removed",
        "opt_outs.erasure.receipts",
        "opt_outs.erasure.keys_checked",
    } <= recomputed, recomputed
    # a measured figure cites the run it was counted from, and the head that seals the log
    removed = summary.figure("opt_outs.purge.snapshot_rows_removed")
    pointer = json_pointer("payload", "datasets", SNAPSHOT, "reasons")
    assert pointer == "/payload/datasets/snapshot~1m1~1track_embeddings/reasons"
    assert any(c.pointer == pointer for c in removed.cites)
    assert removed.cites[-1].sha256 == summary.audit_head_sha256


def test_markdown_names_the_sections_the_digest_and_the_gaps(summary: TrainingSummary) -> None:
    text = render_markdown(summary)
    assert "## §2.4 User data" in text
    assert "## §3.1 Measures taken to honour opt-outs" in text
    assert summary.manifest_sha256 in text and summary.manifest_path in text
    assert "| Assets opted in (allowlist) | 2 | manifest `/allowlist/asset_count` |" in text
    assert (
        "| Rows removed from this model's snapshots since the gate, per reason | revoked: 1 |"
        in (text)
    )
    assert (
        "| Services or products the user data was collected through | not recorded "
        "| not recorded |" in text
    )
    assert "## Not recorded" in text
    assert "- audit entry #" in text
    assert str(summary.audit_head_sha256) in text
    for key in summary.not_recorded:
        assert summary.figure(key).label in text
    # raw ids never reach a published summary
    for raw in ("a1", "a2", "a3", "a4", "a5", "u1", "u4", "e4", "r7"):
        assert f" {raw} " not in text and f"`{raw}`" not in text


def test_json_round_trips(summary: TrainingSummary, tmp_path: Path) -> None:
    data = json.loads(json.dumps(summary.to_json()))
    assert data["format"] == FORMAT
    assert data["not_recorded"] == list(summary.not_recorded)
    assert TrainingSummary.from_json(data) == summary
    assert canonical_json(TrainingSummary.from_json(data).to_json()) == canonical_json(data)
    written = write_summary(summary, tmp_path)
    assert written["markdown"].read_text() == render_markdown(summary)
    assert TrainingSummary.from_json(json.loads(written["json"].read_text())) == summary
    data["not_recorded"] = []
    with pytest.raises(TrainingSummaryError, match="not_recorded"):
        TrainingSummary.from_json(data)


def test_audit_digest_agrees_with_the_audit_log(lake_after: Lake) -> None:
    entries = read_audit(lake_after.root)
    assert entries is not None and [e.kind for e in entries][:1] == ["gate"]
    previous = ""
    for entry in entries:
        kwargs: dict[str, Any] = {
            "seq": entry.seq,
            "at": entry.at,
            "kind": entry.kind,
            "run_id": entry.run_id,
            "payload": entry.payload,
            "previous": previous,
        }
        assert audit_entry_digest(**kwargs) == audit.entry_digest(**kwargs) == entry.entry_sha256
        previous = entry.entry_sha256


def test_a_removed_audit_log_fails_the_summary_closed(lake_after: Lake, tmp_path: Path) -> None:
    """Issue #23 item 2: the summary used to render with "no audit log" (its opt-out figures
    not recorded) when the log of a gated and purged lake was deleted; a deleted log is now
    named, not read as "nothing happened" (``consentgate.state``)."""
    root, _ = _copy(lake_after, tmp_path)
    shutil.rmtree(root / "_consentgate" / "audit")
    with pytest.raises(TrainingSummaryError) as raised:
        training_summary(root, "m1")
    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert "audit log _consentgate/audit is missing" in message
    assert "_consentgate/registry" in message and "_consentgate/manifests" in message


# --------------------------------------------------------------------------------------------
# Fail closed


def test_unknown_model_version_fails_closed(lake_after: Lake) -> None:
    with pytest.raises(TrainingSummaryError) as raised:
        training_summary(lake_after.root, "m2")
    assert raised.value.exit_code == 2
    assert "'m2' is not in the registry" in str(raised.value)
    assert "'m1'" in str(raised.value)


def test_lake_without_registry_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(TrainingSummaryError, match="has no entries") as raised:
        training_summary(tmp_path, "m1")
    assert raised.value.exit_code == 2


def _reseal(data: dict[str, Any]) -> bytes:
    data["allowlist"]["asset_count"] += 1
    return manifest_bytes(data)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_reseal, "hashes to [0-9a-f]{64}, but the registry records"),
        (lambda d: canonical_json(d).replace(b'"asset_count":2', b'"asset_count":3'), "hashes"),
        (lambda d: canonical_json(d) + b"\n", "not in RFC 8785 canonical form"),
        (lambda d: canonical_json(d)[:-10], "is not JSON"),
    ],
    ids=["resealed", "edited", "reformatted", "truncated"],
)
def test_tampered_manifest_fails_closed(
    lake_after: Lake, tmp_path: Path, edit: Any, expected: str
) -> None:
    root, manifest_path = _copy(lake_after, tmp_path)
    original = manifest_path.read_bytes()
    manifest_path.write_bytes(edit(json.loads(original)))
    assert manifest_path.read_bytes() != original
    with pytest.raises(TrainingSummaryError, match=expected) as raised:
        training_summary(root, "m1")
    assert raised.value.exit_code == 2
    assert str(manifest_path) in str(raised.value) and "seq 0" in str(raised.value)


def test_missing_manifest_fails_closed(lake_after: Lake, tmp_path: Path) -> None:
    root, manifest_path = _copy(lake_after, tmp_path)
    manifest_path.unlink()
    with pytest.raises(TrainingSummaryError, match="cannot be read") as raised:
        training_summary(root, "m1")
    assert str(manifest_path) in str(raised.value)


def test_broken_registry_chain_fails_closed(
    spark: SparkSession, lake_after: Lake, tmp_path: Path
) -> None:
    root, _ = _copy(lake_after, tmp_path)
    config = load_config(root / "consentgate.yaml")
    forged = registry.RegistryEntry(
        seq=1,
        run_id="gate-forged",
        use_case="recommendation",
        model_version="m9",
        manifest_path="_consentgate/manifests/gate-forged/manifest.json",
        manifest_sha256="f" * 64,
        previous_manifest_sha256="0" * 64,  # not m1's digest
        created_at=dt.datetime.now(UTC),
    )
    lake.write_table(
        spark.createDataFrame([forged.to_row()], registry.REGISTRY_SCHEMA),
        registry.registry_path(config),
        mode="append",
    )
    with pytest.raises(TrainingSummaryError, match="chain broken") as raised:
        training_summary(root, "m1")  # m1's own entry is intact: the chain is not
    assert "registry" in str(raised.value) and "seq 1" in str(raised.value)
    assert raised.value.exit_code == 2


def test_broken_audit_chain_fails_closed(
    spark: SparkSession, lake_after: Lake, tmp_path: Path
) -> None:
    root, _ = _copy(lake_after, tmp_path)
    config = load_config(root / "consentgate.yaml")
    entries = read_audit(root)
    assert entries is not None
    row = (
        len(entries),
        dt.datetime.now(UTC),
        "purge",
        "purge-forged",
        json.dumps({"datasets": {SNAPSHOT: {"reasons": {"revoked": 100}}}}),
        "0" * 64,  # not the head's digest
        "1" * 64,
    )
    lake.write_table(
        spark.createDataFrame([row], audit.SCHEMA),
        audit.audit_path(config),
        mode="append",
    )
    with pytest.raises(ConsentgateError, match=f"seq {len(entries)}") as raised:
        training_summary(root, "m1")
    assert "audit log" in str(raised.value) and "hash chain broken" in str(raised.value)


# --------------------------------------------------------------------------------------------
# No Spark, no JVM


_SUMMARISE_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from consentgate.training_summary import render_markdown, training_summary
    summary = training_summary(sys.argv[1], "m1")
    render_markdown(summary)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"pyspark", "py4j", "delta"})
    print(json.dumps({"loaded": loaded, "allowlisted": summary.figure(
        "user_data.assets.allowlisted").value}))
    """
)


def test_summary_loads_no_pyspark_and_needs_no_java(lake_after: Lake) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env["JAVA_HOME"] = "/nonexistent-java-home"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", _SUMMARISE_IN_A_FRESH_PROCESS, str(lake_after.root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": [], "allowlisted": 2}


def test_config_of_the_lake_is_not_what_the_summary_reads(lake_after: Lake, tmp_path: Path) -> None:
    """Changing the config after the gate changes nothing: the summary is the record's."""
    root, _ = _copy(lake_after, tmp_path)
    conf = yaml.safe_load((root / "consentgate.yaml").read_text())
    conf["use_cases"]["recommendation"]["accepted_policy_versions"] = ["2027-01"]
    conf["erasure"] = {"window_hours": 999}
    (root / "consentgate.yaml").write_text(yaml.safe_dump(conf))
    again = training_summary(root, "m1")
    assert again.figure("user_data.opt_in.accepted_policy_versions").value == ("2026-03",)
    assert again.figure("opt_outs.erasure.window_hours").value == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``consentgate`` in a child process that could not start a JVM (JAVA_HOME points nowhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env["JAVA_HOME"] = "/nonexistent-java-home"
    return subprocess.run(
        [sys.executable, "-c", "from consentgate.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_cli_prints_json_markdown_and_writes_both(lake_after: Lake, tmp_path: Path) -> None:
    conf = str(lake_after.root / "consentgate.yaml")
    as_json = _cli("training-summary", "--conf", conf, "--model-version", "m1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == training_summary(lake_after.root, "m1").to_json()

    out = tmp_path / "out"
    out.mkdir()
    md = _cli("training-summary", "--conf", conf, "--model-version", "m1", "--out", str(out))
    assert md.returncode == 0, md.stderr
    assert "§2.4" in md.stdout and "§3.1" in md.stdout
    assert (out / "training-summary-m1.md").read_text() == md.stdout
    assert json.loads((out / "training-summary-m1.json").read_text()) == json.loads(as_json.stdout)


def test_cli_unknown_model_version_exits_2_naming_it(lake_after: Lake) -> None:
    conf = str(lake_after.root / "consentgate.yaml")
    done = _cli("training-summary", "--conf", conf, "--model-version", "m9", "--json")
    assert done.returncode == 2, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is False and "m9" in result["error"]
