"""The driver JVM's stderr, copied to ours with two known lines held back (``consentgate.jvm``).

The filter is tested on a pipe here; that a real JVM's stderr goes through it (and these lines
never reach a command's stderr while log4j's do) is ``test_cli``'s purge in a child process.
"""

from __future__ import annotations

import os
import threading

from consentgate.jvm import _copy_lines


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
