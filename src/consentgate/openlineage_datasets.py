"""What a consentgate OpenLineage event says: its datasets, named the OpenLineage way, and the
``consentgate_consent`` facet of each output (counts and digests only, never an id).

Plain data, no ``openlineage`` import: :mod:`consentgate.openlineage_events` turns it into
events and sends them. Inputs are the consent, assets and lineage tables (and, for a gate, the
source datasets), each at the Delta version the flow read when its result names it; outputs
are what the flow wrote, read from the flow's own result (a gate's from the sealed manifest it
published).

The facet says: the flow, the use case and its accepted policy versions, rows kept and rows
removed per reason code; for a gate the assets excluded per reason, the manifest's SHA-256 and
the registry head; for a purge, backfill or erase the erasure receipt's result. An ``erase``
facet counts no rows (an erasure removes the bytes of rows earlier purges removed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from consentgate.config import Config


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


def _use_case(flow: str, config: Config, use_case: str) -> dict[str, Any]:
    """The facet's fields every flow fills in."""
    return {
        "flow": flow,
        "useCase": use_case,
        "acceptedPolicyVersions": list(config.use_cases[use_case].accepted_policy_versions),
    }


def _consent(
    flow: str, config: Config, use_case: str, *, kept: int, removed: Mapping[str, Any]
) -> dict[str, Any]:
    return _use_case(flow, config, use_case) | {
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


def _erase(config: Config, result: Mapping[str, Any]) -> tuple[list[DatasetRef], ...]:
    """Each erased table with its receipt's result (an erasure counts no rows: it removes the
    bytes of rows earlier purges removed, see :mod:`consentgate.erasure`)."""
    from consentgate.purge import target_path, targets

    tables = targets(config)
    outputs = []
    for name, receipt in sorted(result["datasets"].items()):
        dataset = tables.get(name)
        if dataset is None:
            continue
        consent = _use_case("erase", config, dataset.use_case) | {
            "erasure": str(receipt.get("result", "failed"))
        }
        outputs.append(dataset_ref(target_path(config, name, dataset), consent=consent))
    return [], outputs


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
    elif flow == "erase":
        inputs, outputs = _erase(config, result)
    else:
        inputs, outputs = _purge(flow, config, result)
    return inputs, outputs
