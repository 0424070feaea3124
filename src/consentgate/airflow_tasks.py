"""What the Airflow tasks run: one code path for the three DAGs, in two execution modes.

Why this module exists: the DAG files in ``dags/`` must stay thin (Airflow parses them every
few seconds, so no heavy imports and no I/O at top level) and the same job code must run in
process on a laptop and on a real Spark cluster. Everything a task does lives here, split in
two halves:

* **Steps** (:data:`STEPS`) are the units of work, one per DAG task kind:
  ``decide_purge``, ``purge_dataset``, ``erase``, ``audit_summary``, ``gate_prepare``,
  ``gate_snapshot``, ``gate_publish``, ``gate_verify``, ``backfill``; and two whole flows,
  ``gate`` and ``purge`` (below), which no DAG task runs. A step takes a Spark
  session, the validated :class:`~consentgate.config.Config` and JSON arguments, and returns a
  small JSON-able dict (it travels as an XCom). Steps never import Airflow, so they also run in
  a ``spark-submit`` driver that has no Airflow installed.
* **Task helpers** (:func:`start_run`, :func:`run_step`, :func:`emit_asset_event`) run inside
  an Airflow task. They find the config, then either run the step in the task's own process on
  a local SparkSession (``airflow.mode: local``, the default) or build a
  ``SparkSubmitOperator`` that runs ``jobs/<step>.py`` on the cluster behind the Airflow
  connection ``airflow.spark_conn_id`` (``airflow.mode: spark-submit``).

The execution mode is read from the config when a task runs, never when the DAG is parsed, so
switching modes needs no DAG change and parsing does no I/O.

Where the config comes from, first match wins: the Airflow Variable ``consentgate_conf``, then
the environment variable ``CONSENTGATE_CONF``. The first task of every run (``validate``)
resolves it once and passes the absolute path to the other tasks in the run context, so one
run never mixes two configs even if the Variable is changed mid-run.

The nightly purge's schedule comes from the environment variable ``CONSENTGATE_PURGE_SCHEDULE``
(default ``0 2 * * *``), because the DAG file may not read the config at parse time. The
``validate`` task compares it with the config's ``airflow.purge_schedule`` and logs a warning
when they disagree, so a drift is visible in every run's log.

spark-submit mode, what ships where:

* ``py_files``: a zip of the installed ``consentgate`` package, built on demand and cached
  under the temp directory (or ``CONSENTGATE_PYFILES_DIR``), named by its content hash so a
  code change always ships a new zip.
* the application is ``jobs/<step>.py`` from the repository (or ``CONSENTGATE_JOBS_DIR``).
* ``jars``: Delta's jars from ``make jars`` (``consentgate.spark.delta_jars``), with the Delta
  SQL extension and catalog in ``conf``: spark-submit puts them on the driver's class path and
  ships them to the executors.
* the step's JSON arguments go in a file (``--args-file``) and its JSON result comes back
  through a result file (``--result``), both under ``CONSENTGATE_RESULT_DIR`` or the temp
  directory, because ``SparkSubmitOperator`` returns nothing and arguments can be large. The driver must therefore run
  where the task runs (client deploy mode, the default) or the result directory must be shared.
* ``spark.pyspark.python`` / ``spark.pyspark.driver.python`` default to the task's Python;
  the config's ``spark.conf`` is passed as ``--conf`` and overrides them. ``spark.master`` is
  ignored in this mode: the master is the Airflow connection's.

Whole flows, for schedulers other than our DAGs: the DAGs run the gate and the nightly purge
as one task per step (per dataset, even) so that Airflow shows, retries and maps each, and in
spark-submit mode each such task is an application that pays a driver's and executors'
start-up. A team that schedules without our DAGs (cron, its own ``SparkSubmitOperator``,
another orchestrator) can submit the whole gate (``jobs/gate.py``: prepare, snapshot every
dataset, publish, verify) or the whole nightly purge (``jobs/purge.py``: every table, erasure,
audit) as one application, with the same results as the DAGs'::

    spark-submit --master spark://HOST:7077 --py-files consentgate-<hash>.zip \
        --jars <Delta's jars, comma-separated> \
        jobs/purge.py --conf /lake/consentgate.yaml --args '{"as_of": null}'

(:func:`package_zip` builds the zip; :func:`job_main` documents the arguments and output.)
``backfill`` was already one application.

A step that fails with a :class:`~consentgate.errors.ConsentgateError` (bad config, bad schema,
refused gate, failed verification) fails the task *without retries*: it is deterministic and
retrying would only repeat it. Any other error (a lost executor, a crashed JVM) is left to the
task's retries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from consentgate.airflow_lineage import run_with_lineage, task_parent
from consentgate.config import Config, load_config
from consentgate.errors import ConfigError, ConsentgateError
from consentgate.openlineage_events import ParentRun

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Airflow Variable holding the config path.
CONF_VARIABLE: Final = "consentgate_conf"
#: Environment variable holding the config path (used when the Variable is not set).
CONF_ENV: Final = "CONSENTGATE_CONF"
#: Environment variable with the nightly purge's cron schedule.
SCHEDULE_ENV: Final = "CONSENTGATE_PURGE_SCHEDULE"
#: The nightly purge's schedule when :data:`SCHEDULE_ENV` is not set (02:00 UTC).
DEFAULT_PURGE_SCHEDULE: Final = "0 2 * * *"
#: The Asset a producer updates when consent records land (revocations above all): the purge
#: DAG runs on its events as well as on its cron schedule (:func:`purge_timetable`).
CONSENT_ASSET_NAME: Final = "consentgate/consent_records"
#: Environment variable with that Asset's URI (e.g. ``s3://lake/consent_records``), read when
#: the DAG file is parsed; without it the URI is the name.
CONSENT_ASSET_ENV: Final = "CONSENTGATE_CONSENT_ASSET_URI"
#: Where ``jobs/*.py`` live when not next to the package's source tree.
JOBS_DIR_ENV: Final = "CONSENTGATE_JOBS_DIR"
#: Where the shipped package zip is cached.
PYFILES_DIR_ENV: Final = "CONSENTGATE_PYFILES_DIR"
#: Where spark-submit jobs write their JSON result for the task to read.
RESULT_DIR_ENV: Final = "CONSENTGATE_RESULT_DIR"

#: Environment variable overriding every task's retry count (``dag.test()`` runs set 0).
RETRIES_ENV: Final = "CONSENTGATE_TASK_RETRIES"
#: Environment variable naming the Airflow pool every task that starts Spark runs in.
POOL_ENV: Final = "CONSENTGATE_SPARK_POOL"
#: The pool's name when :data:`POOL_ENV` is not set; ``make airflow`` creates it with one slot.
DEFAULT_POOL: Final = "consentgate_spark"

#: Asset alias under which the nightly purge and the backfill announce each dataset they changed.
PURGED_ALIAS: Final = "consentgate_purged_datasets"
#: Asset alias under which the gate announces each published training snapshot.
SNAPSHOT_ALIAS: Final = "consentgate_training_snapshots"

JSON = dict[str, Any]
Step = Callable[..., JSON]


# --------------------------------------------------------------------------------------------
# Small helpers


def purge_schedule() -> str:
    """The nightly purge's cron schedule: env ``CONSENTGATE_PURGE_SCHEDULE`` or 02:00 daily.

    Called when the DAG file is parsed, so it reads the environment only (no file I/O).
    """
    return os.environ.get(SCHEDULE_ENV, "").strip() or DEFAULT_PURGE_SCHEDULE


def consent_asset() -> Any:
    """The Asset for the consent table: ``consentgate/consent_records``, URI from env
    ``CONSENTGATE_CONSENT_ASSET_URI`` (or the name). Parse time: environment only."""
    from airflow.sdk import Asset

    uri = os.environ.get(CONSENT_ASSET_ENV, "").strip() or CONSENT_ASSET_NAME
    return Asset(name=CONSENT_ASSET_NAME, uri=uri)


def purge_timetable() -> Any:
    """The purge DAG's schedule: its cron (:func:`purge_schedule`, UTC) **or** an event on
    the consent table's Asset (:func:`consent_asset`), whichever comes first.

    A producer — the platform's consent service through Airflow's REST API (``POST
    /api/v2/assets/events``), or a task with the Asset among its ``outlets`` — announces new
    records, and the purge runs within a scheduler loop instead of at night. Events coalesce:
    the DAG has ``max_active_runs=1``, and Airflow queues one run per DAG whatever the number
    of events meanwhile; each run decides everything pending at its instant. Each such run
    costs what a night with removals costs (the consent table changed, so no quiescence
    certificate answers it); with no producer the schedule is the cron alone.
    """
    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.trigger import CronTriggerTimetable

    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(purge_schedule(), timezone="UTC"),
        assets=consent_asset(),
    )


def spark_pool() -> str:
    """The Airflow pool of every task that starts Spark: env ``CONSENTGATE_SPARK_POOL`` or
    ``consentgate_spark``.

    Each such task starts a JVM (a local SparkSession in ``local`` mode, a client-mode driver
    under ``spark-submit``), and a LocalExecutor would otherwise run the purge's mapped tasks
    and any other consentgate DAG's Spark tasks side by side: seven JVMs on two cores took a
    nearly empty nightly purge to 7 minutes (2026-12-06). The pool must exist; one slot runs
    one JVM at a time (``airflow pools set consentgate_spark 1 "..."``, which ``make airflow``
    does). On a cluster, where drivers run elsewhere (``deploy-mode cluster``) or workers are
    large, widen it (``airflow pools set consentgate_spark 4 ...``) or name another one.
    Tasks that start no JVM (``validate``, the gate's ``rollback``, the backfill's
    ``report``) stay in ``default_pool``. Called when a DAG file is parsed: environment only.
    """
    return os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL


def default_args(*, retries: int, retry_delay: dt.timedelta) -> dict[str, Any]:
    """A DAG's ``default_args``; env ``CONSENTGATE_TASK_RETRIES`` overrides the retry count.

    The override exists for ``dag.test()`` runs (tests, ``make demo``): there a retry waits out
    its delay in the foreground, so an unexpected error would stall the run for minutes.
    """
    override = os.environ.get(RETRIES_ENV, "").strip()
    return {
        "owner": "consentgate",
        "retries": int(override) if override.isdigit() else retries,
        "retry_delay": retry_delay,
    }


def jsonable(value: Any) -> Any:
    """Turn a step's result into plain JSON types (paths, instants and tuples included).

    XComs and the spark-submit result file both carry JSON; normalising here means a step may
    return ``Path`` or ``datetime`` values without every caller caring.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, dt.datetime):
        from consentgate.runtime import iso

        return iso(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return jsonable(to_json())
    return str(value)


def _instant(text: str | None) -> dt.datetime | None:
    from consentgate.runtime import parse_instant

    return parse_instant(text, name="as_of") if text else None


def _require_instant(text: str) -> dt.datetime:
    from consentgate.runtime import parse_instant

    return parse_instant(text, name="as_of")


def _spark(config: Config) -> SparkSession:
    from consentgate.spark import get_spark

    return get_spark(master=config.spark.master, conf=config.spark.conf)


# --------------------------------------------------------------------------------------------
# Validation (Spark-free: reads Delta logs only, so it always runs in the task's process)


def validate(
    config: Config,
    *,
    kind: str,
    as_of: str | None,
    dag_schedule: str | None = None,
    origin: str | None = None,
) -> JSON:
    """Check the config and every input table's schema before anything reads data.

    Reads only Delta logs (delta-rs), not data files, so it is cheap and needs no Spark; this is
    what lets a bad config or a renamed column fail the run in seconds instead of after a
    cluster job was scheduled.

    Args:
        config: The validated config (its paths were already checked by ``load_config``).
        kind: ``purge``, ``gate`` or ``backfill``; becomes the run id's prefix.
        as_of: Evaluation instant as ISO-8601, or None for now (UTC).
        dag_schedule: The purge DAG's effective schedule, compared with the config's.
        origin: The DAG run (:func:`consentgate.runtime.dag_run_origin`) the run id is
            derived from; None gives a random one.

    Returns:
        The run context every later task receives: ``kind``, ``run_id``, ``as_of``, ``mode``,
        ``use_cases``, ``datasets``, ``snapshots`` and the source tables' Delta ``versions``.

    Raises:
        ConfigError: the config names a path that is not a Delta table.
        SchemaError: a table lacks a needed column or has it with another type.
    """
    from pyspark.sql.types import StringType, TimestampType

    from consentgate import lake
    from consentgate.consent import ASSETS_SCHEMA, CONSENT_RECORDS_SCHEMA
    from consentgate.errors import TableError
    from consentgate.lineage import LINEAGE_SCHEMA
    from consentgate.runtime import iso, new_run_id, now_utc

    instant = _instant(as_of) or now_utc()
    versions: dict[str, int] = {}
    expected = {
        "consent_records": CONSENT_RECORDS_SCHEMA,
        "assets": ASSETS_SCHEMA,
        "lineage": LINEAGE_SCHEMA,
    }
    for table, schema in expected.items():
        path = config.table_path(table)  # type: ignore[arg-type]
        if not lake.is_table(path):
            raise ConfigError(f"tables.{table}: {path} is not a Delta table")
        delta = lake.open_table(path)
        lake.require_schema(lake.spark_schema(delta), schema, table=table)
        versions[table] = int(delta.version())
    for name, dataset in config.datasets.items():
        path = config.dataset_path(name)
        if not lake.is_table(path):
            raise ConfigError(f"datasets.{name}.path: {path} is not a Delta table")
        columns: dict[str, Any] = {dataset.key: StringType()}
        if dataset.asset_column:
            columns[dataset.asset_column] = StringType()
        if dataset.derived_at_column:
            columns[dataset.derived_at_column] = TimestampType()
        try:
            delta = lake.open_table(path)
            lake.require_schema(lake.spark_schema(delta), columns, table=name)
        except TableError as exc:
            raise type(exc)(f"datasets.{name}: {exc}") from None
        versions[name] = int(delta.version())
    if kind == "purge" and dag_schedule and dag_schedule != config.airflow.purge_schedule:
        log.warning(
            "consentgate_nightly_purge runs on %r (env %s) but the config says "
            "airflow.purge_schedule=%r; set %s to the config's value and re-parse the DAG",
            dag_schedule,
            SCHEDULE_ENV,
            config.airflow.purge_schedule,
            SCHEDULE_ENV,
        )
    return {
        "kind": kind,
        "run_id": new_run_id(kind, at=instant, origin=origin),
        "as_of": iso(instant),
        # A filled-in run start is "now", not a back-dated instant the gate must refuse.
        "as_of_explicit": as_of is not None,
        "conf": str(config.source) if config.source else None,
        "lake_root": str(config.lake_root),
        "mode": config.airflow.mode,
        "use_cases": sorted({d.use_case for d in config.datasets.values()}),
        "datasets": sorted(config.datasets),
        "versions": versions,
    }


# --------------------------------------------------------------------------------------------
# Steps: run in the task's process (local mode) or in a spark-submit driver


def step_decide_purge(spark: SparkSession, config: Config, *, as_of: str, run_id: str) -> JSON:
    """The nightly purge's ``decide`` task: decide consent once for the whole run.

    :func:`consentgate.purge.plan_purge` evaluates consent for every use case and walks
    lineage once for every configured dataset and registered snapshot, and materialises each
    table's decision (the rows to remove located in its files, as digests) under
    :func:`consentgate.purge.run_dir` for the run's mapped ``purge_dataset`` tasks, which only
    load it (:func:`step_purge_dataset`). The work tables are removed by ``audit_summary``
    (:func:`record_purge`); those of a run killed before it are removed here, by the next
    run: every run's directory but this one under ``purge_runs/``, which is safe because the
    DAG has ``max_active_runs=1`` and nothing else materialises decisions.

    A table that could not be decided (missing, corrupt data file) is still a target, with
    ``error`` in the plan: its own mapped task fails with that message, while every other
    table is purged.

    Returns:
        ``targets`` (the names the mapped task expands over, configured datasets first, then
        snapshots by name) and ``plan`` (``as_of``, ``run_id``, ``rows_deleted`` and per
        table: path, use case, configured or not, and either the decided Delta version, rows,
        files, rows and files to remove and reasons, or ``error``). Counts and names only.
    """
    from consentgate.purge import discard_other_runs, plan_purge, target_path, targets

    stale = discard_other_runs(config, run_id)
    if stale:
        log.info("purge decide: removed the work tables of %d earlier run(s)", stale)
    decided = plan_purge(spark, config, as_of=_instant(as_of), run_id=run_id)
    known = targets(config)
    tables: JSON = {}
    for name in [*decided.datasets, *decided.failed]:
        dataset = known.get(name)
        entry: JSON = {}
        if dataset is not None:
            entry.update(
                path=str(target_path(config, name, dataset)),
                use_case=dataset.use_case,
                use_case_configured=dataset.use_case in config.use_cases,
            )
        if name in decided.failed:
            entry["error"] = decided.failed[name]
        else:
            table = decided.datasets[name]
            entry.update(
                version=table.version,
                rows=table.rows_before,
                files=table.files_total,
                rows_deleted=table.rows_removed,
                files_affected=len(table.files),
                reasons=dict(sorted(table.reasons.items())),
            )
        tables[name] = entry
    plan: JSON = {
        "as_of": as_of,
        "run_id": run_id,
        "rows_deleted": sum(t.rows_removed for t in decided.datasets.values()),
        "tables": tables,
    }
    return {"targets": _plan_targets(tables, config), "plan": jsonable(plan)}


def _plan_targets(tables: Mapping[str, Any], config: Config) -> list[str]:
    """The table names a plan covers, configured datasets first, then snapshots by name."""
    ordered = [n for n in config.datasets if n in tables]
    return ordered + sorted(n for n in tables if n not in config.datasets)


def step_purge_dataset(
    spark: SparkSession,
    config: Config,
    *,
    name: str,
    as_of: str,
    run_id: str,
    dry_run: bool = False,
) -> JSON:
    """Purge one dataset or snapshot (the mapped task's body); adds ``name`` and ``path``.

    The table's decision is the run's, loaded from the work tables the ``decide`` task
    materialised (:func:`consentgate.purge.load_decision`): consent is never decided here,
    and a retried task loads the same decision (a concurrent writer's rows are re-located
    with it, see :mod:`consentgate.purge`).

    Raises:
        DecisionMissing: the run has no decision for the table (its ``decide`` task did not
            finish, or the work tables were removed); names the table and the run.
        DecideFailed: ``decide`` could not decide the table; its recorded message.
    """
    from consentgate.purge import load_decision, purge_dataset, target_path, targets
    from consentgate.runtime import parse_instant

    instant = parse_instant(as_of, name="as_of")  # the run's instant, fixed by validate
    run = load_decision(spark, config, run_id, name, as_of=instant)
    try:
        result = jsonable(
            purge_dataset(
                spark, config, name, as_of=instant, run_id=run_id, dry_run=dry_run, run=run
            )
        )
    finally:
        run.release()
    path = target_path(config, name, targets(config)[name])
    return {"name": name, "path": str(path), **result}


def step_erase(spark: SparkSession, config: Config, *, run_id: str, targets: list[str]) -> JSON:
    """Physically erase what purges removed longer ago than the window, and verify it on disk.

    ``targets`` are the tables whose purge succeeded; each is erased on its own
    (:func:`consentgate.purge.erase_tables`), so one whose erasure raises never stops the
    others'.

    Raises:
        CheckFailed: a removed key is still present in a file on disk, or a table's erasure
            failed for a reason of ours (names the tables; raised after every other table
            was erased).
        RuntimeError: a table's erasure failed for a reason that may pass (Spark's error, an
            unreadable file): the task is retried, after every other table was erased.
    """
    from consentgate.errors import CheckFailed
    from consentgate.purge import erase_tables

    erased, failed = erase_tables(spark, config, run_id=run_id, names=targets)
    result: JSON = jsonable(erased)
    if not result.get("ok"):
        unverified = sorted(
            n for n, r in result.get("datasets", {}).items() if r.get("result") != "verified"
        )
        problems = (
            [f"erasure verification failed for {', '.join(unverified)}"] if unverified else []
        )
        problems += [str(exc) for _, exc in sorted(failed.items())]
        if any(not isinstance(exc, ConsentgateError) for exc in failed.values()):
            # not known to be deterministic (a lost executor, an unreadable file): retryable,
            # raised only after every other table was erased
            raise RuntimeError("; ".join(problems))
        raise CheckFailed("; ".join(problems))
    return result


def step_audit_summary(
    spark: SparkSession,
    config: Config,
    *,
    kind: str,
    run_id: str,
    as_of: str,
    datasets: Mapping[str, Mapping[str, Any]],
    erasure: Mapping[str, Any],
    failed: Mapping[str, str] | None = None,
    decisions_bound: bool = False,
    orchestration: Mapping[str, str] | None = None,
) -> JSON:
    """Append the run's summary to the audit log, then check the log's hash chain.

    The entry is the one ``consentgate purge`` writes (same kind, same payload, ``failed``
    naming the tables whose purge or erasure failed when there are any), so the audit trail
    does not depend on whether a purge ran from the command line or from Airflow.

    With ``decisions_bound`` (the run found the lake as it left it: the task certifies it),
    the result also carries ``decisions_hold_until``
    (:func:`consentgate.flips.decision_flips`: the Delta log's statistics, at most one Spark
    job on this session).
    """
    from consentgate import audit
    from consentgate.errors import CheckFailed
    from consentgate.purge import run_payload

    payload = run_payload(as_of, datasets, erasure, failed=failed, orchestration=orchestration)
    entry = audit.append_event(spark, config, kind=kind, run_id=run_id, payload=payload)
    chain = jsonable(audit.verify_chain(spark, config))
    if not chain.get("ok"):
        raise CheckFailed(f"audit log hash chain is broken: {chain.get('problems')}")
    from consentgate.heads import published

    # the heads after the entry, kept in this task's XCom too (consentgate.heads)
    out: JSON = {"entry_sha256": entry, "chain": chain, "heads": published(config.lake_root)}
    if decisions_bound:
        from consentgate.flips import decision_flips

        out["decisions_hold_until"] = decision_flips(spark, config, as_of=_require_instant(as_of))
    return out


def step_gate_prepare(
    spark: SparkSession,
    config: Config,
    *,
    use_case: str,
    model_version: str,
    datasets: list[str] | None,
    as_of: str,
    as_of_explicit: bool = True,
    run_id: str | None = None,
    orchestration: Mapping[str, str] | None = None,
) -> JSON:
    """Compute the allowlist and fix the gate run's facts; refuses before any snapshot.

    ``run_id`` is the DAG run's (from ``validate``): one id in XComs, manifest, audit and
    commits, and a retry of this step takes back its earlier attempt's claim.
    ``orchestration`` (:func:`orchestration`) goes into the manifest.
    """
    from consentgate.gate import prepare_gate

    return jsonable(  # type: ignore[no-any-return]
        prepare_gate(
            spark,
            config,
            use_case=use_case,
            model_version=model_version,
            datasets=datasets,
            as_of=_instant(as_of),
            as_of_explicit=as_of_explicit,
            run_id=run_id,
            orchestration=orchestration,
        )
    )


def orchestration(run: Mapping[str, Any]) -> dict[str, str] | None:
    """The DAG run a run context belongs to, as manifests and audit entries record it:
    ``{"dag_id", "dag_run_id"}``, or None outside Airflow."""
    dag_id, dag_run_id = run.get("dag_id"), run.get("dag_run_id")
    if not dag_id or not dag_run_id:
        return None
    return {"dag_id": str(dag_id), "dag_run_id": str(dag_run_id)}


def step_gate_snapshot(spark: SparkSession, config: Config, *, run: JSON, dataset: str) -> JSON:
    """Cut one dataset's training snapshot from the allowlist (the mapped task's body)."""
    from consentgate.gate import snapshot_dataset

    return jsonable(snapshot_dataset(spark, config, run=run, dataset=dataset))  # type: ignore[no-any-return]


def step_gate_publish(
    spark: SparkSession, config: Config, *, run: JSON, snapshots: list[JSON]
) -> JSON:
    """Write the manifest and append it to the registry (the only publishing step)."""
    from consentgate.gate import publish_gate

    return jsonable(publish_gate(spark, config, run=run, snapshots=snapshots))  # type: ignore[no-any-return]


def step_gate_verify(spark: SparkSession, config: Config, *, manifest_path: str) -> JSON:
    """Re-hash every snapshot file and the manifest itself; a problem fails the run."""
    from consentgate.errors import CheckFailed
    from consentgate.manifest import verify_manifest

    report = jsonable(verify_manifest(Path(manifest_path)))  # no Spark needed
    if not report.get("ok"):
        raise CheckFailed(f"manifest {manifest_path} does not verify: {report.get('problems')}")
    return report  # type: ignore[no-any-return]


def step_backfill(
    spark: SparkSession,
    config: Config,
    *,
    as_of: str,
    dry_run: bool,
    run_id: str | None = None,
    orchestration: Mapping[str, str] | None = None,
) -> JSON:
    """Re-evaluate under the current policy, purge what no longer complies, report impact.

    ``run_id`` is the DAG run's (from ``validate``), the backfill's id in its audit entry and
    commits; ``orchestration`` (:func:`orchestration`) names the DAG run in the entry.

    A backfill in which some tables failed is returned (``ok`` false, ``failed{}``, ``error``)
    rather than raised: the report task must still announce the tables it changed, then it
    fails the run (see :func:`backfill_report`).
    """
    from consentgate.purge import PurgeFailed, run_backfill

    try:
        result = run_backfill(
            spark,
            config,
            as_of=_instant(as_of),
            dry_run=dry_run,
            run_id=run_id,
            orchestration=orchestration,
        )
    except PurgeFailed as exc:
        result = {**exc.result, "ok": False, "error": str(exc)}
    return jsonable(result)  # type: ignore[no-any-return]


def step_gate(
    spark: SparkSession,
    config: Config,
    *,
    use_case: str,
    model_version: str,
    datasets: list[str] | None = None,
    as_of: str | None = None,
) -> JSON:
    """The whole gate in one step: what the gate DAG's tasks do, without Airflow.

    For a scheduler other than our DAGs (cron, another orchestrator, a team's own
    ``SparkSubmitOperator``): one application instead of one per gate step, each of which
    pays a driver's and executors' start-up on a cluster. It runs
    :func:`consentgate.gate.run_gate` (allowlist, every snapshot, manifest, registry, audit;
    everything rolled back when it fails before publishing), then re-verifies the manifest
    as the DAG's ``verify`` task does, so a caller gets the same result and the same failure.

    Returns:
        What the DAG's ``verify`` task returns: the published run (``manifest_path``,
        ``manifest_sha256``, ``snapshots``, ``snapshot_rows``, ``allowlist_assets``,
        ``allowlist_root``, ``exclusions``, ...) and ``verification``.

    Raises:
        CheckFailed: the gate refused, or the published manifest does not verify.
        ConsentgateError: bad input, as ``consentgate gate`` (exit 2).
    """
    from consentgate.gate import run_gate

    published: JSON = jsonable(
        run_gate(
            spark,
            config,
            use_case=use_case,
            model_version=model_version,
            datasets=datasets,
            as_of=_instant(as_of),
        )
    )
    report = step_gate_verify(spark, config, manifest_path=str(published["manifest_path"]))
    return {**published, "verification": report}


def step_purge(
    spark: SparkSession,
    config: Config,
    *,
    as_of: str | None = None,
    dry_run: bool = False,
    erase: bool = True,
) -> JSON:
    """The whole nightly purge in one step: every dataset and snapshot, erasure, audit.

    For a scheduler other than our DAGs, as :func:`step_gate`: one application instead of one
    per table plus the erasure and the audit. It is :func:`consentgate.purge.run_purge`, the
    same code as ``consentgate purge`` (consent and lineage decided once for every table).

    Unlike :func:`step_backfill`, a purge in which some tables failed is raised, not returned:
    the backfill DAG has a report task that announces the tables that did change and then
    fails the run, but whoever submits this step has only the application's exit status to
    go by, and a purge that left rows in place must not exit 0. What it did to every other
    table is not lost: :func:`job_main` prints :class:`~consentgate.purge.PurgeFailed`'s
    result with the error, as the command line does.

    Raises:
        PurgeFailed: some tables failed or the erasure did not verify (exit 1), after every
            other table was purged, erased and the run audited.
    """
    from consentgate.purge import run_purge

    result = run_purge(spark, config, as_of=_instant(as_of), dry_run=dry_run, erase=erase)
    return jsonable(result)  # type: ignore[no-any-return]


#: Every step a task can run, by the name ``jobs/<name>.py`` is submitted under.
STEPS: Final[dict[str, Step]] = {
    "decide_purge": step_decide_purge,
    "purge_dataset": step_purge_dataset,
    "erase": step_erase,
    "audit_summary": step_audit_summary,
    "gate_prepare": step_gate_prepare,
    "gate_snapshot": step_gate_snapshot,
    "gate_publish": step_gate_publish,
    "gate_verify": step_gate_verify,
    "backfill": step_backfill,
    # Whole flows in one application, for schedulers other than our DAGs (which run the steps
    # above one task each); see "Whole flows" in the module docstring.
    "gate": step_gate,
    "purge": step_purge,
}


def run_step_here(
    step: str, config: Config, args: Mapping[str, Any], *, parent: ParentRun | None = None
) -> JSON:
    """Run a step in this process on the session the config asks for, inside its flow's
    OpenLineage events (:mod:`consentgate.airflow_lineage`; ``parent``: the Airflow task)."""
    if step not in STEPS:
        raise ConsentgateError(f"step: unknown step {step!r} (known: {', '.join(STEPS)})")

    def run() -> JSON:
        return jsonable(STEPS[step](_spark(config), config, **dict(args)))  # type: ignore[no-any-return]

    return run_with_lineage(step, config, args, run, parent=parent)


def job_main(step: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/<step>.py`` under spark-submit.

    Prints one JSON object on stdout and writes the same object to ``--result`` so the Airflow
    task can read it back: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": ...,
    "error_type": ..., "exit_code": n}`` (with ``result`` too when the error carries a partial
    one: a purge with a failed table). Exits 0, 1 (check failed) or 2 (bad input) like the
    command line; anything else propagates (a traceback and a non-zero exit) so Airflow retries.

    Arguments: ``--conf FILE`` (the config), the step's keyword arguments as a JSON object in
    ``--args '{...}'`` or ``--args-file FILE``, and ``--result FILE``.
    """
    parser = argparse.ArgumentParser(prog=f"jobs/{step}.py", description=f"consentgate {step}")
    parser.add_argument("--conf", required=True, help="config file")
    parser.add_argument("--args", default="{}", help="the step's arguments as a JSON object")
    parser.add_argument("--args-file", help="read the step's JSON arguments from this file")
    parser.add_argument("--result", help="also write the JSON result to this file")
    ns = parser.parse_args(argv)
    from consentgate.logs import configure_cli_logging

    configure_cli_logging()  # the step lines go to the driver's stderr, the task log
    spark = None
    try:
        config = load_config(ns.conf)
        from consentgate.spark import get_spark

        spark = get_spark(conf=config.spark.conf, app_name=f"consentgate-{step}")
        if step not in STEPS:
            raise ConsentgateError(f"step: unknown step {step!r}")
        args = json.loads(Path(ns.args_file).read_text() if ns.args_file else ns.args)

        def run() -> JSON:
            return jsonable(STEPS[step](spark, config, **args))  # type: ignore[no-any-return]

        # the parent (the Airflow task) comes in the environment: OPENLINEAGE_CONTEXT
        outcome: JSON = {"ok": True, "result": run_with_lineage(step, config, args, run)}
        code = 0
    except ConsentgateError as exc:
        outcome = {
            "ok": False,
            "error": str(exc),
            "error_type": type(exc).__name__,
            "exit_code": exc.exit_code,
        }
        partial = getattr(exc, "result", None)
        if isinstance(partial, Mapping):
            # A run that failed in part (a purge with a failed table): what it did to every
            # other table is part of the answer, as on the command line.
            outcome["result"] = jsonable(partial)
        code = exc.exit_code
    finally:
        if spark is not None:
            spark.stop()
    text = json.dumps(outcome, sort_keys=True)
    if ns.result:
        Path(ns.result).write_text(text)
    print(text, flush=True)
    return code


# --------------------------------------------------------------------------------------------
# Shipping the code for spark-submit


def jobs_dir() -> Path:
    """The directory holding ``jobs/<step>.py``: ``CONSENTGATE_JOBS_DIR`` or the repository's.

    Raises:
        ConfigError: neither exists (e.g. the package was installed without its repository).
    """
    configured = os.environ.get(JOBS_DIR_ENV)
    candidate = Path(configured) if configured else Path(__file__).resolve().parents[2] / "jobs"
    if not candidate.is_dir():
        raise ConfigError(
            f"{JOBS_DIR_ENV}: job scripts directory {candidate} does not exist; set it to the "
            "repository's jobs/ directory"
        )
    return candidate


def package_zip() -> Path:
    """A zip of the ``consentgate`` package for ``--py-files``, cached by content hash.

    The zip is deterministic (sorted entries, fixed timestamps), so its name changes exactly
    when the code does; building it on demand means spark-submit always ships the code the
    Airflow worker is running, with no separate build step to forget.
    """
    package = Path(__file__).resolve().parent
    files = sorted(
        p for p in package.rglob("*") if p.is_file() and (p.suffix == ".py" or p.name == "py.typed")
    )
    files = [p for p in files if "__pycache__" not in p.parts]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    root = Path(
        os.environ.get(PYFILES_DIR_ENV) or Path(tempfile.gettempdir()) / "consentgate-pyfiles"
    )
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"consentgate-{digest.hexdigest()[:16]}.zip"
    if target.is_file():
        return target
    fd, tmp_name = tempfile.mkstemp(dir=root, suffix=".zip.tmp")
    os.close(fd)
    with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(
                f"consentgate/{path.relative_to(package).as_posix()}",
                date_time=(1980, 1, 1, 0, 0, 0),
            )
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    os.replace(tmp_name, target)
    return target


def _spark_bin_path() -> str:
    """PATH with the directory of pyspark's ``spark-submit`` appended, so the hook finds it.

    ``SparkSubmitOperator`` runs ``spark-submit`` from PATH; a venv's ``bin`` is often not on
    the worker's PATH, and pyspark's own copy is always next to the package.
    """
    path = os.environ.get("PATH", "")
    if shutil.which("spark-submit", path=path):
        return path
    extra = [str(Path(sys.executable).parent)]
    try:
        import pyspark

        extra.append(str(Path(pyspark.__file__).parent / "bin"))
    except ImportError:  # pragma: no cover - pyspark is a dependency
        pass
    return os.pathsep.join([path, *extra]) if path else os.pathsep.join(extra)


def submit_step(step: str, config: Config, args: Mapping[str, Any], context: Any) -> JSON:
    """Run a step as ``spark-submit jobs/<step>.py`` through ``SparkSubmitOperator``.

    Args:
        step: A name in :data:`STEPS`.
        config: The run's config (its ``source`` is passed to the job).
        args: The step's JSON arguments.
        context: The running task's Airflow context.

    Raises:
        AirflowFailException: the job reported a consentgate error (no retry).
        AirflowException: spark-submit failed otherwise (left to the task's retries).
    """
    from airflow.exceptions import AirflowFailException
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    if config.source is None:
        raise ConfigError("--conf: spark-submit mode needs the config to come from a file")
    script = jobs_dir() / f"{step}.py"
    if not script.is_file():
        raise ConfigError(f"{JOBS_DIR_ENV}: {script} does not exist")
    from consentgate.spark import (
        DELTA_CONF,
        JARS_ENV,
        delta_jars,
        quiet_jvm_conf,
        spark_conf_dir,
    )

    jars = delta_jars()
    python = sys.executable
    spark_conf = {
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        **DELTA_CONF,
        **config.spark.conf,
    }
    # The submitted driver's JVM keeps quiet too (its stderr becomes the task log).
    spark_conf.update(
        quiet_jvm_conf(
            spark_conf,
            environ=os.environ,
            interactive=False,
            conf_dir=spark_conf_dir(os.environ),
        )
    )
    result_root = os.environ.get(RESULT_DIR_ENV) or None
    if result_root:
        Path(result_root).mkdir(parents=True, exist_ok=True)
    result_dir = Path(tempfile.mkdtemp(prefix=f"consentgate-{step}-", dir=result_root))
    result_file = result_dir / "result.json"
    # Arguments go in a file, not on the command line: the gate's publish step carries every
    # snapshot file's digest, which can outgrow ARG_MAX and would flood the submit log.
    args_file = result_dir / "args.json"
    args_file.write_text(json.dumps(jsonable(dict(args)), sort_keys=True))
    task_id = getattr(context.get("ti"), "task_id", step) if hasattr(context, "get") else step
    parent = task_parent(context, step)
    operator = SparkSubmitOperator(
        task_id=f"{task_id}__spark_submit",
        application=str(script),
        py_files=str(package_zip()),
        # Delta's jars from `make jars`, shipped with the job (driver and executors): no
        # run-time package resolution on the cluster.
        jars=",".join(str(j) for j in jars),
        conn_id=config.airflow.spark_conn_id,
        conf=spark_conf,
        application_args=[
            "--conf",
            str(config.source),
            "--args-file",
            str(args_file),
            "--result",
            str(result_file),
        ],
        name=f"consentgate-{step}",
        env_vars={
            "PATH": _spark_bin_path(),
            "PYSPARK_PYTHON": spark_conf["spark.pyspark.python"],
            "PYSPARK_DRIVER_PYTHON": spark_conf["spark.pyspark.driver.python"],
            # The job's package comes from a py_files zip, so it cannot find the repository's
            # .jars/ on its own: tell it where they are (the driver runs here, client mode).
            JARS_ENV: str(jars[0].parent),
            # the job's OpenLineage events nest under this task (consentgate.airflow_lineage)
            **(parent.context_env() if parent is not None else {}),
        },
        allow_nested_operators=True,
    )
    try:
        try:
            operator.execute(context)
        except Exception:
            outcome = _read_outcome(result_file)
            if outcome is not None and not outcome.get("ok"):
                raise AirflowFailException(
                    f"{step}: {outcome.get('error_type')}: {outcome.get('error')}"
                ) from None
            raise
        outcome = _read_outcome(result_file)
        if outcome is None or not outcome.get("ok"):
            raise AirflowFailException(f"{step}: spark-submit job wrote no result to {result_file}")
        result: JSON = outcome["result"]
        return result
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)


def _read_outcome(path: Path) -> JSON | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------
# Task helpers (run inside an Airflow task)


def conf_path() -> Path:
    """The config file: env ``CONSENTGATE_CONF``, else the Airflow Variable ``consentgate_conf``.

    The environment comes first (decision, issue #24 item 3), as in Airflow's own order for
    Variables (an ``AIRFLOW_VAR_...`` variable wins over the metadata DB's): a deployment that
    configures its workers by environment then never asks the API server for a Variable that
    does not exist, whose absence the task SDK's client logs at ERROR ("Variable not found")
    on every run. Only when neither is set is the Variable asked for, and that ERROR line then
    stands beside ours.

    Raises:
        ConfigError: neither is set.
    """
    value: Any = os.environ.get(CONF_ENV)
    if not value:
        from airflow.sdk import Variable

        try:
            value = Variable.get(CONF_VARIABLE, default=None)
        except Exception as exc:  # no metadata DB or API server reachable
            log.debug("Airflow Variable %s unavailable: %s", CONF_VARIABLE, exc)
    if not value:
        raise ConfigError(
            f"{CONF_VARIABLE}: set the environment variable {CONF_ENV} or the Airflow Variable "
            f"{CONF_VARIABLE} to the consentgate config file"
        )
    return Path(str(value)).expanduser().resolve()


def _fail_fast(exc: ConsentgateError) -> BaseException:
    from airflow.exceptions import AirflowFailException

    return AirflowFailException(f"{type(exc).__name__}: {exc}")


def start_run(
    kind: str,
    *,
    as_of: str | None = None,
    dry_run: bool = False,
    dag_schedule: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSON:
    """First task of every DAG run: find and validate the config, fix the run's instant and id.

    Returns:
        The run context (see :func:`validate`, its ``run_id`` derived from the DAG run) plus
        ``conf``, ``dry_run``, ``dag_id``, ``dag_run_id`` and ``extra``; every later task
        takes it as its first argument.
    """
    from airflow.sdk import get_current_context

    from consentgate.runtime import dag_run_origin

    outcome_pending()  # every DAG's all_done tasks read the run context (None: validate failed)
    dag_run = get_current_context().get("dag_run")
    dag_id, dag_run_id = getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", None)
    origin = dag_run_origin(dag_id, dag_run_id) if dag_id and dag_run_id else None
    try:
        path = conf_path()
        config = load_config(path)
        run = validate(config, kind=kind, as_of=as_of, dag_schedule=dag_schedule, origin=origin)
    except ConsentgateError as exc:
        raise _fail_fast(exc) from exc
    run.update(
        conf=str(path),
        dry_run=bool(dry_run),
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        **dict(extra or {}),
    )
    # The line that links the DAG run to the id every later step line, manifest and audit
    # entry of this run carries (derived from it: :func:`consentgate.runtime.new_run_id`).
    log.info("run %s is DAG run %s of %s", run["run_id"], dag_run_id, dag_id)
    return run


def run_step(run: Mapping[str, Any], step: str, /, **args: Any) -> JSON:
    """Run one step for a DAG run, in process or via spark-submit as the config says.

    Args:
        run: The run context from :func:`start_run` (its ``conf`` is used, not the Variable,
            so one run never mixes configs).
        step: A name in :data:`STEPS`.
        **args: The step's JSON arguments (``run`` and ``step`` are positional-only so that a
            step may take an argument named ``run``, as the gate's steps do).
    """
    from airflow.sdk import get_current_context

    try:
        config = load_config(run["conf"])
        context = get_current_context()
        if config.airflow.mode == "spark-submit":
            return submit_step(step, config, args, context)
        return run_step_here(step, config, args, parent=task_parent(context, step))
    except ConsentgateError as exc:
        raise _fail_fast(exc) from exc


def emit_asset_event(alias: str, *, name: str, uri: str, extra: Mapping[str, Any]) -> None:
    """Attach an Asset event to ``alias`` from the running task.

    Assets are attached through an alias because which tables a run changes (or which model
    version it publishes) is only known at run time; a downstream DAG can schedule on the alias
    or on a concrete asset such as ``consentgate/dataset/track_embeddings``.
    """
    from airflow.sdk import Asset, AssetAlias, get_current_context

    events = get_current_context()["outlet_events"]
    events[AssetAlias(alias)].add(Asset(name=name, uri=uri), extra=dict(jsonable(extra)))


def dataset_asset(name: str, path: str | Path) -> tuple[str, str]:
    """Asset name and URI for a dataset or snapshot table: ``consentgate/dataset/<name>``."""
    return f"consentgate/dataset/{name}", Path(path).resolve().as_uri()


def snapshot_asset(model_version: str, path: str | Path) -> tuple[str, str]:
    """Asset name and URI for a model version's training snapshot."""
    return f"consentgate/snapshot/{model_version}", Path(path).resolve().as_uri()


# --------------------------------------------------------------------------------------------
# DAG-specific task bodies (small: the work is in the steps)


def _push_xcom(key: str, value: Any) -> None:
    from airflow.sdk import get_current_context

    get_current_context()["ti"].xcom_push(key=key, value=value)


def outcome_pending(*keys: str) -> None:
    """Push each XCom ``key`` of this task (default: its return value) as null before its
    work, so a task that fails still leaves an outcome for the all_done tasks that read it.

    Why (issue #24 item 3): an all_done task (the purge's ``erase_and_verify`` and
    ``audit_summary``, the gate's ``rollback``) reads its upstream tasks' XComs whatever their
    outcome; an absent one reads as None too, but the task SDK's client first logs
    ``[error] XCom not found`` for it, on every failed run. Null is what the readers already
    take for "that task did not finish"; a task that succeeds overwrites it with its result.
    """
    for key in keys or ("return_value",):
        _push_xcom(key, None)


def purge_decide(run: Mapping[str, Any]) -> list[str]:
    """The purge's ``decide`` task (:func:`step_decide_purge`): the run's decisions, once, for
    every table, and the tables to visit as the list the mapped task expands.

    The plan's summary is pushed as XCom ``plan`` (Airflow cannot map over a dict's key).
    """
    outcome_pending()
    decided = run_step(run, "decide_purge", as_of=run["as_of"], run_id=run["run_id"])
    _push_xcom("plan", decided.get("plan"))
    return [str(name) for name in decided["targets"]]


def gate_prepare(run: Mapping[str, Any]) -> list[str]:
    """The gate's ``evaluate`` task: allowlist and refusals, then what the mapped task needs.

    Returns:
        The datasets to snapshot (what the mapped ``snapshot`` task expands over); the gate
        run's facts, which every later gate step takes, are pushed as XCom ``gate`` because
        Airflow cannot map over one key of a dict.
    """
    outcome_pending("gate")
    gate = run_step(
        run,
        "gate_prepare",
        use_case=run["use_case"],
        model_version=run["model_version"],
        datasets=run.get("requested_datasets"),
        as_of=run["as_of"],
        as_of_explicit=bool(run.get("as_of_explicit", True)),
        run_id=run["run_id"],
        orchestration=orchestration(run),
    )
    _push_xcom("gate", gate)
    return [str(name) for name in gate["datasets"]]


def mapped_results(results: Sequence[Any] | None) -> list[Any]:
    """The results of a mapped task's instances that pushed one, in map-index order.

    A downstream task receives a mapped task's output as Airflow's lazy sequence. Iterating it
    (``list(results)``, a ``for`` loop) asks the API for one item after the other until one is
    *not found*, which the task SDK's client logs as ``[error] XCom not found`` after every
    complete read (issue #24). A slice asks once for all of them and gets exactly those that
    exist (a failed instance's is missing, as with iteration). ``None`` (nothing was mapped)
    gives an empty list; a plain list is copied.
    """
    if results is None:
        return []
    return list(results[:])


def pull_xcom(task_id: str, *, key: str = "return_value") -> Any:
    """An upstream task's XCom, or None when that task did not push it.

    Asked only of a task that ran (its state, from the API): a task that never started
    (upstream failed, skipped) has no XCom, and pulling one logs "XCom not found" at ERROR
    (issue #24 item 3); a task that ran and failed left null (:func:`outcome_pending`).
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    ti = get_current_context()["ti"]
    try:
        states = RuntimeTaskInstance.get_task_states(
            dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id]
        )
        if states.get(ti.run_id, {}).get(task_id) not in ("success", "failed"):
            return None
        return ti.xcom_pull(task_ids=task_id, key=key)
    except Exception as exc:  # a missing XCom is an outcome here, not an error
        log.info("no XCom %s from %s: %s", key, task_id, exc)
        return None


def gate_rollback(run: Mapping[str, Any], gate: Mapping[str, Any] | None) -> JSON:
    """Remove what an unpublished gate run wrote, so the model version can be gated again.

    Runs after the snapshot and manifest tasks whatever their outcome. A published run (its
    model version is in the registry) is never touched: its snapshots are evidence. Snapshots
    are removed only while this run holds the model version's claim (a run that lost the race
    for it removes nothing under ``snapshots/<V>``), and the claim is released.
    """
    from consentgate import gate as gate_job
    from consentgate import registry

    try:
        config = load_config(run["conf"])
        if gate is None:
            # evaluate failed before it pushed the run. It releases its claim on any failure
            # Python sees; one left by an attempt that died (same run id) is released here,
            # with that attempt's allowlist and work tables. No snapshot was cut.
            model_version = str(run["model_version"])
            if registry.find_entry(config, model_version=model_version) is not None:
                return {"rolled_back": False, "published": True}
            run_id = str(run["run_id"])
            if not gate_job.holds_claim(config, model_version=model_version, run_id=run_id):
                return {"rolled_back": False, "published": False, "reason": "nothing was written"}
            allowlist = registry.relative_to_lake(config, gate_job.allowlist_path(config, run_id))
            gate = {
                "run_id": run_id,
                "model_version": model_version,
                "datasets": [],
                "allowlist": {"path": allowlist},
            }
        # The snapshot tasks ran in other processes: which of them wrote is unknown here, and
        # the claim is what makes removing every dataset of the run safe (see rollback_gate).
        result = gate_job.rollback_gate(config, gate)
    except ConsentgateError as exc:
        raise _fail_fast(exc) from exc
    if result["published"]:
        return {"rolled_back": False, "published": True}
    return {
        "rolled_back": True,
        "published": False,
        "run_id": gate["run_id"],
        "held_claim": result["held_claim"],
        "removed_snapshots": result["removed_snapshots"],
    }


def announce_snapshot(run: Mapping[str, Any], published: Mapping[str, Any]) -> None:
    """Emit the model version's snapshot Asset, carrying what a training DAG needs to find it."""
    from consentgate import registry

    config = load_config(run["conf"])
    model_version = str(published["model_version"])
    name, uri = snapshot_asset(model_version, registry.snapshots_root(config, model_version))
    emit_asset_event(
        SNAPSHOT_ALIAS,
        name=name,
        uri=uri,
        extra={
            "model_version": model_version,
            "use_case": published.get("use_case"),
            "run_id": published.get("run_id"),
            "manifest_path": published.get("manifest_path"),
            "manifest_sha256": published.get("manifest_sha256"),
            "snapshots": published.get("snapshots", {}),
            # read each snapshot at its sealed version (issue #23 item 3)
            "snapshot_versions": published.get("snapshot_versions", {}),
            "allowlist_assets": published.get("allowlist_assets"),
        },
    )


def _changed(result: Mapping[str, Any]) -> bool:
    deleted = result.get("rows_deleted")
    if isinstance(deleted, int):
        return deleted > 0
    return result.get("version_after") not in (None, result.get("version_before"))


def announce_purge(run: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
    """Emit an Asset event for a table the purge changed (never for a dry run or no-op).

    Returns:
        Whether an event was emitted.
    """
    if run.get("dry_run") or not _changed(result):
        return False
    name = str(result["name"])
    path = result.get("path") or _table_path(load_config(run["conf"]), name)
    asset_name, uri = dataset_asset(name, path)
    emit_asset_event(
        PURGED_ALIAS,
        name=asset_name,
        uri=uri,
        extra={
            "run_id": run["run_id"],
            "as_of": run["as_of"],
            "rows_deleted": result.get("rows_deleted"),
            "version_before": result.get("version_before"),
            "version_after": result.get("version_after"),
            "reasons": result.get("reasons", {}),
        },
    )
    return True


def _table_path(config: Config, name: str) -> Path:
    if name in config.datasets:
        return config.dataset_path(name)
    from consentgate.registry import snapshot_datasets

    snapshots = snapshot_datasets(config)
    if name in snapshots:
        return config.resolve(snapshots[name].path)
    return config.state_dir / name


def _add_counts(into: dict[str, int], counts: Any) -> None:
    if isinstance(counts, Mapping):
        for reason, n in counts.items():
            if isinstance(n, int):
                into[str(reason)] = into.get(str(reason), 0) + n


#: What the audit says of a table whose mapped ``purge_dataset`` task failed: a failed task
#: instance leaves no XCom, its error is in its task log.
PURGE_TASK_FAILED: Final = "purge_dataset task failed (its error is in the task log)"
#: What the audit says of the erasure when the ``erase_and_verify`` task failed.
ERASE_TASK_FAILED: Final = "erase_and_verify task failed (its error is in the task log)"


def failed_targets(
    targets: Sequence[str] | None, purged: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """The planned tables with no result: their mapped ``purge_dataset`` task failed (a failed
    mapped task instance pushes no XCom, so only the others' results reach downstream tasks)."""
    done = {str(r.get("name")) for r in purged}
    return {str(t): PURGE_TASK_FAILED for t in targets or () if str(t) not in done}


def purge_summary(
    run: Mapping[str, Any],
    purged: Sequence[Mapping[str, Any]],
    erasure: Mapping[str, Any] | None,
    targets: Sequence[str] | None = None,
) -> JSON:
    """The nightly purge's totals: per table, per reason, the erasure outcome, and ``failed``
    (the tables of ``targets`` with no result, see :func:`failed_targets`) with ``ok``.

    ``erasure`` is None when the ``erase_and_verify`` task failed (no XCom).
    """
    purged = [r for r in purged if isinstance(r, Mapping)]
    datasets = {str(r["name"]): {k: v for k, v in r.items() if k != "name"} for r in purged}
    reasons: dict[str, int] = {}
    rows_deleted = 0
    for result in purged:
        _add_counts(reasons, result.get("reasons"))
        deleted = result.get("rows_deleted")
        rows_deleted += deleted if isinstance(deleted, int) else 0
    failed = failed_targets(targets, purged)
    erased: JSON = (
        dict(erasure) if isinstance(erasure, Mapping) else {"ok": False, "error": ERASE_TASK_FAILED}
    )
    erasure_ok = bool(erased.get("skipped")) or bool(erased.get("ok"))
    return {
        "kind": "purge",
        "run_id": run["run_id"],
        "dag_run_id": run.get("dag_run_id"),
        "as_of": run["as_of"],
        "dry_run": bool(run.get("dry_run")),
        "ok": not failed and erasure_ok,
        "failed": failed,
        "datasets": dict(sorted(datasets.items())),
        "datasets_changed": sorted(n for n, r in datasets.items() if _changed(r)),
        "rows_deleted": rows_deleted,
        "reasons": dict(sorted(reasons.items())),
        "erasure": erased,
    }


def record_purge(
    run: Mapping[str, Any] | None,
    purged: Sequence[Mapping[str, Any]] | None,
    erasure: Mapping[str, Any] | None,
    targets: Sequence[str] | None = None,
) -> JSON:
    """The purge's ``audit_summary`` task: totals, and (unless a dry run) the audit entry.

    It runs whatever the purge tasks' outcome (trigger rule ``all_done``) so that the tables
    that were purged are audited, then fails the DAG run (it is the run's last task) when a
    table failed or the erasure did not verify, naming the failed tables, without retries: a
    retry would append the entry again.

    Whatever the outcome (dry runs and failed runs too), it then removes the run's work
    tables (the decisions ``decide`` materialised, :func:`consentgate.purge.discard_run`):
    every ``purge_dataset`` task of the run has finished. A task cleared and re-run after
    that finds no decision and fails saying so: clear the run from ``decide`` instead (a
    table already purged commits nothing more). The work tables of a run killed before this
    task are removed by the next run's ``decide`` (:func:`step_decide_purge`); until then they
    hold digests only, never a raw id.

    Args:
        run: The run context (None when ``validate`` failed: nothing ran).
        purged: The results of the ``purge_dataset`` instances that succeeded.
        erasure: The ``erase_and_verify`` result (None when that task failed).
        targets: The ``decide`` task's tables (None when it failed: nothing was purged).
    """
    from consentgate.errors import CheckFailed
    from consentgate.purge import discard_run

    if run is None:
        raise _fail_fast(CheckFailed("validate failed: nothing was purged"))
    try:
        return _record_purge(run, purged, erasure, targets)
    finally:
        try:
            discard_run(load_config(run["conf"]), str(run["run_id"]))
        except ConsentgateError as exc:  # the config went away: the next decide removes them
            log.warning("purge run %s: work tables not removed: %s", run["run_id"], exc)


def _record_purge(
    run: Mapping[str, Any],
    purged: Sequence[Mapping[str, Any]] | None,
    erasure: Mapping[str, Any] | None,
    targets: Sequence[str] | None,
) -> JSON:
    from consentgate.errors import CheckFailed

    if targets is None:
        raise _fail_fast(CheckFailed("the decide task failed: no table was purged"))
    summary = purge_summary(run, list(purged or ()), erasure, targets)
    if not run.get("dry_run"):
        from consentgate import quiescence

        config = load_config(run["conf"])
        started_from = pull_xcom("quiescent", key="started_from")
        if isinstance(started_from, Mapping):  # the XCom backend gave the JSON text back parsed
            started_from = json.dumps(dict(started_from), sort_keys=True)
        certifiable = (
            summary["ok"]
            and bool(summary["erasure"].get("ok"))
            and isinstance(started_from, str)
            and bool(started_from)
            and quiescence.changed_only_by(config, started_from, run_id=str(run["run_id"]))
        )
        summary["audit"] = run_step(
            run,
            "audit_summary",
            kind="purge",
            run_id=run["run_id"],
            as_of=run["as_of"],
            datasets=summary["datasets"],
            erasure=summary["erasure"],
            failed=summary["failed"],
            decisions_bound=certifiable,
            orchestration=orchestration(run),
        )
        summary["certified"] = certifiable and _certify(
            config, run, summary, str(started_from), summary["audit"]
        )
    if not summary["ok"]:
        problems: list[str] = []
        failed = summary["failed"]
        if failed:
            problems.append(
                f"{len(failed)} of {len(targets)} tables failed: {', '.join(failed)} (see "
                "their purge_dataset task logs); every other table was purged"
            )
        erased = summary["erasure"]
        if not (erased.get("skipped") or erased.get("ok")):
            problems.append(str(erased.get("error") or "erasure verification failed"))
        raise _fail_fast(CheckFailed(f"purge run {run['run_id']}: " + "; ".join(problems)))
    return summary


def _certify(
    config: Config,
    run: Mapping[str, Any],
    summary: Mapping[str, Any],
    started_from: str,
    audited: Mapping[str, Any],
) -> bool:
    """Certify the lake after a run that alone changed it (in this process, where
    ``quiescent`` took the start state: the same code, the same view of the files)."""
    from consentgate import quiescence

    try:
        written = quiescence.certify(
            config,
            run_id=str(run["run_id"]),
            as_of=_require_instant(str(run["as_of"])),
            receipts=summary["erasure"].get("datasets", {}),
            started_from=started_from,
            decisions_hold_until=audited.get("decisions_hold_until"),
        )
    except Exception as exc:  # the run is done; the next night just runs in full
        log.warning("purge run %s: no quiescence certificate written: %s", run["run_id"], exc)
        return False
    return written is not None


def purge_quiescent(run: Mapping[str, Any]) -> bool:
    """The nightly purge's ``quiescent`` task: answer the night from the quiescence certificate
    when it covers it (:func:`consentgate.purge.quiet_purge`: no Spark, one audit commit; the
    result is pushed as XCom ``night``), else let the run go on.

    A run that goes on is a full one: the certificate is discarded and the lake's fingerprint
    pushed as XCom ``started_from`` (:func:`consentgate.quiescence.start`: digests and
    versions), from which ``audit_summary`` certifies the lake again if nothing but the run
    changed it. Dry runs and runs without erasure always go on.

    Returns:
        Whether the run goes on (``False`` skips every later task: the night is recorded).
    """
    from consentgate import quiescence
    from consentgate.purge import quiet_purge

    if run.get("dry_run") or not run.get("erase", True):
        _push_xcom("started_from", "")  # nothing to certify from (audit_summary reads it)
        return True
    config = load_config(run["conf"])
    night = quiet_purge(
        config,
        as_of=_require_instant(str(run["as_of"])),
        run_id=run["run_id"],
        orchestration=orchestration(run),
    )
    if night is not None:
        _push_xcom("night", jsonable(night))
        return False
    quiescence.discard(config)
    _push_xcom("started_from", quiescence.start(config))
    return True


def backfill_report(run: Mapping[str, Any], result: Mapping[str, Any]) -> JSON:
    """The backfill's report; emits an Asset event per dataset it changed (none on a dry run).

    Raises:
        AirflowFailException: some tables failed (``ok`` false): raised after the events for
            the tables that did change, so the run fails without hiding them.
    """
    datasets = result.get("datasets") if isinstance(result.get("datasets"), Mapping) else {}
    changed: list[str] = []
    for name, facts in sorted(dict(datasets or {}).items()):
        if isinstance(facts, Mapping) and announce_purge(run, {"name": name, **facts}):
            changed.append(str(name))
    impact = result.get("impact")
    runs = impact.get("runs", []) if isinstance(impact, Mapping) else []
    if result.get("ok") is False:  # after announcing what changed: training DAGs must know
        from consentgate.errors import CheckFailed

        raise _fail_fast(CheckFailed(str(result.get("error") or "backfill failed")))
    return {
        "kind": "backfill",
        "run_id": run["run_id"],
        "as_of": run["as_of"],
        "dry_run": bool(run.get("dry_run")),
        "datasets_changed": changed,
        "affected_runs": len(runs) if isinstance(runs, list) else 0,
        "result": dict(result),
    }
