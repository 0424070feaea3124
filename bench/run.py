"""The benchmark runner: ``make bench`` (real scales) and ``make bench-smoke`` (seconds).

    python bench/run.py [--scales 100000,1000000] [--repeats 3] [--scenarios purge,gate,hashing]
                        [--noop-scale 2000]
    python bench/run.py --smoke
    python bench/run.py --render bench/results/2026-11-26.json   # re-render the Markdown only

It builds (or reuses, from ``bench/lakes/``) a demo lake per scale, runs every scenario of
:mod:`bench.scenarios` ``--repeats`` times and writes ``bench/results/<date>.json`` and
``docs/benchmarks.md``. The JSON is rewritten after every scenario, so a run that is stopped
half-way still leaves what it measured. All scales run in one process and one Spark session,
so the scaling figures compare like with like; the one exception is ``noop_night``, which runs
``consentgate purge`` in a fresh process (its start-up is what a user waits for) once, on the
``--noop-scale`` demo lake (2,000 assets: the lake of issue 20's target), whatever the scales.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from bench import report, scenarios, targets  # noqa: E402
from bench.lakes import LAYOUTS, base_lake  # noqa: E402

#: Version 2: ``spark_merge`` (delta-spark MERGE) replaces ``deltars_merge``; the
#: ``noop_night`` scenario; targets carry ``phases`` (seconds, Spark jobs, tasks), results carry
#: consentgate's step lines under ``steps``; ``derived_targets`` (the sweep's). ``--render``
#: still reads version 1 files.
SCHEMA = "consentgate-bench/2"
SCENARIOS = ("hashing", "gate", "purge", "noop_night")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, scratch outputs")
    p.add_argument("--scales", type=_ints, default=[100_000, 1_000_000], help="assets per lake")
    p.add_argument(
        "--repeats", type=_ints, default=[3], help="repeats, one value or one per scale (3,2)"
    )
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="subset of " + ",".join(SCENARIOS)
    )
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="purge layouts")
    p.add_argument("--fraction", type=float, default=0.001, help="revoked fraction, all contenders")
    p.add_argument(
        "--sweep",
        type=_floats,
        default=[0.0001, 0.01],
        help="extra revoked fractions, consentgate only, clustered layout",
    )
    p.add_argument("--file-mb", type=float, default=1.0, help="target data file size of layouts")
    p.add_argument(
        "--noop-scale",
        type=int,
        default=2000,
        help="assets of the demo lake of noop_night (the CLI purge with nothing to remove)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--lakes", type=Path, default=REPO / "bench" / "lakes")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default results/<date>)")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--master", default="local[*]")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--render", type=Path, default=None, help="only re-render DOCS from this JSON")
    if p.parse_known_args(argv)[0].smoke:
        # Smoke sizes are defaults, so a test can still narrow them (e.g. --sweep "").
        lakes = REPO / "bench" / "lakes" / "smoke"
        p.set_defaults(
            scales=[200],
            noop_scale=200,
            repeats=[1],
            file_mb=0.01,
            fraction=0.02,
            sweep=[0.05],
            lakes=lakes,
            out=lakes / "results.json",
            docs=lakes / "benchmarks.md",
        )
    args = p.parse_args(argv)
    if args.out is None:
        args.out = REPO / "bench" / "results" / f"{dt.date.today().isoformat()}.json"
    if len(args.repeats) not in (1, len(args.scales)):
        p.error("--repeats: give one value or one per scale")
    return args


# --------------------------------------------------------------------------------------------
# Machine facts


def _cmd(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        return None
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return platform.processor() or None


def machine_facts(spark: Any) -> dict[str, Any]:
    """Cores, memory, versions and load: what a reader needs to judge the numbers."""
    from importlib.metadata import version

    conf = spark.sparkContext.getConf()
    return {
        "cores": os.cpu_count(),
        "memory_gib": _meminfo_gib(),
        "cpu": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pyspark": version("pyspark"),
        "deltalake": version("deltalake"),
        "delta_spark": version("delta-spark"),
        "pyarrow": version("pyarrow"),
        "java": _cmd(["java", "-version"]),
        "sha256sum": _cmd(["sha256sum", "--version"]),
        "spark_master": conf.get("spark.master"),
        "spark_driver_memory": conf.get("spark.driver.memory", "1g"),
        "spark_shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
        "git_commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_cmd(["git", "-C", str(REPO), "status", "--porcelain"])),
        "load_average_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------------------------
# Running


def _session(args: argparse.Namespace) -> Any:
    from consentgate.spark import get_spark

    cores = os.cpu_count() or 2
    return get_spark(
        master=args.master,
        conf={
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.memory": args.driver_memory,
            "spark.sql.shuffle.partitions": str(max(8, 4 * cores)),
            "spark.sql.adaptive.enabled": "true",
        },
        app_name="consentgate-bench",
    )


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(out)


def run(args: argparse.Namespace, spark: Any = None) -> dict[str, Any]:
    """Run every selected scenario at every scale; returns (and writes) the results."""
    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"--scenarios: unknown {sorted(unknown)} (known: {', '.join(SCENARIOS)})")
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    spark = spark or _session(args)
    started = time.time()

    def log(message: str) -> None:
        print(f"[bench {time.time() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": bool(args.smoke),
        "machine": machine_facts(spark),
        "parameters": {
            "scales": args.scales,
            "repeats": args.repeats,
            "scenarios": sorted(wanted),
            "layouts": layouts,
            "revoked_fraction": args.fraction,
            "sweep_fractions": args.sweep,
            "noop_scale": args.noop_scale,
            "file_mb": args.file_mb,
            "seed": args.seed,
        },
        "lakes": {},
        "results": [],
    }
    args.lakes.mkdir(parents=True, exist_ok=True)
    bases: dict[int, Path] = {}
    # Job-major order: each scenario at every scale before the next scenario, so that a run
    # stopped early has the most important figures at both scales. Lakes are built lazily.
    for name, kwargs in _jobs(wanted, layouts, args):
        for scale in [args.noop_scale] if name == "noop_night" else args.scales:
            if scale not in bases:
                log(f"scale {scale}: base lake")
                t0 = time.perf_counter()
                bases[scale] = base_lake(spark, args.lakes, assets=scale, seed=args.seed)
                doc["lakes"][str(scale)] = _lake_facts(bases[scale], time.perf_counter() - t0)
            repeats = _repeats(args, scale)
            ctx = scenarios.Context(
                spark=spark, lakes=args.lakes, repeats=repeats, file_mb=args.file_mb, log=log
            )
            t0 = time.perf_counter()
            try:
                result = getattr(scenarios, name)(ctx, bases[scale], scale=scale, **kwargs)
                result["status"] = "ok"
            except Exception as exc:  # one broken scenario must not lose the others
                label = f"purge_{kwargs['layout']}" if name == "purge" else name
                log(f"{label} at {scale} failed: {type(exc).__name__}: {exc}")
                result = {
                    "scenario": label,
                    "scale": scale,
                    **({"revoked_fraction": kwargs["fraction"]} if "fraction" in kwargs else {}),
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}"[:1000],
                }
            result["wall_seconds"] = round(time.perf_counter() - t0, 3)
            for line in phase_lines(result):
                log(line)
            doc["results"].append(result)
            doc["derived_targets"] = targets.sweep_targets(doc["results"])
            doc["machine"]["load_average_end"] = list(os.getloadavg())
            _write(args.out, doc)
            report.write(args.docs, doc, results_path=args.out)
    doc["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write(args.out, doc)
    report.write(args.docs, doc, results_path=args.out)
    log(f"wrote {args.out} and {args.docs}")
    return doc


def phase_lines(result: dict[str, Any]) -> list[str]:
    """One line per timed phase of a scenario's result: median seconds with the median Spark
    jobs and tasks beside them, so a change in fixed cost (more jobs or tasks for the same
    work) shows in the run's log and not only in the JSON."""
    lines: list[str] = []
    parts = [(result.get("scenario", "?"), result)]
    if isinstance(result.get("merkle"), dict):
        parts.append((f"{result.get('scenario')} merkle", result["merkle"]))
    for label, part in parts:
        spark = part.get("spark") or {}
        for contender, seconds in (part.get("seconds") or {}).items():
            jobs = (spark.get("jobs") or {}).get(contender, {}).get("median")
            tasks = (spark.get("tasks") or {}).get(contender, {}).get("median")
            median = seconds.get("median")
            lines.append(
                f"{label} at {result.get('scale')}: {contender} "
                + ("failed" if median is None else f"{median:.3f}s")
                + ("" if jobs is None else f" jobs={jobs:g}")
                + ("" if tasks is None else f" tasks={tasks:g}")
            )
    return lines


def _repeats(args: argparse.Namespace, scale: int) -> int:
    """``--repeats`` for ``scale``: the one value, or the scale's; a scale that is not in
    ``--scales`` (``--noop-scale``) gets the first."""
    if len(args.repeats) > 1 and scale in args.scales:
        return int(args.repeats[args.scales.index(scale)])
    return int(args.repeats[0])


def _jobs(
    wanted: set[str], layouts: Sequence[str], args: argparse.Namespace
) -> list[tuple[str, dict[str, Any]]]:
    """The scenario calls for one scale: (function in :mod:`bench.scenarios`, its arguments),
    most important first, so that a run stopped early has measured what matters most."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    if "noop_night" in wanted:
        # A few fresh processes on a small lake: cheap, and issue 20's first target.
        jobs.append(("noop_night", {}))
    if "purge" in wanted:
        for layout in layouts:
            jobs.append(
                ("purge", {"layout": layout, "fraction": args.fraction, "baselines_too": True})
            )
    if "gate" in wanted:
        jobs.append(("gate", {}))
    if "hashing" in wanted:
        jobs.append(("hashing", {}))
    if "purge" in wanted and "clustered" in layouts:
        # The revoked-fraction sweep last: the least important figures.
        for fraction in args.sweep:
            jobs.append(
                ("purge", {"layout": "clustered", "fraction": fraction, "baselines_too": False})
            )
    return jobs


def _lake_facts(base: Path, seconds: float) -> dict[str, Any]:
    from bench.lakes import conf_of
    from consentgate import lake

    config = conf_of(base)
    tables = {
        name: lake.table_inventory(config.table_path(name))
        for name in ("assets", "consent_records", "lineage")
    }
    tables.update({n: lake.table_inventory(config.dataset_path(n)) for n in config.datasets})
    derived = sum(tables[n]["rows"] for n in config.datasets)
    return {
        "path": str(base),
        "tables": tables,
        "derivative_rows": derived,
        "build_or_load_seconds": round(seconds, 3),
    }


def main(argv: Sequence[str] | None = None, spark: Any = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.render is not None:
        doc: dict[str, Any] = json.loads(args.render.read_text())
        report.write(args.docs, doc, results_path=args.render)
        return doc
    return run(args, spark)


if __name__ == "__main__":
    from consentgate.logs import configure_cli_logging

    # consentgate's own step lines (each with its seconds, Spark jobs and tasks) go to stderr
    # between the runner's lines: the per-step view of every timed phase.
    configure_cli_logging()
    main()
