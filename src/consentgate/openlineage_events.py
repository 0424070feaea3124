"""OpenLineage run events for consentgate's flows, with a ``consentgate_consent`` facet.

``evaluate``, ``gate``, ``purge`` (with its erasure), ``backfill`` and ``erase`` (the Airflow
purge's erasure task) each emit a ``START`` event when the flow starts and ``COMPLETE`` when it
returns, or ``FAIL`` (``ABORT`` on an interrupt) when it raises. The CLI wraps each flow in
:func:`flow_run`, and so do the Airflow steps that run a flow (:mod:`consentgate.airflow_lineage`).

**Configuration is openlineage-python's own**, never a section of ours: ``OPENLINEAGE_URL``
(HTTP, e.g. Marquez), ``OPENLINEAGE_CONFIG`` or ``openlineage.yml`` (any transport: file,
console, Kafka, ...), ``OPENLINEAGE__TRANSPORT__*`` variables, and ``OPENLINEAGE_DISABLED=true``
to switch it off. The job namespace is ``OPENLINEAGE_NAMESPACE`` (default ``consentgate``), as
the Airflow provider reads it. **Off by default**: when none of these names a transport
(:func:`transport_configured`), nothing is emitted and ``openlineage`` is never imported.
Lineage never fails a flow: an event that cannot be sent is logged (its exception's class only)
and the flow goes on.

**What an event says** is :mod:`consentgate.openlineage_datasets`: datasets named the
OpenLineage way (namespace ``file`` and the absolute path for a local table), and on each output
the ``consentgate_consent`` dataset facet (schema
``schemas/ConsentgateConsentDatasetFacet-1-1-0.json``, shipped in this package and named by the
facet's ``_schemaURL``; 1-0-0 stays shipped, unchanged): counts and digests only, never an asset,
user or record id. A ``FAIL`` event carries the exception's class name only (a message may
quote an id).

**Nested under whoever started the flow**: a run carries OpenLineage's ``parent`` run facet
when its parent is known: handed in by the Airflow task that runs the step
(:mod:`consentgate.airflow_lineage`, from the Airflow OpenLineage provider's own run ids, so the
event nests under the task's run and the DAG run in Marquez), else read from the environment
as other OpenLineage integrations (dbt) do: ``OPENLINEAGE_CONTEXT`` (JSON ``{"parent": {"run":
{"runId"}, "job": {"namespace", "name"}, "root": {...}}}``) or the older
``OPENLINEAGE_PARENT_ID`` / ``OPENLINEAGE_ROOT_PARENT_ID`` (``namespace/name/runId``). A value
that does not parse is ignored with a warning: lineage never fails a flow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from consentgate import __version__
from consentgate.openlineage_datasets import DatasetRef, datasets_of

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import RunEvent

    from consentgate.config import Config

log = logging.getLogger(__name__)

#: The project's stable URL: the producer of every event and facet.
PRODUCER: Final = "https://github.com/consentgate/consentgate"
FACET_KEY: Final = "consentgate_consent"
#: The facet's schema, shipped as package data; a change is a new file, never an edit.
FACET_SCHEMA_FILE: Final = "ConsentgateConsentDatasetFacet-1-1-0.json"
FACET_SCHEMA_ID: Final = f"{PRODUCER}/blob/main/src/consentgate/schemas/{FACET_SCHEMA_FILE}"
FACET_SCHEMA_URL: Final = f"{FACET_SCHEMA_ID}#/$defs/ConsentgateConsentDatasetFacet"
FLOWS: Final = ("evaluate", "gate", "purge", "backfill", "erase")
DEFAULT_NAMESPACE: Final = "consentgate"
#: Seconds to wait for a transport to deliver queued events when a flow ends.
CLOSE_TIMEOUT: Final = 10.0


def facet_schema() -> dict[str, Any]:
    """The facet's JSON schema, as shipped in the package."""
    text = resources.files("consentgate").joinpath("schemas", FACET_SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def transport_configured(
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> bool:
    """Whether openlineage-python's own configuration names a transport (and is not disabled).

    Checked without importing ``openlineage``: the variables and files the client reads.
    """
    env = os.environ if environ is None else environ
    if env.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OPENLINEAGE_URL", "").strip():
        return True
    if any(key.startswith("OPENLINEAGE__TRANSPORT") for key in env):
        return True
    config = env.get("OPENLINEAGE_CONFIG", "").strip()
    candidates = [Path(config)] if config else []
    candidates += [
        (cwd or Path.cwd()) / "openlineage.yml",
        (home or Path.home()) / ".openlineage" / "openlineage.yml",
    ]
    return any(path.is_file() for path in candidates)


# --------------------------------------------------------------------------------------------
# Who started the run: the parent run facet


@dataclass(frozen=True)
class ParentRun:
    """The run that started a flow (an Airflow task) and the root of its tree (the DAG run)."""

    namespace: str
    name: str
    run_id: str
    root_namespace: str
    root_name: str
    root_run_id: str

    def context_env(self) -> dict[str, str]:
        """``OPENLINEAGE_CONTEXT`` naming this parent, for a child process (spark-submit)."""
        node = {
            "run": {"runId": self.run_id},
            "job": {"namespace": self.namespace, "name": self.name},
            "root": {
                "run": {"runId": self.root_run_id},
                "job": {"namespace": self.root_namespace, "name": self.root_name},
            },
        }
        return {"OPENLINEAGE_CONTEXT": json.dumps({"parent": node}, sort_keys=True)}


def _from_context(text: str) -> ParentRun:
    parent = json.loads(text)["parent"]
    run_id, job = str(parent["run"]["runId"]), parent["job"]
    root = parent.get("root") or {}
    root_job = root.get("job") or job
    return ParentRun(
        namespace=str(job["namespace"]),
        name=str(job["name"]),
        run_id=run_id,
        root_namespace=str(root_job["namespace"]),
        root_name=str(root_job["name"]),
        root_run_id=str((root.get("run") or {}).get("runId", run_id)),
    )


def _from_ids(parent_id: str, root_id: str) -> ParentRun:
    parts = parent_id.split("/")
    root = root_id.split("/") if root_id else parts
    if len(parts) != 3 or len(root) != 3 or not all(parts + root):
        raise ValueError("expected namespace/name/runId")
    return ParentRun(*parts, *root)


def parent_from_env(environ: Mapping[str, str] | None = None) -> ParentRun | None:
    """The parent run named by ``OPENLINEAGE_CONTEXT``, else ``OPENLINEAGE_PARENT_ID`` (and
    ``OPENLINEAGE_ROOT_PARENT_ID``); None when neither is set or the value does not parse."""
    env = os.environ if environ is None else environ
    context = env.get("OPENLINEAGE_CONTEXT", "").strip()
    parent_id = env.get("OPENLINEAGE_PARENT_ID", "").strip()
    try:
        if context:
            return _from_context(context)
        if parent_id:
            return _from_ids(parent_id, env.get("OPENLINEAGE_ROOT_PARENT_ID", "").strip())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        name = "OPENLINEAGE_CONTEXT" if context else "OPENLINEAGE_PARENT_ID"
        log.warning("openlineage: %s ignored, it does not parse (%s)", name, type(exc).__name__)
    return None


# --------------------------------------------------------------------------------------------
# The flow wrapper


@dataclass
class FlowRun:
    """Handed to the flow: it reports its result with :meth:`done` (COMPLETE's outputs)."""

    flow: str
    result: Mapping[str, Any] | None = field(default=None)

    def done(self, result: dict[str, Any]) -> dict[str, Any]:
        self.result = result
        return result


@contextmanager
def flow_run(flow: str, config: Config, *, parent: ParentRun | None = None) -> Iterator[FlowRun]:
    """Emit START now, then COMPLETE (or FAIL, ABORT) around one flow; a no-op when off.

    ``parent`` (the Airflow task running the flow) defaults to :func:`parent_from_env`.
    """
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}")
    run = FlowRun(flow)
    if not transport_configured():
        yield run
        return
    emitter = _Emitter.start(flow, config, parent or parent_from_env())
    try:
        yield run
    except Exception as exc:
        emitter.finish("FAIL", config, None, error=type(exc).__name__)
        raise
    except BaseException as exc:
        emitter.finish("ABORT", config, None, error=type(exc).__name__)
        raise
    emitter.finish("COMPLETE", config, run.result)


class _Emitter:
    """One run's client and run id; every send is best effort (see the module docstring)."""

    def __init__(
        self,
        flow: str,
        client: OpenLineageClient | None,
        run_id: str,
        parent: ParentRun | None = None,
    ) -> None:
        self.flow, self.client, self.run_id, self.parent = flow, client, run_id, parent

    @classmethod
    def start(cls, flow: str, config: Config, parent: ParentRun | None) -> _Emitter:
        try:
            from openlineage.client import OpenLineageClient
            from openlineage.client.uuid import generate_new_uuid

            emitter = cls(flow, OpenLineageClient(), str(generate_new_uuid()), parent)
        except Exception as exc:
            log.warning("openlineage: no events for %s (%s)", flow, type(exc).__name__)
            return cls(flow, None, "")
        emitter._send("START", config, None, None)
        return emitter

    def finish(
        self,
        state: str,
        config: Config,
        result: Mapping[str, Any] | None,
        *,
        error: str | None = None,
    ) -> None:
        self._send(state, config, result, error)
        if self.client is not None:
            try:
                self.client.close(CLOSE_TIMEOUT)
            except Exception as exc:
                log.warning("openlineage: closing the transport failed (%s)", type(exc).__name__)

    def _send(
        self, state: str, config: Config, result: Mapping[str, Any] | None, error: str | None
    ) -> None:
        if self.client is None:
            return
        try:
            inputs, outputs = datasets_of(self.flow, config, result)
            event = _event(self.flow, self.run_id, state, inputs, outputs, error, self.parent)
            self.client.emit(event)
        except Exception as exc:
            log.warning(
                "openlineage: %s event of %s not sent (%s)", state, self.flow, type(exc).__name__
            )


@cache
def _facet_class() -> type[Any]:
    """The attrs class of our facet (built on first use: ``openlineage`` is imported lazily)."""
    import attr
    from openlineage.client.facet_v2 import DatasetFacet

    @attr.define(kw_only=True)
    class ConsentgateConsentDatasetFacet(DatasetFacet):
        flow: str
        useCase: str
        acceptedPolicyVersions: list[str]
        rowsKept: int | None = None
        rowsRemoved: dict[str, int] | None = None
        dryRun: bool | None = None
        assetsExcluded: dict[str, int] | None = None
        manifestSha256: str | None = None
        registryHead: dict[str, Any] | None = None
        erasure: str | None = None

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return ConsentgateConsentDatasetFacet


def _event(
    flow: str,
    run_id: str,
    state: str,
    inputs: list[DatasetRef],
    outputs: list[DatasetRef],
    error: str | None,
    parent: ParentRun | None = None,
) -> RunEvent:
    from openlineage.client.constants import __version__ as client_version
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent
    from openlineage.client.event_v2 import RunState as EventType
    from openlineage.client.facet_v2 import (
        dataset_version_dataset,
        error_message_run,
        job_type_job,
        parent_run,
        processing_engine_run,
    )

    def facets(ref: DatasetRef) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if ref.version is not None:
            out["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(ref.version), producer=PRODUCER
            )
        if ref.consent is not None:
            out[FACET_KEY] = _facet_class()(producer=PRODUCER, **ref.consent)
        return out

    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=__version__,
            name="consentgate",
            openlineageAdapterVersion=client_version,
            producer=PRODUCER,
        )
    }
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error, programmingLanguage="python", producer=PRODUCER
        )
    if parent is not None:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent.run_id),
            job=parent_run.Job(namespace=parent.namespace, name=parent.name),
            root=parent_run.Root(
                run=parent_run.RootRun(runId=parent.root_run_id),
                job=parent_run.RootJob(namespace=parent.root_namespace, name=parent.root_name),
            ),
            producer=PRODUCER,
        )
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="CONSENTGATE", jobType="JOB", producer=PRODUCER
        )
    }
    namespace = os.environ.get("OPENLINEAGE_NAMESPACE", "").strip() or DEFAULT_NAMESPACE
    return RunEvent(
        eventType=EventType[state],
        eventTime=dt.datetime.now(dt.UTC).isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(namespace=namespace, name=f"consentgate.{flow}", facets=job_facets),
        inputs=[InputDataset(r.namespace, r.name, facets=facets(r)) for r in inputs],
        outputs=[OutputDataset(r.namespace, r.name, facets=facets(r)) for r in outputs],
        producer=PRODUCER,
    )
