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
from tests.airflow_fixtures import DAGS, REPO, airflow_home

__all__ = ["airflow_home"]

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
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return DagBag(dag_folder=str(DAGS), include_examples=False)


@pytest.fixture
def bag(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
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
    work = [t for t in dag.tasks if t.task_id not in {"validate", "rollback"}]
    assert work and all(t.retries >= 1 for t in work)
    # validation and rollback are deterministic: retrying them would only repeat the outcome
    assert dag.get_task("validate").retries == 0
    assert dag.catchup is False


def test_nightly_purge_shape(bag: Any) -> None:
    dag = bag.get_dag("consentgate_nightly_purge")
    assert dag.timetable.summary == "0 2 * * *"
    assert set(dag.params.keys()) == {"as_of", "dry_run", "erase"}
    assert dag.max_active_runs == 1
    assert upstream(dag, "evaluate") == {"validate"}
    assert upstream(dag, "plan") == {"validate", "evaluate"}
    assert upstream(dag, "purge_dataset") == {"validate", "plan"}
    assert upstream(dag, "erase_and_verify") == {"validate", "purge_dataset"}
    assert upstream(dag, "audit_summary") == {"validate", "purge_dataset", "erase_and_verify"}
    purge = dag.get_task("purge_dataset")
    assert type(purge).__name__ == "DecoratedMappedOperator"
    assert [o.name for o in purge.partial_kwargs["outlets"]] == [airflow_tasks.PURGED_ALIAS]


def test_purge_schedule_comes_from_the_environment(
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bag = load_bag(monkeypatch, **{airflow_tasks.SCHEDULE_ENV: "30 3 * * 1-5"})
    assert bag.get_dag("consentgate_nightly_purge").timetable.summary == "30 3 * * 1-5"


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
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bag = load_bag(monkeypatch, **{airflow_tasks.RETRIES_ENV: "0"})
    assert all(t.retries == 0 for t in bag.get_dag("consentgate_nightly_purge").tasks)


def test_dag_files_do_no_heavy_imports_at_parse_time(airflow_home: Path) -> None:
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
        "evaluate", ["--conf", str(tmp_path / "missing.yaml"), "--result", str(result)]
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


def test_purge_schedule_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(airflow_tasks.SCHEDULE_ENV, raising=False)
    assert airflow_tasks.purge_schedule() == "0 2 * * *"
    monkeypatch.setenv(airflow_tasks.SCHEDULE_ENV, "15 1 * * *")
    assert airflow_tasks.purge_schedule() == "15 1 * * *"
