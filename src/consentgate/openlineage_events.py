"""OpenLineage run events for the command-line flows, with a ``consentgate_consent`` facet.

``evaluate``, ``gate``, ``purge`` (with its erasure) and ``backfill`` each emit a ``START``
event when the flow starts and ``COMPLETE`` when it returns, or ``FAIL`` (``ABORT`` on an
interrupt) when it raises. The CLI wraps each flow in :func:`flow_run`; nothing else changes.

**Configuration is openlineage-python's own**, never a section of ours: ``OPENLINEAGE_URL``
(HTTP, e.g. Marquez), ``OPENLINEAGE_CONFIG`` or ``openlineage.yml`` (any transport: file,
console, Kafka, ...), ``OPENLINEAGE__TRANSPORT__*`` variables, and ``OPENLINEAGE_DISABLED=true``
to switch it off. The job namespace is ``OPENLINEAGE_NAMESPACE`` (default ``consentgate``), as
the Airflow provider reads it. **Off by default**: when none of these names a transport
(:func:`transport_configured`), nothing is emitted and ``openlineage`` is never imported.
Lineage never fails a flow: an event that cannot be sent is logged (its exception's class only)
and the flow goes on.

**Datasets are named the OpenLineage way**: namespace ``file`` and the absolute table path for
a local table (a ``scheme://authority`` namespace and the path for a URL). Inputs are the
consent, assets and lineage tables (and, for a gate, the source datasets), each at the Delta
version the flow read when the result names it; outputs are what the flow wrote: the
evaluation table, the gate's snapshots, every table a purge or backfill covered.

**The ``consentgate_consent`` dataset facet** (on each output, schema
``schemas/ConsentgateConsentDatasetFacet-1-0-0.json`` shipped in this package and named by the
facet's ``_schemaURL``) holds counts and digests only, never an asset, user or record id: the
flow, the use case and its accepted policy versions, rows kept and rows removed per reason code,
for a gate the assets excluded per reason, the manifest's SHA-256 and the registry head, for a
purge the erasure receipt's result. A ``FAIL`` event carries the exception's class name only
(a message may quote an id).

Not done yet (issue #25): the Airflow tasks (which call the flows directly, not through the
CLI) send no events yet, nor the Airflow task's parent-run facet that would nest them under the
DAG run in Marquez; the purge scheduled on revocation events (#25 item 2) is not here either.
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
from urllib.parse import urlsplit

from consentgate import __version__

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import RunEvent

    from consentgate.config import Config

log = logging.getLogger(__name__)

#: The project's stable URL: the producer of every event and facet.
PRODUCER: Final = "https://github.com/consentgate/consentgate"
FACET_KEY: Final = "consentgate_consent"
#: The facet's schema, shipped as package data; a change is a new file, never an edit.
FACET_SCHEMA_FILE: Final = "ConsentgateConsentDatasetFacet-1-0-0.json"
FACET_SCHEMA_ID: Final = f"{PRODUCER}/blob/main/src/consentgate/schemas/{FACET_SCHEMA_FILE}"
FACET_SCHEMA_URL: Final = f"{FACET_SCHEMA_ID}#/$defs/ConsentgateConsentDatasetFacet"
FLOWS: Final = ("evaluate", "gate", "purge", "backfill")
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
# What an event says, as plain data (no openlineage import)


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of an event: OpenLineage name, Delta version read or written, our facet."""

    namespace: str
    name: str
    version: int | None = None
    consent: Mapping[str, Any] | None = None


def dataset_ref(
    path: str | Path, version: int | None = None, consent: Mapping[str, Any] | None = None
) -> DatasetRef:
    """Name a table the OpenLineage way: ``file`` + absolute path, or ``scheme://authority``."""
    text = str(path)
    parts = urlsplit(text)
    if parts.scheme and parts.scheme != "file" and len(parts.scheme) > 1:
        return DatasetRef(f"{parts.scheme}://{parts.netloc}", parts.path or "/", version, consent)
    local = parts.path if parts.scheme == "file" else text
    return DatasetRef("file", str(Path(local).resolve()), version, consent)


def _counts(reasons: Mapping[str, Any]) -> dict[str, int]:
    return {str(r): int(n) for r, n in sorted(reasons.items()) if r != "granted"}


def _consent(
    flow: str, config: Config, use_case: str, *, kept: int, removed: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "flow": flow,
        "useCase": use_case,
        "acceptedPolicyVersions": list(config.use_cases[use_case].accepted_policy_versions),
        "rowsKept": int(kept),
        "rowsRemoved": _counts(removed),
    }


def input_refs(config: Config, versions: Mapping[str, Any] | None = None) -> list[DatasetRef]:
    """The consent, assets and lineage tables every flow reads (at ``versions`` if known)."""
    versions = versions or {}
    out = []
    for table in ("consent_records", "assets", "lineage"):
        version = versions.get(table)
        out.append(dataset_ref(config.table_path(table), None if version is None else int(version)))
    return out


def _evaluate(config: Config, result: Mapping[str, Any]) -> tuple[list[DatasetRef], ...]:
    use_case = str(result["use_case"])
    consent = _consent(
        "evaluate", config, use_case, kept=result["granted"], removed=result["reasons"]
    )
    return input_refs(config, result.get("table_versions")), [
        dataset_ref(result["output"], consent=consent)
    ]


def _gate(config: Config, result: Mapping[str, Any]) -> tuple[list[DatasetRef], ...]:
    """Read back from the sealed manifest the run just published (a small JSON file)."""
    from consentgate.manifest import load_manifest

    manifest = load_manifest(Path(result["manifest_path"]))
    use_case = str(manifest["use_case"])
    head = {"seq": int(result["registry_seq"]), "manifestSha256": str(result["manifest_sha256"])}
    sources = {k: v["version"] for k, v in manifest["source_tables"].items()}
    inputs = input_refs(config, sources)
    outputs = []
    for name, snap in sorted(manifest["snapshots"].items()):
        source = snap["source"]
        inputs.append(dataset_ref(config.resolve(source["path"]), int(source["version"])))
        consent = _consent(
            "gate",
            config,
            use_case,
            kept=snap["rows"],
            removed=manifest["exclusions"]["rows"].get(name, {}),
        ) | {
            "assetsExcluded": _counts(manifest["exclusions"]["assets"]),
            "manifestSha256": head["manifestSha256"],
            "registryHead": head,
        }
        outputs.append(dataset_ref(config.resolve(snap["path"]), int(snap["version"]), consent))
    return inputs, outputs


def _purge(flow: str, config: Config, result: Mapping[str, Any]) -> tuple[list[DatasetRef], ...]:
    from consentgate.purge import target_path, targets

    tables = targets(config)
    receipts = (result.get("erasure") or {}).get("datasets", {})
    outputs = []
    for name, done in sorted(result["datasets"].items()):
        dataset = tables.get(name)
        if dataset is None:  # a snapshot unregistered meanwhile: no path to name it by
            continue
        consent = _consent(
            flow, config, dataset.use_case, kept=done["rows_after"], removed=done["reasons"]
        ) | {"dryRun": bool(result.get("dry_run"))}
        receipt = receipts.get(name, {}).get("result")
        if receipt is not None:
            consent["erasure"] = str(receipt)
        path = target_path(config, name, dataset)
        outputs.append(dataset_ref(path, int(done["version_after"]), consent))
    return input_refs(config), outputs


def datasets_of(
    flow: str, config: Config, result: Mapping[str, Any] | None
) -> tuple[list[DatasetRef], list[DatasetRef]]:
    """Inputs and outputs of a flow: from its result when it returned one, else inputs only."""
    if result is None:
        return input_refs(config), []
    if flow == "evaluate":
        inputs, outputs = _evaluate(config, result)
    elif flow == "gate":
        inputs, outputs = _gate(config, result)
    else:
        inputs, outputs = _purge(flow, config, result)
    return inputs, outputs


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
def flow_run(flow: str, config: Config) -> Iterator[FlowRun]:
    """Emit START now, then COMPLETE (or FAIL, ABORT) around one flow; a no-op when off."""
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}")
    run = FlowRun(flow)
    if not transport_configured():
        yield run
        return
    emitter = _Emitter.start(flow, config)
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

    def __init__(self, flow: str, client: OpenLineageClient | None, run_id: str) -> None:
        self.flow, self.client, self.run_id = flow, client, run_id

    @classmethod
    def start(cls, flow: str, config: Config) -> _Emitter:
        try:
            from openlineage.client import OpenLineageClient
            from openlineage.client.uuid import generate_new_uuid

            emitter = cls(flow, OpenLineageClient(), str(generate_new_uuid()))
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
            self.client.emit(_event(self.flow, self.run_id, state, inputs, outputs, error))
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
        rowsKept: int
        rowsRemoved: dict[str, int]
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
) -> RunEvent:
    from openlineage.client.constants import __version__ as client_version
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent
    from openlineage.client.event_v2 import RunState as EventType
    from openlineage.client.facet_v2 import (
        dataset_version_dataset,
        error_message_run,
        job_type_job,
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
