"""``consentgate.airflow_lineage``: which steps send which flow's events, and the demo's file.

The events themselves, sent by real DAG runs and nested under their tasks, are checked in
``tests/test_airflow_runs.py`` (``test_steps_send_openlineage_events_nested_under_...``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consentgate import airflow_lineage
from consentgate.airflow_tasks import STEPS
from consentgate.openlineage_events import FLOWS, transport_configured


def test_every_step_that_sends_events_is_a_step_and_sends_a_known_flow() -> None:
    assert set(airflow_lineage.STEP_FLOWS) <= set(STEPS)
    assert set(airflow_lineage.STEP_FLOWS.values()) <= set(FLOWS)


def test_a_mapped_purge_tasks_result_is_one_table_of_a_purge() -> None:
    result = {"name": "stems", "rows_after": 3, "reasons": {}, "version_after": 2}
    shaped = airflow_lineage.flow_result("purge_dataset", {"dry_run": True}, result)
    assert shaped == {"datasets": {"stems": result}, "dry_run": True}
    assert airflow_lineage.flow_result("gate_publish", {}, {"a": 1}) == {"a": 1}


@pytest.fixture
def no_openlineage_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("OPENLINEAGE") or key == "AIRFLOW__OPENLINEAGE__DISABLED":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_events_go_to_the_file_while_open_and_the_environment_is_restored(
    no_openlineage_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "events.jsonl"
    assert airflow_lineage.task_parent({"ti": object()}, "erase") is None  # no transport
    with airflow_lineage.events_to_file(path) as events:
        assert events == path and path.parent.is_dir()
        assert transport_configured()
        assert os.environ["OPENLINEAGE__TRANSPORT__LOG_FILE_PATH"] == str(path)
        assert os.environ["AIRFLOW__OPENLINEAGE__DISABLED"] == "true"
    assert not transport_configured()
    assert "AIRFLOW__OPENLINEAGE__DISABLED" not in os.environ


def test_a_transport_the_user_configured_wins_over_the_demo_file(
    no_openlineage_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_openlineage_env.setenv("OPENLINEAGE_URL", "http://127.0.0.1:9")
    with airflow_lineage.events_to_file(tmp_path / "events.jsonl") as events:
        assert events is None
        assert "OPENLINEAGE__TRANSPORT__TYPE" not in os.environ
    assert not (tmp_path / "events.jsonl").exists()
