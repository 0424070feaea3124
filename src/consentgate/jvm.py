"""Start the local driver JVM with two known console lines of it held back.

Spark's launcher adds ``--add-modules=jdk.incubator.vector`` to every JVM it starts, and the JVM
then prints ``WARNING: Using incubator modules: jdk.incubator.vector`` on stderr before any
logging is configured; no JVM option silences it. delta-spark's VACUUM prints ``Deleted N files
and directories in a total of M directories.`` straight to the console, past log4j. Both
reached every command's terminal and every Airflow task log (issue #24: nothing on the terminal
that is not ours or an error); the erasure receipt already says what VACUUM removed.

So a new local session's JVM is launched here, the way pyspark launches it (the same
``spark-submit pyspark-shell`` command with the same ``--conf`` settings, through pyspark's own
:func:`~pyspark.java_gateway.launch_gateway`), except that its stdout and stderr are pipes: a
daemon thread per stream copies every line to this process's file descriptor 1 or 2, where the
JVM would have written itself (the command line points descriptor 1 at stderr, see
``consentgate.cli``), and drops exactly those lines (:data:`DROPPED`). Log4j's lines, errors
and stack traces pass unchanged, in order, to the same place (a terminal, a file, Airflow's
task log).

The readers start before the JVM, so a JVM that writes much before it is ready never blocks on
a full pipe; each ends when the JVM closes its end. A JVM that spark-submit started (cluster
mode, ``PYSPARK_GATEWAY_PORT`` set) or one already running is left as it is.

**Start-up of a local driver JVM** (issue #20: every run pays only for its work). A command
line purge of the 2,000-asset demo lake with nothing to remove spent 40 s deciding in a fresh
JVM and 15 s deciding the same lake again in a warm one: most of a short run is the JVM
loading, verifying and compiling some 20,000 classes. So a local session's driver starts from
a class-data archive: the classes a consentgate run loads, parsed and verified once (JDK CDS,
JEP 350; written by ``make jvm-archive``, see :mod:`consentgate.jvm_archive`), passed as
``-XX:SharedArchiveFile`` (:func:`local_java_options`, before the user's
``spark.driver.extraJavaOptions``) when one exists for this Java and these jars
(:func:`class_archive`). A missing archive changes nothing; a stale or foreign one is ignored
by the JVM itself (``-Xshare:auto``, its warning silenced). A cluster's driver (spark-submit,
a master other than ``local``) gets none of this.

Measured on that lake, CLI wall time of the night (load average about 2): 58.9 s as Spark
starts it; 44.9 s from the archive; 28.4-29.7 s from the archive with ``spark.sql.codegen``
off (:func:`consentgate.spark._local_defaults`). Rejected: the client compiler only
(``-XX:TieredStopAtLevel=1``): 5 s off that night, but a long-lived session runs hot loops
long enough for the optimising compiler to pay: the backfill test's purge took 150 s instead
of 100 s.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from pyspark import SparkConf, SparkContext

#: The JVM's lines that are dropped (whole lines only; everything else passes).
DROPPED: Final = re.compile(
    rb"WARNING: Using incubator modules: [\w.,]+"
    rb"|Deleted [0-9]+ files and directories in a total of [0-9]+ directories\."
)


#: File name prefix of the class-data archive in the jars directory (then a key, ``.jsa``).
ARCHIVE_PREFIX: Final = "consentgate-classes-"
#: Silences the JVM's warning about an archive it cannot use (it then starts without one).
_QUIET_ARCHIVE: Final = ("-Xshare:auto", "-Xlog:cds*=off")


def _java_binary(environ: Mapping[str, str]) -> Path | None:
    """The ``java`` Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    home = environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def _spark_jars() -> list[Path]:
    from pyspark.find_spark_home import _find_spark_home

    home = _find_spark_home()  # type: ignore[no-untyped-call]
    return sorted((Path(home) / "jars").glob("*.jar"))


def _fingerprint(files: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def class_archive(jars: list[Path], *, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the class-data archive for this Java, Spark and ``jars`` (``spark.jars``, Delta's
    among them) lives: delta-spark's directory, named by a digest of the three (path, size,
    modification time). A new Java, pyspark or delta-spark is a new name, so an archive is
    never used for other classes than it was written for (the JVM checks that too). ``None``
    when no ``java`` or no delta-spark jar is found.
    """
    java = _java_binary(environ)
    delta = [j for j in jars if j.name.startswith("delta-spark_") and j.is_file()]
    if java is None or not delta:
        return None
    key = _fingerprint([java, *_spark_jars(), *sorted(j for j in jars if j.is_file())])
    return delta[0].parent / f"{ARCHIVE_PREFIX}{key}.jsa"


def local_java_options(jars: list[Path], *, environ: Mapping[str, str] = os.environ) -> str:
    """The Java options of a new local driver JVM (module doc, "Start-up"): the archive's, or
    none (no archive written; or its path has whitespace, where Spark splits options)."""
    archive = class_archive(jars, environ=environ)
    if archive is None or not archive.is_file() or any(c.isspace() for c in str(archive)):
        return ""
    return " ".join([f"-XX:SharedArchiveFile={archive}", *_QUIET_ARCHIVE])


def _copy_lines(read_fd: int, out_fd: int) -> None:
    """Copy lines from ``read_fd`` to ``out_fd`` until EOF, dropping the :data:`DROPPED` ones."""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while chunk := source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _dropped(line))
            if out:
                _write_all(out_fd, out)
        if pending and not _dropped(pending):
            _write_all(out_fd, pending)


def _dropped(line: bytes) -> bool:
    return DROPPED.fullmatch(line.rstrip(b"\r")) is not None


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:  # our stderr is gone (a closed pipe): the JVM's lines have nowhere to go
        pass


def start_gateway(settings: Mapping[str, str]) -> None:
    """Launch the driver JVM for a new local session with ``settings`` (every ``spark.*`` key
    the session builder would pass, master and app name included), unless one runs already."""
    if SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
        return
    from pyspark.java_gateway import launch_gateway

    conf = SparkConf(loadDefaults=False)
    for key, value in settings.items():
        conf.set(key, value)
    ends: dict[str, int] = {}
    for stream, out_fd in (("stdout", 1), ("stderr", 2)):
        read_fd, ends[stream] = os.pipe()
        threading.Thread(
            target=_copy_lines,
            args=(read_fd, out_fd),
            name=f"consentgate-jvm-{stream}",
            daemon=True,
        ).start()
    try:
        # (launch_gateway adds its own keys to the dict it is given: hand it a copy)
        gateway = launch_gateway(conf, popen_kwargs=dict(ends))  # type: ignore[no-untyped-call]
    finally:
        for write_fd in ends.values():
            os.close(write_fd)  # the JVM holds its own copies; EOF comes when it exits
    SparkContext._ensure_initialized(gateway=gateway)
