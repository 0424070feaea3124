"""
### consentgate pre-training gate

Run before every training run, manually or triggered by a training pipeline: computes the
explicit allowlist for one use case, cuts an immutable training snapshot of each feature table
from it, writes a hashed, verifiable manifest (appended to the hash-chained registry), and
re-verifies it.

| task | does |
|---|---|
| `validate` | finds the config (env `CONSENTGATE_CONF`, else Variable `consentgate_conf`), checks it and every input table's schema; fixes the run's instant and id |
| `evaluate` | effective consent for the use case and the allowlist (returns the datasets to snapshot; the gate run's facts go to XCom `gate`); **refuses** (fails the run, publishes nothing) when the gate's thresholds are not met |
| `snapshot` | one mapped instance per dataset: the allowlisted rows, written as a new Delta table |
| `manifest` | the manifest and its registry entry: the only task that publishes |
| `verify` | re-hashes every snapshot file and the manifest; on success emits the model version's Asset |
| `rollback` | runs whatever happened upstream; when nothing got published, removes what the run wrote so the model version can be gated again (a published run is never touched) |

**Params** (validated by Airflow before the run starts): `use_case`, `model_version`,
`datasets` (default: every dataset of the use case), `as_of` (default: run start).

A refused gate or a failed verification fails the run without retries (the outcome is
deterministic); only infrastructure errors are retried.

**One run at a time** (`max_active_runs=1`): a second trigger queues until the first run has
finished, so two runs of this DAG never cut the same model version side by side. Against
everything else (the `consentgate gate` command, another Airflow deployment on the same lake)
`evaluate` claims the model version atomically before it writes anything
(`_consentgate/gate_claims/<model_version>.json`); a run that finds it claimed fails at once,
naming the holder, and its `rollback` removes nothing under the holder's snapshots. `manifest`
(on publication) or `rollback` releases the claim; a claim left by a run that was killed outright
is cleared by hand, as the refusal explains.

**One JVM at a time**: the tasks that start Spark (`evaluate`, `snapshot`, `manifest`, `verify`) run in the Airflow
pool `consentgate_spark` (env `CONSENTGATE_SPARK_POOL`, read when the file is parsed),
which must exist: `airflow pools set consentgate_spark 1 "consentgate: one Spark JVM at a
time"` (`make airflow` does it). With one slot a LocalExecutor never starts several local
JVMs at once; widen it where drivers run on a cluster.

A training DAG can schedule on the asset alias `consentgate_training_snapshots` (or on
`consentgate/snapshot/<model_version>`); the event's `extra` carries the manifest path and
digest, the run id and the snapshot paths.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import AssetAlias, Param, TriggerRule, dag, task

from consentgate.airflow_tasks import SNAPSHOT_ALIAS, default_args, spark_pool

DEFAULT_ARGS = default_args(retries=2, retry_delay=dt.timedelta(minutes=2))
#: Every task that starts Spark runs in this pool (one slot: one JVM at a time).
SPARK_POOL = spark_pool()


@dag(
    dag_id="consentgate_pretraining_gate",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    # Two runs never overlap (issue #12 item 6); the model version's claim guards the rest.
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["consentgate", "gate", "training", "consent", "delta"],
    params={
        "use_case": Param(
            "generative_training",
            type="string",
            minLength=1,
            description="The use case the model is trained for (a key of use_cases).",
        ),
        "model_version": Param(
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$",
            description="The model version the snapshots are cut for (required).",
        ),
        "datasets": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description="Datasets to snapshot (default: every dataset of the use case).",
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            description="Evaluation instant, ISO-8601 (default: when the run starts, UTC).",
        ),
    },
)
def consentgate_pretraining_gate() -> None:
    """Allowlist, snapshots, manifest and verification for one model version."""

    @task(multiple_outputs=False, retries=0)
    def validate(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from consentgate import airflow_tasks

        p = params or {}
        return airflow_tasks.start_run(
            "gate",
            as_of=p.get("as_of"),
            extra={
                "use_case": p["use_case"],
                "model_version": p["model_version"],
                "requested_datasets": p.get("datasets") or None,
            },
        )

    @task(pool=SPARK_POOL)
    def evaluate(run: dict[str, Any]) -> list[str]:
        from consentgate import airflow_tasks

        return airflow_tasks.gate_prepare(run)

    @task(
        multiple_outputs=False,
        map_index_template="{{ task.op_kwargs['dataset'] }}",
        pool=SPARK_POOL,
    )
    def snapshot(run: dict[str, Any], gate: dict[str, Any], dataset: str) -> dict[str, Any]:
        from consentgate import airflow_tasks

        return airflow_tasks.run_step(run, "gate_snapshot", run=gate, dataset=dataset)

    @task(multiple_outputs=False, pool=SPARK_POOL)
    def manifest(
        run: dict[str, Any], gate: dict[str, Any], snapshots: list[dict[str, Any]]
    ) -> dict[str, Any]:
        from consentgate import airflow_tasks

        return airflow_tasks.run_step(
            run, "gate_publish", run=gate, snapshots=airflow_tasks.mapped_results(snapshots)
        )

    @task(multiple_outputs=False, outlets=[AssetAlias(SNAPSHOT_ALIAS)], pool=SPARK_POOL)
    def verify(run: dict[str, Any], published: dict[str, Any]) -> dict[str, Any]:
        from consentgate import airflow_tasks

        report = airflow_tasks.run_step(
            run, "gate_verify", manifest_path=published["manifest_path"]
        )
        airflow_tasks.announce_snapshot(run, published)
        return {**published, "verification": report}

    @task(multiple_outputs=False, trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def rollback(run: dict[str, Any]) -> dict[str, Any]:
        from consentgate import airflow_tasks

        return airflow_tasks.gate_rollback(run, airflow_tasks.pull_xcom("evaluate", key="gate"))

    run = validate()
    datasets = evaluate(run)
    gate = datasets["gate"]  # the gate run's facts, pushed by evaluate under the key "gate"
    snapshots = snapshot.partial(run=run, gate=gate).expand(dataset=datasets)
    published = manifest(run, gate, snapshots)
    verify(run, published)
    [snapshots, published] >> rollback(run)


consentgate_pretraining_gate()
