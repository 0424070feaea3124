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
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Final

from pyspark import SparkConf, SparkContext

#: The JVM's lines that are dropped (whole lines only; everything else passes).
DROPPED: Final = re.compile(
    rb"WARNING: Using incubator modules: [\w.,]+"
    rb"|Deleted [0-9]+ files and directories in a total of [0-9]+ directories\."
)


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
