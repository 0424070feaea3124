"""The whole consentgate story told through Airflow, with no servers (``make demo``).

Why through Airflow: our users run consentgate as Airflow DAGs, so the demo runs the very DAGs
they deploy, with ``dag.test()`` (every task in this process, no scheduler, no API server)
against a SQLite metadata database under ``airflow_home``. It:

1. points Airflow at ``airflow_home`` and our ``dags/`` folder and migrates the metadata DB;
2. builds the demo lake if ``lake`` has no ``consentgate.yaml`` yet (:func:`consentgate.demo.
   init_demo`), otherwise reuses it;
3. runs ``consentgate_nightly_purge``, then ``consentgate_pretraining_gate`` for a fresh model
   version;
4. returns a readable summary: rows purged per dataset and reason, the manifest, its
   verification, an inclusion proof for one allowlisted asset checked against the
   manifest's root only, and the file holding the runs' OpenLineage events
   (``<lake>/openlineage-events.jsonl``; :func:`consentgate.airflow_lineage.events_to_file`).

:func:`prepare_airflow` and :func:`run_dag` are also what the test suite uses to run the DAGs.

Airflow reads ``AIRFLOW_HOME`` and its settings when it is first imported, so
:func:`prepare_airflow` must run before anything imports Airflow in this process; it refuses
(naming the culprit) when Airflow was already configured for another home.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from consentgate.airflow_lineage import events_to_file
from consentgate.airflow_tasks import CONF_ENV, CONF_VARIABLE, RETRIES_ENV
from consentgate.errors import CheckFailed, ConsentgateError
from consentgate.logs import running, step

log = logging.getLogger(__name__)

#: Environment variable naming the DAGs folder when not the repository's ``dags/``.
DAGS_DIR_ENV: Final = "CONSENTGATE_DAGS_DIR"
#: The three DAGs, by file.
DAG_IDS: Final = (
    "consentgate_nightly_purge",
    "consentgate_pretraining_gate",
    "consentgate_policy_backfill",
)
#: Spark settings for the story's session (no progress bars over the summary).
QUIET_SPARK_CONF: Final = {"spark.ui.showConsoleProgress": "false"}
#: Bound on ``airflow db migrate`` (SQLite takes a few seconds).
MIGRATE_TIMEOUT_S: Final = 600
#: The story's OpenLineage events (file transport), relative to the lake.
LINEAGE_FILE: Final = "openlineage-events.jsonl"
#: The terminal width :func:`render` keeps to (issue #24 item 6).
RENDER_WIDTH: Final = 100


def dags_folder() -> Path:
    """Our DAGs: ``CONSENTGATE_DAGS_DIR`` or the repository's ``dags/``.

    Raises:
        ConsentgateError: the folder does not exist.
    """
    configured = os.environ.get(DAGS_DIR_ENV)
    folder = Path(configured) if configured else Path(__file__).resolve().parents[2] / "dags"
    if not (folder / "consentgate_nightly_purge.py").is_file():
        raise ConsentgateError(
            f"{DAGS_DIR_ENV}: {folder} does not hold the consentgate DAGs; set it to the "
            "repository's dags/ directory"
        )
    return folder


def airflow_environment(
    airflow_home: Path, *, dags_dir: Path | None = None, quiet: bool = True
) -> dict[str, str]:
    """The environment that makes Airflow self-contained under ``airflow_home``.

    SQLite metadata DB, our DAGs only (no examples), no retries in ``dag.test()`` runs (a retry
    would wait out its delay in the foreground), and errors-only logging when ``quiet``.
    """
    home = Path(airflow_home).resolve()
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str((dags_dir or dags_folder()).resolve()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        RETRIES_ENV: "0",
    }
    if quiet:
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
    return env


def prepare_airflow(
    airflow_home: Path, *, dags_dir: Path | None = None, quiet: bool = True
) -> dict[str, str]:
    """Configure this process for Airflow under ``airflow_home`` and migrate its metadata DB.

    The migration runs as ``python -m airflow db migrate`` in a child process (idempotent, a
    few seconds on SQLite) so that this process imports Airflow only once, already configured.

    Returns:
        The environment variables that were set.

    Raises:
        ConsentgateError: Airflow was already imported here with another ``AIRFLOW_HOME``, or
            the migration failed (its output is in the message).
    """
    env = airflow_environment(airflow_home, dags_dir=dags_dir, quiet=quiet)
    if "airflow.configuration" in sys.modules:
        from airflow.configuration import AIRFLOW_HOME

        if Path(AIRFLOW_HOME).resolve() != Path(env["AIRFLOW_HOME"]):
            raise ConsentgateError(
                f"--airflow-home: Airflow is already configured for {AIRFLOW_HOME} in this "
                f"process; cannot switch to {env['AIRFLOW_HOME']}"
            )
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise ConsentgateError(f"airflow db migrate failed ({done.returncode}):\n{tail}")
    return env


@dataclass
class DagOutcome:
    """One finished ``dag.test()`` run.

    Attributes:
        dag_id: The DAG.
        run_id: Airflow's run id.
        state: ``success`` or ``failed``.
        task_states: Final state per task (mapped tasks: per ``task_id[map_index]``).
        results: XCom ``return_value`` per task (a list in map-index order for mapped tasks)
            plus other XCom keys as ``task_id.key``.
        asset_events: Asset events the run emitted: ``name``, ``uri``, ``task_id``, ``extra``.
    """

    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    asset_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.state == "success"


def run_dag(
    dag_id: str, *, run_conf: Mapping[str, Any] | None = None, dags_dir: Path | None = None
) -> DagOutcome:
    """Run one of our DAGs to completion in this process with ``dag.test()``.

    :func:`prepare_airflow` must have run first. A failing task fails the run; it does not
    raise here, so callers can assert on a refused gate. Our dependencies' deprecation notices
    are hidden from here on in this process (:func:`consentgate.logs.quiet_dependency_warnings`):
    this is where the demo and the tests start Airflow, not a user's deployment.

    Raises:
        ConsentgateError: the DAG does not load (its import error is in the message).
    """
    import airflow.configuration  # noqa: F401  (Airflow's own warning filters, see below)

    from consentgate.logs import quiet_dependency_warnings, restore_cli_logging

    # Airflow's configuration puts filters that show its deprecations in front when first
    # imported; ours go in front of those, before the imports below raise the first notices
    # (a provider's compat import) and for the DAG files and every task run in this process.
    quiet_dependency_warnings()
    # The same import replaced the root logger's handlers with Airflow's (at ERROR in the
    # demo): the command line's step lines go back to stderr as each step ends.
    restore_cli_logging()

    from airflow.models.asset import AssetEvent
    from airflow.models.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    folder = dags_dir or dags_folder()
    bag = DagBag(dag_folder=str(folder), include_examples=False)
    if bag.import_errors:
        raise ConsentgateError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise ConsentgateError(f"dag_id: {dag_id!r} is not in {folder}")
    # Airflow's own work between the tasks' step lines (parsing, scheduling each task) is
    # covered by progress lines too, and the run ends with a step line of its own.
    started = time.monotonic()
    with running(log, dag_id):
        dag_run = dag.test(run_conf=dict(run_conf or {}))
    run_id = str(dag_run.run_id)
    outcome = DagOutcome(dag_id=dag_id, run_id=run_id, state=str(dag_run.state))
    mapped: dict[str, dict[int, Any]] = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            label = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            outcome.task_states[label] = str(ti.state)
        rows = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id)).all()
        for row in rows:
            value = XComModel.deserialize_value(row)
            key = row.task_id if row.key == "return_value" else f"{row.task_id}.{row.key}"
            if row.map_index >= 0:
                mapped.setdefault(key, {})[row.map_index] = value
            else:
                outcome.results[key] = value
        for key, values in mapped.items():
            outcome.results[key] = [values[i] for i in sorted(values)]
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id
            )
        ).all()
        for event in events:
            outcome.asset_events.append(
                {
                    "name": event.asset.name,
                    "uri": event.asset.uri,
                    "task_id": event.source_task_id,
                    "map_index": event.source_map_index,
                    "extra": dict(event.extra or {}),
                }
            )
    outcome.asset_events.sort(key=lambda e: (str(e["task_id"]), str(e["name"])))
    failed = sum(state in ("failed", "upstream_failed") for state in outcome.task_states.values())
    step(log, dag_id, run_id=run_id, tasks=len(outcome.task_states), failed=failed, since=started)
    return outcome


def _purge_section(outcome: DagOutcome) -> dict[str, Any]:
    summary = outcome.results.get("audit_summary") or {}
    datasets = {}
    for result in outcome.results.get("purge_dataset") or []:
        datasets[str(result["name"])] = {
            "rows_before": result.get("rows_before"),
            "rows_deleted": result.get("rows_deleted"),
            "rows_after": result.get("rows_after"),
            "reasons": result.get("reasons", {}),
        }
    return {
        "state": outcome.state,
        "dag_run_id": outcome.run_id,
        "run_id": summary.get("run_id"),
        "rows_deleted": summary.get("rows_deleted"),
        "reasons": summary.get("reasons", {}),
        "datasets": datasets,
        "erasure": outcome.results.get("erase_and_verify"),
        "audit_chain_ok": ((summary.get("audit") or {}).get("chain") or {}).get("ok"),
        "asset_events": [e["name"] for e in outcome.asset_events],
    }


def _gate_section(outcome: DagOutcome) -> dict[str, Any]:
    verified = outcome.results.get("verify") or {}
    report = verified.get("verification") or {}
    return {
        "state": outcome.state,
        "dag_run_id": outcome.run_id,
        "run_id": verified.get("run_id"),
        "model_version": verified.get("model_version"),
        "use_case": verified.get("use_case"),
        "allowlist_assets": verified.get("allowlist_assets"),
        "manifest_path": verified.get("manifest_path"),
        "manifest_sha256": verified.get("manifest_sha256"),
        "snapshots": verified.get("snapshot_rows", {}),
        "verification": {"ok": report.get("ok"), "problems": report.get("problems", [])},
        "asset_events": [e["name"] for e in outcome.asset_events],
    }


def example_proof(conf_path: Path, manifest_path: Path) -> dict[str, Any]:
    """An inclusion proof for one allowlisted asset, checked against the manifest's root only.

    The asset is the first leaf of the run's stored allowlist (the allowlist is a few thousand
    rows in the demo; only one row is read).
    """
    from consentgate import lake, proofs
    from consentgate.config import load_config
    from consentgate.manifest import load_manifest
    from consentgate.spark import get_spark

    config = load_config(conf_path)
    spark = get_spark(master=config.spark.master, conf=config.spark.conf)
    manifest = load_manifest(manifest_path)
    table = manifest["allowlist"]["table"]
    first = (
        lake.read_table(spark, config.resolve(table["path"]), version=int(table["version"]))
        .select("asset_id")
        .orderBy("asset_id")
        .limit(1)
        .collect()
    )
    if not first:
        raise CheckFailed(f"{manifest_path}: the allowlist is empty")
    asset_id = str(first[0]["asset_id"])
    proof = proofs.prove(spark, config, manifest_path=manifest_path, asset_id=asset_id)
    checked = proofs.verify_proof(proof["proof"], manifest_path=manifest_path)
    return {
        "asset_id": asset_id,
        "included": proof.get("included"),
        "proof": proof.get("proof"),
        "verified_offline": checked.get("ok"),
    }


def run_story(
    *,
    lake: Path,
    airflow_home: Path,
    assets: int = 2000,
    seed: int = 7,
    model_version: str | None = None,
    use_case: str = "generative_training",
    as_of: str | None = None,
) -> dict[str, Any]:
    """Purge and gate on the demo lake through the real DAGs; return a readable summary.

    Args:
        lake: The demo lake (built here if it has no ``consentgate.yaml``).
        airflow_home: Where the SQLite metadata DB and Airflow's logs go.
        assets: Demo lake size, when the lake is built here.
        seed: Demo lake seed, when the lake is built here.
        model_version: The gate's model version (default: ``demo-<UTC timestamp>``, so the
            story can be re-run on the same lake: snapshots are immutable per version).
        use_case: The use case the gate runs for.
        as_of: Evaluation instant for both runs (default: when each run starts).

    Returns:
        ``lake``, ``conf_path``, ``lake_built``, ``purge{...}``, ``gate{...}``, ``proof{...}``
        and ``ok``.

    Raises:
        CheckFailed: a DAG run failed (which task, and its state, are in the message).
    """
    from consentgate.config import SparkConfig, load_config
    from consentgate.demo import CONF_FILE, demo_config, init_demo
    from consentgate.spark import get_spark

    # A step line as each phase ends (issue #24 item 2): migrating Airflow's DB and starting the
    # JVM take seconds each before the lake build's or the DAGs' own lines begin.
    started = time.monotonic()
    with running(log, "airflow_db"):
        prepare_airflow(airflow_home)
    step(log, "airflow_db", since=started)
    root = Path(lake).resolve()
    conf_path = root / CONF_FILE
    # One session for the whole story, without console progress bars: every task reuses it
    # (dag.test() runs the tasks in this process), so the summary is not buried in bars. Built
    # as the lake's config says (a new demo lake's: local[*]), so a local story gets a local
    # session's sizing (consentgate.spark._local_defaults): without a master it ran with 200
    # shuffle partitions, and deciding the 2,000-asset lake took 97 s and 3,708 tasks.
    settings = (
        load_config(conf_path).spark
        if conf_path.exists()
        else SparkConfig.model_validate(demo_config()["spark"])
    )
    started = time.monotonic()
    with running(log, "spark_session"):
        spark = get_spark(
            master=settings.master,
            conf={**settings.conf, **QUIET_SPARK_CONF},
            app_name="consentgate-demo",
        )
    step(log, "spark_session", since=started)
    built = False
    if not conf_path.exists():
        init_demo(spark, root, assets=assets, seed=seed)
        built = True
    # As an operator would: the Airflow Variable consentgate_conf (here through Airflow's
    # environment-variable secrets backend), with CONSENTGATE_CONF as the fallback.
    os.environ[f"AIRFLOW_VAR_{CONF_VARIABLE.upper()}"] = str(conf_path)
    os.environ[CONF_ENV] = str(conf_path)
    common = {"as_of": as_of} if as_of else {}

    # The runs' OpenLineage events go to a file beside the lake, unless the user points
    # OpenLineage elsewhere (OPENLINEAGE_URL, ...): then they go there.
    with events_to_file(root / LINEAGE_FILE) as events_file:
        purge = run_dag("consentgate_nightly_purge", run_conf=common)
        if not purge.ok:
            raise CheckFailed(f"consentgate_nightly_purge failed: {purge.task_states}")
        version = model_version or dt.datetime.now(dt.UTC).strftime("demo-%Y%m%dT%H%M%SZ")
        gate = run_dag(
            "consentgate_pretraining_gate",
            run_conf={**common, "use_case": use_case, "model_version": version},
        )
    if not gate.ok:
        raise CheckFailed(f"consentgate_pretraining_gate failed: {gate.task_states}")
    gate_section = _gate_section(gate)
    started = time.monotonic()
    with running(log, "example_proof"):
        proof = example_proof(conf_path, Path(str(gate_section["manifest_path"])))
    step(log, "example_proof", since=started)
    return {
        "lake": str(root),
        "conf_path": str(conf_path),
        "lake_built": built,
        "airflow_home": str(Path(airflow_home).resolve()),
        "purge": _purge_section(purge),
        "gate": gate_section,
        "proof": proof,
        "openlineage": {
            "file": None if events_file is None else str(events_file),
            "events": _count_lines(events_file),
        },
        "ok": bool(gate_section["verification"]["ok"] and proof["verified_offline"]),
    }


def _count_lines(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None if path is None else 0
    with path.open() as f:
        return sum(1 for _ in f)


def reason_lines(
    reasons: Mapping[str, Any], *, indent: int, width: int = RENDER_WIDTH
) -> list[str]:
    """A table's rows removed per reason as ``reason count`` items, comma-separated, wrapped
    to ``width`` columns under the table's line (never an item split across two lines)."""
    pad = " " * indent
    lines: list[str] = []
    line = ""
    for reason, count in sorted(reasons.items()):
        item = f"{reason} {count}"
        if line and len(pad) + len(line) + len(", ") + len(item) + len(",") > width:
            lines.append(f"{pad}{line},")
            line = item
        else:
            line = f"{line}, {item}" if line else item
    return [*lines, f"{pad}{line}"] if line else lines


def render(summary: Mapping[str, Any]) -> str:
    """The story summary as text for people (``consentgate demo`` without ``--json``).

    Each purged table gets one line (name, rows removed of rows before) and its reasons
    wrapped under it, so the breakdown fits a 100-column terminal whatever the reasons; only
    a line holding a path (the lake, the manifest) may be wider, since a path is printed whole.
    """
    purge = summary["purge"]
    gate = summary["gate"]
    proof = summary["proof"]
    lines = [
        f"lake: {summary['lake']} ({'built now' if summary.get('lake_built') else 'reused'})",
        "",
        f"nightly purge ({purge['dag_run_id']}): {purge['rows_deleted']} rows removed",
    ]
    datasets = sorted(purge["datasets"].items())
    name_width = max((len(name) for name, _ in datasets), default=0)
    for name, facts in datasets:
        lines.append(
            f"  {name:<{name_width}}  {facts.get('rows_deleted')!s:>7} of "
            f"{facts.get('rows_before')!s:>7}"
        )
        lines += reason_lines(facts.get("reasons") or {}, indent=6)
    lines += [
        f"  audit chain ok: {purge['audit_chain_ok']}",
        "",
        f"pre-training gate ({gate['dag_run_id']}): model {gate['model_version']}",
        f"  use case {gate['use_case']}, {gate['allowlist_assets']} assets allowed",
        f"  manifest: {gate['manifest_path']}",
        f"  sha256:   {gate['manifest_sha256']}",
        f"  verified: {gate['verification']['ok']} {gate['verification']['problems'] or ''}".rstrip(),
    ]
    for name, rows in sorted(gate["snapshots"].items()):
        lines.append(f"  snapshot {name}: {rows} rows")
    lines += [
        "",
        f"inclusion proof for asset {proof['asset_id']}: included={proof['included']}",
        f"  checks against the manifest root alone: {proof['verified_offline']}",
    ]
    lineage = summary.get("openlineage") or {}
    if lineage.get("file"):
        lines += ["", f"OpenLineage events ({lineage['events']}): {lineage['file']}"]
    elif lineage:
        lines += ["", "OpenLineage events: sent to the transport OpenLineage is configured with"]
    return "\n".join(lines)
