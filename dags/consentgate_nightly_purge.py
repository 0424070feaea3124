"""
### consentgate nightly purge

Removes every row whose consent no longer holds (revoked, denied, deleted, expired retention,
policy lapsed, no lineage) from every derivative Delta table **and every published training
snapshot**, then erases the removed files physically once the erasure window has passed, and
proves it in the audit log.

| task | does |
|---|---|
| `validate` | finds the config (env `CONSENTGATE_CONF`, else Variable `consentgate_conf`), checks it and every input table's schema from the Delta logs; fixes the run's instant and id |
| `quiescent` | answers the night without Spark when the quiescence certificate covers it (nothing changed since a full night that found nothing to remove, no record or retention takes effect, no erasure due): records it in the audit log (XCom `night`) and skips every later task; otherwise discards the certificate and lets the full run go on |
| `decide` | decides consent **once for the run**: effective consent for every use case, lineage for every table, and per table the rows to remove, kept as the run's work tables (digests only, under `_consentgate/purge_runs/<run id>/`); returns the tables to visit, configured datasets then registered snapshots (the plan's summary is kept as XCom `plan`) |
| `purge_dataset` | one mapped instance per table, so a failing table is visible and retryable alone; loads its table's decision from `decide` (never decides again: no decision fails the task, naming the table and the run); emits an Asset event for each table it changed |
| `erase_and_verify` | physical erasure after the window (Delta VACUUM) and its verification, each table on its own, for every table whose purge succeeded |
| `audit_summary` | records the run's totals in the hash-chained audit log (naming the tables that failed) and checks the chain, then removes the run's work tables; fails the run when a table failed |

**Failures are per table**: `erase_and_verify` and `audit_summary` run whatever the mapped
`purge_dataset` instances' outcome (trigger rule `all_done`): one bad table (missing, corrupt
data file, a snapshot of a use case no longer configured is *not* one: its rows are all
removed as `use_case_not_configured`) never stops the others from being purged, erased and
audited, and the run still ends failed, naming it. A table `decide` could not decide is
still a target: its own `purge_dataset` instance fails with `decide`'s message, without
retries (a retry would load the same decision).

**Quiescence certificate**: `audit_summary` writes one (`_consentgate/quiescence.json`,
`consentgate.quiescence`) when the run succeeded and found the lake exactly as it left it:
nothing removed, nothing erased, no other writer meanwhile. A night with nothing to remove
after such a night is then `validate` and `quiescent` only, in seconds.

**Work tables**: `audit_summary` removes the run's whatever the outcome (dry runs too). A
run killed before it leaves them (digests only); the next run's `decide` removes every
other run's, which is safe because the DAG has `max_active_runs=1`. To re-run a table of a
finished run, clear the run from `decide`, not the `purge_dataset` instance alone (whose
decision is gone: it fails saying so); a table already purged commits nothing more.

**Schedule**: env `CONSENTGATE_PURGE_SCHEDULE` (default `0 2 * * *`, UTC), read when the file
is parsed because a DAG file must not read the config then; `validate` warns when it differs
from the config's `airflow.purge_schedule`. **Or when revocations land**: an event on the
Asset `consentgate/consent_records` (URI from env `CONSENTGATE_CONSENT_ASSET_URI`) starts a
run too — the platform's consent service posts one through the REST API
(`POST /api/v2/assets/events`) or a producer task names the Asset in its `outlets`. A burst of
events is one run (`max_active_runs=1`; Airflow queues one run, not one per event), and that
run removes everything pending. Each costs what a night with removals costs.

**Params**: `as_of` (ISO-8601, default: run start), `dry_run` (report only), `erase`.

**Execution**: `airflow.mode` in the config: `local` runs each step in the task's process on a
local SparkSession; `spark-submit` submits `jobs/<step>.py` (`decide_purge`, `purge_dataset`,
`erase`, `audit_summary`) through the `spark_default` connection (`airflow.spark_conn_id`).

**One JVM at a time**: the tasks that start Spark (`decide`, `purge_dataset`, `erase_and_verify`, `audit_summary`) run in the Airflow
pool `consentgate_spark` (env `CONSENTGATE_SPARK_POOL`, read when the file is parsed),
which must exist: `airflow pools set consentgate_spark 1 "consentgate: one Spark JVM at a
time"` (`make airflow` does it). With one slot a LocalExecutor never starts several local
JVMs at once; widen it where drivers run on a cluster.

Downstream DAGs can schedule on the asset alias `consentgate_purged_datasets` or on a table's
asset `consentgate/dataset/<name>`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import AssetAlias, Param, TriggerRule, dag, task

from consentgate.airflow_tasks import PURGED_ALIAS, default_args, purge_timetable, spark_pool

DEFAULT_ARGS = default_args(retries=2, retry_delay=dt.timedelta(minutes=5))
#: Every task that starts Spark runs in this pool (one slot: one JVM at a time).
SPARK_POOL = spark_pool()


@dag(
    dag_id="consentgate_nightly_purge",
    schedule=purge_timetable(),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["consentgate", "purge", "consent", "delta"],
    params={
        "as_of": Param(
            None,
            type=["null", "string"],
            description="Evaluation instant, ISO-8601 (default: when the run starts, UTC).",
        ),
        "dry_run": Param(
            False, type="boolean", description="Report what would go; change nothing."
        ),
        "erase": Param(True, type="boolean", description="Erase physically after the window."),
    },
)
def consentgate_nightly_purge() -> None:
    """Nightly purge of non-consented rows from every dataset and snapshot."""

    @task(multiple_outputs=False, retries=0)
    def validate(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from consentgate import airflow_tasks

        p = params or {}
        return airflow_tasks.start_run(
            "purge",
            as_of=p.get("as_of"),
            dry_run=bool(p.get("dry_run")),
            dag_schedule=airflow_tasks.purge_schedule(),
            extra={"erase": bool(p.get("erase", True))},
        )

    # Spark-free (no pool): reads files and logs, appends the audit entry with delta-rs.
    @task.short_circuit(retries=0)
    def quiescent(run: dict[str, Any]) -> bool:
        from consentgate import airflow_tasks

        return airflow_tasks.purge_quiescent(run)

    @task(pool=SPARK_POOL)
    def decide(run: dict[str, Any]) -> list[str]:
        from consentgate import airflow_tasks

        return airflow_tasks.purge_decide(run)

    @task(
        multiple_outputs=False,
        outlets=[AssetAlias(PURGED_ALIAS)],
        map_index_template="{{ task.op_kwargs['target'] }}",
        pool=SPARK_POOL,
    )
    def purge_dataset(run: dict[str, Any], target: str) -> dict[str, Any]:
        from consentgate import airflow_tasks

        result = airflow_tasks.run_step(
            run,
            "purge_dataset",
            name=target,
            as_of=run["as_of"],
            run_id=run["run_id"],
            dry_run=run["dry_run"],
        )
        airflow_tasks.announce_purge(run, result)
        return result

    # all_done: runs when some purge_dataset instances failed (they push no XCom, so `purged`
    # holds only the tables whose purge succeeded: those are the ones erased). `purged` is read
    # with mapped_results, never iterated (iterating logs "XCom not found" at its end).
    @task(multiple_outputs=False, trigger_rule=TriggerRule.ALL_DONE, pool=SPARK_POOL)
    def erase_and_verify(
        run: dict[str, Any] | None, purged: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        from consentgate import airflow_tasks

        airflow_tasks.outcome_pending()  # audit_summary reads it whatever happens here
        if run is None:  # validate failed: nothing was purged (the run fails at audit_summary)
            return {"skipped": True, "reason": "validate failed"}
        if run["dry_run"] or not run.get("erase", True):
            return {"skipped": True, "reason": "dry run" if run["dry_run"] else "erase=false"}
        done = airflow_tasks.mapped_results(purged)
        return airflow_tasks.run_step(
            run, "erase", run_id=run["run_id"], targets=[r["name"] for r in done]
        )

    # all_done, then fails the run itself when a table failed (it is the run's last task, so
    # its success would otherwise mark the run successful); that failure is not retried (a
    # retry would append the audit entry twice).
    # decide's tables are pulled only if decide ran (pull_xcom): a task that never started has
    # no XCom, and an argument bound to it would log "XCom not found" on such a run.
    @task(multiple_outputs=False, trigger_rule=TriggerRule.ALL_DONE, pool=SPARK_POOL)
    def audit_summary(
        run: dict[str, Any] | None,
        purged: list[dict[str, Any]] | None,
        erasure: dict[str, Any] | None,
    ) -> dict[str, Any]:
        from consentgate import airflow_tasks

        return airflow_tasks.record_purge(
            run,
            airflow_tasks.mapped_results(purged),
            erasure,
            airflow_tasks.pull_xcom("decide"),
        )

    run = validate()
    targets = decide(run)
    quiescent(run) >> targets
    purged = purge_dataset.partial(run=run).expand(target=targets)
    erasure = erase_and_verify(run, purged)
    targets >> audit_summary(run, purged, erasure)  # reads decide's tables itself


consentgate_nightly_purge()
