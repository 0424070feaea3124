"""The pre-training gate: allowlist, immutable snapshots, manifest, registry, audit, datasheet.

A training pipeline calls this before it trains. It must be impossible to get a snapshot that
holds a row without consent for the use case, and every snapshot must come with evidence anyone
can check later (:mod:`consentgate.manifest`).

The job is split into steps so the Airflow DAG can map the snapshot step over datasets; each
step takes and returns JSON-able dicts (XCom-safe), and the state between steps lives in the
lake, never in memory:

1. :func:`prepare_gate` pins the source tables' Delta versions, evaluates consent at ``T``,
   writes the run's decisions (work table) and the explicit allowlist (granted assets only,
   kept for proofs), and refuses - nothing published - when the allowlist is empty or below
   ``gate.min_allowlist_assets``, when a dataset's use case differs (exit 2), when an explicit
   ``as_of`` is earlier than changes the consent or assets table already records (exit 2), or
   when the model version already has snapshots.
2. :func:`snapshot_dataset` writes the surviving rows of one dataset (every source asset
   granted, inside retention; decided by :func:`consentgate.lineage.row_decisions`) as a new
   Delta table under ``_consentgate/snapshots/<V>/<dataset>``, range-sorted by asset then key,
   and hashes it on the executors.
3. :func:`publish_gate` writes the datasheet, then - under the registry lock - the manifest
   and the registry entry. The registry commit is the publication point: a reader that follows
   the registry never sees a half-published run. Then the audit event.

:func:`run_gate` runs all three in-process and, when a step fails before publication, removes
what this run wrote (its snapshots are unregistered, so nobody could have relied on them).

Two gates for one model version (decision, issue #12 item 6). Checking the registry and then
cutting is check-then-act: two runs could both pass the check, and the loser's rollback would
delete the winner's snapshots. So :func:`prepare_gate` first *claims* the model version: it
creates ``_consentgate/gate_claims/<V>.json`` with ``O_CREAT|O_EXCL`` (atomic on a local disk
and on NFSv3+, the shared mount the registry lock already relies on), recording the gate run
id, pid, host and time - never an asset or user id. Only then does it re-check the registry
and refuse leftover, unregistered ``snapshots/<V>`` directories. A second gate finds the file
and fails at once with :class:`~consentgate.errors.ConflictError` (exit 1) naming the holder,
before it writes anything. While the claim is held, whatever appears under ``snapshots/<V>``
was written by the holder; :func:`snapshot_dataset` and :func:`publish_gate` check that they
still hold it, and :func:`rollback_gate` deletes snapshots only for the run that holds it and,
in-process, only the ones this run created (recorded after the write, never before it).
Publication (the registry commit) and rollback release the claim.

A claim outlives only a gate that was killed outright (SIGKILL, a lost machine): any failure
Python sees releases it, and in Airflow the ``rollback`` task runs whatever happened upstream.
It never expires on its own - a gate over a large lake may legitimately hold it for hours,
and in Airflow its steps run in different processes, so neither age nor pid proves a holder
dead. Clearing it is a documented manual step: the refusal names the claim file; once the run
in it is known to be dead and the model version is not in the registry, remove
``_consentgate/snapshots/<V>`` (if present) and the claim file, and gate again.

Also here: :func:`explain_model` ("which assets trained V, under which consent records?") and
:func:`impact` (which published runs contain assets that have since lost consent).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import audit, datasheet, digest, evaluate, heads, lake, registry, verifier
from consentgate.config import Config
from consentgate.errors import (
    AsOfRefused,
    CheckFailed,
    ConflictError,
    ConsentgateError,
    TableError,
)
from consentgate.logs import step
from consentgate.manifest import (
    FORMAT,
    MANIFEST_FILE,
    describe_snapshot,
    load_manifest,
    manifest_dir,
    write_manifest,
)
from consentgate.runtime import iso, new_run_id, now_utc, parse_instant, versions
from consentgate.spark import spark_work

#: Columns of the stored allowlist (the leaf fields, in leaf order).
ALLOWLIST_COLUMNS: Final = digest.ALLOWLIST_COLUMNS
#: Default cap on the assets :func:`explain_model` returns inline.
EXPLAIN_LIMIT: Final = 1000

log = logging.getLogger(__name__)


class _Sizes(TypedDict):
    rows: int
    files: int
    bytes: int


def _sizes(path: Path) -> _Sizes:
    """A written table's rows, files and bytes for a step line (from its log, no data read)."""
    inventory = lake.table_inventory(path)
    return _Sizes(
        rows=int(inventory["rows"]), files=int(inventory["files"]), bytes=int(inventory["bytes"])
    )


# --------------------------------------------------------------------------------------------
# Paths of a run's tables


def work_dir(config: Config, run_id: str) -> Path:
    """Per-run scratch tables (decisions), removed after publication or refusal."""
    return config.state_dir / "gate_runs" / run_id


def allowlist_path(config: Config, run_id: str) -> Path:
    """The run's stored allowlist leaves (kept: proofs and ``explain-model`` read it)."""
    return config.state_dir / "allowlists" / run_id


def _rel(config: Config, path: Path) -> str:
    return registry.relative_to_lake(config, path)


# --------------------------------------------------------------------------------------------
# The model version's claim: one gate at a time per model version


#: What a claim file says when it cannot be parsed (being written, or damaged).
_UNREADABLE: Final = "(unreadable)"


@dataclass(frozen=True)
class GateClaim:
    """Who holds a model version's claim: enough to find the run and judge whether it is dead.

    Attributes:
        model_version: The claimed model version.
        run_id: The gate run id (``gate-...``) that holds it.
        pid: The process that took the claim (in Airflow that task's process, long gone while
            later steps run: information for the operator, not a liveness test).
        host: Where that process ran.
        claimed_at: When, ISO-8601 UTC.
    """

    model_version: str
    run_id: str
    pid: int
    host: str
    claimed_at: str

    def describe(self) -> str:
        """The holder in one phrase, for refusals."""
        return (
            f"run {self.run_id}, pid {self.pid} on host {self.host}, claimed at {self.claimed_at}"
        )


def claim_path(config: Config, model_version: str) -> Path:
    """The claim file of ``model_version``: ``_consentgate/gate_claims/<V>.json``."""
    return config.state_dir / "gate_claims" / f"{registry.check_model_version(model_version)}.json"


def read_claim(config: Config, model_version: str) -> GateClaim | None:
    """The current holder of ``model_version``'s claim, or None when nobody holds it.

    A file that exists but cannot be parsed (its holder is between creating and writing it,
    or it is damaged) still counts as held: it is returned with run id ``(unreadable)``, so it
    never matches a run and is never taken over silently.
    """
    path = claim_path(config, model_version)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return GateClaim(
            model_version=str(data["model_version"]),
            run_id=str(data["run_id"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            claimed_at=str(data["claimed_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return GateClaim(model_version, _UNREADABLE, -1, _UNREADABLE, _UNREADABLE)


def _claimed_message(config: Config, model_version: str, holder: GateClaim | None) -> str:
    who = holder.describe() if holder is not None else "a run that has just released it"
    return (
        f"gate refused: model version {model_version!r} is being cut by another gate run "
        f"({who}; claim {claim_path(config, model_version)}). "
        "Wait for that run to publish or fail. If it is dead and the model version is not in "
        f"the registry, remove {registry.snapshots_root(config, model_version)} (if present) "
        "and the claim file, then gate again"
    )


def claim_model_version(config: Config, *, model_version: str, run_id: str) -> GateClaim:
    """Atomically claim ``model_version`` for ``run_id`` before anything is written for it.

    The exclusive create is the whole point: of two gates racing for one model version exactly
    one creates the file; the other learns it lost before it has written a byte, so it has
    nothing to roll back and can never delete the winner's snapshots.

    Taking a claim that ``run_id`` itself holds succeeds: that is an orchestrator retrying
    the step under the same run id (the run's earlier attempt took it, then failed).

    Raises:
        ConflictError: (exit 1) another run holds the claim; names it and the manual step for
            a holder that is known to be dead.
    """
    path = claim_path(config, model_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = GateClaim(
        model_version=model_version,
        run_id=run_id,
        pid=os.getpid(),
        host=socket.gethostname(),
        claimed_at=iso(now_utc()),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = read_claim(config, model_version)
        if holder is not None and holder.run_id == run_id != _UNREADABLE:
            # An earlier attempt of this very run (an orchestrator's retry of the step): the
            # claim is already ours, and nothing but this run can be under snapshots/<V>.
            return holder
        raise ConflictError(
            _claimed_message(config, model_version, read_claim(config, model_version))
            + "; this run wrote nothing"
        ) from None
    try:
        try:
            os.write(fd, json.dumps(asdict(claim), sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)  # created by us a moment ago: an empty claim helps nobody
        raise
    return claim


def holds_claim(config: Config, *, model_version: str, run_id: str) -> bool:
    """Whether ``run_id`` holds ``model_version``'s claim right now (never an unreadable one)."""
    holder = read_claim(config, model_version)
    return holder is not None and holder.run_id == run_id and run_id != _UNREADABLE


def _require_claim(config: Config, run: Mapping[str, Any]) -> None:
    """Refuse to write or publish for a model version this run no longer holds.

    A claim only disappears under a running gate when an operator cleared it (taking the run
    for dead); from then on another run may be cutting the model version, and this one must
    not write next to it nor publish over it.

    Raises:
        ConflictError: (exit 1) the claim is gone or held by another run.
    """
    model_version = str(run["model_version"])
    if not holds_claim(config, model_version=model_version, run_id=str(run["run_id"])):
        raise ConflictError(
            f"run {run['run_id']}: no longer holds the claim on model version "
            f"{model_version!r}; "
            + _claimed_message(config, model_version, read_claim(config, model_version))
        )


def release_claim(config: Config, *, model_version: str, run_id: str) -> bool:
    """Give up ``run_id``'s claim on ``model_version`` (another run's claim is left alone).

    Returns:
        Whether a claim held by ``run_id`` was removed.
    """
    if not holds_claim(config, model_version=model_version, run_id=run_id):
        return False
    claim_path(config, model_version).unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------------------------
# Step 1: evaluate, allowlist, refusals


def _resolve_datasets(config: Config, use_case: str, datasets: Sequence[str] | None) -> list[str]:
    if use_case not in config.use_cases:
        known = ", ".join(sorted(config.use_cases))
        raise ConsentgateError(f"--use-case: {use_case!r} is not configured (known: {known})")
    if datasets is None:
        names = sorted(n for n, d in config.datasets.items() if d.use_case == use_case)
        if not names:
            raise ConsentgateError(f"--use-case: no dataset of use case {use_case!r} is configured")
        return names
    names = sorted(dict.fromkeys(d.strip() for d in datasets if d.strip()))
    if not names:
        raise ConsentgateError("--datasets: no dataset named")
    for name in names:
        if name not in config.datasets:
            raise ConsentgateError(f"--datasets: {name!r} is not a configured dataset")
        if config.datasets[name].use_case != use_case:
            raise ConsentgateError(
                f"--datasets: {name!r} has use case {config.datasets[name].use_case!r}, "
                f"not {use_case!r}; a snapshot may only hold data consented for its use"
            )
    return names


def _refuse_published(config: Config, model_version: str) -> None:
    entry = registry.find_entry(config, model_version=model_version)
    if entry is not None:
        raise CheckFailed(
            f"gate refused: model version {model_version!r} already has snapshots "
            f"(run {entry.run_id}, {entry.manifest_path}); snapshots are immutable"
        )


def _refuse_existing(config: Config, model_version: str) -> None:
    """Refuse a published model version or one with unregistered leftovers (under the claim).

    Called while holding the claim, so that what it sees cannot change under it: a run that
    published between the caller's first look and its claim is found here, and anything under
    ``snapshots/<V>`` from now on was written by the claim's holder.
    """
    _refuse_published(config, model_version)
    root = registry.snapshots_root(config, model_version)
    if root.exists():
        raise CheckFailed(
            f"gate refused: {root} exists but is not in the registry (left by a failed run?); "
            "inspect and remove it before gating this model version"
        )


#: How far ahead of this machine's clock a gate's instant may be: clocks of the machines that
#: write consent records and run the gate disagree by seconds, not by this much.
FUTURE_SKEW: Final = dt.timedelta(minutes=5)
#: How long an instant the caller did not choose (a run's start) serves unchecked: the gap
#: between an orchestrator's ``validate`` and its ``evaluate`` in a healthy run. Older, it is
#: checked against the changes recorded since (:func:`_refuse_back_dated`).
FILLED_IN_GRACE: Final = dt.timedelta(minutes=5)


def _refuse_future(instant: dt.datetime) -> None:
    """Refuse an instant later than now (plus :data:`FUTURE_SKEW`), before anything is taken.

    Decided (issue #23 item 7): evaluated at a future ``T``, a grant dated between now and
    ``T`` would outweigh a revocation recorded today (the latest record before ``T`` decides),
    so a snapshot cut now could include an asset its owner has withdrawn. A future instant is
    never needed: a training run is gated when it starts.

    Raises:
        AsOfRefused: (exit 2) naming the instant and now; nothing is written.
    """
    now = now_utc()
    if instant > now + FUTURE_SKEW:
        raise AsOfRefused(
            f"--as-of {iso(instant)}: refused, it is later than now ({iso(now)}) by more than "
            f"{int(FUTURE_SKEW.total_seconds() // 60)} minutes; a grant dated before it would "
            "outweigh a revocation recorded today. Omit --as-of to evaluate now; nothing was "
            "written"
        )


def _refuse_back_dated(
    sources: evaluate.Sources, instant: dt.datetime, *, explicit: bool, now: dt.datetime
) -> None:
    """Refuse an explicit instant earlier than changes the source tables already record, and
    a filled-in one that changes recorded since have overtaken.

    DESIGN.md: an explicit ``--as-of`` earlier than any ``captured_at`` or ``revoked_at`` in
    ``consent_records`` or any ``deleted_at`` in ``assets`` is refused, so that no snapshot is
    cut that ignores a known withdrawal. Later grants count too: a record captured after ``T``
    may be a revocation or a denial, and which is which is the evaluation's business.

    An instant the caller did not choose (an orchestrator's ``validate`` fixed it when the run
    started) is checked too once it is older than :data:`FILLED_IN_GRACE` (issue #23 item 7):
    then a record captured after it, or a revocation or deletion that took effect between it
    and ``now``, means the run's instant is stale (a retried ``evaluate`` an hour after
    ``validate``) and its snapshot would ignore a withdrawal known for that long. Within the
    grace, what is recorded after the instant is after the evaluation, as for every run (on a
    platform that records consent every second, any check without a grace would refuse every
    gate), and nothing is read. Changes scheduled after ``now`` do not count: the purge takes
    them when due.

    One aggregate over the tables at the versions the run pinned (the ones it would evaluate);
    only two counts reach the driver, never a row or an id.

    Raises:
        AsOfRefused: (exit 2) naming how many later changes the instant would ignore.
    """
    from consentgate.consent import instant_literal

    if not explicit and now - instant <= FILLED_IN_GRACE:
        return
    t = instant_literal(instant)
    if explicit:
        revoked = F.col("revoked_at") > t
        deleted = F.col("deleted_at") > t
    else:
        until = instant_literal(now)
        revoked = (F.col("revoked_at") > t) & (F.col("revoked_at") <= until)
        deleted = (F.col("deleted_at") > t) & (F.col("deleted_at") <= until)
    later_records = sources.records.where((F.col("captured_at") > t) | revoked).select(
        F.lit(True).alias("_cg_record")
    )
    later_deletions = sources.assets.where(deleted).select(F.lit(False).alias("_cg_record"))
    counts = (
        later_records.unionByName(later_deletions)
        .agg(
            F.count(F.when(F.col("_cg_record"), 1)).alias("records"),
            F.count(F.when(~F.col("_cg_record"), 1)).alias("deletions"),
        )
        .first()
    )
    records = int(counts["records"]) if counts is not None else 0
    deletions = int(counts["deletions"]) if counts is not None else 0
    if records + deletions == 0:
        return
    versions = sources.versions
    changes = (
        f"{records} consent record(s) captured or revoked after it in consent_records version "
        f"{versions['consent_records']}, {deletions} asset deletion(s) after it in assets "
        f"version {versions['assets']}"
    )
    if not explicit:
        raise AsOfRefused(
            f"the run's instant {iso(instant)}, fixed when the run started, is earlier than "
            f"{records + deletions} change(s) recorded since ({changes}); a snapshot may not "
            "ignore a known withdrawal. Start a new run, which takes a new instant; nothing "
            "was written"
        )
    raise AsOfRefused(
        f"--as-of {iso(instant)}: refused, it would ignore {records + deletions} later "
        f"change(s) already recorded ({changes}); a snapshot may not "
        "ignore a known withdrawal. Give an instant at or after the latest change, or omit "
        "--as-of to evaluate now; nothing was written"
    )


def prepare_gate(
    spark: SparkSession,
    config: Config,
    *,
    use_case: str,
    model_version: str,
    datasets: Sequence[str] | None = None,
    as_of: dt.datetime | str | None = None,
    as_of_explicit: bool | None = None,
    run_id: str | None = None,
    orchestration: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate consent, store the allowlist, and refuse early; returns the run (JSON-able).

    Args:
        spark: Session to run on.
        config: Validated configuration.
        use_case: The use case the model is trained for.
        model_version: The model version the snapshots are for (a directory name).
        datasets: Datasets to snapshot (default: every dataset of ``use_case``).
        as_of: Evaluation instant (default: now, UTC). An explicit instant earlier than a
            ``captured_at`` or ``revoked_at`` in ``consent_records`` or a ``deleted_at`` in
            ``assets`` (at the versions the run pins) is refused.
        as_of_explicit: Whether ``as_of`` is the caller's own choice (default: whenever it is
            given). An orchestrator that fills in its run's start instant passes False: that
            instant is "now" for the run, and consent captured a second later must not
            refuse it (it is simply after the evaluation, as for every run) — unless the
            instant is older than :data:`FILLED_IN_GRACE` and changes were recorded since
            (a retried step long after the run started): refused.
        run_id: The run's id (default: a new ``gate-...`` id). An orchestrator passes its own
            run's id, so one run has one id in its tasks, manifest, audit and commits, and a
            retried attempt of this step takes back the claim its earlier attempt left (see
            :func:`claim_model_version`).
        orchestration: The orchestrator's run (Airflow: ``dag_id``, ``dag_run_id``), recorded
            in the manifest as ``orchestration`` so the manifest names the DAG run it came from.

    Returns:
        The run: ids, instant, pinned table versions, allowlist facts, evaluation counts. The
        run holds the model version's claim until :func:`publish_gate` or
        :func:`rollback_gate` releases it; on any failure here it is released at once.

    Raises:
        ConsentgateError: (exit 2) unknown use case or dataset, or a dataset of another use case.
        AsOfRefused: (exit 2) ``as_of`` is earlier than changes the source tables record, or
            later than now by more than :data:`FUTURE_SKEW`; nothing is written.
        CheckFailed: (exit 1) the model version has snapshots, or the allowlist is empty or
            below ``gate.min_allowlist_assets``; nothing is published.
        ConflictError: (exit 1) another gate run holds the model version's claim; nothing is
            written.
    """
    registry.check_model_version(model_version)
    names = _resolve_datasets(config, use_case, datasets)
    _refuse_published(config, model_version)  # the common refusal, before taking anything
    instant = parse_instant(as_of) if isinstance(as_of, str) else (as_of or now_utc())
    _refuse_future(instant)
    run_id = run_id or new_run_id("gate")
    started = time.monotonic()
    claim_model_version(config, model_version=model_version, run_id=run_id)
    work = work_dir(config, run_id)
    allow = allowlist_path(config, run_id)
    # An earlier attempt of this run (same id, claim taken back) may have left its tables.
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(allow, ignore_errors=True)
    meta = {"consentgate.op": "gate.prepare", "consentgate.run_id": run_id}
    try:
        _refuse_existing(config, model_version)  # again, now that nobody else can change it
        with spark_work(spark, "decide") as ran:
            sources = evaluate.load_sources(spark, config)
            explicit = (as_of is not None) if as_of_explicit is None else as_of_explicit
            _refuse_back_dated(sources, instant, explicit=explicit, now=now_utc())
            dataset_versions = {n: lake.table_version(config.dataset_path(n)) for n in names}
            decisions = evaluate.decisions(spark, config, sources, use_case=use_case, as_of=instant)
            decisions_version = lake.write_table(
                decisions, work / "decisions", commit_metadata=meta
            )
        step(log, "decide", run_id=run_id, since=started, work=ran, **_sizes(work / "decisions"))
        with spark_work(spark, "allowlist") as ran:
            stored = lake.read_table(spark, work / "decisions", version=decisions_version)
            granted = (
                stored.where(F.col("decision") == F.lit("granted"))
                .select(*ALLOWLIST_COLUMNS)
                .repartitionByRange("asset_id")
                .sortWithinPartitions("asset_id")
            )
            allow_version = lake.write_table(granted, allow, commit_metadata=meta)
            written = _sizes(allow)
        count = written["rows"]
        step(log, "allowlist", run_id=run_id, work=ran, **written)
        minimum = config.gate.min_allowlist_assets
        if count == 0 or count < minimum:
            raise CheckFailed(
                f"gate refused: the allowlist for {use_case!r} at {iso(instant)} has {count} "
                f"granted assets; at least {minimum} required (gate.min_allowlist_assets); "
                "nothing was published"
            )
        by_jurisdiction: dict[str, dict[str, int]] = {}
        for row in stored.groupBy("jurisdiction", "reason").count().collect():
            j = (
                row["jurisdiction"]
                if row["jurisdiction"] is not None
                else datasheet.NO_JURISDICTION
            )
            by_jurisdiction.setdefault(j, {})[row["reason"]] = int(row["count"])
        reasons: dict[str, int] = {}
        for counts in by_jurisdiction.values():
            for reason, n in counts.items():
                reasons[reason] = reasons.get(reason, 0) + n
        with spark_work(spark, "hash") as ran:
            stored_allow = lake.read_table(spark, allow, version=allow_version)
            root, leaves = digest.allowlist_merkle_root(stored_allow, known_assets=count)
        step(log, "hash", table="allowlist", run_id=run_id, rows=leaves, work=ran)
        if leaves != count:
            raise CheckFailed(f"allowlist {allow}: {leaves} leaves hashed, log says {count}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(allow, ignore_errors=True)
        release_claim(config, model_version=model_version, run_id=run_id)
        raise
    return {
        "run_id": run_id,
        **({"orchestration": dict(orchestration)} if orchestration else {}),
        "use_case": use_case,
        "model_version": model_version,
        "as_of": iso(instant),
        "datasets": names,
        "dataset_versions": dataset_versions,
        "source_versions": dict(sources.versions),
        "decisions": {"path": _rel(config, work / "decisions"), "version": decisions_version},
        "allowlist": {
            "path": _rel(config, allow),
            "version": allow_version,
            "asset_count": count,
            "merkle_root": root,
        },
        "evaluation": {
            "assets": sum(reasons.values()),
            "granted": reasons.get("granted", 0),
            "reasons": dict(sorted(reasons.items())),
            "by_jurisdiction": {
                j: dict(sorted(c.items())) for j, c in sorted(by_jurisdiction.items())
            },
        },
    }


# --------------------------------------------------------------------------------------------
# Step 2: one snapshot


def _row_sources(
    name: str, rows: DataFrame, *, key: str, asset_column: str | None, edges: DataFrame
) -> DataFrame:
    """``key`` (string), ``asset_id`` (null for a row whose lineage is broken), ...: each
    row's source assets, by its own column or through lineage.

    A snapshot's lineage is its source dataset's (:func:`consentgate.registry.lineage_dataset`).
    """
    from consentgate import lineage

    return lineage.source_assets(
        registry.lineage_dataset(name), rows, key=key, asset_column=asset_column, lineage=edges
    )


def _lineage_at(spark: SparkSession, config: Config, versions: Mapping[str, Any]) -> DataFrame:
    return lake.read_table(spark, config.table_path("lineage"), version=int(versions["lineage"]))


def surviving_rows(
    spark: SparkSession, config: Config, run: Mapping[str, Any], dataset: str
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The dataset's rows that may enter the snapshot, plus per-key decisions and sources.

    Every input is read at the version the run pinned, so all snapshots of a run rest on the
    same state of the lake whichever process or task cuts them.

    Returns:
        ``(kept rows in the source schema, decisions (key, keep, reason), sources (key,
        asset_id))``, all lazy.
    """
    from consentgate import lineage

    ds = config.datasets[dataset]
    rows = lake.read_table(
        spark, config.dataset_path(dataset), version=int(run["dataset_versions"][dataset])
    )
    consent = lake.read_table(
        spark, config.resolve(run["decisions"]["path"]), version=int(run["decisions"]["version"])
    )
    edges = _lineage_at(spark, config, run["source_versions"])
    sources = _row_sources(dataset, rows, key=ds.key, asset_column=ds.asset_column, edges=edges)
    decided = lineage.row_decisions(
        rows,
        sources,
        consent,
        key=ds.key,
        use_case=ds.use_case,
        retention_days=ds.retention_days,
        derived_at_column=ds.derived_at_column,
        as_of=parse_instant(run["as_of"]),
        dataset=dataset,
    )
    keep = decided.where(F.col("keep")).select(F.col("key").alias("_cg_keep"))
    kept = rows.join(keep, F.col(ds.key).cast("string") == F.col("_cg_keep"), "left_semi")
    return kept, decided, sources


def snapshot_dataset(
    spark: SparkSession, config: Config, *, run: Mapping[str, Any], dataset: str
) -> dict[str, Any]:
    """Write one dataset's surviving rows as the run's immutable snapshot and describe it.

    Returns:
        JSON-able facts for the manifest: source table and version, snapshot path and version,
        rows, assets, content Merkle root, schema, each file's path, size and SHA-256, and the
        excluded keys per reason.

    Raises:
        TableError: the snapshot already exists (a model version's snapshots are immutable).
        ConflictError: the run no longer holds the model version's claim; nothing is written.
    """
    if dataset not in run["datasets"]:
        raise ConsentgateError(f"dataset {dataset!r} is not part of run {run['run_id']}")
    _require_claim(config, run)
    ds = config.datasets[dataset]
    model_version = str(run["model_version"])
    target = registry.snapshot_path(config, model_version, dataset)
    if os.path.lexists(target):
        if target.is_symlink() or lake.is_table(target):
            # Never write into (nor, on failure, have a rollback remove) a table this run did
            # not commit: under the claim nothing else should be here, so someone ignored it.
            raise TableError(
                f"snapshot {registry.snapshot_name(model_version, dataset)}: {target} already "
                f"exists and run {run['run_id']} did not write it; a model version's snapshots "
                "are immutable. Nothing was written to it"
            )
        # Files with no Delta commit: an earlier attempt of this step (an executor or the task
        # died mid-write). Under the claim only its holder writes here, so a retry starts over.
        log.warning(
            "gate: snapshot %s: removing an uncommitted earlier attempt",
            registry.snapshot_name(model_version, dataset),
        )
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    with contextlib.ExitStack() as cleanup:
        with spark_work(spark, "snapshot") as ran:
            kept, decided, sources = surviving_rows(spark, config, run, dataset)
            # Decided once: the write (``kept`` is built on ``decided``: Spark substitutes
            # the cached plan), the exclusion counts and the asset count below all read the
            # per-key decisions instead of joining the dataset, consent and lineage again.
            decided = decided.persist()
            cleanup.callback(decided.unpersist)
            order = [ds.asset_column, ds.key] if ds.asset_column else [ds.key]
            ordered = kept.repartitionByRange(*order).sortWithinPartitions(*order)
            version = lake.write_table(
                ordered,
                target,
                mode="error",
                # Copy-on-write, whatever the session's defaults: a trainer that reads the snapshot's
                # Parquet files directly must never see a purged row behind a deletion vector.
                # Its log is kept (no statistics hold ids in it), so the manifest's version of the
                # snapshot stays readable for verification however old it is.
                configuration={
                    "delta.enableDeletionVectors": "false",
                    "delta.enableExpiredLogCleanup": "false",
                },
                commit_metadata={
                    "consentgate.op": "gate.snapshot",
                    "consentgate.run_id": str(run["run_id"]),
                    "consentgate.dataset": dataset,
                },
            )
        step(log, "snapshot", table=dataset, work=ran, **_sizes(target))
        with spark_work(spark, "hash") as ran:
            described = describe_snapshot(spark, target, version)
        hashed = described["files"]
        size = sum(int(f["size"]) for f in hashed)
        step(
            log,
            "hash",
            table=dataset,
            rows=described["rows"],
            files=len(hashed),
            bytes=size,
            work=ran,
        )
        counts = {
            (bool(r["keep"]), str(r["reason"])): int(r["count"])
            for r in decided.groupBy("keep", "reason").count().collect()
        }
        exclusions = {reason: n for (keep, reason), n in sorted(counts.items()) if not keep}
        keys = lake.read_table(spark, target, version=version).select(
            F.col(ds.key).cast("string").alias("key")
        )
        assets = (
            sources.where(F.col("asset_id").isNotNull())
            .join(keys, on="key", how="left_semi")
            .select("asset_id")
            .distinct()
            .count()
        )
    return {
        "dataset": dataset,
        "name": registry.snapshot_name(model_version, dataset),
        "use_case": ds.use_case,
        "key": ds.key,
        "asset_column": ds.asset_column,
        "retention_days": ds.retention_days,
        "derived_at_column": ds.derived_at_column,
        "source": {
            "path": _rel(config, config.dataset_path(dataset)),
            "version": int(run["dataset_versions"][dataset]),
            "keys_evaluated": sum(counts.values()),
        },
        "path": _rel(config, target),
        "assets": int(assets),
        "exclusions": exclusions,
        **described,
    }


# --------------------------------------------------------------------------------------------
# Step 3: publish


def build_manifest(
    config: Config,
    *,
    run: Mapping[str, Any],
    snapshots: Mapping[str, Mapping[str, Any]],
    sheet: Mapping[str, Any],
    seq: int,
    previous: str | None,
    created_at: dt.datetime,
) -> dict[str, Any]:
    """Assemble the (unsealed) manifest; see ``docs/manifest.md`` for every field."""
    use_case = str(run["use_case"])
    uc = config.use_cases[use_case]
    rules = uc.jurisdictions
    jurisdictions = (
        None
        if rules is None
        else (
            {"allow": list(rules.allow)}
            if rules.allow is not None
            else {"deny": list(rules.deny or ())}
        )
    )
    source_tables = {
        name: {"path": _rel(config, config.table_path(name)), "version": int(v)}
        for name, v in sorted(run["source_versions"].items())
    }
    snaps = {
        name: {
            "name": s["name"],
            "source": dict(s["source"]),
            "path": s["path"],
            "version": s["version"],
            "rows": s["rows"],
            "assets": s["assets"],
            "content_merkle_root": s["content_merkle_root"],
            "content_tree": "RFC 6962 over ROW(row) leaves sorted by leaf hash",
            "schema": s["schema"],
            "files": list(s["files"]),
            "key": s["key"],
            "asset_column": s["asset_column"],
        }
        for name, s in sorted(snapshots.items())
    }
    evaluation = run["evaluation"]
    return {
        "format": FORMAT,
        "run_id": run["run_id"],
        **({"orchestration": run["orchestration"]} if run.get("orchestration") else {}),
        "use_case": use_case,
        "model_version": run["model_version"],
        "evaluated_at": run["as_of"],
        "created_at": iso(created_at),
        "versions": versions(),
        "filter": {
            "use_case": use_case,
            "accepted_policy_versions": list(uc.accepted_policy_versions),
            "jurisdictions": jurisdictions,
            "rule": "a row is kept iff every source asset is granted for the use case at "
            "evaluated_at and the row is inside the dataset's retention",
        },
        "retention": {
            name: {
                "retention_days": s["retention_days"],
                "derived_at_column": s["derived_at_column"],
            }
            for name, s in sorted(snapshots.items())
        },
        "source_tables": source_tables,
        "evaluation": {
            "assets": evaluation["assets"],
            "granted": evaluation["granted"],
            "reasons": evaluation["reasons"],
            "by_jurisdiction": evaluation["by_jurisdiction"],
        },
        "exclusions": {
            "assets": {r: n for r, n in evaluation["reasons"].items() if r != "granted"},
            "rows": {name: dict(s["exclusions"]) for name, s in sorted(snapshots.items())},
        },
        "allowlist": {
            "asset_count": run["allowlist"]["asset_count"],
            "merkle_root": run["allowlist"]["merkle_root"],
            "scheme": verifier.ALLOWLIST_SCHEME,
            "tree": "RFC 6962 over allowlist leaves sorted by key = SHA-256(key domain || asset_id)",
            "leaf": "key || SHA-256(entry domain || ROW(" + ", ".join(ALLOWLIST_COLUMNS) + "))",
            "table": {"path": run["allowlist"]["path"], "version": run["allowlist"]["version"]},
        },
        "snapshots": snaps,
        "datasheet": dict(sheet),
        "registry": {"path": _rel(config, registry.registry_path(config)), "seq": seq},
        "previous_manifest_sha256": previous,
    }


def publish_gate(
    spark: SparkSession,
    config: Config,
    *,
    run: Mapping[str, Any],
    snapshots: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Write datasheet, manifest and registry entry (the publication point), then audit.

    Args:
        spark: Session (registry and audit writes go through the lake layer).
        config: The lake.
        run: What :func:`prepare_gate` returned.
        snapshots: What :func:`snapshot_dataset` returned, per dataset (a mapping or a list,
            as an Airflow mapped task's results arrive).

    Returns:
        ``run_id``, ``manifest_path``, ``manifest_sha256``, ``snapshots{name: path}``,
        ``allowlist_assets``, ``allowlist_root``, ``datasheet``, ``registry_seq``.

    Raises:
        CheckFailed: a dataset's snapshot is missing, or the model version got published by a
            concurrent run; the registry then stays as it was.
        ConflictError: the run no longer holds the model version's claim (an operator cleared
            it); nothing is published.
    """
    snaps = (
        {str(s["dataset"]): s for s in snapshots}
        if not isinstance(snapshots, Mapping)
        else dict(snapshots)
    )
    if sorted(snaps) != sorted(run["datasets"]):
        raise CheckFailed(
            f"run {run['run_id']}: snapshots for {sorted(snaps)}, expected {sorted(run['datasets'])}"
        )
    run_id = str(run["run_id"])
    with spark_work(spark, "publish") as ran:
        out_dir = manifest_dir(config.state_dir, run_id)
        sheet = datasheet.write_datasheet(config, out_dir, run=run, snapshots=snaps)
        target = out_dir / MANIFEST_FILE
        with registry.registry_lock(config):
            _require_claim(config, run)  # under the lock: a claim cleared meanwhile is seen
            if registry.find_entry(config, model_version=str(run["model_version"])) is not None:
                raise CheckFailed(
                    f"gate refused: model version {run['model_version']!r} was published meanwhile"
                )
            seq, previous = registry.next_link(config)
            created = now_utc()
            manifest = build_manifest(
                config,
                run=run,
                snapshots=snaps,
                sheet=sheet,
                seq=seq,
                previous=previous,
                created_at=created,
            )
            sha = write_manifest(target, manifest)
            entry = registry.RegistryEntry(
                seq=seq,
                run_id=run_id,
                use_case=str(run["use_case"]),
                model_version=str(run["model_version"]),
                manifest_path=_rel(config, target),
                manifest_sha256=sha,
                previous_manifest_sha256=previous,
                created_at=created,
                snapshots=tuple(
                    registry.SnapshotRecord(
                        name=str(s["name"]),
                        dataset=name,
                        path=str(s["path"]),
                        version=int(s["version"]),
                        use_case=str(s["use_case"]),
                        key=str(s["key"]),
                        asset_column=s["asset_column"],
                        retention_days=s["retention_days"],
                        derived_at_column=s["derived_at_column"],
                    )
                    for name, s in sorted(snaps.items())
                ),
            )
            try:
                registry.append_entry(spark, config, entry)
            except BaseException:
                if registry.find_entry(config, model_version=entry.model_version) is None:
                    target.unlink(missing_ok=True)
                raise
        # Published: from now on the registry entry refuses every other gate for this version.
        release_claim(config, model_version=entry.model_version, run_id=run_id)
        audit.append_event(
            spark,
            config,
            kind="gate",
            run_id=run_id,
            payload={
                "outcome": "published",
                "use_case": run["use_case"],
                "model_version": run["model_version"],
                "manifest_path": entry.manifest_path,
                "manifest_sha256": sha,
                "registry_seq": seq,
                "allowlist_assets": run["allowlist"]["asset_count"],
                "allowlist_root": run["allowlist"]["merkle_root"],
                "snapshots": {
                    n: {"rows": s["rows"], "version": s["version"]}
                    for n, s in sorted(snaps.items())
                },
            },
        )
        shutil.rmtree(work_dir(config, run_id), ignore_errors=True)
    rows = sum(int(s["rows"]) for s in snaps.values())
    step(log, "publish", run_id=run_id, tables=len(snaps), rows=rows, seq=seq, work=ran)
    return {
        "run_id": run_id,
        "use_case": run["use_case"],
        "model_version": run["model_version"],
        "as_of": run["as_of"],
        "manifest_path": str(target),
        "manifest_sha256": sha,
        "registry_seq": seq,
        "previous_manifest_sha256": previous,
        "snapshots": {str(s["name"]): str(config.resolve(str(s["path"]))) for s in snaps.values()},
        # the Delta version each snapshot was sealed at: a trainer reads it there (time
        # travel), so a later change to the table (a purge) never reaches a run silently
        "snapshot_versions": {str(s["name"]): int(s["version"]) for s in snaps.values()},
        "snapshot_rows": {str(s["name"]): int(s["rows"]) for s in snaps.values()},
        "allowlist_assets": run["allowlist"]["asset_count"],
        "allowlist_root": run["allowlist"]["merkle_root"],
        # what was left out, by reason: a grant is no exclusion
        "exclusions": {r: n for r, n in run["evaluation"]["reasons"].items() if r != "granted"},
        "datasheet": {k: str(out_dir / v["path"]) for k, v in sheet.items()},
        # the registry's and the audit log's heads after this run: keep them, they catch a
        # later truncation (`--expect-head`, consentgate.heads)
        "heads": heads.published(config.lake_root),
    }


def rollback_gate(
    config: Config, run: Mapping[str, Any], *, written: Sequence[str] | None = None
) -> dict[str, Any]:
    """Remove what an unpublished run wrote (snapshots, allowlist, work tables) and release.

    Snapshots are removed only while this run holds the model version's claim: a run that
    lost the race (or whose claim an operator cleared) never touches ``snapshots/<V>``, where
    the holder's snapshots are. The run's allowlist, work tables and manifest directory are
    named by its own run id, so they are always its own.

    Args:
        config: The lake.
        run: What :func:`prepare_gate` returned.
        written: The datasets whose snapshot directories this run created, recorded after
            each one came into being (:func:`run_gate`). None when the caller cannot know (the
            Airflow ``rollback`` task: the snapshots were cut in other processes); then every
            dataset of the run is removed, which the claim makes safe - ``snapshots/<V>`` did
            not exist when the run claimed it, so whatever is there now is the run's own.

    Returns:
        ``run_id``, ``published`` (then nothing is removed), ``held_claim`` and the
        ``removed_snapshots`` (dataset names).
    """
    model_version = str(run["model_version"])
    run_id = str(run["run_id"])
    held = holds_claim(config, model_version=model_version, run_id=run_id)
    published = registry.find_entry(config, model_version=model_version) is not None
    removed: list[str] = []
    if not published:  # a published run is never touched: its snapshots are evidence
        if held:
            candidates = list(run["datasets"]) if written is None else list(written)
            for dataset in candidates:
                path = registry.snapshot_path(config, model_version, str(dataset))
                if path.exists():
                    shutil.rmtree(path)
                    removed.append(str(dataset))
            version_dir = registry.snapshots_root(config, model_version)
            if version_dir.is_dir() and not any(version_dir.iterdir()):
                version_dir.rmdir()
        shutil.rmtree(config.resolve(str(run["allowlist"]["path"])), ignore_errors=True)
        shutil.rmtree(work_dir(config, run_id), ignore_errors=True)
        shutil.rmtree(manifest_dir(config.state_dir, run_id), ignore_errors=True)
    if held:
        release_claim(config, model_version=model_version, run_id=run_id)
    return {
        "run_id": run_id,
        "published": published,
        "held_claim": held,
        "removed_snapshots": removed,
    }


def run_gate(
    spark: SparkSession,
    config: Config,
    *,
    use_case: str,
    model_version: str,
    datasets: Sequence[str] | None = None,
    as_of: dt.datetime | str | None = None,
) -> dict[str, Any]:
    """The whole gate in-process: prepare, snapshot every dataset, publish.

    Returns:
        :func:`publish_gate`'s result (``run_id``, ``manifest_path``, ``snapshots{name: path}``,
        ``allowlist_assets``, ...).

    Raises:
        ConsentgateError / AsOfRefused / CheckFailed: as :func:`prepare_gate`; on any failure
            before the registry commit everything this run wrote is removed.
        ConflictError: another gate run holds the model version; this run wrote nothing and
            removes nothing.
    """
    run = prepare_gate(
        spark,
        config,
        use_case=use_case,
        model_version=model_version,
        datasets=datasets,
        as_of=as_of,
    )
    # Recorded only once a directory exists that did not before this run's write: the
    # rollback must never remove what this run did not create.
    written: list[str] = []
    try:
        snapshots: dict[str, dict[str, Any]] = {}
        for dataset in run["datasets"]:
            target = registry.snapshot_path(config, model_version, dataset)
            existed = os.path.lexists(target)
            try:
                snapshots[dataset] = snapshot_dataset(spark, config, run=run, dataset=dataset)
            finally:
                if not existed and os.path.lexists(target):
                    written.append(dataset)
        return publish_gate(spark, config, run=run, snapshots=snapshots)
    except BaseException:
        rollback_gate(config, run, written=written)
        raise


# --------------------------------------------------------------------------------------------
# explain-model and impact


def _registered(
    config: Config, model_version: str
) -> tuple[registry.RegistryEntry, dict[str, Any]]:
    entry = registry.find_entry(config, model_version=model_version)
    if entry is None:
        raise ConsentgateError(f"MODEL_VERSION: {model_version!r} is not in the registry")
    return entry, load_manifest(config.resolve(entry.manifest_path))


def _allowlist_of(spark: SparkSession, config: Config, manifest: Mapping[str, Any]) -> DataFrame:
    table = manifest["allowlist"]["table"]
    return lake.read_table(spark, config.resolve(table["path"]), version=int(table["version"]))


def explain_model(
    spark: SparkSession,
    config: Config,
    *,
    model_version: str,
    limit: int | None = EXPLAIN_LIMIT,
    out: Path | None = None,
) -> dict[str, Any]:
    """Which exact assets trained ``model_version``, under which consent records.

    The answer is the run's stored allowlist (the consent terms each asset was admitted under:
    record id, policy version, captured_at, jurisdiction) restricted to the assets whose rows
    are in the run's snapshots as published (read at their registered versions; a snapshot no
    longer readable at that version, e.g. physically erased after a purge, falls back to the
    allowlist and says so in ``basis``).

    The listing grows with the model, so at most ``limit`` assets (by asset id) are returned
    inline (``truncated`` says when more exist); ``out`` writes the complete listing as a Delta
    table on the executors.

    Returns:
        ``model_version``, ``run_id``, ``use_case``, ``manifest_path``, ``assets_total``,
        ``truncated``, ``basis``, ``assets[]`` and, with ``out``, ``output``.
    """
    entry, manifest = _registered(config, model_version)
    allow = _allowlist_of(spark, config, manifest)
    used: DataFrame | None = None
    basis = "snapshots"
    pinned = {k: v["version"] for k, v in manifest["source_tables"].items()}
    try:
        edges = _lineage_at(spark, config, pinned)
        for name, snap in sorted(manifest["snapshots"].items()):
            path = config.resolve(snap["path"])
            frame = lake.read_table(spark, path, version=int(snap["version"]))
            ids = (
                _row_sources(
                    name, frame, key=snap["key"], asset_column=snap.get("asset_column"), edges=edges
                )
                .where(F.col("asset_id").isNotNull())
                .select("asset_id")
            )
            used = ids if used is None else used.unionByName(ids)
    except ConsentgateError:
        used, basis = None, "allowlist (a snapshot is no longer readable at its published version)"
    listing = allow if used is None else allow.join(used.distinct(), on="asset_id", how="left_semi")
    listing = listing.select(*ALLOWLIST_COLUMNS)
    result: dict[str, Any] = {
        "model_version": model_version,
        "run_id": entry.run_id,
        "use_case": entry.use_case,
        "manifest_path": str(config.resolve(entry.manifest_path)),
        "basis": basis,
    }
    if out is not None:
        lake.write_table(
            listing,
            out,
            mode="error",
            commit_metadata={"consentgate.op": "explain-model", "consentgate.run_id": entry.run_id},
        )
        result["output"] = str(out)
        listing = lake.read_table(spark, out)
    total = listing.count()
    rows = (
        listing.orderBy("asset_id").limit(limit).collect()
        if limit is not None
        else listing.orderBy("asset_id").collect()
    )
    result["assets_total"] = int(total)
    result["truncated"] = limit is not None and total > limit
    result["assets"] = [
        {
            "asset_id": r["asset_id"],
            "consent_record_id": r["consent_record_id"],
            "policy_version": r["policy_version"],
            "captured_at": iso(r["captured_at"]) if r["captured_at"] is not None else None,
            "jurisdiction": r["jurisdiction"],
        }
        for r in rows
    ]
    return result


def impact(
    spark: SparkSession, config: Config, *, as_of: dt.datetime | str | None = None
) -> dict[str, Any]:
    """Every published run whose allowlist holds assets that have since lost consent.

    Re-evaluates consent at ``as_of`` (default now) under the *current* config, once per use
    case, and joins each run's stored allowlist against it; an allowlisted asset that is no
    longer granted (or no longer known at all: ``asset_unknown``) counts under its current
    reason. Only counts per run and reason reach the driver.

    Returns:
        ``as_of``, ``runs_checked`` and ``runs[]`` (only affected runs): ``run_id``,
        ``model_version``, ``use_case``, ``manifest_path``, ``allowlist_assets``,
        ``lost_consent``, ``reasons{}``.
    """
    instant = parse_instant(as_of) if isinstance(as_of, str) else (as_of or now_utc())
    entries = registry.read_entries(config)
    result: dict[str, Any] = {"as_of": iso(instant), "runs_checked": len(entries), "runs": []}
    if not entries:
        return result
    sources = evaluate.load_sources(spark, config)
    per_use_case: dict[str, DataFrame] = {}
    lost: DataFrame | None = None
    skipped: list[str] = []
    for entry in entries:
        if entry.use_case not in config.use_cases:
            skipped.append(entry.run_id)
            continue
        if entry.use_case not in per_use_case:
            per_use_case[entry.use_case] = evaluate.decisions(
                spark, config, sources, use_case=entry.use_case, as_of=instant
            ).select("asset_id", "decision", "reason")
        manifest = load_manifest(config.resolve(entry.manifest_path))
        allow = _allowlist_of(spark, config, manifest).select("asset_id")
        joined = (
            allow.join(per_use_case[entry.use_case], on="asset_id", how="left")
            .where(F.coalesce(F.col("decision"), F.lit("denied")) != F.lit("granted"))
            .select(
                F.lit(entry.run_id).alias("run_id"),
                F.coalesce(F.col("reason"), F.lit("asset_unknown")).alias("reason"),
            )
        )
        lost = joined if lost is None else lost.unionByName(joined)
    counts: dict[str, dict[str, int]] = {}
    if lost is not None:
        for row in lost.groupBy("run_id", "reason").count().collect():
            counts.setdefault(row["run_id"], {})[row["reason"]] = int(row["count"])
    for entry in entries:
        reasons = counts.get(entry.run_id)
        if not reasons:
            continue
        manifest = load_manifest(config.resolve(entry.manifest_path))
        result["runs"].append(
            {
                "run_id": entry.run_id,
                "model_version": entry.model_version,
                "use_case": entry.use_case,
                "manifest_path": str(config.resolve(entry.manifest_path)),
                "allowlist_assets": manifest["allowlist"]["asset_count"],
                "lost_consent": sum(reasons.values()),
                "reasons": dict(sorted(reasons.items())),
            }
        )
    if skipped:
        result["skipped_runs"] = skipped
        result["skipped_reason"] = "use case no longer configured"
    return result


__all__ = [
    "ALLOWLIST_COLUMNS",
    "GateClaim",
    "allowlist_path",
    "build_manifest",
    "claim_model_version",
    "claim_path",
    "explain_model",
    "holds_claim",
    "impact",
    "prepare_gate",
    "publish_gate",
    "read_claim",
    "release_claim",
    "rollback_gate",
    "run_gate",
    "snapshot_dataset",
    "surviving_rows",
    "work_dir",
]
