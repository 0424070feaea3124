"""
### consentgate policy backfill

Run on demand after a policy change (new accepted policy versions, new jurisdiction rules):
re-evaluates every dataset and registered training snapshot under the **current** config,
purges what no longer complies, and reports which published training runs are affected.

**Dry run is on by default**: the first run only reports what would be removed and which
models are affected, and writes nothing. Trigger again with `dry_run: false` to apply it.

| task | does |
|---|---|
| `validate` | finds the config (env `CONSENTGATE_CONF`, else Variable `consentgate_conf`), checks it and every input table's schema; fixes the run's instant and id |
| `backfill` | re-evaluation, purge (unless dry run) and impact on published runs |
| `report` | the affected runs and the rows removed (or to be removed) per dataset and reason; emits an Asset event per dataset changed |

**Params**: `dry_run` (default true), `as_of` (default: run start).

**One JVM at a time**: the tasks that start Spark (`backfill`) run in the Airflow
pool `consentgate_spark` (env `CONSENTGATE_SPARK_POOL`, read when the file is parsed),
which must exist: `airflow pools set consentgate_spark 1 "consentgate: one Spark JVM at a
time"` (`make airflow` does it). With one slot a LocalExecutor never starts several local
JVMs at once; widen it where drivers run on a cluster.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import AssetAlias, Param, dag, task

from consentgate.airflow_tasks import PURGED_ALIAS, default_args, spark_pool

DEFAULT_ARGS = default_args(retries=1, retry_delay=dt.timedelta(minutes=5))
#: Every task that starts Spark runs in this pool (one slot: one JVM at a time).
SPARK_POOL = spark_pool()


@dag(
    dag_id="consentgate_policy_backfill",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["consentgate", "backfill", "policy", "consent", "delta"],
    params={
        "dry_run": Param(
            True, type="boolean", description="Report only (default); change nothing."
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            description="Evaluation instant, ISO-8601 (default: when the run starts, UTC).",
        ),
    },
)
def consentgate_policy_backfill() -> None:
    """Re-evaluate under the current policy, purge what no longer complies, report impact."""

    @task(multiple_outputs=False, retries=0)
    def validate(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from consentgate import airflow_tasks

        p = params or {}
        return airflow_tasks.start_run(
            "backfill", as_of=p.get("as_of"), dry_run=bool(p.get("dry_run", True))
        )

    @task(multiple_outputs=False, pool=SPARK_POOL)
    def backfill(run: dict[str, Any]) -> dict[str, Any]:
        from consentgate import airflow_tasks

        return airflow_tasks.run_step(
            run,
            "backfill",
            as_of=run["as_of"],
            dry_run=run["dry_run"],
            run_id=run["run_id"],
            orchestration=airflow_tasks.orchestration(run),
        )

    @task(multiple_outputs=False, outlets=[AssetAlias(PURGED_ALIAS)])
    def report(run: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        from consentgate import airflow_tasks

        return airflow_tasks.backfill_report(run, result)

    run = validate()
    report(run, backfill(run))


consentgate_policy_backfill()
