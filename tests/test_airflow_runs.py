"""Whole DAG runs with ``dag.test()`` on a small demo lake, in ``local`` mode.

Each DAG run is real Airflow (metadata DB, XComs, mapped tasks, asset events), real Spark and
real Delta tables; only the scheduler is replaced by ``dag.test()``'s in-process loop.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from consentgate import lake
from tests.airflow_fixtures import (
    AS_OF,
    DAGS,
    MODEL_VERSION,
    USE_CASE,
    Runs,
    airflow_errors,
    conf_env,
    copy_lake,
    openlineage_task_runs,
    write_conf,
)

pytestmark = pytest.mark.slow


def lake_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under the lake with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_gate_publishes_a_verifying_manifest_and_an_asset(
    spark: SparkSession, local_runs: Runs
) -> None:
    from consentgate import registry
    from consentgate.config import load_config
    from consentgate.manifest import verify_manifest

    gate = local_runs.gate
    assert gate.ok, gate.task_states
    assert set(gate.task_states) >= {"validate", "evaluate", "manifest", "verify", "rollback"}
    datasets = gate.results["evaluate"]
    assert datasets == ["gen_shards", "stems"]  # every dataset of the use case
    assert [s["dataset"] for s in gate.results["snapshot"]] == datasets  # one mapped task each
    published = gate.results["verify"]
    assert published["verification"]["ok"] is True
    assert published["model_version"] == MODEL_VERSION and published["use_case"] == USE_CASE
    manifest = Path(published["manifest_path"])
    assert manifest.is_file()
    assert verify_manifest(manifest)["ok"] is True  # re-checked outside Airflow too
    config = load_config(local_runs.conf)
    entry = registry.find_entry(config, model_version=MODEL_VERSION)
    assert entry is not None and entry.manifest_sha256 == published["manifest_sha256"]
    assert gate.results["rollback"]["published"] is True  # rollback never touches a published run
    for name, path in published["snapshots"].items():
        assert lake.table_inventory(path)["rows"] == published["snapshot_rows"][name]
    assert [e["name"] for e in gate.asset_events] == [f"consentgate/snapshot/{MODEL_VERSION}"]
    extra = gate.asset_events[0]["extra"]
    assert extra["manifest_sha256"] == published["manifest_sha256"]
    assert extra["manifest_path"] == published["manifest_path"]
    # the trainer gets each snapshot's path and the version it was sealed at (issue #23 item 3)
    sealed = {
        s["name"]: s["version"] for s in json.loads(manifest.read_text())["snapshots"].values()
    }
    assert extra["snapshot_versions"] == published["snapshot_versions"] == sealed
    assert set(extra["snapshots"]) == set(sealed)


def test_nightly_purge_removes_rows_from_datasets_and_snapshots(
    spark: SparkSession, local_runs: Runs
) -> None:
    from consentgate import audit
    from consentgate.config import load_config

    purge = local_runs.purge
    assert purge.ok, purge.task_states
    config = load_config(local_runs.conf)
    results = {r["name"]: r for r in purge.results["purge_dataset"]}
    snapshot_names = {f"snapshot/{MODEL_VERSION}/gen_shards", f"snapshot/{MODEL_VERSION}/stems"}
    # one mapped task per configured dataset and per registered snapshot
    assert set(results) == set(config.datasets) | snapshot_names
    assert purge.results["decide"] == [*config.datasets, *sorted(snapshot_names)]
    for name in config.datasets:
        result = results[name]
        assert result["rows_deleted"] > 0, name  # the demo lake plants withdrawals everywhere
        assert result["rows_after"] == result["rows_before"] - result["rows_deleted"]
        assert sum(result["reasons"].values()) == result["rows_deleted"]
        assert lake.table_inventory(config.dataset_path(name))["rows"] == result["rows_after"]
        assert lake.table_version(config.dataset_path(name)) == result["version_after"]
    # the snapshot was cut at the same instant under the same rules: nothing left to remove
    for name in snapshot_names:
        assert results[name]["rows_deleted"] == 0
    summary = purge.results["audit_summary"]
    assert summary["rows_deleted"] == sum(r["rows_deleted"] for r in results.values())
    assert summary["audit"]["chain"]["ok"] is True
    assert purge.results["erase_and_verify"]["ok"] is True
    # an Asset event for each table the purge changed, and only those
    changed = sorted(n for n, r in results.items() if r["rows_deleted"] > 0)
    assert sorted(e["name"] for e in purge.asset_events) == [
        f"consentgate/dataset/{n}" for n in changed
    ]
    assert all(e["task_id"] == "purge_dataset" for e in purge.asset_events)
    # the same audit entry as `consentgate purge` writes
    entries = audit.events(spark, config, kind="purge")  # (later nights' entries follow)
    (entry,) = [
        e for e in entries if e["run_id"] == summary["run_id"] and "datasets" in e["payload"]
    ]
    assert entry["payload"]["datasets"].keys() == results.keys()
    assert audit.verify_chain(spark, config)["ok"] is True


def test_one_run_id_links_the_dag_run_manifest_and_audit_entries(
    spark: SparkSession, local_runs: Runs
) -> None:
    """Issue #24 item 4: each DAG run's consentgate id is derived from the DAG run
    (:func:`consentgate.runtime.new_run_id` with its origin), so it is the same in every task,
    the manifest and its directory, and the audit entries, and the manifest and the entries
    name the DAG run."""
    from consentgate import audit
    from consentgate.config import load_config
    from consentgate.runtime import dag_run_origin, new_run_id, parse_instant

    config = load_config(local_runs.conf)
    entries = audit.events(spark, config)
    for outcome, kind in ((local_runs.gate, "gate"), (local_runs.purge, "purge")):
        run = outcome.results["validate"]
        expected = new_run_id(
            kind,
            at=parse_instant(run["as_of"]),
            origin=dag_run_origin(outcome.dag_id, outcome.run_id),
        )
        assert run["run_id"] == expected, kind
        named = {"dag_id": outcome.dag_id, "dag_run_id": outcome.run_id}
        mine = [e for e in entries if e["run_id"] == expected]
        assert {e["kind"] for e in mine} >= {kind}, kind
        if kind == "purge":
            (entry,) = [e for e in mine if e["kind"] == "purge" and "datasets" in e["payload"]]
            assert entry["payload"]["orchestration"] == named
            assert outcome.results["audit_summary"]["run_id"] == expected
        else:
            published = outcome.results["verify"]
            assert published["run_id"] == expected
            manifest_path = Path(published["manifest_path"])
            assert manifest_path.parent.name == expected
            manifest = json.loads(manifest_path.read_text())
            assert manifest["run_id"] == expected and manifest["orchestration"] == named
    # The next night (the certificate answered it) is another DAG run, with another id.
    night = local_runs.quiet.results["validate"]["run_id"]
    assert night != local_runs.purge.results["validate"]["run_id"]


def test_nightly_purge_decides_consent_once_and_leaves_no_work_tables(
    local_runs: Runs,
) -> None:
    """Issue #21 item 2: the run's ``decide`` task decides every table in one call of the real
    ``decide_run`` (counted by the session fixture), each mapped ``purge_dataset`` task only
    loads its table's decision, and ``audit_summary`` removes the run's work tables."""
    from consentgate import purge as purge_module
    from consentgate.config import load_config

    purge = local_runs.purge
    assert purge.ok, purge.task_states
    targets = purge.results["decide"]
    assert len(purge.results["purge_dataset"]) == len(targets) > 1
    # one decision for the run, covering every table (a task deciding again would add one)
    assert local_runs.purge_decisions == [targets]
    plan = purge.results["decide.plan"]
    assert plan["run_id"] == purge.results["audit_summary"]["run_id"]
    assert sorted(plan["tables"]) == sorted(targets)
    results = {r["name"]: r for r in purge.results["purge_dataset"]}
    for name, table in plan["tables"].items():
        assert "error" not in table, name
        # nothing moved between the decision and the purge: the task purged what was decided
        assert table["rows_deleted"] == results[name]["rows_deleted"], name
        assert table["reasons"] == results[name]["reasons"], name
        assert table["version"] == results[name]["version_before"], name
    config = load_config(local_runs.conf)
    assert not purge_module.run_dir(config, plan["run_id"]).exists()
    runs_root = config.state_dir / "purge_runs"
    assert not runs_root.exists() or list(runs_root.iterdir()) == []


def test_the_purge_certifies_the_lake_it_left_and_the_next_night_needs_no_spark(
    spark: SparkSession, local_runs: Runs
) -> None:
    """The purge removes rows, and since only its own commits changed the lake it certifies
    it in ``audit_summary``; the next night ends at ``quiescent``: every later task skipped,
    the night recorded in the audit log (each table's receipt and the purge entry, saying
    since when the lake is unchanged), nothing committed to any table."""
    from consentgate import audit, quiescence
    from consentgate.config import load_config

    config = load_config(local_runs.conf)
    purge, quiet = local_runs.purge, local_runs.quiet
    assert purge.ok and quiet.ok, (purge.task_states, quiet.task_states)
    summary = purge.results["audit_summary"]
    assert summary["rows_deleted"] > 0 and summary["certified"] is True
    # no certificate yet: the run went on, from the start state it certified against
    # (digests and versions: the fingerprint, one digest per input, versions of the targets)
    raw = purge.results["quiescent.started_from"]
    started = raw if isinstance(raw, dict) else json.loads(raw)
    assert set(started) == {"fingerprint", "inputs", "versions"}
    assert len(started["fingerprint"]) == 64
    assert set(started["versions"]) <= set(started["inputs"])
    assert "quiescent.night" not in purge.results

    assert quiet.task_states["validate"] == "success"
    assert quiet.task_states["quiescent"] == "success"
    assert "quiescent.started_from" not in quiet.results
    skipped = {"decide", "purge_dataset", "erase_and_verify", "audit_summary"}
    assert {t: quiet.task_states[t] for t in skipped} == dict.fromkeys(skipped, "skipped")
    night = quiet.results["quiescent.night"]
    certificate = quiescence.load(config)
    assert certificate is not None and certificate["run_id"] == summary["run_id"]
    assert night["unchanged_since"] == certificate["certified_at"]
    assert set(night["datasets"]) == set(purge.results["decide"])
    assert all(d["rows_deleted"] == 0 for d in night["datasets"].values())
    assert not quiet.asset_events
    entries = audit.events(spark, config)
    runs = {e["run_id"] for e in entries if e["kind"] == "purge"}
    assert night["run_id"] in runs and summary["run_id"] in runs
    last = entries[-1]
    assert last["kind"] == "purge" and last["run_id"] == night["run_id"]
    assert last["payload"]["unchanged_since"] == certificate["certified_at"]
    assert audit.verify_chain(spark, config)["ok"] is True


def test_successful_runs_log_no_airflow_error(local_runs: Runs) -> None:
    """Issue #24 item 3: a gate and a purge that succeed make Airflow log no error. Iterating
    a mapped task's results (the purge's ``erase_and_verify`` and ``audit_summary``, the
    gate's ``manifest``) made the SDK client log "XCom not found" once per read, past the
    last result; they read them whole with ``airflow_tasks.mapped_results``."""
    assert local_runs.gate.ok and local_runs.purge.ok
    assert local_runs.purge.results["purge_dataset"] and local_runs.gate.results["snapshot"]
    # nor "Variable not found": the runs' config comes from env CONSENTGATE_CONF, read first
    errors = [
        (e.get("event"), e.get("logger"), e.get("task_id")) for e in local_runs.airflow_errors
    ]
    assert errors == []


def test_steps_send_openlineage_events_nested_under_their_airflow_task(
    spark: SparkSession, local_runs: Runs
) -> None:
    """Issue #25 item 1: in Airflow, the steps that finish a flow's work send its START and
    COMPLETE (consentgate.airflow_lineage), each with the parent run facet of the task that
    ran it and the DAG run as root, as the Airflow OpenLineage provider names them; valid
    OpenLineage with our facet, and no id of the lake in any event."""
    from consentgate.config import load_config
    from tests.test_openlineage_events import by_job, check_event

    events = local_runs.lineage_events
    jobs = by_job(events)
    assert sorted(jobs) == ["consentgate.erase", "consentgate.gate", "consentgate.purge"]
    purged = {r["name"]: r for r in local_runs.purge.results["purge_dataset"]}
    tasks = {
        **{("gate", *key): ids for key, ids in openlineage_task_runs(local_runs.gate).items()},
        **{("purge", *key): ids for key, ids in openlineage_task_runs(local_runs.purge).items()},
    }
    parents: dict[tuple[str, str], list[str]] = {}
    for runs in jobs.values():
        by_run: dict[str, list[dict[str, Any]]] = {}
        for event in runs:
            by_run.setdefault(event["run"]["runId"], []).append(event)
        for run in by_run.values():
            assert [e["eventType"] for e in run] == ["START", "COMPLETE"]
            parent = run[1]["run"]["facets"]["parent"]
            assert parent["run"]["runId"] == run[0]["run"]["facets"]["parent"]["run"]["runId"]
            dag_id, task_id = parent["job"]["name"].split(".")
            assert parent["job"]["namespace"] == parent["root"]["job"]["namespace"]
            assert parent["root"]["job"]["name"] == dag_id
            flow = run[0]["job"]["name"]
            parents.setdefault((flow, task_id), []).append(parent["run"]["runId"])
            kind = "gate" if dag_id == local_runs.gate.dag_id else "purge"
            matching = [ids for key, ids in tasks.items() if key[:2] == (kind, task_id)]
            assert (parent["run"]["runId"], parent["root"]["run"]["runId"]) in matching
            for event in run:
                check_event(event)
    # one run per mapped purge task, one for the erasure, one for the gate's publish task
    assert {k: len(v) for k, v in parents.items()} == {
        ("consentgate.purge", "purge_dataset"): len(purged),
        ("consentgate.erase", "erase_and_verify"): 1,
        ("consentgate.gate", "manifest"): 1,
    }
    assert len(set(parents["consentgate.purge", "purge_dataset"])) == len(purged)
    gate_done = jobs["consentgate.gate"][1]
    (facet,) = {o["facets"]["consentgate_consent"]["manifestSha256"] for o in gate_done["outputs"]}
    assert facet == local_runs.gate.results["verify"]["manifest_sha256"]
    erased = jobs["consentgate.erase"][1]["outputs"]
    assert {o["facets"]["consentgate_consent"]["erasure"] for o in erased} == {"verified"}
    assert len(erased) == len(local_runs.purge.results["erase_and_verify"]["datasets"])
    # no asset, user or consent record id of the lake (all UUIDs) in any event
    config = load_config(local_runs.conf)
    ids = set()
    for table, columns in (
        ("assets", ("asset_id", "owner_user_id")),
        ("consent_records", ("id", "user_id", "asset_id")),
    ):
        frame = spark.read.format("delta").load(str(config.table_path(table)))
        for row in frame.select(*columns).collect():  # an 80-asset lake
            ids.update(str(v).lower() for v in row if v)
    assert len(ids) > 80
    text = json.dumps(events).lower()
    assert [i for i in ids if i in text] == []


def test_gate_admits_exactly_what_the_reference_model_grants(
    spark: SparkSession, local_runs: Runs, pristine_lake: Path
) -> None:
    """The DAG's allowlist, per-reason counts and snapshot rows, absolutely: against the
    reference consent model and a hand-written lineage walk over the pristine lake the run
    copied (``tests/demo_expectations.py``), not against the purge, which shares the gate's
    row decisions. Generative training is where the demo's rules bite: only the 2026-03
    terms, no EU, and its datasets reach assets through one or two lineage hops only."""
    from tests.demo_expectations import check_gate_run, read, read_inputs, snapshot_tables

    published = local_runs.gate.results["verify"]
    datasets = ("gen_shards", "stems")
    figures = check_gate_run(
        spark,
        lake_root=local_runs.conf.parent,
        manifest_path=published["manifest_path"],
        inputs=read_inputs(spark, pristine_lake),
        sources_root=pristine_lake,
        use_case=USE_CASE,
        model_version=MODEL_VERSION,
        datasets=datasets,
        as_of=dt.datetime.fromisoformat(AS_OF.replace("Z", "+00:00")),
    )
    assert published["allowlist_assets"] == figures["allowlist"]
    names = snapshot_tables(MODEL_VERSION, datasets)
    assert published["snapshot_rows"] == {n: figures["kept"][n.rsplit("/", 1)[1]] for n in names}
    # Every rule the check is meant to watch excludes someone on this lake, and every
    # snapshot keeps some rows and loses others.
    reasons = figures["reasons"]
    assert {"policy_version_not_accepted", "jurisdiction_blocked", "revoked"} <= set(reasons)
    for dataset in datasets:
        total = read(spark, pristine_lake / "derived" / dataset).count()
        assert 0 < figures["kept"][dataset] < total, dataset


def test_refused_gate_fails_the_run_and_publishes_nothing(
    local_runs: Runs, airflow_home: Path
) -> None:
    from consentgate import registry
    from consentgate.config import load_config
    from consentgate.story import run_dag

    refusing = write_conf(local_runs.conf, "refusing.yaml", gate={"min_allowlist_assets": 10**9})
    config = load_config(refusing)
    before = registry.read_entries(config)
    manifests = sorted(p.name for p in registry.manifests_dir(config).glob("*"))
    with conf_env(refusing), airflow_errors() as errors:
        outcome = run_dag(
            "consentgate_pretraining_gate",
            run_conf={"use_case": USE_CASE, "model_version": "m-refused", "as_of": AS_OF},
            dags_dir=DAGS,
        )
    assert outcome.state == "failed"
    assert outcome.task_states["validate"] == "success"  # the config is fine: the gate refused
    assert outcome.task_states["evaluate"] == "failed"
    assert outcome.task_states["verify"] == "upstream_failed"
    assert outcome.task_states["manifest"] == "upstream_failed"
    assert outcome.task_states["rollback"] == "success"
    # Issue #24 item 3: the rollback (all_done) found the outcome the failed evaluate left
    # (``gate`` pushed as null first), so Airflow looked up no absent XCom ("XCom not found"):
    # the one error line is the failed task's own.
    assert [e.get("event") for e in errors] == ["Task failed with exception"]
    assert outcome.asset_events == []
    assert registry.read_entries(config) == before
    assert sorted(p.name for p in registry.manifests_dir(config).glob("*")) == manifests
    assert not registry.snapshots_root(config, "m-refused").exists()


def test_policy_backfill_dry_run_reports_and_writes_nothing(
    airflow_home: Path, pristine_lake: Path, tmp_path: Path
) -> None:
    from consentgate.story import run_dag

    conf = copy_lake(pristine_lake, tmp_path / "lake")
    root = conf.parent
    before = lake_files(root)
    with conf_env(conf):
        outcome = run_dag("consentgate_policy_backfill", run_conf={"as_of": AS_OF}, dags_dir=DAGS)
    assert outcome.ok, outcome.task_states
    report: dict[str, Any] = outcome.results["report"]
    assert report["dry_run"] is True  # the default
    assert report["result"]["run_id"] == report["run_id"]  # the DAG run's id (issue #24 item 4)
    datasets = report["result"]["datasets"]
    assert datasets and all(r["rows_deleted"] > 0 for r in datasets.values())
    assert all(r["version_after"] == r["version_before"] for r in datasets.values())
    assert report["datasets_changed"] == [] and outcome.asset_events == []
    assert lake_files(root) == before  # not a byte written to the lake


def test_a_purge_run_that_failed_at_once_logs_no_airflow_error(
    airflow_home: Path, tmp_path: Path
) -> None:
    """Issue #24 item 3: with ``validate`` failed, the purge's all_done tasks still run and
    record the failure; every upstream outcome they read exists (each task pushes its outcome
    as null before its work), so the SDK client logs no "XCom not found"."""
    from consentgate.story import run_dag

    with conf_env(tmp_path / "nope.yaml"), airflow_errors() as errors:
        outcome = run_dag("consentgate_nightly_purge", dags_dir=DAGS)
    assert outcome.state == "failed"
    assert outcome.task_states["validate"] == "failed"
    assert outcome.task_states["erase_and_verify"] == "success"  # skipped: nothing was purged
    assert outcome.task_states["audit_summary"] == "failed"  # the run's verdict
    # the failed tasks' own error lines (validate's, then audit_summary's verdict), and no
    # "XCom not found"

    assert [e.get("event") for e in errors] == ["Task failed with exception"] * 2, errors


def test_missing_config_fails_fast_without_retries(airflow_home: Path, tmp_path: Path) -> None:
    from consentgate.story import run_dag

    with conf_env(tmp_path / "nope.yaml"):
        outcome = run_dag("consentgate_policy_backfill", dags_dir=DAGS)
    assert outcome.state == "failed"
    assert outcome.task_states == {
        "validate": "failed",
        "backfill": "upstream_failed",
        "report": "upstream_failed",
    }
