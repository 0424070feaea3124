"""The driver JVM's stderr, copied to ours with two known lines held back, and a local driver
JVM's start-up options (``consentgate.jvm``).

The filter is tested on a pipe here; that a real JVM's stderr goes through it (and these lines
never reach a command's stderr while log4j's do) is ``test_cli``'s purge in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from consentgate.jvm import ARCHIVE_PREFIX, _copy_lines, class_archive, local_java_options
from consentgate.spark import DRIVER_JAVA_OPTIONS, _with_local_java_options, delta_jars


def _through_filter(data: bytes) -> bytes:
    """``data`` written to a pipe the filter copies from, as the JVM writes its stderr."""
    source_r, source_w = os.pipe()
    out_r, out_w = os.pipe()
    copier = threading.Thread(target=_copy_lines, args=(source_r, out_w))
    copier.start()
    received: list[bytes] = []

    def read_all() -> None:
        with os.fdopen(out_r, "rb") as out:
            received.append(out.read())

    reader = threading.Thread(target=read_all)
    reader.start()
    os.write(source_w, data)
    os.close(source_w)
    copier.join(timeout=10)
    assert not copier.is_alive()  # EOF on the JVM's side ends the copy
    os.close(out_w)
    reader.join(timeout=10)
    return received[0]


def test_only_the_two_known_lines_are_dropped_and_everything_else_passes_in_order() -> None:
    jvm = (
        b"WARNING: Using incubator modules: jdk.incubator.vector\n"
        b"26/12/07 12:00:00 ERROR Executor: task failed\n"
        b"Deleted 2 files and directories in a total of 1 directories.\n"
        b"\tat org.apache.spark.Foo(Foo.scala:1)\n"
        b"WARNING: Using incubator modules: jdk.incubator.vector and more text\n"
        b"Deleted 2 files and directories in a total of 1 directories. (not the whole line)\n"
        b"a last line without newline"
    )
    assert _through_filter(jvm) == (
        b"26/12/07 12:00:00 ERROR Executor: task failed\n"
        b"\tat org.apache.spark.Foo(Foo.scala:1)\n"
        b"WARNING: Using incubator modules: jdk.incubator.vector and more text\n"
        b"Deleted 2 files and directories in a total of 1 directories. (not the whole line)\n"
        b"a last line without newline"
    )


def test_a_line_split_across_reads_is_judged_whole() -> None:
    big = b"x" * 70_000 + b"\n"  # longer than one read of the pipe
    assert _through_filter(big + b"WARNING: Using incubator modules: jdk.incubator.vector\n") == big


# Start-up of a local driver JVM: the class-data archive.


def _fake_delta_jars(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    jar = directory / "delta-spark_4.1_2.13-4.4.0.jar"
    jar.write_bytes(b"not a real jar")
    return [jar]


def test_without_an_archive_a_local_jvm_gets_no_option(tmp_path: Path) -> None:
    jars = _fake_delta_jars(tmp_path)
    assert local_java_options(jars) == ""


def test_an_archive_is_named_after_java_spark_and_the_jars_and_used_once_written(
    tmp_path: Path,
) -> None:
    jars = _fake_delta_jars(tmp_path)
    archive = class_archive(jars)
    assert archive is not None and archive.parent == tmp_path
    assert archive.name.startswith(ARCHIVE_PREFIX) and archive.suffix == ".jsa"
    archive.write_bytes(b"archive")
    options = local_java_options(jars).split()
    assert options[0] == f"-XX:SharedArchiveFile={archive}"
    # another delta-spark build is another archive: the old one is not used for it
    jars[0].write_bytes(b"another build of the jar")
    assert class_archive(jars) != archive
    assert "SharedArchiveFile" not in local_java_options(jars)


def test_no_java_means_no_archive(tmp_path: Path) -> None:
    jars = _fake_delta_jars(tmp_path)
    assert class_archive(jars, environ={"JAVA_HOME": str(tmp_path / "no-java"), "PATH": ""}) is None


def test_a_foreign_or_broken_archive_is_ignored_by_the_jvm_without_a_word(tmp_path: Path) -> None:
    """The archive is a cache: one the JVM cannot use (another JDK's, a truncated file) must
    neither stop it nor print anything (a command's output, an Airflow task log)."""
    jars = _fake_delta_jars(tmp_path)
    archive = class_archive(jars)
    assert archive is not None
    archive.write_bytes(b"\0" * 4096)
    options = local_java_options(jars).split()
    assert f"-XX:SharedArchiveFile={archive}" in options
    done = subprocess.run(
        ["java", *options, "-XshowSettings:properties", "-version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "cds" not in done.stdout + done.stderr.lower()
    assert "archive" not in (done.stdout + done.stderr).lower()


def test_the_users_java_options_come_after_ours_so_theirs_win(tmp_path: Path) -> None:
    jars = _fake_delta_jars(tmp_path)
    settings = {
        "spark.jars": ",".join(str(j) for j in jars),
        DRIVER_JAVA_OPTIONS: "-XX:TieredStopAtLevel=4 -Xss4m",
    }
    archive = class_archive(jars)
    assert archive is not None
    assert _with_local_java_options({"spark.jars": settings["spark.jars"]}) == {}
    assert (
        _with_local_java_options(settings)[DRIVER_JAVA_OPTIONS] == "-XX:TieredStopAtLevel=4 -Xss4m"
    )
    archive.write_bytes(b"archive")
    merged = _with_local_java_options(settings)[DRIVER_JAVA_OPTIONS]
    assert merged == f"{local_java_options(jars)} -XX:TieredStopAtLevel=4 -Xss4m"
    assert merged.startswith(f"-XX:SharedArchiveFile={archive} ")


def test_a_new_local_session_starts_its_jvm_with_the_archive(jvm: None, tmp_path: Path) -> None:
    """The production path: ``get_spark`` for a local master, in a fresh process, hands the
    archive of its jars directory to the JVM it starts. Here the archive is not one the JVM can
    use (writing a real one takes two minutes: ``make jvm-archive``), so this also shows such a
    JVM starting and running a job as if there were none."""
    jars = tmp_path / "jars"
    jars.mkdir()
    for jar in delta_jars():
        (jars / jar.name).symlink_to(jar)
    archive = class_archive(sorted(jars.glob("*.jar")))
    assert archive is not None
    archive.write_bytes(b"\0" * 4096)
    script = (
        "from consentgate.spark import get_spark\n"
        "s = get_spark(master='local[1]')\n"
        "print(s.range(3).count())\n"
        "jvm = s.sparkContext._jvm\n"
        "args = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()\n"
        "print('\\n'.join(list(args)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "CONSENTGATE_JARS": str(jars)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "3"
    assert f"-XX:SharedArchiveFile={archive}" in lines[1:]
    assert "cds" not in done.stderr.lower() and "archive" not in done.stderr.lower()
