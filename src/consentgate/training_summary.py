"""The EU AI Act public summary of training content, for one model version, from the record.

Art. 53(1)(d) of the AI Act asks a model provider for a public summary of the content a model
was trained on, on the AI Office's template. consentgate cannot fill in the whole template (it
knows nothing of public datasets, crawls or licences), but two of its parts are exactly what a
gate run records, so this module renders them:

* **§2.4 user data**: which datasets of creators' uploads went in, under which opt-in basis
  (the use case, the accepted policy versions and the jurisdiction rule the gate filtered by),
  how many assets and rows, and when consent was evaluated and the snapshot published;
* **§3.1 measures to honour opt-outs**: the gate's rule and what it excluded per reason, and
  from the audit log what the nightly purge removed since the gate (per reason, from this
  model's snapshots and from the datasets they were cut from) and whether the physical
  erasure that followed was verified, with the erasure window the receipts record.

Why from the record alone: the summary is published and may be challenged, so every figure in
it must be re-derivable by anyone from evidence that cannot drift. Each :class:`Figure`
therefore cites where it came from (a JSON pointer into the manifest, sealed by its SHA-256;
the registry entry; or an audit entry, sealed by its ``entry_sha256``), and nothing is read
that is not part of that evidence: the manifest file, the registry and the audit log (two
small append-only tables of consentgate's own, read with delta-rs). No data table is read and
no Spark or JVM is loaded, as for :mod:`consentgate.verifier`, so an auditor can run it
offline. A figure the template wants but the record does not hold is rendered as
"not recorded" with the reason, never estimated.

Fail closed: a model version without a registry entry, a broken registry chain, a manifest
whose SHA-256 (or canonical bytes, model version, run id or chain link) does not match its
registry entry, or a broken audit chain raises :class:`TrainingSummaryError` (exit 2) naming
the culprit; nothing is rendered from evidence that does not check out.

Pure steps: :func:`load_record` (the only reads) → :func:`build_summary` (a frozen
:class:`TrainingSummary`) → :func:`render_markdown` / :meth:`TrainingSummary.to_json`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from consentgate import verifier
from consentgate.canonical import (
    MANIFEST_DIGEST_FIELD,
    canonical_json,
    manifest_digest,
    sha256_hex,
)
from consentgate.errors import ConsentgateError
from consentgate.manifest import (
    FORMAT as MANIFEST_FORMAT,
)
from consentgate.manifest import (
    RegistryLink,
    check_registry_chain,
    read_registry_links,
    registry_path_at,
)
from consentgate.runtime import iso, parse_instant
from consentgate.state import STATE_DIR, missing_audit_problem

#: Version tag of the summary's JSON form.
FORMAT: Final = "consentgate-training-summary/1"
#: What the summary says of a figure the record does not hold.
NOT_RECORDED: Final = "not recorded"
#: The template's sections this summary answers.
USER_DATA: Final = "2.4"
OPT_OUTS: Final = "3.1"
SECTION_TITLES: Final[Mapping[str, str]] = {
    USER_DATA: "User data",
    OPT_OUTS: "Measures taken to honour opt-outs",
}
#: Audit kinds whose run-level entries summarise a purge over every table.
PURGE_KINDS: Final = frozenset({"purge", "backfill"})
#: Citations shown in one Markdown cell before the rest are counted (all are in the JSON and
#: in the Markdown's source list).
_CELL_CITATIONS: Final = 4

#: A figure's value: JSON, with arrays as tuples so a summary stays immutable and comparable.
Json: TypeAlias = bool | int | float | str | tuple["Json", ...] | Mapping[str, "Json"] | None

Source = Literal["manifest", "registry", "audit"]


class TrainingSummaryError(ConsentgateError):
    """The record cannot back a summary (unknown model version, broken chain, altered manifest).

    Bad input (exit 2): the message names the model version, table, entry or file at fault.
    """


# --------------------------------------------------------------------------------------------
# The summary


@dataclass(frozen=True)
class Citation:
    """Where one figure came from.

    Attributes:
        source: ``manifest`` (the run's manifest), ``registry`` (its registry entry) or
            ``audit`` (an audit log entry).
        sha256: The cited document's own digest: the manifest's ``manifest_sha256`` (for the
            manifest and its registry entry, which records the same digest) or the audit
            entry's ``entry_sha256``.
        pointer: RFC 6901 JSON pointer into the cited document (an audit entry is
            ``{"seq", "at", "kind", "run_id", "payload"}``; a registry entry its columns);
            empty for the whole document.
        seq: The registry or audit entry's position in its chain (None for the manifest).
    """

    source: Source
    sha256: str
    pointer: str
    seq: int | None = None

    def short(self) -> str:
        """The citation as a Markdown table cell shows it (the full digest is in the list of
        sources below the tables and in the JSON)."""
        where = f" `{self.pointer}`" if self.pointer else ""
        if self.source == "manifest":
            return f"manifest{where}"
        return f"{self.source} #{self.seq}{where}"

    def to_json(self) -> dict[str, Json]:
        """The citation as a JSON object."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "pointer": self.pointer,
            "seq": self.seq,
        }


@dataclass(frozen=True)
class Figure:
    """One answer to the template, with its provenance.

    Attributes:
        key: Stable dotted identifier (``user_data.assets.allowlisted``), for scripts.
        label: What the figure is, for people.
        value: The figure; None with no citations when it is not recorded (then ``note`` says
            what is missing and why), or None *with* citations when the record says "none".
        cites: Where it came from; empty exactly when the record does not hold it.
        derivation: How ``value`` follows from the cited values when it is not one of them
            verbatim (a sum, a count); None when it is the cited value as recorded.
        note: Context for people: why a figure is not recorded, or what it does not say.
    """

    key: str
    label: str
    value: Json
    cites: tuple[Citation, ...] = ()
    derivation: str | None = None
    note: str | None = None

    @property
    def recorded(self) -> bool:
        """Whether the record holds this figure (it cites at least one source)."""
        return bool(self.cites)

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object (tuples become arrays)."""
        return {
            "key": self.key,
            "label": self.label,
            "recorded": self.recorded,
            "value": _thaw(self.value),
            "cites": [c.to_json() for c in self.cites],
            "derivation": self.derivation,
            "note": self.note,
        }


@dataclass(frozen=True)
class Section:
    """One template section: its number (``2.4``), title and figures, in reading order."""

    number: str
    title: str
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class TrainingSummary:
    """The summary of one model version, as :func:`build_summary` derives it from the record.

    Attributes:
        model_version: The model version summarised.
        run_id: The gate run that cut its snapshots.
        use_case: The use case the run gated for.
        manifest_path: The manifest, relative to the lake root.
        manifest_sha256: The manifest's own digest, equal to its registry entry's.
        registry_seq: The run's position in the registry chain.
        registry_entries: Entries in the registry (the chain checked end to end).
        audit_entries: Entries in the audit log (chain checked), None when there is none.
        audit_head_sha256: The audit log's last ``entry_sha256``: the figures drawn from the
            log cover it up to this entry.
        sections: §2.4 then §3.1.
        format: :data:`FORMAT`.
    """

    model_version: str
    run_id: str
    use_case: str
    manifest_path: str
    manifest_sha256: str
    registry_seq: int
    registry_entries: int
    audit_entries: int | None
    audit_head_sha256: str | None
    sections: tuple[Section, ...]
    format: str = FORMAT

    def figures(self) -> tuple[Figure, ...]:
        """Every figure, section by section."""
        return tuple(f for s in self.sections for f in s.figures)

    def figure(self, key: str) -> Figure:
        """The figure with ``key``.

        Raises:
            KeyError: no such figure.
        """
        for fig in self.figures():
            if fig.key == key:
                return fig
        raise KeyError(key)

    @property
    def not_recorded(self) -> tuple[str, ...]:
        """Keys of the figures the record does not hold."""
        return tuple(f.key for f in self.figures() if not f.recorded)

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON object (what ``--json`` prints and the ``.json`` file holds).

        ``not_recorded`` is derived, repeated for readers who want only the gaps.
        """
        return {
            "format": self.format,
            "model_version": self.model_version,
            "run_id": self.run_id,
            "use_case": self.use_case,
            "record": {
                "manifest_path": self.manifest_path,
                "manifest_sha256": self.manifest_sha256,
                "registry_seq": self.registry_seq,
                "registry_entries": self.registry_entries,
                "audit_entries": self.audit_entries,
                "audit_head_sha256": self.audit_head_sha256,
            },
            "sections": [
                {
                    "number": s.number,
                    "title": s.title,
                    "figures": [f.to_json() for f in s.figures],
                }
                for s in self.sections
            ],
            "not_recorded": list(self.not_recorded),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingSummary:
        """Read back what :meth:`to_json` wrote (so a published summary can be re-checked).

        Raises:
            TrainingSummaryError: not a summary of this format, or it is malformed.
        """
        if data.get("format") != FORMAT:
            raise TrainingSummaryError(f"summary: format {data.get('format')!r} is not {FORMAT!r}")
        try:
            record = data["record"]
            sections = tuple(
                Section(
                    number=str(s["number"]),
                    title=str(s["title"]),
                    figures=tuple(
                        Figure(
                            key=str(f["key"]),
                            label=str(f["label"]),
                            value=_freeze(f["value"]),
                            cites=tuple(
                                Citation(
                                    source=c["source"],
                                    sha256=str(c["sha256"]),
                                    pointer=str(c["pointer"]),
                                    seq=None if c["seq"] is None else int(c["seq"]),
                                )
                                for c in f["cites"]
                            ),
                            derivation=f["derivation"],
                            note=f["note"],
                        )
                        for f in s["figures"]
                    ),
                )
                for s in data["sections"]
            )
            summary = cls(
                model_version=str(data["model_version"]),
                run_id=str(data["run_id"]),
                use_case=str(data["use_case"]),
                manifest_path=str(record["manifest_path"]),
                manifest_sha256=str(record["manifest_sha256"]),
                registry_seq=int(record["registry_seq"]),
                registry_entries=int(record["registry_entries"]),
                audit_entries=None
                if record["audit_entries"] is None
                else int(record["audit_entries"]),
                audit_head_sha256=record["audit_head_sha256"],
                sections=sections,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingSummaryError(f"summary: malformed: {exc!r}") from None
        if list(summary.not_recorded) != list(data.get("not_recorded", summary.not_recorded)):
            raise TrainingSummaryError("summary: not_recorded does not match its figures")
        return summary


# --------------------------------------------------------------------------------------------
# The record: registry entry, manifest, audit log (the only reads)


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry, its hash already checked against its content and chain."""

    seq: int
    at: str
    kind: str
    run_id: str
    payload: Mapping[str, Any]
    entry_sha256: str


@dataclass(frozen=True)
class Record:
    """Everything a summary is derived from, checked.

    Attributes:
        link: The model version's registry entry.
        registry_entries: How many entries the (intact) registry chain has.
        manifest: The manifest, whose digest equals ``link.manifest_sha256``.
        audit: The audit log in ``seq`` order (chain intact), None when the lake has none.
    """

    link: RegistryLink
    registry_entries: int
    manifest: Mapping[str, Any]
    audit: tuple[AuditEntry, ...] | None = field(default=None)


def audit_path_at(lake_root: Path) -> Path:
    """The audit log of the lake at ``lake_root`` (``consentgate.audit.audit_path``'s place)."""
    return lake_root / STATE_DIR / "audit"


_AUDIT_COLUMNS: Final = (
    "seq",
    "at",
    "kind",
    "run_id",
    "payload_json",
    "previous_sha256",
    "entry_sha256",
)


def audit_entry_digest(
    *, seq: int, at: str, kind: str, run_id: str, payload: Mapping[str, Any], previous: str
) -> str:
    """An audit entry's SHA-256 as ``consentgate.audit.entry_digest`` defines it.

    Restated here because that module builds Spark schemas at import time and a summary must
    load no pyspark; the test suite checks the two agree on entries the audit log wrote.
    """
    body = {
        "seq": seq,
        "at": at,
        "kind": kind,
        "run_id": run_id,
        "payload": dict(payload),
        "previous_sha256": previous,
    }
    return sha256_hex(canonical_json(body))


def read_audit(lake_root: Path) -> tuple[AuditEntry, ...] | None:
    """The audit log, read with delta-rs, every hash and link checked; None when there is none
    and nothing audited ever ran here (:func:`consentgate.state.missing_audit_problem`).

    The log grows by one row per event, not with the data, so it is read whole.

    Raises:
        TrainingSummaryError: the log is not append-only, or its chain is broken (naming the
            ``seq`` at fault), or it is missing where audited runs left their records; a
            figure drawn from such a log could be forged.
        TableError: the log exists but cannot be read.
    """
    path = audit_path_at(lake_root)
    if not verifier.is_delta_table(path):
        missing = missing_audit_problem(lake_root)
        if missing is not None:
            raise TrainingSummaryError(missing)
        return None
    table = verifier.open_delta(path)
    problems: list[str] = []
    if table.metadata().configuration.get("delta.appendOnly") != "true":
        problems.append("the table is not delta.appendOnly")
    rows = [
        row for batch in verifier.scan(table, list(_AUDIT_COLUMNS)) for row in batch.to_pylist()
    ]
    rows.sort(key=lambda r: int(r["seq"]))
    entries: list[AuditEntry] = []
    previous = ""
    for expected, row in enumerate(rows):
        seq = int(row["seq"])
        if seq != expected:
            problems.append(f"seq {seq}: expected seq {expected} (missing or duplicate entry)")
        if row["previous_sha256"] != previous:
            problems.append(f"seq {seq}: previous_sha256 does not match the entry before it")
        try:
            payload = json.loads(row["payload_json"])
        except (TypeError, ValueError):
            problems.append(f"seq {seq}: payload_json is not JSON")
            payload = None
        at = iso(row["at"])
        if isinstance(payload, dict):
            digest = audit_entry_digest(
                seq=seq,
                at=at,
                kind=str(row["kind"]),
                run_id=str(row["run_id"]),
                payload=payload,
                previous=str(row["previous_sha256"]),
            )
            if digest != row["entry_sha256"]:
                problems.append(f"seq {seq}: entry_sha256 does not match its content")
            entries.append(
                AuditEntry(
                    seq=seq,
                    at=at,
                    kind=str(row["kind"]),
                    run_id=str(row["run_id"]),
                    payload=payload,
                    entry_sha256=str(row["entry_sha256"]),
                )
            )
        elif payload is not None:
            problems.append(f"seq {seq}: payload_json is not a JSON object")
        previous = str(row["entry_sha256"])
    if problems:
        raise TrainingSummaryError(
            f"audit log {path}: hash chain broken ({'; '.join(problems)}); its figures cannot "
            "be trusted, so no summary is rendered"
        )
    return tuple(entries)


def _read_manifest(lake_root: Path, link: RegistryLink) -> dict[str, Any]:
    """The manifest ``link`` points at, checked against it byte for byte and link for link."""
    path = lake_root / link.manifest_path
    where = f"manifest {path} (registry entry seq {link.seq}, model version {link.model_version!r})"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainingSummaryError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise TrainingSummaryError(f"{where}: is not JSON ({exc}); it was altered") from None
    if not isinstance(manifest, dict):
        raise TrainingSummaryError(f"{where}: is not a JSON object; it was altered")
    recomputed = manifest_digest(manifest)
    if recomputed != link.manifest_sha256:
        raise TrainingSummaryError(
            f"{where}: hashes to {recomputed}, but the registry records {link.manifest_sha256}: "
            "it was changed after publication; no summary is rendered from it"
        )
    checks = (
        (
            manifest.get(MANIFEST_DIGEST_FIELD) == link.manifest_sha256,
            f"the SHA-256 sealed inside it ({manifest.get(MANIFEST_DIGEST_FIELD)}) is not the "
            "registry's",
        ),
        (
            raw == canonical_json(manifest),
            "its bytes are not in RFC 8785 canonical form (the file was rewritten)",
        ),
        (
            manifest.get("format") == MANIFEST_FORMAT,
            f"its format {manifest.get('format')!r} is not {MANIFEST_FORMAT!r}",
        ),
        (
            manifest.get("model_version") == link.model_version,
            f"it names model version {manifest.get('model_version')!r}",
        ),
        (manifest.get("run_id") == link.run_id, f"it names run {manifest.get('run_id')!r}"),
        (
            manifest.get("previous_manifest_sha256") == link.previous_manifest_sha256,
            "its link to the previous manifest is not the registry's",
        ),
    )
    for ok, what in checks:
        if not ok:
            raise TrainingSummaryError(f"{where}: {what}; no summary is rendered from it")
    return manifest


def load_record(lake_root: str | Path, model_version: str) -> Record:
    """Read and check everything a summary of ``model_version`` rests on.

    Args:
        lake_root: The lake (``lake_root`` of its config).
        model_version: The model version, as the gate registered it.

    Returns:
        The checked :class:`Record`.

    Raises:
        TrainingSummaryError: (exit 2) no registry, no entry for ``model_version``, a broken
            registry chain, a manifest that does not match its entry, or a broken audit log.
        TableError: (exit 2) the registry or audit log cannot be read.
    """
    root = Path(lake_root)
    links = read_registry_links(root)
    if not links:
        raise TrainingSummaryError(
            f"--model-version: {model_version!r} is not in the registry "
            f"({registry_path_at(root)} has no entries)"
        )
    problems = check_registry_chain(links)
    if problems:
        raise TrainingSummaryError(
            f"registry {registry_path_at(root)}: chain broken ({'; '.join(problems)}); "
            "no summary is rendered from it"
        )
    mine = [link for link in links if link.model_version == model_version]
    if not mine:
        known = ", ".join(repr(link.model_version) for link in links[-10:])
        raise TrainingSummaryError(
            f"--model-version: {model_version!r} is not in the registry "
            f"{registry_path_at(root)} (latest: {known})"
        )
    link = mine[0]  # the chain check refuses a model version registered twice
    manifest = _read_manifest(root, link)
    return Record(link=link, registry_entries=len(links), manifest=manifest, audit=read_audit(root))


# --------------------------------------------------------------------------------------------
# Building the figures (pure)


def json_pointer(*parts: str | int) -> str:
    """RFC 6901 pointer to ``parts`` (``~`` → ``~0``, ``/`` → ``~1``: snapshot names hold
    slashes)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 ``pointer`` in ``document`` (how a reader follows a citation).

    Raises:
        KeyError: the pointer leads nowhere.
    """
    value = document
    if not pointer:
        return value
    for token in pointer.split("/")[1:]:
        part = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(pointer)
    return value


def _freeze(value: Any) -> Json:
    """JSON as a figure holds it: arrays as tuples, objects with their keys sorted."""
    if isinstance(value, Mapping):
        return {str(k): _freeze(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON")


def _thaw(value: Json) -> Any:
    """A figure's value as plain JSON (tuples back to lists)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _not_recorded(key: str, label: str, why: str) -> Figure:
    return Figure(key=key, label=label, value=None, note=f"{NOT_RECORDED}: {why}")


@dataclass(frozen=True)
class _Sources:
    """Cites into one record; makes figures that are the cited value verbatim."""

    record: Record

    @property
    def sha(self) -> str:
        return self.record.link.manifest_sha256

    def manifest(self, *parts: str | int) -> Citation:
        return Citation("manifest", self.sha, json_pointer(*parts))

    def registry(self, column: str) -> Citation:
        return Citation("registry", self.sha, json_pointer(column), self.record.link.seq)

    def audit(self, entry: AuditEntry, *parts: str | int) -> Citation:
        return Citation("audit", entry.entry_sha256, json_pointer(*parts), entry.seq)

    def head(self) -> Citation | None:
        """The audit log's last entry: cited by a count over the log (it seals everything
        before it), so a count of zero is a recorded zero, not a missing figure."""
        log = self.record.audit
        return self.audit(log[-1]) if log else None

    def as_recorded(
        self, key: str, label: str, *parts: str | int, note: str | None = None
    ) -> Figure:
        """The manifest's value at ``parts``, verbatim; not recorded when it has none."""
        pointer = json_pointer(*parts)
        try:
            value = resolve_pointer(self.record.manifest, pointer)
        except KeyError:
            return _not_recorded(key, label, f"this manifest has no {pointer}")
        return Figure(key, label, _freeze(value), (self.manifest(*parts),), note=note)


def _snapshots(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """The manifest's snapshots by dataset name ({} when it records none)."""
    snapshots = manifest.get("snapshots")
    return snapshots if isinstance(snapshots, Mapping) else {}


def _user_data(src: _Sources) -> tuple[Figure, ...]:
    manifest = src.record.manifest
    snapshots = _snapshots(manifest)
    figures: list[Figure] = [
        Figure(
            "user_data.used",
            "Data from users (creators' uploads) used for training",
            "yes" if int(manifest.get("allowlist", {}).get("asset_count", 0)) > 0 else "no",
            (src.manifest("allowlist", "asset_count"),),
            derivation="yes when the allowlist holds at least one asset",
        ),
        Figure(
            "user_data.model_version",
            "Model version",
            src.record.link.model_version,
            (src.registry("model_version"), src.manifest("model_version")),
        ),
        src.as_recorded("user_data.use_case", "Use case the owners opted in to", "use_case"),
        _not_recorded(
            "user_data.services",
            "Services or products the user data was collected through",
            "the manifest names datasets and tables, not the platform services their uploads "
            "came from",
        ),
        Figure(
            "user_data.datasets",
            "Datasets used",
            tuple(sorted(snapshots)),
            (src.manifest("snapshots"),),
            derivation="the names of the manifest's snapshots",
        ),
        _not_recorded(
            "user_data.content_types",
            "Content types / modalities",
            "the manifest records each dataset's column schema, not the kind of content "
            "(audio, video, image, text, code) it was derived from",
        ),
        src.as_recorded(
            "user_data.opt_in.accepted_policy_versions",
            "Opt-in basis: accepted policy versions",
            "filter",
            "accepted_policy_versions",
        ),
        src.as_recorded(
            "user_data.opt_in.jurisdictions",
            "Opt-in basis: jurisdiction rule (none: every jurisdiction)",
            "filter",
            "jurisdictions",
        ),
    ]
    by_jurisdiction = manifest.get("evaluation", {}).get("by_jurisdiction")
    if isinstance(by_jurisdiction, Mapping):
        figures.append(
            Figure(
                "user_data.opt_in.granted_by_jurisdiction",
                "Opted-in assets per jurisdiction",
                {str(j): int(c.get("granted", 0)) for j, c in sorted(by_jurisdiction.items())},
                (src.manifest("evaluation", "by_jurisdiction"),),
                derivation="the 'granted' count of each jurisdiction",
            )
        )
    else:
        figures.append(
            _not_recorded(
                "user_data.opt_in.granted_by_jurisdiction",
                "Opted-in assets per jurisdiction",
                "this manifest has no /evaluation/by_jurisdiction",
            )
        )
    figures += [
        _not_recorded(
            "user_data.opt_in.granted_by_policy_version",
            "Opted-in assets per policy version",
            "each grant's policy version is in the run's allowlist table, which the manifest "
            "commits to by its Merkle root only; no count per version is recorded",
        ),
        src.as_recorded(
            "user_data.assets.allowlisted",
            "Assets opted in (allowlist)",
            "allowlist",
            "asset_count",
        ),
        src.as_recorded(
            "user_data.assets.evaluated", "Assets evaluated for consent", "evaluation", "assets"
        ),
        _not_recorded(
            "user_data.creators",
            "Distinct creators (asset owners)",
            "the manifest counts assets, not their owners",
        ),
    ]
    for name in sorted(snapshots):
        figures += [
            src.as_recorded(
                f"user_data.dataset.{name}.source",
                f"`{name}`: source table and Delta version",
                "snapshots",
                name,
                "source",
            ),
            src.as_recorded(
                f"user_data.dataset.{name}.rows", f"`{name}`: rows used", "snapshots", name, "rows"
            ),
            src.as_recorded(
                f"user_data.dataset.{name}.assets",
                f"`{name}`: assets the rows derive from",
                "snapshots",
                name,
                "assets",
            ),
        ]
        fields = snapshots[name].get("schema", {}).get("fields")
        if isinstance(fields, list):
            figures.append(
                Figure(
                    f"user_data.dataset.{name}.columns",
                    f"`{name}`: columns",
                    tuple(f"{f.get('name')}: {_type_name(f.get('type'))}" for f in fields),
                    (src.manifest("snapshots", name, "schema", "fields"),),
                    derivation="each field's name and type",
                )
            )
    figures += [
        _not_recorded(
            "user_data.dates.first_consent",
            "Earliest consent relied on",
            "each grant's captured_at is in the allowlist table, committed to by its Merkle "
            "root only; the manifest holds no earliest or latest instant",
        ),
        _not_recorded(
            "user_data.dates.last_consent",
            "Latest consent relied on",
            "as for the earliest: not in the manifest",
        ),
        _not_recorded(
            "user_data.dates.collection_period",
            "Period the data was collected or derived in",
            "the manifest records each dataset's retention rule, not the range of its rows' "
            "creation or derivation times",
        ),
        src.as_recorded(
            "user_data.dates.consent_evaluated_at", "Consent evaluated at (gate)", "evaluated_at"
        ),
        src.as_recorded(
            "user_data.dates.published_at", "Snapshot published (manifest created)", "created_at"
        ),
        src.as_recorded(
            "user_data.source_tables",
            "Consent, asset and lineage tables and their Delta versions",
            "source_tables",
        ),
        src.as_recorded(
            "user_data.allowlist_root",
            "Commitment to every grant relied on (allowlist Merkle root; a creator can ask "
            "for an inclusion or exclusion proof)",
            "allowlist",
            "merkle_root",
        ),
    ]
    return tuple(figures)


def _type_name(typ: Any) -> str:
    """A Spark schema type as one word (``string``, ``array<float>``, ``struct``)."""
    if isinstance(typ, str):
        return typ
    if isinstance(typ, Mapping) and typ.get("type") == "array":
        return f"array<{_type_name(typ.get('elementType'))}>"
    if isinstance(typ, Mapping):
        return str(typ.get("type"))
    return str(typ)


def _sum_reasons(
    src: _Sources, entries: Sequence[AuditEntry], tables: Sequence[str]
) -> tuple[dict[str, int], list[Citation]]:
    """Rows removed per reason from ``tables`` over run-level purge ``entries``."""
    totals: dict[str, int] = {}
    cites: list[Citation] = []
    for entry in entries:
        datasets = entry.payload.get("datasets", {})
        for table in tables:
            item = datasets.get(table)
            if not isinstance(item, Mapping) or not isinstance(item.get("reasons"), Mapping):
                continue
            for reason, n in item["reasons"].items():
                totals[str(reason)] = totals.get(str(reason), 0) + int(n)
            cites.append(src.audit(entry, "payload", "datasets", table, "reasons"))
    return dict(sorted(totals.items())), cites


def _with_head(src: _Sources, cites: Iterable[Citation]) -> tuple[Citation, ...]:
    """``cites``, then the audit head that seals the log the figure was counted over."""
    head = src.head()
    out = list(cites)
    if head is not None and head not in out:
        out.append(head)
    return tuple(out)


def _opt_outs(src: _Sources) -> tuple[Figure, ...]:
    manifest = src.record.manifest
    snapshots = _snapshots(manifest)
    figures: list[Figure] = [
        src.as_recorded(
            "opt_outs.gate.rule",
            "Gate: the rule every training row passed",
            "filter",
            "rule",
        ),
        src.as_recorded(
            "opt_outs.gate.assets_excluded",
            "Gate: assets excluded, per reason (withdrawn, denied, never asked, policy or "
            "jurisdiction not accepted, ...)",
            "exclusions",
            "assets",
        ),
    ]
    for name in sorted(snapshots):
        figures += [
            src.as_recorded(
                f"opt_outs.gate.rows_excluded.{name}",
                f"Gate: `{name}` row keys excluded, per reason",
                "exclusions",
                "rows",
                name,
            ),
            src.as_recorded(
                f"opt_outs.gate.retention.{name}",
                f"Gate: `{name}` retention rule",
                "retention",
                name,
            ),
        ]
    log = src.record.audit
    no_log = "the lake has no audit log"
    if log is None:
        return (
            *figures,
            *(
                _not_recorded(key, label, no_log)
                for key, label in (
                    ("opt_outs.gate.audited", "Gate run in the audit log"),
                    ("opt_outs.purge.runs_since_gate", "Purge runs since the gate"),
                    ("opt_outs.purge.last_run_at", "Last purge run"),
                    (
                        "opt_outs.purge.snapshot_rows_removed",
                        "Rows removed from this model's snapshots, per reason",
                    ),
                    (
                        "opt_outs.purge.source_rows_removed",
                        "Rows removed from the source datasets, per reason",
                    ),
                    ("opt_outs.purge.failed_runs", "Purge runs that failed on one of these tables"),
                    (
                        "opt_outs.erasure.window_hours",
                        "Erasure window (hours from purge to physical erasure)",
                    ),
                    ("opt_outs.erasure.receipts", "Erasure receipts, per result"),
                    ("opt_outs.erasure.keys_checked", "Removed keys checked absent on disk"),
                )
            ),
            *_always_missing(),
        )
    sha = src.sha
    gate_entries = [e for e in log if e.kind == "gate" and e.payload.get("manifest_sha256") == sha]
    if gate_entries:
        entry = gate_entries[0]
        figures.append(
            Figure(
                "opt_outs.gate.audited",
                "Gate run in the audit log (outcome, at)",
                {"outcome": _freeze(entry.payload.get("outcome")), "at": entry.at},
                (src.audit(entry, "payload", "outcome"), src.audit(entry, "at")),
            )
        )
    else:
        figures.append(
            _not_recorded(
                "opt_outs.gate.audited",
                "Gate run in the audit log (outcome, at)",
                "no audit entry names this manifest's SHA-256",
            )
        )
    since = parse_instant(str(manifest.get("created_at")), name="manifest created_at")
    after = [e for e in log if _instant(e.at) >= since]
    runs = [
        e for e in after if e.kind in PURGE_KINDS and isinstance(e.payload.get("datasets"), Mapping)
    ]
    snapshot_names = sorted(str(s.get("name")) for s in snapshots.values() if s.get("name"))
    sources = sorted(snapshots)
    tables = {*snapshot_names, *sources}
    figures.append(
        Figure(
            "opt_outs.purge.runs_since_gate",
            "Purge runs since the gate (nightly purge and backfills)",
            len(runs),
            _with_head(src, (src.audit(e, "payload", "datasets") for e in runs)),
            derivation="count of run-level purge/backfill entries at or after the manifest's "
            "created_at, up to the audit head",
        )
    )
    last = runs[-1] if runs else None
    figures.append(
        Figure(
            "opt_outs.purge.last_run_at",
            "Last purge run (none: no purge since the gate)",
            None if last is None else last.at,
            _with_head(src, () if last is None else (src.audit(last, "at"),)),
        )
    )
    removed, cites = _sum_reasons(src, runs, snapshot_names)
    figures.append(
        Figure(
            "opt_outs.purge.snapshot_rows_removed",
            "Rows removed from this model's snapshots since the gate, per reason",
            removed,
            _with_head(src, cites),
            derivation="sum over the cited purge runs",
        )
    )
    removed, cites = _sum_reasons(src, runs, sources)
    figures.append(
        Figure(
            "opt_outs.purge.source_rows_removed",
            "Rows removed from the datasets the snapshots were cut from, since the gate, "
            "per reason",
            removed,
            _with_head(src, cites),
            derivation="sum over the cited purge runs",
        )
    )
    failed = [
        e
        for e in runs
        if isinstance(e.payload.get("failed"), Mapping) and tables & set(e.payload["failed"])
    ]
    figures.append(
        Figure(
            "opt_outs.purge.failed_runs",
            "Purge runs that failed on one of these tables",
            len(failed),
            _with_head(src, (src.audit(e, "payload", "failed") for e in failed)),
            derivation="count of the cited runs",
        )
    )
    receipts = [e for e in after if e.kind == "erasure" and str(e.payload.get("dataset")) in tables]
    windows = sorted(
        {int(e.payload["window_hours"]) for e in receipts if "window_hours" in e.payload}
    )
    if windows:
        figures.append(
            Figure(
                "opt_outs.erasure.window_hours",
                "Erasure window: hours from a purge to physical erasure (the SLA)",
                windows[0] if len(windows) == 1 else tuple(windows),
                tuple(src.audit(e, "payload", "window_hours") for e in receipts),
                derivation="the distinct values in the cited erasure receipts",
            )
        )
    else:
        figures.append(
            _not_recorded(
                "opt_outs.erasure.window_hours",
                "Erasure window: hours from a purge to physical erasure (the SLA)",
                "the manifest does not record erasure.window_hours, and no erasure receipt "
                "for these tables is in the audit log since the gate",
            )
        )
    results: dict[str, int] = {}
    for e in receipts:
        outcome = str(e.payload.get("result"))
        results[outcome] = results.get(outcome, 0) + 1
    figures += [
        Figure(
            "opt_outs.erasure.receipts",
            "Erasure receipts since the gate, per result (verified: no removed key left in "
            "any data, deletion-vector or log file)",
            dict(sorted(results.items())),
            _with_head(src, (src.audit(e, "payload", "result") for e in receipts)),
            derivation="count of the cited receipts per result",
        ),
        Figure(
            "opt_outs.erasure.keys_checked",
            "Removed row keys checked absent on disk",
            sum(int(e.payload.get("keys_checked", 0)) for e in receipts),
            _with_head(src, (src.audit(e, "payload", "keys_checked") for e in receipts)),
            derivation="sum over the cited receipts",
        ),
    ]
    return (*figures, *_always_missing())


def _always_missing() -> tuple[Figure, ...]:
    return (
        _not_recorded(
            "opt_outs.latency",
            "Time from an opt-out to its removal",
            "the audit log records when each purge and erasure ran, not when each withdrawal "
            "was captured",
        ),
        _not_recorded(
            "opt_outs.machine_readable_signals",
            "Machine-readable opt-outs (C2PA / IPTC) honoured",
            "creator signals enter as consent records whose policy_version names the signal; "
            "the manifest counts exclusions per reason, not per signal",
        ),
    )


def _instant(text: str) -> dt.datetime:
    return parse_instant(text, name="audit entry at")


def build_summary(record: Record) -> TrainingSummary:
    """Derive the summary of a checked record (no reads; see :func:`load_record`)."""
    src = _Sources(record)
    log = record.audit
    return TrainingSummary(
        model_version=record.link.model_version,
        run_id=record.link.run_id,
        use_case=str(record.manifest.get("use_case")),
        manifest_path=record.link.manifest_path,
        manifest_sha256=record.link.manifest_sha256,
        registry_seq=record.link.seq,
        registry_entries=record.registry_entries,
        audit_entries=None if log is None else len(log),
        audit_head_sha256=log[-1].entry_sha256 if log else None,
        sections=(
            Section(USER_DATA, SECTION_TITLES[USER_DATA], _user_data(src)),
            Section(OPT_OUTS, SECTION_TITLES[OPT_OUTS], _opt_outs(src)),
        ),
    )


def training_summary(lake_root: str | Path, model_version: str) -> TrainingSummary:
    """The summary of ``model_version`` in the lake at ``lake_root`` (load, check, build)."""
    return build_summary(load_record(lake_root, model_version))


# --------------------------------------------------------------------------------------------
# Rendering (pure)


def _cell(value: Json) -> str:
    """A value in one Markdown table cell (``|`` escaped, never wrapped)."""
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, Mapping):
        inner = ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
        text = inner or "none"
    elif isinstance(value, tuple):
        text = ", ".join(_cell(v) for v in value) or "none"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _source_cell(fig: Figure) -> str:
    if not fig.cites:
        return NOT_RECORDED
    shown = [c.short() for c in fig.cites[:_CELL_CITATIONS]]
    more = len(fig.cites) - len(shown)
    text = "; ".join(shown) + (f"; and {more} more" if more else "")
    if fig.derivation:
        text += f" ({fig.derivation})"
    return text.replace("|", "\\|")


def render_markdown(summary: TrainingSummary) -> str:
    """The summary as Markdown, for publication next to the model card.

    Each section is a table of figure, value and source; a figure the record does not hold
    says so in both columns and is explained under "Not recorded"; every cited audit entry's
    full digest is listed at the end, so each cell can be followed back to sealed evidence.
    """
    audit = (
        "no audit log"
        if summary.audit_entries is None
        else f"audit log of {summary.audit_entries} entries, head `{summary.audit_head_sha256}`"
    )
    lines = [
        f"# EU AI Act public summary of training content: model {summary.model_version}",
        "",
        f"Model version `{summary.model_version}`, use case `{summary.use_case}`, gate run "
        f"`{summary.run_id}`. This answers the parts of the AI Office template that "
        f"consentgate's record holds (§{USER_DATA} and §{OPT_OUTS}); the template's other "
        "sections are outside it.",
        "",
        f"Every figure cites its source: manifest `{summary.manifest_path}` with SHA-256 "
        f"`{summary.manifest_sha256}` (registry entry #{summary.registry_seq} of "
        f"{summary.registry_entries}, chain intact), and the {audit} (chain intact). "
        "A manifest citation is an RFC 6901 JSON pointer into that manifest; an audit "
        "citation names the entry's seq and a pointer into it.",
    ]
    for section in summary.sections:
        lines += [
            "",
            f"## §{section.number} {section.title}",
            "",
            "| figure | value | source |",
            "|---|---|---|",
        ]
        for fig in section.figures:
            value = _cell(fig.value) if fig.recorded else NOT_RECORDED
            label = fig.label.replace("|", "\\|")
            lines.append(f"| {label} | {value} | {_source_cell(fig)} |")
    missing = [f for f in summary.figures() if not f.recorded]
    if missing:
        lines += ["", f"## {NOT_RECORDED.capitalize()}", ""]
        lines += [
            f"- **{f.label}**: {(f.note or '').removeprefix(f'{NOT_RECORDED}: ')}" for f in missing
        ]
    cited = sorted(
        {(c.seq or 0, c.sha256) for f in summary.figures() for c in f.cites if c.source == "audit"}
    )
    lines += [
        "",
        "## Sources",
        "",
        f"- manifest `{summary.manifest_path}`: SHA-256 `{summary.manifest_sha256}`",
        f"- registry entry #{summary.registry_seq}: manifest SHA-256 `{summary.manifest_sha256}`",
    ]
    lines += [f"- audit entry #{seq}: SHA-256 `{sha}`" for seq, sha in cited]
    return "\n".join(lines) + "\n"


def write_summary(summary: TrainingSummary, out_dir: Path) -> dict[str, Path]:
    """Write ``training-summary-<V>.md`` and ``.json`` into ``out_dir`` (which must exist).

    Returns:
        ``{"markdown": path, "json": path}``.

    Raises:
        TrainingSummaryError: ``out_dir`` is not a directory.
    """
    if not out_dir.is_dir():
        raise TrainingSummaryError(f"--out: directory {out_dir} does not exist")
    stem = f"training-summary-{summary.model_version}"
    markdown = out_dir / f"{stem}.md"
    data = out_dir / f"{stem}.json"
    markdown.write_text(render_markdown(summary), encoding="utf-8")
    data.write_text(json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n", "utf-8")
    return {"markdown": markdown, "json": data}


__all__ = [
    "FORMAT",
    "NOT_RECORDED",
    "OPT_OUTS",
    "USER_DATA",
    "AuditEntry",
    "Citation",
    "Figure",
    "Record",
    "Section",
    "TrainingSummary",
    "TrainingSummaryError",
    "audit_entry_digest",
    "audit_path_at",
    "build_summary",
    "json_pointer",
    "load_record",
    "read_audit",
    "render_markdown",
    "resolve_pointer",
    "training_summary",
    "write_summary",
]
