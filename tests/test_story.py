"""The demo's story: its text fits a terminal, and running DAGs through it prints nothing of
Airflow's own (issue #24 items 3 and 6).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from consentgate.consent import DENIAL_REASONS
from consentgate.demo import DATASETS
from consentgate.purge import USE_CASE_NOT_CONFIGURED
from consentgate.registry import snapshot_name
from consentgate.story import RENDER_WIDTH, render

#: Every reason a purge can report for a row (consent's, then the purge's own).
ALL_REASONS = (*DENIAL_REASONS, "no_lineage", "retention_expired", USE_CASE_NOT_CONFIGURED)


def _summary() -> dict[str, Any]:
    """A demo summary at its widest: every demo dataset and a snapshot of each, every reason
    with a six-digit count, a model version as the demo names them."""
    version = "demo-20261207T050000Z"
    names = [*DATASETS, *(snapshot_name(version, d) for d in DATASETS)]
    reasons = {reason: 100_000 + i for i, reason in enumerate(ALL_REASONS)}
    return {
        "lake": "/home/someone/a/rather/long/path/to/the/consentgate/demo/lake",
        "lake_built": True,
        "purge": {
            "dag_run_id": "manual__2026-12-07T04:57:08.369382+00:00",
            "rows_deleted": 9_999_999,
            "audit_chain_ok": True,
            "datasets": {
                name: {"rows_before": 1_234_567, "rows_deleted": 999_999, "reasons": reasons}
                for name in names
            },
        },
        "gate": {
            "dag_run_id": "manual__2026-12-07T04:59:10.123456+00:00",
            "model_version": version,
            "use_case": "generative_training",
            "allowlist_assets": 123_456,
            "manifest_path": "/home/someone/lake/_consentgate/manifests/" + "m" * 80 + ".json",
            "manifest_sha256": "ab" * 32,
            "verification": {"ok": True, "problems": []},
            "snapshots": {name: 1_000_000 for name in DATASETS},
        },
        "proof": {
            "asset_id": "0b0c0d0e-1f20-4122-8324-252627282930",
            "included": True,
            "verified_offline": True,
        },
        "openlineage": {
            "file": "/home/someone/a/rather/long/path/to/the/demo/lake/openlineage-events.jsonl",
            "events": 26,
        },
    }


def test_every_line_of_the_story_fits_100_columns_but_whole_paths() -> None:
    summary = _summary()
    text = render(summary)
    paths = (summary["lake"], summary["gate"]["manifest_path"], summary["openlineage"]["file"])
    wide = [line for line in text.splitlines() if len(line) > RENDER_WIDTH]
    assert RENDER_WIDTH == 100
    assert all(any(p in line for p in paths) for line in wide), wide


def test_the_story_names_the_file_its_openlineage_events_went_to() -> None:
    summary = _summary()
    lines = render(summary).splitlines()
    assert lines[-1] == f"OpenLineage events (26): {summary['openlineage']['file']}"
    summary["openlineage"] = {"file": None, "events": None}  # the user's transport got them
    assert render(summary).splitlines()[-1].startswith("OpenLineage events: sent to")


def test_each_tables_reasons_are_wrapped_under_it_whole() -> None:
    """Under each table's line, its reasons and counts, every one whole and on one line."""
    summary = _summary()
    lines = render(summary).splitlines()
    for name, facts in summary["purge"]["datasets"].items():
        (at,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert lines[at].split()[1:] == ["999999", "of", "1234567"]
        under: list[str] = []
        for line in lines[at + 1 :]:
            if not line.startswith(" " * 6):
                break
            under.append(line)
        assert len(under) > 1  # the reasons did not fit one line: they were wrapped
        items = [item for line in under for item in line.strip().rstrip(",").split(", ")]
        assert items == [f"{r} {n}" for r, n in sorted(facts["reasons"].items())]


def test_a_table_without_reasons_has_no_line_under_it() -> None:
    summary = _summary()
    summary["purge"]["datasets"] = {"stems": {"rows_before": 5, "rows_deleted": 0, "reasons": {}}}
    lines = render(summary).splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["stems"])
    assert lines[at + 1] == "  audit chain ok: True"


# --------------------------------------------------------------------------------------------
# Running a DAG the way the demo does prints nothing of Airflow's own: no deprecation notice of
# a dependency, no "XCom not found" for a mapped task's results read whole. In a child process,
# as `consentgate demo` starts: warnings are shown once per place and process, and pytest's own
# filters would stand between Airflow and the terminal here. The DAG needs no Spark: the notices
# come from Airflow's machinery (its imports, dag.test's in-process API), not from the tasks.

PROBE_DAG = """
import datetime as dt

from airflow.sdk import TriggerRule, dag, task

from consentgate.airflow_tasks import mapped_results


@dag(
    dag_id="consentgate_quiet_probe",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
)
def consentgate_quiet_probe():
    @task
    def decide():
        return ["a", "b", "c"]

    @task
    def purge_dataset(target):
        return {"name": target}

    # As erase_and_verify and audit_summary read the purge's mapped results.
    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summary(purged):
        return [r["name"] for r in mapped_results(purged)]

    summary(purge_dataset.expand(target=decide()))


consentgate_quiet_probe()
"""

PROBE_RUN = """
import json, sys
from pathlib import Path
from consentgate.story import run_dag
outcome = run_dag("consentgate_quiet_probe", dags_dir=Path(sys.argv[1]))
print(json.dumps({"state": outcome.state, "summary": outcome.results.get("summary")}))
"""


def probe_child_env(
    airflow_db: Path, tmp_path: Path, dag_id: str, source: str, **extra: str
) -> tuple[Path, dict[str, str]]:
    """A DAG folder holding ``source`` as ``<dag_id>.py``, and the environment of a child that
    runs it on the session's migrated metadata DB (no migration in the child) with Python's
    warnings at their defaults (``PYTHONWARNINGS`` removed), plus ``extra``."""
    from consentgate.story import airflow_environment

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / f"{dag_id}.py").write_text(textwrap.dedent(source))
    env = {**os.environ, **airflow_environment(airflow_db, dags_dir=dags), **extra}
    env.pop("PYTHONWARNINGS", None)
    return dags, env


def test_a_dag_run_through_the_story_prints_no_airflow_notices(
    airflow_db: Path, tmp_path: Path
) -> None:
    dags, env = probe_child_env(airflow_db, tmp_path, "consentgate_quiet_probe", PROBE_DAG)
    done = subprocess.run(
        [sys.executable, "-c", PROBE_RUN, str(dags)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *noise, last = done.stdout.splitlines()
    assert json.loads(last) == {"state": "success", "summary": ["a", "b", "c"]}
    # Airflow's client logs "[error] XCom not found" on stdout, warnings go to stderr.
    assert noise == [], noise
    assert done.stderr == "", done.stderr


# --------------------------------------------------------------------------------------------
# The demo shows its progress as it goes (issue #24 item 2): a step line reaches stderr the
# moment a task logs it, while Airflow's own logging stays at its ERROR level. Airflow's first
# import replaces the root logger's handlers with its own; the command line's stderr handler
# had gone with them, so the demo printed no step line at all until the summary.
# The child starts as `consentgate` does (the command group's start-up), then runs a DAG the
# way the demo does. Its task logs a step line, then waits for the test to have read that line
# from the child's stderr before it ends: a line held back until the run ends fails the test.

PROGRESS_DAG = """
import datetime as dt
import logging
import os
import time
from pathlib import Path

from airflow.sdk import dag, task

from consentgate.logs import step


@dag(
    dag_id="consentgate_progress_probe",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
)
def consentgate_progress_probe():
    @task
    def work():
        started = time.monotonic()
        # Below Airflow's level (ERROR here), off the terminal: Airflow's own INFO, and a
        # warning of a logger Airflow sets to WARN itself (it reaches the root logger).
        logging.getLogger("airflow.task").info("airflow chatter")
        logging.getLogger("httpx").warning("httpx chatter")
        # At Airflow's level: shown, once (by Airflow's handler).
        logging.getLogger("some.library").error("library error")
        step(logging.getLogger("consentgate.probe"), "probe", table="t", rows=3, since=started)
        seen = Path(os.environ["PROBE_SEEN"])
        deadline = time.monotonic() + 30
        while not seen.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the step line did not reach the terminal while the task ran")
            time.sleep(0.05)
        return "done"

    work()


consentgate_progress_probe()
"""

PROGRESS_RUN = """
import json, sys
from pathlib import Path
from consentgate.cli import main
main.callback()  # the command line's start-up: logging, warnings, stdout for the result
from consentgate.story import run_dag
outcome = run_dag("consentgate_progress_probe", dags_dir=Path(sys.argv[1]))
print(json.dumps({"state": outcome.state, "work": outcome.results.get("work")}))
"""


def test_a_step_line_reaches_stderr_while_the_task_runs_and_airflow_stays_quiet(
    airflow_db: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    dags, env = probe_child_env(
        airflow_db, tmp_path, "consentgate_progress_probe", PROGRESS_DAG, PROBE_SEEN=str(seen)
    )
    stdout = tmp_path / "stdout"
    with stdout.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", PROGRESS_RUN, str(dags)],
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stderr is not None
        lines: list[str] = []
        try:
            for line in child.stderr:
                lines.append(line.rstrip("\n"))
                if "step=probe " in line:
                    seen.touch()  # the task may end now
            returncode = child.wait(timeout=300)
        finally:
            child.kill()
    stderr = "\n".join(lines)
    assert returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.read_text().splitlines()[-1])
    assert outcome == {"state": "success", "work": "done"}, stderr[-3000:]
    # The line was read while the task was still waiting for it (else the task failed), in
    # the command line's format; then the run's own line. Below Airflow's level nothing else
    # reached the terminal (a progress line only if the machine is slow), and the error
    # Airflow shows is not shown twice.
    ours = [line for line in lines if "library error" not in line and "progress=" not in line]
    at = r"\S+Z INFO consentgate\."
    probe = at + r"probe step=probe table=t rows=3 seconds=\d+\.\d{3}"
    run = at + r"story step=consentgate_progress_probe run_id=\S+ tasks=1 failed=0 seconds=\S+"
    assert len(ours) == 2, stderr
    assert re.fullmatch(probe, ours[0]) and re.fullmatch(run, ours[1]), stderr
    assert stderr.count("library error") == 1, stderr
