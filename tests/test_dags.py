"""The three DAGs load, are documented, retry, and have the intended shape; the task glue.

Fast: nothing here runs a DAG (see ``test_airflow_runs.py`` and ``test_cluster.py``).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from consentgate import airflow_tasks
from tests.airflow_fixtures import DAGS, REPO

DAG_IDS = {
    "consentgate_nightly_purge",
    "consentgate_pretraining_gate",
    "consentgate_policy_backfill",
}


def load_bag(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """A fresh DagBag of our folder, parsed under ``env`` (retries as deployed by default)."""
    from airflow.models.dagbag import DagBag

    monkeypatch.delenv(airflow_tasks.RETRIES_ENV, raising=False)
    monkeypatch.delenv(airflow_tasks.SCHEDULE_ENV, raising=False)
    monkeypatch.delenv(airflow_tasks.POOL_ENV, raising=False)
    monkeypatch.delenv(airflow_tasks.CONSENT_ASSET_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return DagBag(dag_folder=str(DAGS), include_examples=False)


@pytest.fixture
def bag(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    return load_bag(monkeypatch)


def upstream(dag: Any, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).upstream_task_ids)


def test_all_three_dags_load_one_per_file(bag: Any) -> None:
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert Path(dag.fileloc).name == f"{dag_id}.py"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dags_are_documented_tagged_and_retry(bag: Any, dag_id: str) -> None:
    dag = bag.get_dag(dag_id)
    assert "consentgate" in dag.tags and len(dag.tags) >= 3
    assert dag.doc_md and len(dag.doc_md) > 300
    for task_id in dag.task_ids:
        # the doc names every task, so the graph view and the doc agree
        assert f"`{task_id}`" in dag.doc_md, task_id
    work = [t for t in dag.tasks if t.task_id not in {"validate", "quiescent", "rollback"}]
    assert work and all(t.retries >= 1 for t in work)
    # validation and rollback are deterministic: retrying them would only repeat the outcome;
    # the purge's quiescent check reads files and, once, appends the night (a retry could
    # record it twice): on any doubt it lets the full run go on rather than fail
    assert dag.get_task("validate").retries == 0
    if "quiescent" in dag.task_ids:
        assert dag.get_task("quiescent").retries == 0
    assert dag.catchup is False


def test_nightly_purge_shape(bag: Any) -> None:
    dag = bag.get_dag("consentgate_nightly_purge")
    assert dag.timetable.summary == "Asset or 0 2 * * *"  # cron, or consent records landing
    assert set(dag.params.keys()) == {"as_of", "dry_run", "erase"}
    assert dag.max_active_runs == 1
    # issue #21: consent is decided once, by `decide`; no evaluate task (nothing read it)
    assert set(dag.task_ids) == {
        "validate",
        "quiescent",
        "decide",
        "purge_dataset",
        "erase_and_verify",
        "audit_summary",
    }
    # a night the quiescence certificate covers ends at `quiescent`: it skips all the rest
    assert upstream(dag, "quiescent") == {"validate"}
    assert type(dag.get_task("quiescent")).__name__ == "_ShortCircuitDecoratedOperator"
    assert dag.get_task("quiescent").ignore_downstream_trigger_rules is True
    assert upstream(dag, "decide") == {"validate", "quiescent"}
    assert upstream(dag, "purge_dataset") == {"validate", "decide"}
    assert upstream(dag, "erase_and_verify") == {"validate", "purge_dataset"}
    # decide's targets tell audit_summary which tables have no result (their task failed)
    assert upstream(dag, "audit_summary") == {
        "validate",
        "decide",
        "purge_dataset",
        "erase_and_verify",
    }
    purge = dag.get_task("purge_dataset")
    assert type(purge).__name__ == "DecoratedMappedOperator"
    assert [o.name for o in purge.partial_kwargs["outlets"]] == [airflow_tasks.PURGED_ALIAS]


def test_nightly_purge_one_failed_table_stops_no_other(bag: Any) -> None:
    """Issue #12: a failed mapped purge_dataset instance must not skip erasure and audit of
    the tables that were purged; the purge tasks themselves keep the default rule."""
    dag = bag.get_dag("consentgate_nightly_purge")

    def rule(task_id: str) -> str:
        return str(dag.get_task(task_id).trigger_rule).rsplit(".", 1)[-1].lower()

    assert rule("erase_and_verify") == "all_done"
    assert rule("audit_summary") == "all_done"
    for task_id in ("validate", "decide", "purge_dataset"):
        assert rule(task_id) == "all_success", task_id
    # audit_summary is the only leaf, so its own failure is what fails the run
    assert [t.task_id for t in dag.tasks if not t.downstream_task_ids] == ["audit_summary"]


def test_purge_summary_names_tables_whose_task_failed() -> None:
    """A failed mapped instance pushes no XCom: audit_summary finds it from the plan."""
    run = {"run_id": "purge-x", "as_of": "2026-06-01T00:00:00Z", "dry_run": False}
    purged = [{"name": "a", "rows_deleted": 2, "reasons": {"revoked": 2}}]
    erasure = {"ok": True, "datasets": {"a": {"result": "verified"}}}
    summary = airflow_tasks.purge_summary(run, purged, erasure, ["a", "snapshot/m1/b"])
    assert summary["ok"] is False
    assert summary["failed"] == {"snapshot/m1/b": airflow_tasks.PURGE_TASK_FAILED}
    assert summary["rows_deleted"] == 2 and list(summary["datasets"]) == ["a"]
    fine = airflow_tasks.purge_summary(run, purged, erasure, ["a"])
    assert fine["ok"] is True and fine["failed"] == {}
    # the erase task failed (no XCom): the run is not ok, whatever the tables did
    no_erasure = airflow_tasks.purge_summary(run, purged, None, ["a"])
    assert no_erasure["ok"] is False and no_erasure["erasure"]["ok"] is False
    skipped = airflow_tasks.purge_summary(run, purged, {"skipped": True}, ["a"])
    assert skipped["ok"] is True


def test_purge_runs_on_its_cron_or_when_consent_records_land(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cron comes from the environment; an event on the consent table's Asset (URI from
    the environment) starts a run too, and runs never overlap (events coalesce)."""
    from airflow.timetables.assets import AssetOrTimeSchedule

    uri = "s3://lake/consent_records"
    bag = load_bag(
        monkeypatch,
        **{airflow_tasks.SCHEDULE_ENV: "30 3 * * 1-5", airflow_tasks.CONSENT_ASSET_ENV: uri},
    )
    dag = bag.get_dag("consentgate_nightly_purge")
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.summary == "30 3 * * 1-5"
    asset = dag.timetable.asset_condition
    assert (asset.name, asset.uri) == (airflow_tasks.CONSENT_ASSET_NAME, uri)
    assert dag.max_active_runs == 1
    monkeypatch.delenv(airflow_tasks.CONSENT_ASSET_ENV)
    default = load_bag(monkeypatch).get_dag("consentgate_nightly_purge").timetable
    assert default.asset_condition.uri == airflow_tasks.CONSENT_ASSET_NAME
    assert default.timetable.summary == airflow_tasks.DEFAULT_PURGE_SCHEDULE


#: The tasks of each DAG that start a JVM (a local SparkSession, or a spark-submit driver).
SPARK_TASKS = {
    "consentgate_nightly_purge": {"decide", "purge_dataset", "erase_and_verify", "audit_summary"},
    "consentgate_pretraining_gate": {"evaluate", "snapshot", "manifest", "verify"},
    "consentgate_policy_backfill": {"backfill"},
}


def test_spark_tasks_run_in_the_one_slot_pool_whose_name_the_environment_sets(
    bag: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(SPARK_TASKS) == DAG_IDS
    for dag_id, spark_tasks in SPARK_TASKS.items():
        pools = {t.task_id: t.pool for t in bag.get_dag(dag_id).tasks}
        assert {t for t, pool in pools.items() if pool == "consentgate_spark"} == spark_tasks
        assert {pools[t] for t in set(pools) - spark_tasks} == {"default_pool"}, dag_id
    renamed = load_bag(monkeypatch, **{airflow_tasks.POOL_ENV: "lake_jobs"})
    for dag_id, spark_tasks in SPARK_TASKS.items():
        tasks = renamed.get_dag(dag_id).tasks
        assert {t.pool for t in tasks if t.task_id in spark_tasks} == {"lake_jobs"}, dag_id
    # `make airflow` creates the pool the DAGs name, with one slot
    makefile = (REPO / "Makefile").read_text()
    assert 'pools set consentgate_spark 1 "' in makefile


def test_pretraining_gate_shape_and_params(bag: Any) -> None:
    from airflow.exceptions import ParamValidationError
    from airflow.sdk.definitions.param import ParamsDict

    dag = bag.get_dag("consentgate_pretraining_gate")
    assert dag.timetable.summary in {"None", None} or dag.schedule is None
    assert set(dag.params.keys()) == {"use_case", "model_version", "datasets", "as_of"}
    snapshot = dag.get_task("snapshot")
    assert type(snapshot).__name__ == "DecoratedMappedOperator"
    assert upstream(dag, "snapshot") == {"validate", "evaluate"}
    assert upstream(dag, "manifest") == {"validate", "evaluate", "snapshot"}
    assert upstream(dag, "verify") == {"validate", "manifest"}
    assert [o.name for o in dag.get_task("verify").outlets] == [airflow_tasks.SNAPSHOT_ALIAS]
    rollback = dag.get_task("rollback")
    assert str(rollback.trigger_rule) in {"all_done", "TriggerRule.ALL_DONE"}
    assert {"snapshot", "manifest"} <= upstream(dag, "rollback")

    def validated(**conf: Any) -> dict[str, Any]:
        params = ParamsDict(copy.deepcopy(dag.params))
        for key, value in conf.items():
            params[key] = value
        return dict(params.validate())

    ok = validated(model_version="v2026.11-rc1")
    assert ok["use_case"] == "generative_training" and ok["datasets"] is None
    validated(model_version="v1", datasets=["stems"], as_of="2026-11-01T00:00:00Z")
    with pytest.raises(ParamValidationError, match="model_version"):
        validated()  # required
    with pytest.raises(ParamValidationError):
        validated(model_version="../../etc")  # becomes a directory name: refused up front
    with pytest.raises(ParamValidationError):
        validated(model_version="v1", datasets="stems")  # must be a list


def test_policy_backfill_is_a_dry_run_by_default(bag: Any) -> None:
    dag = bag.get_dag("consentgate_policy_backfill")
    assert dag.schedule is None or dag.timetable.summary in {"None", None}
    assert dag.params["dry_run"] is True
    assert upstream(dag, "backfill") == {"validate"}
    assert upstream(dag, "report") == {"validate", "backfill"}
    assert [o.name for o in dag.get_task("report").outlets] == [airflow_tasks.PURGED_ALIAS]


def test_retries_override_for_dag_test_runs(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bag = load_bag(monkeypatch, **{airflow_tasks.RETRIES_ENV: "0"})
    assert all(t.retries == 0 for t in bag.get_dag("consentgate_nightly_purge").tasks)


def test_dag_files_do_no_heavy_imports_at_parse_time() -> None:
    """Parsing a DAG file must not start Spark, import the jobs, or read the config."""
    probe = (
        "import runpy, sys\n"
        f"for f in {sorted(str(p) for p in DAGS.glob('*.py'))!r}:\n"
        "    runpy.run_path(f)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'pyspark', 'deltalake'}\n"
        "               or m in {'consentgate.purge', 'consentgate.gate', 'consentgate.evaluate'})\n"
        "print(heavy)\n"
    )
    env = {**os.environ, airflow_tasks.CONF_ENV: "/nonexistent/consentgate.yaml"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------
# The glue in consentgate.airflow_tasks


def test_every_step_has_a_thin_job_script() -> None:
    scripts = {p.stem for p in (REPO / "jobs").glob("*.py")}
    assert scripts == set(airflow_tasks.STEPS)
    for step in airflow_tasks.STEPS:
        text = (REPO / "jobs" / f"{step}.py").read_text()
        assert f'job_main("{step}")' in text
        assert len([line for line in text.splitlines() if line.strip()]) < 15
    assert airflow_tasks.jobs_dir() == REPO / "jobs"


def test_whole_flows_are_steps_taking_their_dags_params(bag: Any) -> None:
    """``gate`` and ``purge`` (and ``backfill``) run a whole flow as one spark-submit job, for
    schedulers other than our DAGs: each takes what its DAG's Params offer, by the same names."""
    import inspect

    def keywords(step: str) -> set[str]:
        parameters = inspect.signature(airflow_tasks.STEPS[step]).parameters.values()
        return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}

    assert {"gate", "purge", "backfill"} <= set(airflow_tasks.STEPS)
    assert (REPO / "jobs" / "gate.py").is_file() and (REPO / "jobs" / "purge.py").is_file()
    gate = bag.get_dag("consentgate_pretraining_gate")
    assert keywords("gate") == set(gate.params.keys())
    purge = bag.get_dag("consentgate_nightly_purge")
    assert keywords("purge") == set(purge.params.keys())
    backfill = bag.get_dag("consentgate_policy_backfill")
    # and the run context the DAG's validate task fixed (issue #24 item 4: one run id)
    assert keywords("backfill") == {*backfill.params.keys(), "run_id", "orchestration"}


def test_job_main_prints_a_failed_purges_partial_result_and_exits_1(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole-flow purge with a failed table exits 1 (cron sees it) and still tells what it
    did to every other table, as ``consentgate purge --json`` does. Spark-free: the session
    and the purge are stand-ins."""
    from consentgate import purge, spark
    from tests.test_gate import _spark_free_config

    conf = _spark_free_config(tmp_path / "lake")
    for table in ("consent_records", "assets", "lineage", "derived/track_embeddings"):
        (conf.parent / table).mkdir(parents=True)
    partial = {
        "ok": False,
        "failed": {"b": "dataset b: opening the table: gone"},
        "datasets": {"track_embeddings": {"rows_deleted": 2, "reasons": {"revoked": 2}}},
    }

    class Session:
        def stop(self) -> None:
            pass

    def failing_purge(*args: Any, **kwargs: Any) -> dict[str, Any]:
        assert kwargs == {"as_of": None, "dry_run": False, "erase": True}
        raise purge.PurgeFailed("purge p: 1 of 2 tables failed: dataset b", partial)

    monkeypatch.setattr(spark, "get_spark", lambda **_: Session())
    monkeypatch.setattr(purge, "run_purge", failing_purge)
    result = tmp_path / "result.json"
    code = airflow_tasks.job_main("purge", ["--conf", str(conf), "--result", str(result)])
    assert code == 1
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(result.read_text())
    assert printed["ok"] is False and printed["error_type"] == "PurgeFailed"
    assert printed["exit_code"] == 1 and "dataset b" in printed["error"]
    assert printed["result"] == partial


def test_package_zip_is_deterministic_and_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(airflow_tasks.PYFILES_DIR_ENV, str(tmp_path))
    first = airflow_tasks.package_zip()
    assert airflow_tasks.package_zip() == first  # cached by content hash
    first.unlink()
    again = airflow_tasks.package_zip()
    assert again == first and again.is_file()
    names = set(zipfile.ZipFile(again).namelist())
    package = Path(airflow_tasks.__file__).parent
    expected = {
        f"consentgate/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected <= names
    assert "consentgate/airflow_tasks.py" in names and "consentgate/py.typed" in names


def test_job_main_reports_bad_input_as_json_exit_2(tmp_path: Path, capsys: Any) -> None:
    result = tmp_path / "result.json"
    code = airflow_tasks.job_main(
        "decide_purge", ["--conf", str(tmp_path / "missing.yaml"), "--result", str(result)]
    )
    assert code == 2
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(result.read_text())
    assert printed["ok"] is False and printed["error_type"] == "ConfigError"
    assert "missing.yaml" in printed["error"]


def test_jsonable_normalises_paths_instants_and_sets() -> None:
    import datetime as dt

    value = airflow_tasks.jsonable(
        {
            "p": Path("/x/y"),
            "t": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "s": {"b", "a"},
            1: (1, 2),
        }
    )
    assert value == {"p": "/x/y", "t": "2026-01-02T03:04:05.000000Z", "s": ["a", "b"], "1": [1, 2]}
    json.dumps(value)


def test_the_config_comes_from_the_environment_first_then_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Decision (issue #24 item 3): env ``CONSENTGATE_CONF`` before the Airflow Variable, as
    Airflow ranks its own variables; the Variable is read through Airflow's real secrets
    backends (here the environment's ``AIRFLOW_VAR_...``)."""
    from consentgate.errors import ConfigError

    variable = f"AIRFLOW_VAR_{airflow_tasks.CONF_VARIABLE.upper()}"
    monkeypatch.delenv(airflow_tasks.CONF_ENV, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "variable.yaml"))
    assert airflow_tasks.conf_path() == tmp_path / "variable.yaml"
    monkeypatch.setenv(airflow_tasks.CONF_ENV, str(tmp_path / "env.yaml"))
    assert airflow_tasks.conf_path() == tmp_path / "env.yaml"
    monkeypatch.delenv(airflow_tasks.CONF_ENV)
    monkeypatch.delenv(variable)
    with pytest.raises(ConfigError, match="CONSENTGATE_CONF or the Airflow Variable"):
        airflow_tasks.conf_path()


def test_purge_schedule_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(airflow_tasks.SCHEDULE_ENV, raising=False)
    assert airflow_tasks.purge_schedule() == "0 2 * * *"
    monkeypatch.setenv(airflow_tasks.SCHEDULE_ENV, "15 1 * * *")
    assert airflow_tasks.purge_schedule() == "15 1 * * *"


def test_record_purge_fails_the_run_naming_the_failed_table(tmp_path: Path) -> None:
    """audit_summary is the run's only leaf: it must fail when a table failed (dry run here,
    so no audit entry is written and no lake is read). Whatever the outcome, it removes the
    run's work tables (decide's materialised decisions) and no other run's."""
    from airflow.exceptions import AirflowFailException

    from consentgate import purge
    from consentgate.config import load_config
    from tests.test_gate import _spark_free_config

    conf = _spark_free_config(tmp_path / "lake")
    for table in ("consent_records", "assets", "lineage", "derived/track_embeddings"):
        (conf.parent / table).mkdir(parents=True)
    config = load_config(conf)

    def work_tables(run_id: str) -> Path:
        root = purge.run_dir(config, run_id)
        (root / "located").mkdir(parents=True, exist_ok=True)
        (root / "plan.json").write_text("{}")
        return root

    run = {"run_id": "purge-x", "as_of": "2026-06-01T00:00:00Z", "dry_run": True, "conf": conf}
    other = work_tables("purge-other")
    purged = [{"name": "a", "rows_deleted": 0, "reasons": {}}]
    mine = work_tables("purge-x")
    with pytest.raises(AirflowFailException, match=r"1 of 2 tables failed: snapshot/m1/b"):
        airflow_tasks.record_purge(run, purged, {"skipped": True}, ["a", "snapshot/m1/b"])
    assert not mine.exists() and other.exists()
    mine = work_tables("purge-x")
    assert airflow_tasks.record_purge(run, purged, {"skipped": True}, ["a"])["ok"] is True
    assert not mine.exists()
    mine = work_tables("purge-x")
    with pytest.raises(AirflowFailException, match="decide task failed"):
        airflow_tasks.record_purge(run, [], {"skipped": True}, None)
    assert not mine.exists() and other.exists()


def test_pretraining_gate_runs_one_at_a_time(bag: Any) -> None:
    """Issue #12 item 6: two runs of the gate DAG never overlap; the doc says what guards the
    rest (the model version's claim)."""
    dag = bag.get_dag("consentgate_pretraining_gate")
    assert dag.max_active_runs == 1
    assert "max_active_runs=1" in dag.doc_md and "gate_claims" in dag.doc_md


def test_gate_rollback_removes_snapshots_only_under_its_own_claim(tmp_path: Path) -> None:
    """Issue #12 item 6: the gate DAG's rollback task of a run that does not hold the model
    version's claim (it lost the race) removes nothing under the holder's snapshots; the
    holder's rollback removes them and releases the claim. Spark-free: no table is read."""
    from consentgate import gate, registry
    from consentgate.config import load_config
    from tests.test_gate import _spark_free_config

    conf = _spark_free_config(tmp_path / "lake")
    for table in ("consent_records", "assets", "lineage", "derived/track_embeddings"):
        (conf.parent / table).mkdir(parents=True)  # the rollback task loads the config checked
    config = load_config(conf)
    gate.claim_model_version(config, model_version="m1", run_id="gate-holder")
    snapshot = registry.snapshot_path(config, "m1", "track_embeddings")
    snapshot.mkdir(parents=True)
    (snapshot / "part-00000.parquet").write_bytes(b"the holder's rows")

    def facts(run_id: str) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "model_version": "m1",
            "datasets": ["track_embeddings"],
            "allowlist": {"path": f"_consentgate/allowlists/{run_id}"},
        }

    run = {"conf": str(conf), "model_version": "m1", "run_id": "gate-loser"}
    loser = airflow_tasks.gate_rollback(run, facts("gate-loser"))
    assert loser["held_claim"] is False and loser["removed_snapshots"] == []
    assert (snapshot / "part-00000.parquet").read_bytes() == b"the holder's rows"
    assert gate.holds_claim(config, model_version="m1", run_id="gate-holder")
    nothing = airflow_tasks.gate_rollback(run, None)  # evaluate failed before pushing its run
    assert nothing["rolled_back"] is False and nothing["published"] is False
    assert snapshot.exists()
    holder = airflow_tasks.gate_rollback(run, facts("gate-holder"))
    assert holder["held_claim"] is True and holder["removed_snapshots"] == ["track_embeddings"]
    assert not registry.snapshots_root(config, "m1").exists()
    assert gate.read_claim(config, "m1") is None


def test_gate_rollback_releases_a_claim_left_by_a_dead_evaluate_attempt(tmp_path: Path) -> None:
    """The evaluate task claims under the DAG run's id; if an attempt dies after claiming and
    pushes no run, the retry takes the claim back (same id) and, should the run still fail,
    rollback releases it and removes that run's allowlist: the model version is not blocked."""
    from consentgate import gate
    from consentgate.config import load_config
    from consentgate.errors import ConflictError
    from tests.test_gate import _spark_free_config

    conf = _spark_free_config(tmp_path / "lake")
    for table in ("consent_records", "assets", "lineage", "derived/track_embeddings"):
        (conf.parent / table).mkdir(parents=True)
    config = load_config(conf)
    gate.claim_model_version(config, model_version="m1", run_id="gate-dagrun")
    # the retried attempt of the same run takes it back; another run cannot
    gate.claim_model_version(config, model_version="m1", run_id="gate-dagrun")
    with pytest.raises(ConflictError, match="being cut by another gate run"):
        gate.claim_model_version(config, model_version="m1", run_id="gate-other")
    allowlist = gate.allowlist_path(config, "gate-dagrun")
    allowlist.mkdir(parents=True)
    (allowlist / "part-00000.parquet").write_bytes(b"half an allowlist")
    run = {"conf": str(conf), "model_version": "m1", "run_id": "gate-dagrun"}
    result = airflow_tasks.gate_rollback(run, None)
    assert result["rolled_back"] is True and result["held_claim"] is True
    assert result["removed_snapshots"] == []
    assert gate.read_claim(config, "m1") is None and not allowlist.exists()


def test_backfill_report_fails_the_run_after_reporting_a_partial_backfill() -> None:
    """A backfill with a failed table comes back as a result (``ok`` false), so the report
    task announces what did change before failing the run (dry run here: no event, no lake)."""
    from airflow.exceptions import AirflowFailException

    run = {"run_id": "backfill-x", "as_of": "2026-06-01T00:00:00Z", "dry_run": True}
    result = {
        "ok": False,
        "error": "backfill backfill-x: 1 of 2 tables failed: dataset b: opening the table: gone",
        "failed": {"b": "dataset b: opening the table: gone"},
        "datasets": {"a": {"rows_deleted": 1, "reasons": {"revoked": 1}}},
        "impact": {"runs": []},
    }
    with pytest.raises(AirflowFailException, match="1 of 2 tables failed: dataset b"):
        airflow_tasks.backfill_report(run, result)
    assert airflow_tasks.backfill_report(run, {**result, "ok": True})["kind"] == "backfill"
