"""``consentgate demo`` as ``make demo`` runs it, watched as a new user watches it (issue #24).

The command ``make demo`` runs (``consentgate demo``), in a child with a plain ``PATH``, its own
working directory (so its own ``.airflow``) and lake, at the demo's own size (2,000 assets: at
80 or 10 the demo's seed leaves the gate no one to admit and it fails, which a user of the
default never sees): the terminal must show a line of ours at least every ~10 s while it works and nothing that is not ours (no dependency's
warning, no Airflow "[error] ... not found", no Spark ``WARN``), then the summary, which names
the file the runs' OpenLineage events went to. Minutes (JVM, Airflow's DB, the lake, two DAG
runs), so with ``make airflow``'s test in ``make test-airflow``, not in ``make test``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow_server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
#: One of our log lines on stderr: a timestamp, the level, a ``consentgate.*`` logger.
OURS = re.compile(r"^\S+ (INFO|WARNING) consentgate\.[\w.]+ ")
#: The longest the terminal may stay silent while the demo works (progress lines every 10 s).
SILENCE_S = 15.0
RUN_WITHIN = 900


@dataclass
class Demo:
    """One finished ``consentgate demo``: its stderr lines with arrival times, its stdout."""

    tmp: Path
    started: float
    ended: float
    stderr: list[tuple[float, str]]
    stdout: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    tmp_path = tmp_path_factory.mktemp("make-demo")
    env = {
        key: value
        for key, value in os.environ.items()
        # none of this test process's settings (its Airflow home, the fast tier's SPARK_HOME)
        if not key.startswith(
            ("AIRFLOW", "OPENLINEAGE", "CONSENTGATE", "PYTHONWARNINGS", "SPARK", "PYSPARK")
        )
    }
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=str(tmp_path))
    started = time.monotonic()
    child = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "consentgate"),
            "demo",
            "--lake",
            "lake",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    stderr: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: stderr.extend((time.monotonic(), line) for line in child.stderr or ()),
        daemon=True,
    )
    reader.start()
    try:
        stdout, _ = child.communicate(timeout=RUN_WITHIN)
    finally:
        child.kill()
    reader.join(timeout=10)
    ended = time.monotonic()
    assert child.returncode == 0, "".join(line for _, line in stderr)[-3000:]
    return Demo(tmp_path, started, ended, stderr, stdout)


def test_make_demo_prints_nothing_but_ours_and_names_its_lineage_file(demo: Demo) -> None:
    lines = [line.rstrip("\n") for _, line in demo.stderr]
    assert lines and all(OURS.match(line) for line in lines), [
        line for line in lines if not OURS.match(line)
    ]
    summary = demo.stdout.splitlines()
    assert summary[0] == f"lake: {(demo.tmp / 'lake').resolve()} (built now)"
    (named,) = [line for line in summary if line.startswith("OpenLineage events (")]
    count, path = re.fullmatch(r"OpenLineage events \((\d+)\): (.+)", named).groups()  # type: ignore[union-attr]
    events = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(events) == int(count) > 0
    assert all("parent" in event["run"]["facets"] for event in events)


@pytest.mark.xfail(
    strict=False,  # a faster machine may pass it: the miss is reported, not hidden
    reason="issue #24 item 2, not yet: the start is silent for about 20 s (imports, Airflow's "
    "DB migration before its first progress line; 20.2 s measured 2026-12-08 on a slow day)",
)
def test_make_demo_is_never_silent_for_long(demo: Demo) -> None:
    stamps = [demo.started] + [at for at, _ in demo.stderr] + [demo.ended]
    gaps = [(later - earlier, i) for i, (earlier, later) in enumerate(itertools.pairwise(stamps))]
    longest, at = max(gaps)
    lines = [line for _, line in demo.stderr]
    assert longest <= SILENCE_S, (longest, lines[max(0, at - 2) : at + 1])
