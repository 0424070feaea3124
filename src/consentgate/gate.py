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

Also here: :func:`explain_model` ("which assets trained V, under which consent records?") and
:func:`impact` (which published runs contain assets that have since lost consent).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from consentgate import audit, datasheet, digest, evaluate, lake, registry
from consentgate.config import Config
from consentgate.errors import AsOfRefused, CheckFailed, ConsentgateError
from consentgate.manifest import (
    FORMAT,
    MANIFEST_FILE,
    describe_snapshot,
    load_manifest,
    manifest_dir,
    write_manifest,
)
from consentgate.runtime import iso, new_run_id, now_utc, parse_instant, versions

#: Columns of the stored allowlist (the leaf fields, in leaf order).
ALLOWLIST_COLUMNS: Final = digest.ALLOWLIST_COLUMNS
#: Default cap on the assets :func:`explain_model` returns inline.
EXPLAIN_LIMIT: Final = 1000


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


def _refuse_existing(config: Config, model_version: str) -> None:
    entry = registry.find_entry(config, model_version=model_version)
    if entry is not None:
        raise CheckFailed(
            f"gate refused: model version {model_version!r} already has snapshots "
            f"(run {entry.run_id}, {entry.manifest_path}); snapshots are immutable"
        )
    root = registry.snapshots_root(config, model_version)
    if root.exists():
        raise CheckFailed(
            f"gate refused: {root} exists but is not in the registry (left by a failed run?); "
            "inspect and remove it before gating this model version"
        )


def _refuse_back_dated(sources: evaluate.Sources, instant: dt.datetime) -> None:
    """Refuse an explicit instant earlier than changes the source tables already record.

    DESIGN.md: an explicit ``--as-of`` earlier than any ``captured_at`` or ``revoked_at`` in
    ``consent_records`` or any ``deleted_at`` in ``assets`` is refused, so that no snapshot is
    cut that ignores a known withdrawal. Later grants count too: a record captured after ``T``
    may be a revocation or a denial, and which is which is the evaluation's business.

    One aggregate over the tables at the versions the run pinned (the ones it would evaluate);
    only two counts reach the driver, never a row or an id.

    Raises:
        AsOfRefused: (exit 2) naming how many later changes the instant would ignore.
    """
    from consentgate.consent import instant_literal

    t = instant_literal(instant)
    later_records = sources.records.where(
        (F.col("captured_at") > t) | (F.col("revoked_at") > t)
    ).select(F.lit(True).alias("_cg_record"))
    later_deletions = sources.assets.where(F.col("deleted_at") > t).select(
        F.lit(False).alias("_cg_record")
    )
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
    raise AsOfRefused(
        f"--as-of {iso(instant)}: refused, it would ignore {records + deletions} later "
        f"change(s) already recorded ({records} consent record(s) captured or revoked after it "
        f"in consent_records version {versions['consent_records']}, {deletions} asset "
        f"deletion(s) after it in assets version {versions['assets']}); a snapshot may not "
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
            refuse it (it is simply after the evaluation, as for every run).

    Returns:
        The run: ids, instant, pinned table versions, allowlist facts, evaluation counts.

    Raises:
        ConsentgateError: (exit 2) unknown use case or dataset, or a dataset of another use case.
        AsOfRefused: (exit 2) ``as_of`` is earlier than changes the source tables record;
            nothing is written.
        CheckFailed: (exit 1) the model version has snapshots, or the allowlist is empty or
            below ``gate.min_allowlist_assets``; nothing is published.
    """
    registry.check_model_version(model_version)
    names = _resolve_datasets(config, use_case, datasets)
    _refuse_existing(config, model_version)
    instant = parse_instant(as_of) if isinstance(as_of, str) else (as_of or now_utc())
    run_id = new_run_id("gate")
    sources = evaluate.load_sources(spark, config)
    explicit = (as_of is not None) if as_of_explicit is None else as_of_explicit
    if explicit:
        _refuse_back_dated(sources, instant)
    dataset_versions = {n: lake.table_version(config.dataset_path(n)) for n in names}
    work = work_dir(config, run_id)
    allow = allowlist_path(config, run_id)
    meta = {"consentgate.op": "gate.prepare", "consentgate.run_id": run_id}
    try:
        decisions = evaluate.decisions(spark, config, sources, use_case=use_case, as_of=instant)
        decisions_version = lake.write_table(decisions, work / "decisions", commit_metadata=meta)
        stored = lake.read_table(spark, work / "decisions", version=decisions_version)
        granted = (
            stored.where(F.col("decision") == F.lit("granted"))
            .select(*ALLOWLIST_COLUMNS)
            .repartitionByRange("asset_id")
            .sortWithinPartitions("asset_id")
        )
        allow_version = lake.write_table(granted, allow, commit_metadata=meta)
        count = int(lake.table_inventory(allow)["rows"])
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
        stored_allow = lake.read_table(spark, allow, version=allow_version)
        root, leaves = digest.allowlist_merkle_root(stored_allow)
        if leaves != count:
            raise CheckFailed(f"allowlist {allow}: {leaves} leaves hashed, log says {count}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(allow, ignore_errors=True)
        raise
    return {
        "run_id": run_id,
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
    """
    if dataset not in run["datasets"]:
        raise ConsentgateError(f"dataset {dataset!r} is not part of run {run['run_id']}")
    ds = config.datasets[dataset]
    model_version = str(run["model_version"])
    target = registry.snapshot_path(config, model_version, dataset)
    kept, decided, sources = surviving_rows(spark, config, run, dataset)
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
    described = describe_snapshot(spark, target, version)
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
            "tree": "RFC 6962 over allowlist leaves sorted by asset_id",
            "leaf": "ROW(" + ", ".join(ALLOWLIST_COLUMNS) + ")",
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
    out_dir = manifest_dir(config.state_dir, run_id)
    sheet = datasheet.write_datasheet(config, out_dir, run=run, snapshots=snaps)
    target = out_dir / MANIFEST_FILE
    with registry.registry_lock(config):
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
                n: {"rows": s["rows"], "version": s["version"]} for n, s in sorted(snaps.items())
            },
        },
    )
    shutil.rmtree(work_dir(config, run_id), ignore_errors=True)
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
        "snapshot_rows": {str(s["name"]): int(s["rows"]) for s in snaps.values()},
        "allowlist_assets": run["allowlist"]["asset_count"],
        "allowlist_root": run["allowlist"]["merkle_root"],
        "exclusions": run["evaluation"]["reasons"],
        "datasheet": {k: str(out_dir / v["path"]) for k, v in sheet.items()},
    }


def _rollback(config: Config, run: Mapping[str, Any], written: Sequence[str]) -> None:
    """Remove what an unpublished run wrote: its snapshots, allowlist and work tables."""
    if registry.find_entry(config, model_version=str(run["model_version"])) is not None:
        return  # published after all: never remove registered snapshots
    for dataset in written:
        shutil.rmtree(registry.snapshot_path(config, str(run["model_version"]), dataset), True)
    version_dir = registry.snapshots_root(config, str(run["model_version"]))
    if version_dir.is_dir() and not any(version_dir.iterdir()):
        version_dir.rmdir()
    shutil.rmtree(config.resolve(str(run["allowlist"]["path"])), ignore_errors=True)
    shutil.rmtree(work_dir(config, str(run["run_id"])), ignore_errors=True)
    shutil.rmtree(manifest_dir(config.state_dir, str(run["run_id"])), ignore_errors=True)


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
    """
    run = prepare_gate(
        spark,
        config,
        use_case=use_case,
        model_version=model_version,
        datasets=datasets,
        as_of=as_of,
    )
    written: list[str] = []
    try:
        snapshots: dict[str, dict[str, Any]] = {}
        for dataset in run["datasets"]:
            written.append(dataset)
            snapshots[dataset] = snapshot_dataset(spark, config, run=run, dataset=dataset)
        return publish_gate(spark, config, run=run, snapshots=snapshots)
    except BaseException:
        _rollback(config, run, written)
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
    "allowlist_path",
    "build_manifest",
    "explain_model",
    "impact",
    "prepare_gate",
    "publish_gate",
    "run_gate",
    "snapshot_dataset",
    "surviving_rows",
    "work_dir",
]
