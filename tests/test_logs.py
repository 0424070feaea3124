"""consentgate's own step lines (issue #15 item 2): key=value, counts only, on stderr."""

from __future__ import annotations

import datetime as dt
import importlib
import io
import itertools
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from consentgate import logs


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Undo what the CLI's set-up does to this process's loggers."""
    root = logging.getLogger()
    ours = logging.getLogger(logs.ROOT_LOGGER)
    handlers, level, cli = list(root.handlers), ours.level, logs._cli_logging
    yield
    root.handlers[:] = handlers
    ours.setLevel(level)
    logs._cli_logging = cli


def test_a_step_line_is_key_value_pairs_step_first_seconds_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("consentgate.purge")
    with caplog.at_level(logging.INFO, logger="consentgate"):
        logs.step(
            log,
            "rewrite",
            table="track_embeddings",
            rows=212,
            files=3,
            bytes=48213,
            conflicts=None,  # unknown: left out
            since=time.monotonic() - 1.5,
        )
    (record,) = caplog.records
    assert record.name == "consentgate.purge" and record.levelno == logging.INFO
    message = record.getMessage()
    head, _, seconds = message.rpartition(" seconds=")
    assert head == "step=rewrite table=track_embeddings rows=212 files=3 bytes=48213"
    assert 1.5 <= float(seconds) < 60
    assert getattr(record, logs.RECORD_FIELDS)["rows"] == 212  # for structured handlers


def test_values_that_would_split_the_line_are_quoted() -> None:
    fields = logs.step_fields("gate", table="my table", counts={"ok": True, "n": 0})
    assert logs.format_fields(fields) == 'step=gate table="my table" ok=true n=0'


def test_library_loggers_propagate_and_have_no_handlers() -> None:
    """Under Airflow the task log is fed by the root logger: ours must reach it."""
    for name in ("gate", "purge", "erasure", "manifest"):
        module = importlib.import_module(f"consentgate.{name}")
        logger = module.log
        assert logger.name == f"consentgate.{name}"
        assert logger.propagate and not logger.handlers
    assert not logging.getLogger(logs.ROOT_LOGGER).handlers


@pytest.mark.usefixtures("clean_logging")
def test_cli_logging_goes_to_the_current_stderr_once(monkeypatch: pytest.MonkeyPatch) -> None:
    logs.configure_cli_logging()
    logs.configure_cli_logging()  # idempotent: one handler, one line per record
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)  # replaced after set-up, as click's runner does
    logs.step(logging.getLogger("consentgate.gate"), "publish", tables=2)
    logging.getLogger("py4j.clientserver").info("chatter")  # other libraries: WARNING and up
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(" INFO consentgate.gate step=publish tables=2")
    assert "\x1b[" not in lines[0]  # no colour codes


@dataclass
class _Measured:
    """What consentgate.spark.SparkWork hands to a step line, without Spark."""

    started: float
    jobs: int
    tasks: int
    partial: bool = False

    def counts(self) -> dict[str, int | bool | None]:
        return {"jobs": self.jobs, "tasks": self.tasks, "spark_partial": self.partial or None}


def test_jobs_and_tasks_sit_between_the_counts_and_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = _Measured(started=time.monotonic() - 2.0, jobs=7, tasks=23)
    with caplog.at_level(logging.INFO, logger="consentgate"):
        logs.step(logging.getLogger("consentgate.gate"), "decide", rows=3, work=work)
    head, _, seconds = caplog.records[0].getMessage().rpartition(" seconds=")
    assert head == "step=decide rows=3 jobs=7 tasks=23"
    assert 2.0 <= float(seconds) < 60  # timed from the work's start


def test_partial_counts_say_so_and_an_idle_step_says_zero() -> None:
    partial = _Measured(started=0.0, jobs=80, tasks=160, partial=True)
    fields = logs.step_fields("rewrite", counts={"rows": 1, **partial.counts()})
    assert logs.format_fields(fields) == (
        "step=rewrite rows=1 jobs=80 tasks=160 spark_partial=true"
    )
    idle = _Measured(started=0.0, jobs=0, tasks=0)
    assert logs.format_fields(logs.step_fields("publish", counts={**idle.counts()})) == (
        "step=publish jobs=0 tasks=0"
    )


def test_the_purge_step_lines_show_the_spark_work_they_ran(
    spark: SparkSession, small_lake: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real nightly purge of ``tests/lakes.py``'s lake: each step line (decide, the table's
    rewrite and erasure, the run) carries the jobs and tasks Spark ran for it, and the run's
    line counts its inner steps' jobs too."""
    from consentgate import purge
    from consentgate.config import load_config

    config = load_config(small_lake)
    with caplog.at_level(logging.INFO, logger="consentgate"):
        purge.run_purge(spark, config, as_of=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    lines = {
        (f["step"], f.get("table")): f
        for f in (getattr(r, logs.RECORD_FIELDS, None) for r in caplog.records)
        if f is not None
    }
    steps = [("decide", None), ("rewrite", "track_embeddings"), ("erase", "track_embeddings")]
    for key in [*steps, ("purge", None)]:
        fields = lines[key]
        assert list(fields)[-3:] == ["jobs", "tasks", "seconds"], fields  # beside seconds
        assert int(fields["jobs"]) >= 1 and int(fields["tasks"]) >= int(fields["jobs"]), fields
        assert "spark_partial" not in fields
    outer = int(lines[("purge", None)]["jobs"])
    assert outer >= sum(int(lines[k]["jobs"]) for k in steps)
    message = next(r.getMessage() for r in caplog.records if "step=rewrite" in r.getMessage())
    assert " jobs=" in message and " tasks=" in message and "a1" not in message


# --------------------------------------------------------------------------------------------
# Our dependencies' deprecation notices (issue #24 item 3)


def _shown(origin: str, category: type[Warning]) -> bool:
    """Whether a warning that names ``origin`` as its module is shown under the current filters
    (``warn_explicit``: the module is the one the warning machinery matches filters against)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "warnoptions", [])
        with warnings.catch_warnings(record=True) as seen:
            # As Airflow does when first imported: show its deprecations.
            warnings.simplefilter("default")
            warnings.filterwarnings("default", category=DeprecationWarning, module="airflow")
            logs.quiet_dependency_warnings()
            warnings.warn_explicit("old", category, f"{origin}.py", 1, module=origin)
        return bool(seen)


@pytest.mark.parametrize(
    "origin",
    ["airflow.models.dag", "airflow", "sqlalchemy.orm.strategy_options", "pyspark.sql.pandas"],
)
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
def test_a_dependencys_deprecation_notice_is_hidden(origin: str, category: type[Warning]) -> None:
    assert not _shown(origin, category)


@pytest.mark.parametrize(
    "origin",
    # ours, a DAG file as Airflow imports it, a user's module, a name that only starts alike
    ["consentgate.purge", "unusual_prefix_0a1b_consentgate_nightly_purge", "mycompany", "airflowx"],
)
def test_a_deprecation_notice_naming_other_code_still_shows(origin: str) -> None:
    assert _shown(origin, DeprecationWarning)


def test_other_warnings_of_a_dependency_still_show() -> None:
    assert _shown("airflow.models.dag", UserWarning)
    assert _shown("pyspark.sql.session", RuntimeWarning)


def test_nothing_is_hidden_when_the_user_asked_for_warnings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    monkeypatch.setattr(sys, "warnoptions", ["default"])
    with warnings.catch_warnings():
        before = list(warnings.filters)
        logs.quiet_dependency_warnings()
        assert warnings.filters == before


# --------------------------------------------------------------------------------------------
# A step still running says so (issue #24 item 2: never silent for more than ~10 s)

PROGRESS = "consentgate.probe"


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[float, str]]:
    return [(r.created, r.getMessage()) for r in caplog.records if r.name == PROGRESS]


def test_a_long_step_says_it_still_runs_until_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger(PROGRESS)
    every = 0.1
    with caplog.at_level(logging.INFO, logger="consentgate"):
        with logs.running(log, "slow", table="t", every=every):
            time.sleep(6 * every)
        ended = len(_lines(caplog))
        time.sleep(3 * every)
        after = _lines(caplog)
    assert len(after) == ended, "a progress line came after its block ended"
    assert 2 <= ended <= 6, after
    records = [r for r in caplog.records if r.name == PROGRESS]
    assert all(not hasattr(r, logs.RECORD_FIELDS) for r in records)  # not a finished step
    assert getattr(records[0], logs.PROGRESS_FIELDS)["progress"] == "slow"
    seconds = []
    for _, message in after:
        head, _, value = message.rpartition(" seconds=")
        assert head == "progress=slow table=t", message  # not step=: finished steps only
        seconds.append(float(value))
    assert seconds == sorted(seconds), seconds
    # Never more often than every `every` seconds.
    times = [created for created, _ in after]
    assert all(b - a >= 0.9 * every for a, b in itertools.pairwise(times)), times


def test_nested_steps_give_one_progress_line_per_quiet_period_naming_the_innermost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger(PROGRESS)
    every = 0.1
    with (
        caplog.at_level(logging.INFO, logger="consentgate"),
        logs.running(log, "outer", every=every),
    ):
        with logs.running(log, "inner", every=every):
            time.sleep(4 * every)
            logs.step(log, "done_part", rows=1)  # a step line restarts the quiet period
            time.sleep(every / 2)
            with logs.running(log, "late", every=every):  # quiet since the line, not its start
                time.sleep(every)
            time.sleep(4 * every)
        time.sleep(4 * every)
    lines = _lines(caplog)
    names = [message.split()[0] for _, message in lines]
    done = names.index("step=done_part")
    assert set(names[:done]) == {"progress=inner"}, names
    outer = names.index("progress=outer")
    late = names.index("progress=late")
    assert late == done + 1, names
    late_seconds = float(lines[late][1].rpartition("seconds=")[2])
    assert late_seconds < 0.9 * every, lines  # spoke `every` after the step line, not its start
    assert set(names[late + 1 : outer]) == {"progress=inner"}, names
    assert set(names[outer:]) == {"progress=outer"}, names
    # A progress line only after `every` seconds without any line (a step line's included).
    for (before, _), (created, message) in itertools.pairwise(lines):
        assert not message.startswith("progress=") or created - before >= 0.9 * every, lines
