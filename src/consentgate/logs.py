"""consentgate's own progress, as one structured log line per step.

A purge or gate run spends minutes inside Spark; without its own log lines an operator sees
nothing between "started" and "done" (and, before Spark was quietened, only the JVM's chatter).
So every main step logs one line at INFO through the module's stdlib logger
(``logging.getLogger(__name__)``) when it ends::

    step=rewrite table=track_embeddings rows=212 files=3 bytes=48213 jobs=9 tasks=31 seconds=4.210

``key=value`` pairs, step first and seconds last, so the lines read as a story in an Airflow
task log and can be grepped or parsed (the same fields ride on the record as
``record.consentgate`` for a structured handler). Only counts, table names and run ids are
logged: an asset, user or row id never is (the purge's evidence must not leak into logs), which
:func:`step`'s signature enforces by accepting numbers only besides ``table`` and ``run_id``.

``jobs`` and ``tasks`` are the Spark jobs and tasks the step ran (an outer step's include its
inner steps'), counted by :func:`consentgate.spark.spark_work` around the step and handed to
:func:`step` as ``work``: seconds on a small lake barely move when a change adds a pass over a
table, the job and task counts do. ``spark_partial=true`` marks counts that are lower bounds
(Spark's status store had already forgotten part of the step). A step that runs no Spark job
says ``jobs=0 tasks=0``; one that is not measured (the Spark-free ``verify``) has neither.

Library code only gets loggers; it never adds handlers, so under Airflow the records propagate
to the task log. The command line calls :func:`configure_cli_logging` once at start-up, and
:func:`restore_cli_logging` once Airflow, imported later in the same process (the demo), has
replaced the root logger's handlers with its own.

This module imports the standard library only: ``consentgate verify`` must load no pyspark.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Protocol, TextIO

#: The package's parent logger: every module's ``logging.getLogger(__name__)`` is under it.
ROOT_LOGGER: Final = "consentgate"
#: Attribute of a log record holding the step's fields, for structured handlers.
RECORD_FIELDS: Final = "consentgate"
#: Attribute of a ``progress=`` line's record holding its fields (:func:`running`); not
#: :data:`RECORD_FIELDS`, which holds finished steps' only.
PROGRESS_FIELDS: Final = "consentgate_progress"
#: Line format of the command line's log records (on stderr, plain text, no colour).
CLI_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
CLI_DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
#: The packages whose deprecation notices our entry points keep off the terminal
#: (:func:`quiet_dependency_warnings`): what consentgate runs on, none of them ours.
DEPENDENCIES: Final = (
    "airflow",
    "alembic",
    "sqlalchemy",
    "pydantic",
    "fastapi",
    "starlette",
    "httpx",
    "structlog",
    "pyspark",
    "py4j",
    "delta",
    "deltalake",
    "pyarrow",
    "pandas",
)
#: The longest a step in :func:`running` stays silent: then a ``progress=`` line says it is
#: still running (issue #24 item 2: "never silent for more than ~10 s").
PROGRESS_EVERY_S: Final = 10.0
#: What :func:`quiet_dependency_warnings` hides: notices addressed to those packages' callers'
#: maintainers (a removal to come), not to someone running a purge.
DEPRECATIONS: Final = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class StepWork(Protocol):
    """What a step measured around its work (:class:`consentgate.spark.SparkWork`): when it
    started, and counts for the step line that come after the caller's own (``jobs``,
    ``tasks``). A protocol, so this module needs no pyspark."""

    @property
    def started(self) -> float: ...

    def counts(self) -> Mapping[str, int | float | bool | None]: ...


def _value(value: int | float | str) -> str:
    """One value as it appears after ``=``: numbers plain, seconds to the millisecond, a
    string quoted (JSON-style) only when it would otherwise break the line into more pairs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text)
    return text


def step_fields(
    name: str,
    *,
    table: str | None = None,
    run_id: str | None = None,
    seconds: float | None = None,
    counts: dict[str, int | float | bool | None] | None = None,
) -> dict[str, int | float | str]:
    """The ordered fields of a step line: ``step``, ``table``, ``run_id``, counts, ``seconds``.

    A ``None`` count is left out (not known for this step), so callers can pass optional facts
    without branching.
    """
    fields: dict[str, int | float | str] = {"step": name}
    if table is not None:
        fields["table"] = table
    if run_id is not None:
        fields["run_id"] = run_id
    for key, count in (counts or {}).items():
        if count is not None:
            fields[key] = count
    if seconds is not None:
        fields["seconds"] = round(seconds, 3)
    return fields


def format_fields(fields: dict[str, int | float | str]) -> str:
    """``key=value`` pairs separated by single spaces, in the fields' order."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def step(
    logger: logging.Logger,
    name: str,
    *,
    table: str | None = None,
    run_id: str | None = None,
    since: float | None = None,
    work: StepWork | None = None,
    level: int = logging.INFO,
    **counts: int | float | bool | None,
) -> None:
    """Log that a step ended, as one ``step=<name> table=<t> rows=<n> ... seconds=<s>`` line.

    Args:
        logger: The calling module's logger (its name says which part of consentgate spoke).
        name: The step, e.g. ``decide``, ``allowlist``, ``snapshot``, ``rewrite``, ``erase``.
        table: The table the step worked on, if one.
        run_id: The run, where the line would otherwise not say which one it belongs to.
        since: ``time.monotonic()`` when the step began; the line then ends with ``seconds``.
            Default: ``work.started``.
        work: What the step ran on Spark (:func:`consentgate.spark.spark_work`): its ``jobs``
            and ``tasks`` follow the caller's counts, just before ``seconds``.
        level: Log level (INFO; WARNING for a step that ended badly but is not an error).
        **counts: Counts only (rows, files, bytes, assets, ...): never an id or a value.
    """
    if not logger.isEnabledFor(level):
        return
    if work is not None:
        since = work.started if since is None else since
        counts = {**counts, **work.counts()}
    seconds = None if since is None else time.monotonic() - since
    fields = step_fields(name, table=table, run_id=run_id, seconds=seconds, counts=counts)
    logger.log(level, "%s", format_fields(fields), extra={RECORD_FIELDS: fields})
    _spoke()


# --------------------------------------------------------------------------------------------
# A step still running says so (``progress=`` lines)


@dataclass(eq=False)
class _Running:
    logger: logging.Logger
    name: str
    table: str | None
    started: float


_progress_lock = threading.Lock()
#: The blocks of :func:`running` now open in this process, innermost (latest) last.
_open: list[_Running] = []
#: ``time.monotonic()`` of the latest step or progress line of this process.
_last_line = time.monotonic()


def _spoke() -> None:
    global _last_line
    with _progress_lock:
        _last_line = time.monotonic()


@contextmanager
def running(
    logger: logging.Logger,
    name: str,
    *,
    table: str | None = None,
    every: float = PROGRESS_EVERY_S,
) -> Iterator[None]:
    """While the block runs, say it is still running whenever consentgate has logged no line
    for ``every`` seconds: ``progress=<name> table=<t> seconds=<since the block began>``.

    A step's own line comes when it ends (:func:`step`); a step that takes minutes (one Spark
    job over the whole lake) would otherwise leave whoever watches with nothing to tell a slow
    run from a hung one. The line is ``progress=``, not ``step=``, and its record holds its
    fields as :data:`PROGRESS_FIELDS`, not :data:`RECORD_FIELDS`: readers of step lines
    (``bench/targets.py``, ``bench/scenarios.py``) count finished steps and skip it.

    Nested blocks (a step made of steps) give one line per quiet period, naming the innermost
    block open in the process; any step line resets the period. A daemon thread per block
    watches the clock and is stopped and joined when the block ends, so no line follows the
    block. Only the name, the table and seconds are logged, never an id.
    """
    entry = _Running(logger=logger, name=name, table=table, started=time.monotonic())
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(entry, stop, every), name=f"consentgate-progress-{name}", daemon=True
    )
    with _progress_lock:
        _open.append(entry)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        with _progress_lock:
            _open.remove(entry)


def _watch(entry: _Running, stop: threading.Event, every: float) -> None:
    """Log ``entry``'s progress line whenever the process has been quiet for ``every`` s."""
    global _last_line
    poll = min(every / 4, 1.0)
    while not stop.wait(poll):
        with _progress_lock:
            now = time.monotonic()
            # Quiet since the last line, whenever the innermost block began: a step opened 8 s
            # into a quiet stretch speaks 2 s later, not 10 (the demo's gaps reached 20 s).
            if _open[-1] is not entry or now - _last_line < every:
                continue
            _last_line = now
        if entry.logger.isEnabledFor(logging.INFO):
            fields: dict[str, int | float | str] = {"progress": entry.name}
            if entry.table is not None:
                fields["table"] = entry.table
            fields["seconds"] = round(now - entry.started, 3)
            entry.logger.info("%s", format_fields(fields), extra={PROGRESS_FIELDS: fields})


class _CurrentStderr(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    Looked up at emit time, not bound at set-up: click's test runner and rich's live status
    both replace ``sys.stderr`` for a while, and the lines must go where the rest of stderr
    goes (never to a stream that has since been closed).
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


class _OursOnly(logging.Filter):
    """Passes consentgate's records only (the ``consentgate`` logger and those under it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == ROOT_LOGGER or record.name.startswith(f"{ROOT_LOGGER}.")


#: Whether :func:`configure_cli_logging` ran in this process (our command line owns it).
_cli_logging = False


def configure_cli_logging() -> None:
    """Send consentgate's INFO lines (and every library's warnings) to stderr, once.

    Called by the command line at start-up, never by library code. stdout stays for the
    command's result (``--json`` prints exactly one JSON object there). The format is plain
    text without colour, so a log file or a pipe gets clean lines. Other libraries keep the
    root logger's WARNING threshold (py4j's INFO chatter stays out); a level someone set on
    the ``consentgate`` logger before is kept. Calling it again adds nothing.
    """
    global _cli_logging
    _cli_logging = True
    _attach_stderr(ours_only=False)
    ours = logging.getLogger(ROOT_LOGGER)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


def restore_cli_logging() -> None:
    """Put the command line's stderr line back for consentgate's records after Airflow's
    logging set-up has taken the root logger.

    Airflow configures logging when it is first imported (``airflow.configuration``): a
    ``dictConfig`` whose root logger has Airflow's handler only, at Airflow's level. The
    handler :func:`configure_cli_logging` put there is dropped, so in a process that imports
    Airflow after start-up (``consentgate demo`` runs the DAGs in process) every step line
    fell into Airflow's handler, which at the demo's ERROR level prints none of them: the demo
    was silent for minutes. Called right after that import (:func:`consentgate.story.run_dag`),
    this adds the stderr handler back, passing consentgate's records only: Airflow's handler
    keeps showing everything else at Airflow's level, so nothing is printed twice and
    Airflow's own INFO chatter stays off the terminal.

    Does nothing unless :func:`configure_cli_logging` ran in this process (a test process or
    an Airflow worker keeps Airflow's handlers: there the lines go to the task log), nor when
    the handler is still there. Calling it again adds nothing.
    """
    if _cli_logging:
        _attach_stderr(ours_only=True)


def _attach_stderr(*, ours_only: bool) -> None:
    """Add the command line's stderr handler to the root logger unless it has one already."""
    root = logging.getLogger()
    if any(isinstance(h, _CurrentStderr) for h in root.handlers):
        return
    handler = _CurrentStderr()
    formatter = logging.Formatter(CLI_FORMAT, datefmt=CLI_DATE_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    if ours_only:
        handler.addFilter(_OursOnly())
    root.addHandler(handler)


def quiet_dependency_warnings() -> None:
    """Hide the deprecation notices our dependencies raise inside their own code, in this process.

    Called where consentgate starts the process or the run (the command line at start-up, the
    demo's :func:`consentgate.story.run_dag` once Airflow is imported), never by library code
    or a DAG file: a user's own process keeps its warnings. Only
    :data:`DEPRECATIONS` attributed to a module of :data:`DEPENDENCIES` (the module the warning
    names as its origin) are hidden: a dependency calling another deprecated dependency
    (Airflow's SQLAlchemy ``noload``, a provider's compat import) is not something a person
    running ``consentgate demo`` can act on, while a notice that names a consentgate module or
    a DAG file as the caller still shows, so that we fix our code. Python's ``-W`` options and
    ``PYTHONWARNINGS`` win: nothing is hidden when the user asked for warnings.

    Airflow adds filters that show its deprecations when ``airflow.configuration`` is first
    imported, in front of the list, so a caller that imports Airflow afterwards calls this
    again after that import (filters added later take precedence). Calling it again adds
    nothing twice.
    """
    if sys.warnoptions:
        return
    module = r"(?:" + "|".join(DEPENDENCIES) + r")(?:\.|$)"
    for category in DEPRECATIONS:
        # filterwarnings removes an equal filter before inserting it at the front.
        warnings.filterwarnings("ignore", category=category, module=module)
