"""Real tables are accepted: derived tables created with delta-spark SQL, the way users have
them (deletion vectors, column mapping, change data feed, CHECK constraints, generated
columns, partitions, a bigint key), go through evaluate, gate, purge and erasure.

The tables are created with ``CREATE TABLE delta.`<path>` ... USING DELTA`` and ``INSERT``,
never with :func:`consentgate.lake.write_table`, so they keep delta-spark's default
statistics: min/max bounds of the key column in the Delta log. Rows are inserted so that
removed keys are statistics bounds and share files with surviving rows (so that a purge on a
table with deletion vectors really writes vectors, and a log that is not cleaned really leaks).

All ten kinds of table live side by side in ONE lake (one configured dataset each) and the
story runs ONCE over all of them: one evaluate, one gate, one purge, one erasure, as the nightly
run meets them. Replaying it per table cost ten lakes and ten runs of every step; the purge
and the erasure report per table, so one parametrised test per table still checks everything
about its own table, and no table's failure hides another's. The shared run (:func:`story`)
returns plain data only: the steps' results and, per table, what was read independently at
each stage (before the purge, after it, after the erasure: the bytes on disk change).

The erasure's proof is checked independently here: every file under the table (data files,
``_change_data/``, deletion-vector files, and ``_delta_log/`` commits, checkpoints, ``.crc``)
is read: Parquet data by the key's physical column name, the log's JSON lines, checksums and
checkpoint rows value by value (statistics opened), anything else as raw bytes. Failures name
the file and the field.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from consentgate import erasure, gate, lake, purge
from consentgate.config import load_config
from consentgate.evaluate import run_evaluate
from tests.lakes import write_small_lake

pytestmark = pytest.mark.slow

UTC = dt.UTC
MODEL_VERSION = "m1"
KEY = "embedding_id"
AS_OF = dt.datetime(2026, 6, 1, tzinfo=UTC)
FRESH = "2026-01-01 00:00:00"  # derived_at inside the dataset's 365-day retention at AS_OF
STALE = "2024-01-01 00:00:00"  # derived_at outside it: retention_expired

#: The derived table's rows, by INSERT statement (one file per statement, or per partition).
#: write_small_lake's consent: a1 granted, a2 revoked, a3 has no attributable record.
BATCHES: tuple[tuple[tuple[str, str, str], ...], ...] = (
    (("emb-a1-1", "a1", FRESH), ("emb-a2-1", "a2", FRESH)),
    (
        ("emb-a1-0", "a1", STALE),
        ("emb-a1-2", "a1", FRESH),
        ("emb-a3-1", "a3", FRESH),
        ("emb-a2-2", "a2", FRESH),
    ),
)
SURVIVORS = {"emb-a1-1", "emb-a1-2"}
#: Assets none of whose rows survive (a1 keeps two): their ids must leave the table too.
REMOVED_ASSETS = {"a2", "a3"}
REMOVED = {"emb-a1-0", "emb-a2-1", "emb-a2-2", "emb-a3-1"}
REASONS = {"no_consent_record": 1, "retention_expired": 1, "revoked": 2}
#: String keys are 36-character UUIDs, as platforms key their rows: longer than the 32
#: characters delta-spark keeps of a string statistic, so the log holds truncated keys.
UUID_KEYS = {
    k: str(uuid.uuid5(uuid.NAMESPACE_URL, f"consentgate-test:{k}"))
    for k, _, _ in [row for batch in BATCHES for row in batch]
}
#: A removed key is found where a stored value contains it, or shares this many characters
#: of its start with it (issue #22's independent scan: a truncated bound is a leak).
PREFIX_HIT = 16
#: The same rows keyed by a bigint (values far from any size, count or version in the log).
BIGINT_KEYS = {
    "emb-a1-0": 7000000010,
    "emb-a1-1": 7000000011,
    "emb-a1-2": 7000000012,
    "emb-a2-1": 7000000021,
    "emb-a2-2": 7000000022,
    "emb-a3-1": 7000000031,
}


@dataclass(frozen=True)
class Case:
    name: str
    deletion_vectors: bool = False
    column_mapping: bool = False
    change_data_feed: bool = False
    check_constraint: bool = False
    generated_column: bool = False
    partitioned: bool = False
    bigint_key: bool = False
    #: Statistics on the asset and time columns only (``delta.dataSkippingStatsColumns``): the
    #: log names removed assets but no key, so only the asset check can find them.
    asset_stats_only: bool = False

    def key_text(self, key: str) -> str:
        """A key as it reads back, as text."""
        return str(BIGINT_KEYS[key]) if self.bigint_key else UUID_KEYS[key]

    def key_texts(self, keys: Iterable[str]) -> set[str]:
        return {self.key_text(k) for k in keys}

    @property
    def dataset(self) -> str:
        """The table's dataset name in the shared lake's config (and its directory's)."""
        return f"ut_{self.name}"


EVERYTHING = {
    "deletion_vectors": True,
    "column_mapping": True,
    "change_data_feed": True,
    "check_constraint": True,
    "generated_column": True,
}
CASES = [
    Case("plain"),
    Case("partitioned", partitioned=True),
    Case("deletion_vectors", deletion_vectors=True),
    Case("column_mapping", column_mapping=True),
    Case("change_data_feed", change_data_feed=True),
    Case("check_constraint", check_constraint=True),
    Case("generated_column", generated_column=True),
    Case("everything", **EVERYTHING),
    Case("everything_partitioned", partitioned=True, **EVERYTHING),
    Case("bigint_key", bigint_key=True),
    Case("asset_stats_only", asset_stats_only=True),
]


def create_user_table(spark: SparkSession, path: Path, case: Case) -> None:
    """Create and fill the derived table with delta-spark SQL, as a user would."""
    table = f"delta.`{path.resolve()}`"
    key_type = "BIGINT" if case.bigint_key else "STRING"
    # With column mapping the key is created under another name and renamed, so that its
    # logical name (the config's key) differs from the one it was created with.
    first_key = "emb_key" if case.column_mapping else KEY
    columns = [f"{first_key} {key_type}", "asset_id STRING", "derived_at TIMESTAMP"]
    if case.generated_column:
        columns.append("derived_day DATE GENERATED ALWAYS AS (CAST(derived_at AS DATE))")
    properties = {}
    if case.deletion_vectors:
        properties["delta.enableDeletionVectors"] = "true"
    if case.column_mapping:
        properties["delta.columnMapping.mode"] = "name"
    if case.change_data_feed:
        properties["delta.enableChangeDataFeed"] = "true"
    if case.asset_stats_only:
        properties["delta.dataSkippingStatsColumns"] = "asset_id,derived_at"
    ddl = f"CREATE TABLE {table} ({', '.join(columns)}) USING DELTA"
    if case.partitioned:
        ddl += " PARTITIONED BY (asset_id)"
    if properties:
        ddl += " TBLPROPERTIES (" + ", ".join(f"'{k}' = '{v}'" for k, v in properties.items()) + ")"
    spark.sql(ddl)
    if case.column_mapping:
        spark.sql(f"ALTER TABLE {table} RENAME COLUMN {first_key} TO {KEY}")
    if case.check_constraint:
        spark.sql(
            f"ALTER TABLE {table} ADD CONSTRAINT sourced "
            f"CHECK ({KEY} IS NOT NULL AND asset_id IN ('a1', 'a2', 'a3'))"
        )
    key_expr = "CAST(k AS BIGINT)" if case.bigint_key else "k"
    for batch in BATCHES:
        values = ", ".join(
            f"('{case.key_text(k)}', '{asset}', TIMESTAMP '{at}')" for k, asset, at in batch
        )
        spark.sql(
            f"INSERT INTO {table} ({KEY}, asset_id, derived_at) "
            f"SELECT /*+ COALESCE(1) */ {key_expr}, a, d FROM VALUES {values} AS v(k, a, d)"
        )


def field_metadata(path: Path, column: str) -> dict[str, object]:
    """A column's metadata in the table's schema, as the Delta log has it."""
    schema = json.loads(lake.open_table(path).schema().to_json())
    field = next((f for f in schema["fields"] if f["name"] == column), None)
    assert field is not None, f"{path}: no column {column}"
    return dict(field.get("metadata") or {})


def physical_name(path: Path, column: str) -> str:
    """The column's name in the Parquet files (its column-mapping physical name, if any)."""
    return str(field_metadata(path, column).get("delta.columnMapping.physicalName", column))


def _found_in(value: object, wanted: set[str], *, exact: bool) -> list[str]:
    """JSON paths (``a.b[0].c=value``) of the wanted values inside a decoded JSON value or a
    checkpoint row; strings that hold JSON (an action's ``stats``) are opened too. ``exact``
    matches whole values (short asset ids), otherwise substrings (a predicate's text) and
    values that share :data:`PREFIX_HIT` or more leading characters with a wanted one
    (``~value``: a truncated statistic)."""
    if isinstance(value, dict):
        items = [(f".{k}", v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
    else:
        if isinstance(value, str) and value.startswith(("{", "[")):
            try:
                return _found_in(json.loads(value), wanted, exact=exact)
            except ValueError:
                pass
        text = str(value)
        if exact:
            return [f"={w}" for w in sorted(wanted) if text == w]
        return [f"={w}" for w in sorted(wanted) if w in text] + [
            f"~{w}"
            for w in sorted(wanted)
            if w not in text and len(text) >= PREFIX_HIT and text[:PREFIX_HIT] == w[:PREFIX_HIT]
        ]
    return [f"{step}{hit}" for step, item in items for hit in _found_in(item, wanted, exact=exact)]


def _log_hits(file: Path, wanted: set[str], *, exact: bool) -> list[str]:
    """Where the wanted values are in one ``_delta_log`` file: by row and JSON path for a
    checkpoint or a JSON file (commits, ``.crc``, ``_last_checkpoint``), else by raw bytes."""
    if file.name.endswith(".parquet"):
        rows = pq.ParquetFile(file).read().to_pylist()
        return [
            f"(row {n}) {hit.lstrip('.')}"
            for n, row in enumerate(rows, 1)
            for hit in _found_in(row, wanted, exact=exact)
        ]
    data = file.read_bytes()
    try:
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except ValueError:  # Hadoop's binary .crc sidecars
        return [
            f"(bytes) {w}" for w in sorted(wanted) if not exact and w[:PREFIX_HIT].encode() in data
        ]
    return [
        f"(line {n}) {hit.lstrip('.')}"
        for n, line in enumerate(lines, 1)
        for hit in _found_in(line, wanted, exact=exact)
    ]


def leaks(root: Path, physical_key: str, removed: set[str]) -> list[str]:
    """``file (where) field=key`` for every removed key found in any file under the table.

    Parquet outside the log (data files, ``_change_data/`` or wherever change data is
    written): the key column, read by its physical name. ``_delta_log/``: every value of
    every action, checkpoint row and checksum, statistics opened. Anything else (deletion
    vector files, checksum sidecars): the raw bytes.
    """
    found: list[str] = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith("_delta_log/"):
            found.extend(f"{rel} {hit}" for hit in _log_hits(file, removed, exact=False))
        elif file.name.endswith(".parquet"):
            parquet = pq.ParquetFile(file)
            assert physical_key in parquet.schema_arrow.names, f"{rel}: no {physical_key}"
            values = parquet.read(columns=[physical_key]).column(0).to_pylist()
            found.extend(
                f"{rel} (column {physical_key})={v}"
                for v in sorted({str(v) for v in values} & removed)
            )
        else:
            data = file.read_bytes()
            found.extend(
                f"{rel} (bytes) {k}" for k in sorted(removed) if k[:PREFIX_HIT].encode() in data
            )
    return found


def asset_leaks(root: Path, assets: set[str]) -> list[str]:
    """Where a fully removed asset id survives: a ``column=value`` directory, or a value in
    the log (partition values, the asset column's statistics)."""
    found: list[str] = []
    for item in sorted(root.rglob("*")):
        rel = item.relative_to(root).as_posix()
        if item.is_dir():
            found.extend(f"{rel}/" for a in sorted(assets) if item.name.endswith(f"={a}"))
        elif rel.startswith("_delta_log/"):
            found.extend(f"{rel} {hit}" for hit in _log_hits(item, assets, exact=True))
    return found


def keys_of(spark: SparkSession, path: Path | str) -> set[str]:
    return {str(r[KEY]) for r in lake.read_table(spark, path).select(KEY).collect()}


def a2_rows(spark: SparkSession, path: Path | str) -> int:
    """Rows of the revoked asset a2 that a Delta reader sees."""
    return lake.read_table(spark, path).where(F.col("asset_id") == "a2").count()


@dataclass(frozen=True)
class Story:
    """The one evaluate-gate-purge-erase run over every user table, as plain data.

    ``evaluated``, ``gated``, ``purged`` (``run_purge``'s result, also when it raised
    :class:`~consentgate.purge.PurgeFailed`) and ``erased`` are the steps' own results;
    ``facts[dataset]`` is what this module read of each table by itself, stage by stage.
    ``broken[dataset]`` names the stage whose independent reading of that table raised (or
    whose erasure raised), so that only that table's test fails, saying why.
    """

    evaluated: dict[str, Any]
    gated: dict[str, Any]
    purged: dict[str, Any]
    erased: dict[str, Any]
    facts: dict[str, dict[str, Any]]
    broken: dict[str, str]


def _created(spark: SparkSession, path: Path, case: Case) -> dict[str, Any]:
    """What kind of table the user made, and that its log names removed keys."""
    log = lake.open_table(path)
    physical = physical_name(path, KEY)
    return {
        "features": set(log.protocol().reader_features or ())
        | set(log.protocol().writer_features or ()),
        "settings": dict(log.metadata().configuration),
        "physical_key": physical,
        "generated": case.generated_column
        and "delta.generationExpression" in field_metadata(path, "derived_day"),
        "partition_columns": list(lake.partition_columns(log)),
        "keys_created": keys_of(spark, path),
        "leaks_created": leaks(path, physical, case.key_texts(REMOVED)),
        "asset_names_created": asset_leaks(path, REMOVED_ASSETS),
    }


def _gated(spark: SparkSession, path: Path, case: Case, gated: dict[str, Any]) -> dict[str, Any]:
    """The gate's snapshot of the table, and the table's version the purge starts from."""
    snapshot = gated["snapshots"][f"snapshot/{MODEL_VERSION}/{case.dataset}"]
    return {
        "snapshot_keys": keys_of(spark, snapshot),
        "snapshot_a2_rows": a2_rows(spark, snapshot),
        "version_before_purge": lake.table_version(path),
    }


def _purged(spark: SparkSession, path: Path, case: Case, physical: str) -> dict[str, Any]:
    """The table after the purge, before the erasure: logically clean, physically not yet."""
    return {
        "version_after_purge": lake.table_version(path),
        "keys_after_purge": keys_of(spark, path),
        "a2_rows_after_purge": a2_rows(spark, path),
        "inventory_rows_after_purge": lake.table_inventory(path)["rows"],
        "leaks_before_erasure": leaks(path, physical, case.key_texts(REMOVED)),
    }


def _erased(spark: SparkSession, path: Path, case: Case, physical: str) -> dict[str, Any]:
    """The table after the erasure: no removed key in any byte, survivors intact."""
    return {
        "leaks_after_erasure": leaks(path, physical, case.key_texts(REMOVED)),
        "keys_after_erasure": keys_of(spark, path),
        "inventory_rows_after_erasure": lake.table_inventory(path)["rows"],
        "asset_names_after_erasure": asset_leaks(path, REMOVED_ASSETS),
    }


@pytest.fixture(scope="module")
def story(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Story:
    """One small lake carrying all the user tables, and one run of every step over it.

    Nothing here fails on one table's account: the purge's and the erasure's per-table
    results, and :attr:`Story.broken`, are checked by each table's own test.
    """
    root = tmp_path_factory.mktemp("user_tables") / "lake"
    datasets = {
        case.dataset: {
            "path": f"derived/{case.dataset}",
            "use_case": "recommendation",
            "key": KEY,
            "asset_column": "asset_id",
            "retention_days": 365,
            "derived_at_column": "derived_at",
        }
        for case in CASES
    }
    conf_path = write_small_lake(spark, root, conf={"datasets": datasets})
    shutil.rmtree(root / "derived" / "track_embeddings")  # the small lake's own, not configured
    paths = {case.dataset: root / "derived" / case.dataset for case in CASES}
    facts: dict[str, dict[str, Any]] = {case.dataset: {} for case in CASES}
    broken: dict[str, str] = {}

    def observe(stage: str, read: Callable[[Path, Case], dict[str, Any]]) -> None:
        for case in CASES:
            if case.dataset in broken:
                continue
            try:
                facts[case.dataset].update(read(paths[case.dataset], case))
            except Exception as exc:
                broken[case.dataset] = f"{stage}: {type(exc).__name__}: {exc}"

    def create(path: Path, case: Case) -> dict[str, Any]:
        create_user_table(spark, path, case)
        return {}

    def physical_key(case: Case) -> str:
        """The key's name in the Parquet files, as read when the table was created."""
        return str(facts[case.dataset]["physical_key"])

    observe("create", create)
    config = load_config(conf_path)  # which checks that every dataset's table exists
    assert all(config.dataset_path(n).resolve() == p.resolve() for n, p in paths.items())
    observe("created", lambda path, case: _created(spark, path, case))

    evaluated = run_evaluate(spark, config, use_case="recommendation", as_of=AS_OF)
    gated = gate.run_gate(
        spark, config, use_case="recommendation", model_version=MODEL_VERSION, as_of=AS_OF
    )
    observe("gated", lambda path, case: _gated(spark, path, case, gated))

    try:
        purged = purge.run_purge(spark, config, as_of=AS_OF, erase=False)
    except purge.PurgeFailed as exc:  # the failed tables are in its result's "failed"
        purged = exc.result
    observe("purged", lambda path, case: _purged(spark, path, case, physical_key(case)))

    # The erasure window is 0 hours: the purge is already past it.
    names = [case.dataset for case in CASES]
    try:
        erased = erasure.erase_and_verify(spark, config, datasets=names)
    except Exception as exc:
        # One table's erasure raised: erase them one by one, so that every other table is
        # still erased and checked, and the one that raises is named by its own test.
        erased = {"ok": False, "raised": f"{type(exc).__name__}: {exc}", "datasets": {}}
        for name in names:
            try:
                one = erasure.erase_and_verify(spark, config, datasets=[name])
            except Exception as exc_one:
                broken.setdefault(name, f"erasure: {type(exc_one).__name__}: {exc_one}")
            else:
                erased["datasets"].update(one["datasets"])
    observe("erased", lambda path, case: _erased(spark, path, case, physical_key(case)))
    return Story(evaluated, gated, purged, erased, facts, broken)


def test_one_run_covers_every_user_table(story: Story) -> None:
    """The run-level results: one evaluation, a snapshot of every table, every table and
    snapshot purged without failure, one erasure that verifies."""
    names = {case.dataset for case in CASES}
    snapshots = {f"snapshot/{MODEL_VERSION}/{name}" for name in names}
    assert story.evaluated["reasons"] == {"granted": 1, "no_consent_record": 1, "revoked": 1}
    assert set(story.gated["snapshots"]) == snapshots
    assert story.purged["failed"] == {}
    assert set(story.purged["datasets"]) == names | snapshots
    # The gate admitted only a1's fresh rows, so the purge finds nothing in the snapshots
    # (and commits nothing to them).
    for name in snapshots:
        assert story.purged["datasets"][name]["rows_deleted"] == 0, name
        assert story.purged["datasets"][name]["commits"] == [], name
    assert "raised" not in story.erased, story.erased.get("raised")
    assert set(story.erased["datasets"]) == names
    assert story.erased["ok"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_table_is_gated_purged_and_erased(story: Story, case: Case) -> None:
    """Everything about one table, from the shared run's per-table results and this module's
    own readings of the table (the same checks a run over this table alone would face)."""
    name = case.dataset
    assert name not in story.broken, f"{name}: {story.broken.get(name)}"
    facts = story.facts[name]
    survivors = case.key_texts(SURVIVORS)
    removed = case.key_texts(REMOVED)

    # The table really is the user's kind of table.
    settings = facts["settings"]
    assert ("deletionVectors" in facts["features"]) == case.deletion_vectors
    assert (facts["physical_key"] != KEY) == case.column_mapping
    assert (settings.get("delta.enableChangeDataFeed") == "true") == case.change_data_feed
    assert ("delta.constraints.sourced" in settings) == case.check_constraint
    assert facts["generated"] == case.generated_column
    assert facts["partition_columns"] == (["asset_id"] if case.partitioned else [])
    assert facts["keys_created"] == survivors | removed
    # delta-spark's default statistics put the removed keys into the log, a string key cut to
    # its first 32 characters (what the erasure's check must still recognise); with
    # statistics on the asset column only, the removed assets' ids and no key.
    assert any(hit.startswith("_delta_log/") for hit in facts["asset_names_created"])
    in_log = [hit for hit in facts["leaks_created"] if hit.startswith("_delta_log/")]
    assert in_log == [] if case.asset_stats_only else in_log
    if not case.bigint_key and not case.asset_stats_only:
        assert any(
            hit.startswith("_delta_log/") and "~" in hit for hit in facts["leaks_created"]
        ), facts["leaks_created"]

    # The gate's snapshot of this table holds the survivors only.
    assert facts["snapshot_keys"] == survivors
    assert facts["snapshot_a2_rows"] == 0

    assert name not in story.purged["failed"], story.purged["failed"].get(name)
    purged = story.purged["datasets"][name]
    version = facts["version_before_purge"]
    assert purged["rows_deleted"] == len(REMOVED)
    assert purged["reasons"] == REASONS
    # Logically at once: one commit, after which no Delta reader sees a removed row.
    assert purged["commits"] == [version + 1]
    assert facts["version_after_purge"] == version + 1
    assert facts["keys_after_purge"] == survivors
    assert facts["a2_rows_after_purge"] == 0
    assert facts["inventory_rows_after_purge"] == len(SURVIVORS)
    assert purged["rows_after"] == len(SURVIVORS)
    if case.deletion_vectors:
        # a1's rows share files with removed rows: those files get vectors, not rewrites.
        assert purged["deletion_vectors_added"] > 0
    # The bytes are still there (time travel), so the check below can fail.
    before = facts["leaks_before_erasure"]
    assert any(not hit.startswith("_delta_log/") for hit in before)
    if case.change_data_feed:  # under _change_data/, or a random prefix with column mapping
        assert any(hit.split(" ")[0].rsplit("/", 1)[-1].startswith("cdc-") for hit in before)

    receipt = story.erased["datasets"][name]
    remaining = facts["leaks_after_erasure"]
    assert receipt["result"] == "verified", (receipt["files_with_removed_keys"], remaining)
    assert receipt["attempts_erased"] == 1 and receipt["attempts_pending"] == 0
    assert receipt["keys_checked"] == len(REMOVED)
    assert receipt["assets_checked"] == len(REMOVED_ASSETS)
    assert receipt["files_removed"] > 0
    if case.deletion_vectors:
        assert receipt["files_reorganised"] > 0

    # Independently: no file under the table holds a removed key any more ...
    assert remaining == []
    # ... the survivors are intact for both engines ...
    assert facts["keys_after_erasure"] == survivors
    assert facts["inventory_rows_after_erasure"] == len(SURVIVORS)
    # ... and no directory name or log value names a fully removed asset either (beyond the
    # key check: an empty ``asset_id=a2/`` partition directory still names the revoked asset).
    names = facts["asset_names_after_erasure"]
    assert names == [], f"removed assets still named under the table: {names}"
