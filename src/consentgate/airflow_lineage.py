"""OpenLineage events of the Airflow steps, nested under the Airflow task that runs them.

The DAGs run a flow as several tasks (:mod:`consentgate.airflow_tasks`); the steps that finish
a flow's work emit that flow's events (:func:`consentgate.openlineage_events.flow_run`), the
others emit none, since their work is accounted for by the step that finishes it:

======================  ==========  ========================================================
step                    flow        outputs of its events
======================  ==========  ========================================================
``purge_dataset``       purge       the table it purged (one run per mapped task)
``erase``               erase       each table it erased, with the receipt's result
``gate_publish``        gate        every snapshot of the manifest it published
``backfill``            backfill    every table it covered
``gate``, ``purge``     gate/purge  the whole flow (one application; see ``airflow_tasks``)
======================  ==========  ========================================================

``decide_purge``, ``gate_prepare``, ``gate_snapshot``, ``gate_verify`` and ``audit_summary``
are covered by the Airflow OpenLineage provider's own task events.

**Parent run facet.** Each event names the Airflow task's run as its parent and the DAG run as
its root, with the run ids the Airflow OpenLineage provider
(``apache-airflow-providers-openlineage``, pinned with our ``airflow`` extra) gives them: its
macros ``lineage_run_id``, ``lineage_job_name``, ``lineage_root_run_id``, ... computed from the
task instance, so our runs nest under the provider's task and DAG-run events in Marquez. A step
run through spark-submit gets the same parent as ``OPENLINEAGE_CONTEXT`` in its environment. No
transport configured (:func:`~consentgate.openlineage_events.transport_configured`): nothing is
computed, imported or emitted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from consentgate.openlineage_events import ParentRun, flow_run, transport_configured

JSON = dict[str, Any]

#: The flow whose events each step emits (steps not named emit none).
STEP_FLOWS: Final[dict[str, str]] = {
    "purge_dataset": "purge",
    "erase": "erase",
    "gate_publish": "gate",
    "backfill": "backfill",
    "gate": "gate",
    "purge": "purge",
}


def task_parent(context: Any, step: str) -> ParentRun | None:
    """The running Airflow task's OpenLineage run (and its DAG run as the root), or None when
    ``step`` sends no events (:data:`STEP_FLOWS`), no transport is configured or the Airflow
    OpenLineage provider is not installed."""
    if step not in STEP_FLOWS or not transport_configured() or not context.get("ti"):
        return None
    try:
        from airflow.providers.openlineage.plugins import macros
    except ImportError:
        return None
    ti = context["ti"]
    return ParentRun(
        namespace=str(macros.lineage_job_namespace()),  # type: ignore[no-untyped-call]
        name=str(macros.lineage_job_name(ti)),
        run_id=str(macros.lineage_run_id(ti)),
        root_namespace=str(macros.lineage_root_job_namespace(ti)),
        root_name=str(macros.lineage_root_job_name(ti)),
        root_run_id=str(macros.lineage_root_run_id(ti)),
    )


def flow_result(step: str, args: Mapping[str, Any], result: Mapping[str, Any]) -> JSON:
    """A step's result in the shape of its flow's (a mapped purge task's: one table's)."""
    if step == "purge_dataset":
        return {"datasets": {str(result["name"]): result}, "dry_run": bool(args.get("dry_run"))}
    return dict(result)


def run_with_lineage(
    step: str,
    config: Any,
    args: Mapping[str, Any],
    run: Callable[[], JSON],
    *,
    parent: ParentRun | None = None,
) -> JSON:
    """``run()`` the step inside its flow's events (see :data:`STEP_FLOWS`); ``parent``
    defaults to the environment's (a spark-submit job)."""
    flow = STEP_FLOWS.get(step)
    if flow is None:
        return run()
    with flow_run(flow, config, parent=parent) as lineage:
        result = run()
        lineage.done(flow_result(step, args, result))
    return result


@contextlib.contextmanager
def events_to_file(path: Path) -> Iterator[Path | None]:
    """Send this process's OpenLineage events to ``path`` (the file transport, one JSON event
    per line, appended) while open, unless a transport is configured already (then the user's
    wins and None is yielded). The demo's way to show its events without a lineage server.

    The Airflow OpenLineage provider's listener stays off meanwhile
    (``AIRFLOW__OPENLINEAGE__DISABLED``): it would fork this process, which holds a JVM, once
    per task event; the file holds our runs, whose parent facets name the task runs the
    provider would have sent.
    """
    if transport_configured():
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "OPENLINEAGE__TRANSPORT__TYPE": "file",
        "OPENLINEAGE__TRANSPORT__LOG_FILE_PATH": str(path),
        "OPENLINEAGE__TRANSPORT__APPEND": "true",
        "AIRFLOW__OPENLINEAGE__DISABLED": "true",
    }
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield path
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
