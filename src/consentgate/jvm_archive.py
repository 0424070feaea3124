"""Write the class-data archive that local driver JVMs start from (``make jvm-archive``).

Why: a fresh local JVM spends most of a short consentgate run loading and verifying Spark's
and Delta's classes (see "Start-up" in :mod:`consentgate.jvm`). The JDK can keep the classes
an application loaded, already parsed and verified, in a file that the next JVM maps instead
(CDS, JEP 350: ``-XX:ArchiveClassesAtExit``, then ``-XX:SharedArchiveFile``).

How: a child process starts a local session whose JVM archives at exit, and runs the work a
night and a training run do, on a ten-asset demo lake in a temporary directory: write the
lake, purge with erasure, gate. When the child has ended, and its JVM after it (an archive is written as the JVM
exits), the archive is moved into place under the name :func:`consentgate.jvm.class_archive`
gives, which changes with the Java binary, pyspark's jars or Delta's jars, and older
archives there are removed (each is about 200 MB).

Decided: the archive is a cache, never a dependency. Without one, or with one the JVM
refuses, every command runs as before, only slower; nothing reads it but the JVM. It is
written by an explicit step (``make jvm-archive``, which ``make demo``, ``make airflow``,
``make bench`` and ``make test-cluster`` run after installing; not ``make test``, whose few
JVM starts never paid back its two minutes) rather than by the first command
that finds none, so that no user's purge pays a minute for it or races another over it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from consentgate.errors import ConsentgateError
from consentgate.jvm import ARCHIVE_PREFIX, class_archive

log = logging.getLogger(__name__)

#: How long the training child may take (it takes about a minute on two cores).
TRAIN_TIMEOUT_S: Final = 900
#: How long the training JVM may take to write the archive after its Python driver ended.
DUMP_TIMEOUT_S: Final = 300
#: The instant the training lake is decided at (the demo lake's fixed clock).
TRAIN_AS_OF: Final = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


def archive_path() -> Path | None:
    """The archive local sessions of this installation use (``None``: no ``java`` found)."""
    from consentgate.spark import delta_jars

    return class_archive(delta_jars())


def build(*, force: bool = False) -> Path | None:
    """Write the archive unless it exists (``force``: write it again).

    Returns:
        Its path, or ``None`` when there is no ``java`` to write one for.

    Raises:
        ConsentgateError: the training run failed or its JVM wrote no archive.
    """
    target = archive_path()
    if target is None:
        log.warning("jvm-archive: no java found (JAVA_HOME, PATH): nothing written")
        return None
    if target.is_file() and not force:
        log.info("jvm-archive: %s is up to date", target.name)
        return target
    target.unlink(missing_ok=True)  # a session would otherwise start from the old one
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="consentgate-jvm-archive-") as work:
        done = subprocess.run(
            [sys.executable, "-m", "consentgate.jvm_archive", "--train", work, "--dump", str(tmp)],
            timeout=TRAIN_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ConsentgateError(
            f"jvm-archive: the training run exited {done.returncode} and its JVM wrote "
            f"{'an archive' if tmp.is_file() else 'no archive'} (see its output above)"
        )
    os.replace(tmp, target)
    for old in target.parent.glob(f"{ARCHIVE_PREFIX}*.jsa"):
        if old != target:
            old.unlink(missing_ok=True)
    log.info(
        "jvm-archive: wrote %s (%.0f MB) in %.1f s",
        target.name,
        target.stat().st_size / 1e6,
        time.monotonic() - started,
    )
    return target


def _train(work: Path, dump: Path) -> None:
    """The child: a night and a training run on a tiny demo lake, in a JVM that archives the
    classes it loaded into ``dump`` when it exits; returns once that JVM has exited."""
    from pyspark import SparkContext

    from consentgate.config import load_config
    from consentgate.demo import init_demo
    from consentgate.gate import run_gate
    from consentgate.purge import run_purge
    from consentgate.spark import DRIVER_JAVA_OPTIONS, get_spark

    if any(c.isspace() for c in str(dump)):
        raise ConsentgateError(f"jvm-archive: {dump}: a path with whitespace cannot be archived")
    spark = get_spark(
        master="local[2]",
        conf={DRIVER_JAVA_OPTIONS: f"-XX:ArchiveClassesAtExit={dump} -Xlog:cds*=off"},
        app_name="consentgate-jvm-archive",
    )
    lake = work / "lake"
    init_demo(spark, lake, assets=10)
    config = load_config(lake / "consentgate.yaml")
    run_purge(spark, config, as_of=TRAIN_AS_OF)
    run_gate(
        spark,
        config,
        use_case="recommendation",
        model_version="jvm-archive",
        as_of=TRAIN_AS_OF,
    )
    gateway = SparkContext._gateway
    spark.stop()
    process = getattr(gateway, "proc", None)
    if process is None:  # not a JVM this process started: it will not archive for us
        raise ConsentgateError("jvm-archive: the session's JVM was not started by this process")
    if process.stdin is not None:
        process.stdin.close()  # pyspark's JVM exits when its stdin ends; it archives then
    process.wait(timeout=DUMP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consentgate.jvm_archive", description=__doc__)
    parser.add_argument("--force", action="store_true", help="write it even if it exists")
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.train is not None:
        _train(args.train, args.dump)
        return 0
    try:
        build(force=args.force)
    except ConsentgateError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
