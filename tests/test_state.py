"""``consentgate.state``: what counts as evidence that audited runs happened (Spark-free)."""

from __future__ import annotations

from pathlib import Path

from consentgate.state import missing_audit_problem, recorded_runs


def test_only_records_of_audited_flows_count(tmp_path: Path) -> None:
    state = tmp_path / "_consentgate"
    assert recorded_runs(tmp_path) == [] and missing_audit_problem(tmp_path) is None
    # Locks, evaluations and an empty directory are not evidence of an audited run.
    for name in ("locks", "evaluations/evaluate-1", "purge_keys"):
        (state / name).mkdir(parents=True)
    (state / "audit.lock").write_text("")
    assert recorded_runs(tmp_path) == [] and missing_audit_problem(tmp_path) is None
    (state / "purge_keys" / "emb").mkdir()
    (state / "quiescence.json").write_text("{}")
    assert recorded_runs(tmp_path) == ["purge_keys", "quiescence.json"]
    problem = missing_audit_problem(tmp_path)
    assert problem is not None and "_consentgate/purge_keys" in problem
    assert "_consentgate/quiescence.json" in problem
