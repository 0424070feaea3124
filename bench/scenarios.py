"""The benchmark scenarios (issue 7). Each returns one JSON-able result.

How every scenario measures, and why:

* **Same run, paired, rotated.** Within a repeat every contender runs once, on its own clone
  of the same cached lake, in an order rotated from repeat to repeat (so no one always gets
  the warm page cache or the freshly-JITted JVM). A comparing figure is the ratio of the two
  contenders' times *in the same repeat*; we report its median and min-max over repeats, never
  a ratio of figures from different runs.
* **Only the job is timed.** Cloning a lake, diffing Delta logs and checking results happen
  outside the timed region; inside it there is exactly the call a user would make.
* **Work is measured from the Delta log**, not from what a job says about itself: files and
  bytes removed from / added to each table's active file set (:func:`bench.lakes.io_diff`).
* **Results are checked**: every purge contender must delete exactly the rows the independent
  closure says it must (``rows_ok``), the gate and its bare twin report their row counts, and
  every hash must equal ``sha256sum``'s. A contender that fails is reported, not hidden.
* A job that is not importable yet is reported as ``not_measured`` with the reason; its
  baselines are still measured.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyspark.sql import SparkSession

from bench import baselines
from bench.lakes import (
    AS_OF,
    clone_lake,
    conf_of,
    io_diff,
    layout_lake,
    revoked_lake,
    snapshot_files,
)
from bench.targets import (
    at_most,
    contender_phases,
    parse_step_lines,
    ratio,
    step_entry,
    step_phase,
    target,
)
from consentgate import lake
from consentgate.config import Config
from consentgate.logs import RECORD_FIELDS, ROOT_LOGGER
from consentgate.spark import SparkWork, spark_work

GATE_USE_CASE = "generative_training"


@dataclass
class Context:
    """What every scenario needs: the session, where lakes live, and how often to repeat."""

    spark: SparkSession
    lakes: Path
    repeats: int
    file_mb: float
    log: Callable[[str], None]

    @property
    def scratch(self) -> Path:
        return self.lakes / "_scratch"


def stats(samples: Sequence[float | None]) -> dict[str, Any]:
    """Median and min-max of the measured samples (None samples are failures, counted)."""
    good = [float(s) for s in samples if s is not None]
    return {
        "samples": [None if s is None else round(float(s), 6) for s in samples],
        "median": round(statistics.median(good), 6) if good else None,
        "min": round(min(good), 6) if good else None,
        "max": round(max(good), 6) if good else None,
        "failed": len(samples) - len(good),
    }


T = TypeVar("T")


class _StepCollector(logging.Handler):
    """Keeps the fields of every consentgate step line emitted while installed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, RECORD_FIELDS, None)
        if isinstance(fields, dict):
            self.steps.append(step_entry(record.name, fields))


@contextmanager
def captured_steps() -> Iterator[list[dict[str, Any]]]:
    """Collect consentgate's step lines (:func:`consentgate.logs.step`) emitted inside the
    block: the per-step phase breakdown of a timed call. The ``consentgate`` logger is put at
    INFO for the block when it would otherwise drop them (its own level is restored after)."""
    logger = logging.getLogger(ROOT_LOGGER)
    handler = _StepCollector()
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.steps
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def timed(
    ctx: Context, label: str, call: Callable[[], T]
) -> tuple[T, float, SparkWork, list[dict[str, Any]]]:
    """Run ``call`` timed, with the Spark jobs and tasks it ran and consentgate's step lines,
    and log the counts beside its seconds: a change that adds fixed cost (one more pass, more
    tiny tasks) shows in the log even when the seconds of a small lake hide it. Counting
    happens after the clock stops."""
    with captured_steps() as steps, spark_work(ctx.spark, "bench") as work:
        t0 = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - t0
    partial = " (lower bounds: Spark forgot some jobs)" if work.partial else ""
    ctx.log(f"{label}: {seconds:.3f}s jobs={work.jobs} tasks={work.tasks}{partial}")
    return out, seconds, work, list(steps)


def median_index(samples: Sequence[float | None]) -> int | None:
    """Index of the measured sample closest to the median (whose step lines a result keeps)."""
    good = [(i, float(s)) for i, s in enumerate(samples) if s is not None]
    if not good:
        return None
    mid = statistics.median(v for _, v in good)
    return min(good, key=lambda iv: abs(iv[1] - mid))[0]


def spark_counts(jobs: dict[str, list[int | None]], tasks: dict[str, list[int | None]]) -> Any:
    """``{"jobs": {contender: stats}, "tasks": {...}}`` for a result."""
    return {
        "jobs": {c: stats([None if n is None else float(n) for n in j]) for c, j in jobs.items()},
        "tasks": {c: stats([None if n is None else float(n) for n in t]) for c, t in tasks.items()},
    }


def _rotated(names: Sequence[str], r: int) -> list[str]:
    k = r % len(names) if names else 0
    return list(names[k:]) + list(names[:k])


def available(module: str, attr: str) -> str | None:
    """None when ``module.attr`` can be imported and its own imports resolve, else why not."""
    try:
        mod = importlib.import_module(module)
        getattr(mod, attr)
    except Exception as exc:
        return f"{module}.{attr} not available: {type(exc).__name__}: {exc}"
    return None


def _purge_ready() -> str | None:
    why = available("consentgate.purge", "run_purge")
    # The purge resolves lineage lazily; import what it will need now, not mid-benchmark.
    return why or available("consentgate.lineage", "row_decisions")


def _gate_ready() -> str | None:
    return available("consentgate.gate", "run_gate") or available(
        "consentgate.lineage", "row_decisions"
    )


# --------------------------------------------------------------------------------------------
# Scenarios 1 and 2: purge


def purge(
    ctx: Context, base: Path, *, scale: int, layout: str, fraction: float, baselines_too: bool
) -> dict[str, Any]:
    """Purge after revoking ``fraction`` of the assets, on a ``layout`` lake.

    Contenders: consentgate's purge (``run_purge``, erase off: the physical erasure runs after
    the window and is not part of the nightly rewrite), and with ``baselines_too`` the naive
    full rewrite and a hand-written delta-spark MERGE, both given the incremental plan (timed,
    reported apart). Targets (issue 20): consentgate within 1.5x the MERGE and 0.5x the naive
    rewrite, paired per repeat; the sweep's target (a smaller fraction no slower than the main
    one plus 20%) compares two results and is computed by :func:`sweep_targets`.
    """
    missing = _purge_ready()
    result: dict[str, Any] = {
        "scenario": f"purge_{layout}",
        "scale": scale,
        "layout": layout,
        "file_mb": ctx.file_mb,
        "revoked_fraction": fraction,
    }
    ctx.log(f"purge {layout} {scale} r={fraction:g}: preparing lakes")
    layout_dir, layout_facts = layout_lake(
        ctx.spark, ctx.lakes, base, layout=layout, file_mb=ctx.file_mb, steady=missing is None
    )
    rev_dir, rev_facts = revoked_lake(ctx.spark, ctx.lakes, layout_dir, fraction=fraction)
    result["lake"] = {
        "revoked_assets": rev_facts["revoked_assets"],
        "steady": layout_facts["steady"],
        "datasets": rev_facts["datasets"],
    }
    expected = {n: int(d["rows"]) for n, d in rev_facts["datasets"].items()}
    min_bytes = sum(int(d["bytes"]) for d in rev_facts["datasets"].values())
    min_files = sum(int(d["files"]) for d in rev_facts["datasets"].values())
    result["minimum"] = {
        "rows": sum(expected.values()),
        "files": min_files,
        "bytes": min_bytes,
        "files_total": sum(int(d["files_total"]) for d in rev_facts["datasets"].values()),
        "bytes_total": sum(int(d["bytes_total"]) for d in rev_facts["datasets"].values()),
    }
    since = int(rev_facts["records_version_before"])

    def ours(config: Config, trial: Path) -> dict[str, float]:
        from consentgate.purge import run_purge

        run_purge(ctx.spark, config, as_of=AS_OF, erase=False)
        return {}

    def with_plan(apply: Callable[[Config, dict[str, Path]], None]) -> Callable[..., Any]:
        def run(config: Config, trial: Path) -> dict[str, float]:
            t0 = time.perf_counter()
            keys = baselines.incremental_plan(
                ctx.spark, config, since_version=since, out_dir=trial / "_bench_plan"
            )
            plan_s = time.perf_counter() - t0
            apply(config, keys)
            return {"plan_seconds": plan_s}

        return run

    contenders: dict[str, Callable[[Config, Path], dict[str, float]]] = {}
    if missing is None:
        contenders["consentgate"] = ours
    else:
        result["not_measured"] = {"consentgate": missing}
    if baselines_too:
        contenders["naive_rewrite"] = with_plan(
            lambda config, keys: baselines.naive_rewrite(ctx.spark, config, keys)
        )
        contenders["spark_merge"] = with_plan(
            lambda config, keys: baselines.spark_merge(ctx.spark, config, keys)
        )

    times: dict[str, list[float | None]] = {c: [] for c in contenders}
    extra: dict[str, list[float | None]] = {c: [] for c in contenders}
    jobs: dict[str, list[int | None]] = {c: [] for c in contenders}
    tasks: dict[str, list[int | None]] = {c: [] for c in contenders}
    steps: dict[str, list[list[dict[str, Any]]]] = {c: [] for c in contenders}
    io: dict[str, Any] = {}
    rows_ok: dict[str, bool] = {c: True for c in contenders}
    errors: dict[str, str] = {}
    for r in range(ctx.repeats):
        for name in _rotated(list(contenders), r):
            trial = clone_lake(rev_dir, ctx.scratch / f"purge-{name}")
            config = conf_of(trial)
            before = snapshot_files(config)
            rows_before = {n: lake.table_inventory(config.dataset_path(n))["rows"] for n in before}
            label = f"purge {layout} {scale} r={fraction:g}: {name} repeat {r + 1}"
            ctx.log(label)
            try:
                facts, seconds, work, lines = timed(
                    ctx,
                    label,
                    lambda: contenders[name](config, trial),  # noqa: B023
                )
            except Exception as exc:  # a failing contender is a result, not a crash
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
                times[name].append(None)
                extra[name].append(None)
                jobs[name].append(None)
                tasks[name].append(None)
                steps[name].append([])
                shutil.rmtree(trial, ignore_errors=True)
                continue
            times[name].append(seconds)
            extra[name].append(facts.get("plan_seconds"))
            jobs[name].append(work.jobs)
            tasks[name].append(work.tasks)
            steps[name].append(lines)
            diff = io_diff(before, config, rows_before)
            io[name] = diff  # identical across repeats for a deterministic strategy
            deleted = {n: d["rows_deleted"] for n, d in diff.items()}
            rows_ok[name] = rows_ok[name] and deleted == expected
            shutil.rmtree(trial, ignore_errors=True)
    result["seconds"] = {c: stats(t) for c, t in times.items()}
    result["plan_seconds"] = {c: stats(t) for c, t in extra.items() if any(extra[c])}
    result["spark"] = spark_counts(jobs, tasks)
    result["steps"] = median_steps(times, steps)
    result["rows_ok"] = rows_ok
    if errors:
        result["errors"] = errors
    result["io"] = {c: _io_totals(d, min_files, min_bytes) for c, d in io.items()}
    result["io_per_dataset"] = io
    ratios: dict[str, Any] = {}
    for other in ("naive_rewrite", "spark_merge"):
        if "consentgate" in times and other in times:
            ratios[f"consentgate/{other}"] = stats(
                [ratio(a, b) for a, b in zip(times["consentgate"], times[other], strict=True)]
            )
    result["time_ratios"] = ratios
    ours_io = result["io"].get("consentgate")
    bytes_vs_minimum = None if ours_io is None else ours_io["bytes_vs_minimum"]
    result["targets"] = {
        "bytes_rewritten/minimum": target(
            "<= 1.2",
            bytes_vs_minimum,
            at_most(1.2),
            [
                {
                    "phase": f"consentgate rewrote {n}",
                    "files": d["files_rewritten"],
                    "bytes": d["bytes_rewritten"],
                    "minimum_bytes": int(rev_facts["datasets"][n]["bytes"]),
                }
                for n, d in (io.get("consentgate") or {}).items()
            ],
        )
    }
    for other, limit in (("spark_merge", 1.5), ("naive_rewrite", 0.5)):
        paired = ratios.get(f"consentgate/{other}")
        if paired is not None:
            result["targets"][f"consentgate/{other}"] = target(
                f"<= {limit:g}",
                paired["median"],
                at_most(limit),
                contender_phases(result, ["consentgate", other], steps_of="consentgate"),
            )
    return result


def median_steps(
    times: Mapping[str, Sequence[float | None]], steps: Mapping[str, Sequence[list[Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Per contender, the step lines of its median repeat (contenders that log none, the
    baselines, are left out)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for c, samples in times.items():
        i = median_index(samples)
        if i is not None and steps[c][i]:
            out[c] = steps[c][i]
    return out


def _io_totals(per_dataset: dict[str, Any], min_files: int, min_bytes: int) -> dict[str, Any]:
    files = sum(d["files_rewritten"] for d in per_dataset.values())
    size = sum(d["bytes_rewritten"] for d in per_dataset.values())
    return {
        "files_rewritten": files,
        "bytes_rewritten": size,
        "files_written": sum(d["files_written"] for d in per_dataset.values()),
        "bytes_written": sum(d["bytes_written"] for d in per_dataset.values()),
        "rows_deleted": sum(d["rows_deleted"] for d in per_dataset.values()),
        "files_vs_minimum": None if min_files == 0 else round(files / min_files, 4),
        "bytes_vs_minimum": None if min_bytes == 0 else round(size / min_bytes, 4),
    }


# --------------------------------------------------------------------------------------------
# Scenario 3: gate


def gate(ctx: Context, base: Path, *, scale: int) -> dict[str, Any]:
    """consentgate's gate for generative training against the bare snapshot job."""
    missing = _gate_ready()
    result: dict[str, Any] = {"scenario": "gate", "scale": scale, "use_case": GATE_USE_CASE}
    contenders = ["bare_spark"] if missing else ["consentgate", "bare_spark"]
    if missing:
        result["not_measured"] = {"consentgate": missing}
    times: dict[str, list[float | None]] = {c: [] for c in contenders}
    jobs: dict[str, list[int | None]] = {c: [] for c in contenders}
    tasks: dict[str, list[int | None]] = {c: [] for c in contenders}
    steps: dict[str, list[list[dict[str, Any]]]] = {c: [] for c in contenders}
    rows: dict[str, dict[str, int]] = {}
    errors: dict[str, str] = {}
    for r in range(ctx.repeats):
        for name in _rotated(contenders, r):
            trial = clone_lake(base, ctx.scratch / f"gate-{name}")
            config = conf_of(trial)
            label = f"gate {scale}: {name} repeat {r + 1}"
            ctx.log(label)

            def call(
                name: str = name, config: Config = config, trial: Path = trial, r: int = r
            ) -> Any:
                if name == "consentgate":
                    from consentgate.gate import run_gate

                    return run_gate(
                        ctx.spark,
                        config,
                        use_case=GATE_USE_CASE,
                        model_version=f"bench-{r}",
                        as_of=AS_OF,
                    )
                return baselines.bare_gate(
                    ctx.spark,
                    config,
                    use_case=GATE_USE_CASE,
                    as_of=AS_OF,
                    out_dir=trial / "_bench_bare",
                )

            try:
                out, elapsed, work, lines = timed(ctx, label, call)
                if name == "consentgate":
                    rows[name] = {
                        Path(p).name: int(lake.table_inventory(p)["rows"])
                        for p in out["snapshots"].values()
                    }
                else:
                    rows[name] = out
                times[name].append(elapsed)
                jobs[name].append(work.jobs)
                tasks[name].append(work.tasks)
                steps[name].append(lines)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
                times[name].append(None)
                jobs[name].append(None)
                tasks[name].append(None)
                steps[name].append([])
            shutil.rmtree(trial, ignore_errors=True)
    result["seconds"] = {c: stats(t) for c, t in times.items()}
    result["spark"] = spark_counts(jobs, tasks)
    result["steps"] = median_steps(times, steps)
    result["rows"] = rows
    if errors:
        result["errors"] = errors
    gate_ratio = None
    if "consentgate" in times:
        gate_ratio = stats(
            [ratio(a, b) for a, b in zip(times["consentgate"], times["bare_spark"], strict=True)]
        )
        result["time_ratios"] = {"consentgate/bare_spark": gate_ratio}
    result["targets"] = {
        "consentgate/bare_spark": target(
            "<= 1.5",
            None if gate_ratio is None else gate_ratio["median"],
            at_most(1.5),
            contender_phases(result, contenders, steps_of="consentgate"),
        )
    }
    return result


# --------------------------------------------------------------------------------------------
# Scenario 4: manifest hashing


def data_files(config: Config) -> list[Path]:
    """Absolute paths of every active data file of every configured dataset."""
    out: list[Path] = []
    for name in sorted(config.datasets):
        root = config.dataset_path(name)
        out.extend(
            root / p
            for p in sorted(lake.active_files(lake.open_table(root)).column("path").to_pylist())
        )
    return out


def hashing(ctx: Context, base: Path, *, scale: int) -> dict[str, Any]:
    """Per-file SHA-256 (consentgate's, in the driver and on the executors) against
    ``sha256sum`` (one process and one per core), and the content Merkle root of the largest
    dataset against a bare Spark scan of it."""
    from consentgate import canonical, digest, manifest

    config = conf_of(base)
    files = data_files(config)
    total = sum(f.stat().st_size for f in files)
    cores = os.cpu_count() or 1
    for f in files:  # warm the page cache for everyone: we measure hashing, not the disk
        with open(f, "rb") as handle:
            while handle.read(8 << 20):
                pass
    reference = baselines.sha256sum(files)
    contenders: dict[str, Callable[[], dict[str, str]]] = {
        "consentgate.sha256_file": lambda: {str(f): canonical.sha256_file(f) for f in files},
        "sha256sum": lambda: baselines.sha256sum(files),
        "consentgate.hash_files (spark)": lambda: {
            token: sha
            for token, (_, _, sha) in manifest.hash_files(
                ctx.spark, [(str(f), f) for f in files]
            ).items()
        },
        f"sha256sum x{cores}": lambda: baselines.sha256sum(files, processes=cores),
    }
    times: dict[str, list[float | None]] = {c: [] for c in contenders}
    jobs: dict[str, list[int | None]] = {c: [] for c in contenders}
    tasks: dict[str, list[int | None]] = {c: [] for c in contenders}
    agree: dict[str, bool] = {c: True for c in contenders}
    for r in range(ctx.repeats):
        for name in _rotated(list(contenders), r):
            label = f"hashing {scale}: {name} repeat {r + 1}"
            ctx.log(label)
            got, seconds, work, _ = timed(ctx, label, contenders[name])
            times[name].append(seconds)
            jobs[name].append(work.jobs)
            tasks[name].append(work.tasks)
            agree[name] = agree[name] and got == reference
    result: dict[str, Any] = {
        "scenario": "hashing",
        "scale": scale,
        "files": len(files),
        "bytes": total,
        "seconds": {c: stats(t) for c, t in times.items()},
        "spark": spark_counts(jobs, tasks),
        "mb_per_second": {
            c: stats([None if t is None else total / t / 1e6 for t in ts])
            for c, ts in times.items()
        },
        "digests_agree": agree,
    }
    # Throughput ratio ours / sha256sum == their time / our time, paired per repeat.
    seq = stats(
        [
            ratio(b, a)
            for a, b in zip(times["consentgate.sha256_file"], times["sha256sum"], strict=True)
        ]
    )
    par = stats(
        [
            ratio(b, a)
            for a, b in zip(
                times["consentgate.hash_files (spark)"], times[f"sha256sum x{cores}"], strict=True
            )
        ]
    )
    result["throughput_ratios"] = {
        "consentgate.sha256_file/sha256sum": seq,
        f"consentgate.hash_files/sha256sum x{cores}": par,
    }

    # The row-digest Merkle root against the scan floor, on the dataset with the most rows.
    name = max(config.datasets, key=lambda n: lake.table_inventory(config.dataset_path(n))["rows"])
    path = config.dataset_path(name)
    mtimes: dict[str, list[float | None]] = {"content_merkle_root": [], "bare_scan": []}
    mjobs: dict[str, list[int | None]] = {c: [] for c in mtimes}
    mtasks: dict[str, list[int | None]] = {c: [] for c in mtimes}
    scans: dict[str, Callable[[], object]] = {
        "content_merkle_root": lambda: digest.content_merkle_root(lake.read_table(ctx.spark, path)),
        "bare_scan": lambda: baselines.bare_scan(ctx.spark, path),
    }
    for r in range(ctx.repeats):
        for which in _rotated(list(mtimes), r):
            label = f"merkle {scale}: {which} repeat {r + 1}"
            ctx.log(label)
            _, seconds, work, _ = timed(ctx, label, scans[which])
            mtimes[which].append(seconds)
            mjobs[which].append(work.jobs)
            mtasks[which].append(work.tasks)
    merkle_ratio = stats(
        [
            ratio(a, b)
            for a, b in zip(mtimes["content_merkle_root"], mtimes["bare_scan"], strict=True)
        ]
    )
    result["merkle"] = {
        "dataset": name,
        "rows": lake.table_inventory(path)["rows"],
        "bytes": lake.table_inventory(path)["bytes"],
        "seconds": {c: stats(t) for c, t in mtimes.items()},
        "spark": spark_counts(mjobs, mtasks),
        "time_ratios": {"content_merkle_root/bare_scan": merkle_ratio},
    }
    result["targets"] = {
        "consentgate.sha256_file/sha256sum (throughput)": target(
            ">= 0.8",
            seq["median"],
            lambda v: v >= 0.8,
            contender_phases(result, ["consentgate.sha256_file", "sha256sum"]),
        )
    }
    return result


# --------------------------------------------------------------------------------------------
# Scenario 0: a night with nothing to remove, through the command line

#: Issue 20's target for the night with nothing to remove (CLI wall seconds, demo lake).
NOOP_TARGET_SECONDS = 10.0


def cli_command() -> list[str]:
    """How a user runs ``consentgate``: the installed script beside this interpreter, or,
    without one, the same entry point through the interpreter."""
    script = Path(sys.executable).with_name("consentgate")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from consentgate.cli import main; sys.exit(main())"]


def _cli_env() -> dict[str, str]:
    """The environment of the command: this one, with the consentgate being benchmarked
    first on the path (a worktree's, not whichever the script's install points at)."""
    import consentgate

    src = str(Path(consentgate.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def noop_night(ctx: Context, base: Path, *, scale: int) -> dict[str, Any]:
    """``consentgate purge`` on a demo lake that was purged (and erased) once already, with
    nothing changed since: the night with nothing to remove, as a user runs it.

    The command runs in a fresh process (its interpreter, imports and JVM start are part of
    what a user waits for), at :data:`AS_OF` like the previous night, with erasure on (the
    default). The previous night is run here, in this session and untimed, on a clone of the
    base lake for every benchmark run: its purge attempts must be younger than the erasure
    window (168 h), as they are after a real previous night, or the "empty" night would erase
    them. Each repeat runs the command on a clone of that once-purged lake: the previous night
    certified the lake it left (``consentgate.quiescence``), so this one is answered from the
    certificate; then once more without the certificate, deciding in full (what a night costs
    when an input changed without anything to remove). The command's own JSON must say it
    removed 0 rows and the Delta logs must show no data file rewritten; the phase breakdown
    is the command's step lines (seconds, Spark jobs, tasks) plus the start-up (wall time
    outside the outer ``purge`` step).
    """
    from consentgate.demo import CONF_FILE
    from consentgate.quiescence import certificate_path
    from consentgate.runtime import iso

    result: dict[str, Any] = {"scenario": "noop_night", "scale": scale}
    missing = _purge_ready()
    if missing is not None:
        result["not_measured"] = {"consentgate": missing}
        result["targets"] = {
            "CLI wall seconds": target(
                f"<= {NOOP_TARGET_SECONDS:g}", None, at_most(NOOP_TARGET_SECONDS), []
            )
        }
        return result
    from consentgate.purge import run_purge

    ctx.log(f"noop_night {scale}: the previous night (untimed)")
    night0 = clone_lake(base, ctx.scratch / "noop-night0")
    first, first_s, first_work, _ = timed(
        ctx,
        f"noop_night {scale}: previous night, in this session",
        lambda: run_purge(ctx.spark, conf_of(night0), as_of=AS_OF),
    )
    result["previous_night"] = {
        "rows_deleted": sum(int(d["rows_deleted"]) for d in first["datasets"].values()),
        "seconds_in_session": round(first_s, 3),
        "jobs": first_work.jobs,
        "tasks": first_work.tasks,
    }
    launcher = cli_command()
    command = [*launcher, "purge", "--as-of", iso(AS_OF), "--json"]
    result["command"] = (
        f"{'consentgate' if len(launcher) == 1 else 'python -c <consentgate.cli:main>'} "
        f"purge --as-of {iso(AS_OF)} --json --conf <lake>/{CONF_FILE}"
    )
    env = _cli_env()
    times: list[float | None] = []
    runs: list[dict[str, Any]] = []
    full_times: list[float | None] = []
    full_runs: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for r in range(ctx.repeats):
        trial = clone_lake(night0, ctx.scratch / "noop-trial")
        config = conf_of(trial)
        before = snapshot_files(config)
        rows_before = {n: lake.table_inventory(config.dataset_path(n))["rows"] for n in before}
        label = f"noop_night {scale}: consentgate purge (CLI) repeat {r + 1}"
        ctx.log(label)
        done, wall = _timed_command([*command, "--conf", str(trial / CONF_FILE)], env)
        steps = parse_step_lines(done.stderr)
        run = _noop_run(done, wall, steps)
        diff = io_diff(before, config, rows_before)
        run["rows_deleted_in_log"] = sum(int(d["rows_deleted"]) for d in diff.values())
        run["files_rewritten_in_log"] = sum(int(d["files_rewritten"]) for d in diff.values())
        ctx.log(
            f"{label}: {wall:.3f}s exit={done.returncode} rows_deleted={run.get('rows_deleted')}"
            f" steps={len(steps)}"
        )
        if done.returncode != 0 or run.get("rows_deleted") is None:
            errors["consentgate"] = (
                f"exit {done.returncode}: " + (done.stderr.strip().splitlines() or [""])[-1]
            )[:500]
            times.append(None)
        else:
            times.append(wall)
            # The same night decided in full: without the certificate the previous night wrote
            # (as on a night some input changed without anything to remove, e.g. a new grant).
            certificate_path(config).unlink(missing_ok=True)
            full_label = f"noop_night {scale}: decided in full (no certificate) repeat {r + 1}"
            ctx.log(full_label)
            again, full_wall = _timed_command([*command, "--conf", str(trial / CONF_FILE)], env)
            full_run = _noop_run(again, full_wall, parse_step_lines(again.stderr))
            ctx.log(f"{full_label}: {full_wall:.3f}s exit={again.returncode}")
            full_times.append(full_wall if again.returncode == 0 else None)
            full_runs.append(full_run)
        runs.append(run)
        shutil.rmtree(trial, ignore_errors=True)
    shutil.rmtree(night0, ignore_errors=True)
    result["seconds"] = {"consentgate": stats(times)}
    best = median_index(times)
    chosen = runs[best] if best is not None else (runs[-1] if runs else {})
    result["spark"] = spark_counts(
        {"consentgate": [chosen.get("jobs")]}, {"consentgate": [chosen.get("tasks")]}
    )
    result["runs"] = runs
    result["steps"] = {"consentgate": chosen.get("steps", [])}
    full_best = median_index(full_times)
    result["full_night"] = {
        "seconds": stats(full_times),
        "runs": full_runs,
        "steps": full_runs[full_best].get("steps", []) if full_best is not None else [],
    }
    result["rows_ok"] = {
        "consentgate": bool(runs)
        and all(
            x.get("rows_deleted") == 0
            and x["rows_deleted_in_log"] == 0
            and x["files_rewritten_in_log"] == 0
            for x in runs
        )
    }
    if errors:
        result["errors"] = errors
    phases: list[dict[str, Any]] = []
    if chosen:
        phases.append(
            {
                "phase": "process start-up and exit (interpreter, imports, JVM, config)",
                "seconds": chosen.get("startup_seconds"),
            }
        )
        phases += [step_phase("consentgate", line) for line in chosen.get("steps", [])]
    full_phases = [step_phase("consentgate", line) for line in result["full_night"]["steps"]]
    result["targets"] = {
        "CLI wall seconds": target(
            f"<= {NOOP_TARGET_SECONDS:g}",
            result["seconds"]["consentgate"]["median"],
            at_most(NOOP_TARGET_SECONDS),
            phases,
        ),
        "CLI wall seconds, decided in full (no certificate)": target(
            f"<= {NOOP_TARGET_SECONDS:g}",
            result["full_night"]["seconds"]["median"],
            at_most(NOOP_TARGET_SECONDS),
            full_phases,
        ),
    }
    return result


def _timed_command(
    command: list[str], env: Mapping[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command as a user would (its own process and environment): its outcome and
    wall seconds."""
    t0 = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env=dict(env), timeout=3600, check=False
    )
    return done, time.perf_counter() - t0


def _noop_run(
    done: subprocess.CompletedProcess[str], wall: float, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """One command run's facts: exit code, wall seconds, the rows its JSON says it removed and
    whether it says ok, the outer ``purge`` step's jobs, tasks and seconds, and the start-up
    (wall seconds outside that step). Counts only: the command's JSON is not kept."""
    run: dict[str, Any] = {"exit_code": done.returncode, "seconds": round(wall, 3), "steps": steps}
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out = None
    if isinstance(out, dict) and isinstance(out.get("datasets"), dict):
        run["ok"] = out.get("ok")
        run["tables"] = len(out["datasets"])
        run["rows_deleted"] = sum(int(d.get("rows_deleted", 0)) for d in out["datasets"].values())
        erasure = (out.get("erasure") or {}).get("datasets") or {}
        run["erasure_results"] = sorted({str(e.get("result")) for e in erasure.values()})
        run["unchanged"] = "unchanged_since" in out
    outer = next((s for s in reversed(steps) if s["step"] == "purge"), None)
    if outer is not None:
        run["jobs"] = outer.get("jobs")
        run["tasks"] = outer.get("tasks")
        if isinstance(outer.get("seconds"), int | float):
            run["startup_seconds"] = round(wall - float(outer["seconds"]), 3)
    return run
