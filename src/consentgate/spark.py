"""The one place a SparkSession is built.

Every job runs with the session time zone pinned to UTC (consent instants are UTC whatever the
machine says), with Parquet written the way Delta readers expect (INT64 microsecond timestamps,
not Spark's legacy INT96), and with delta-spark loaded: its jars (fetched by Maven from
``jvm/pom.xml`` into ``.jars/`` by ``make jars``, never resolved at run time), the Delta SQL
extension and the Delta catalog.

Where the jars come from: ``$CONSENTGATE_JARS`` (a directory) if set, else the repository's
``.jars/``. A session built elsewhere (spark-submit, a cluster) that already has Delta's classes
is reused as it is; one without them fails with a message saying how to get them.

Logs: a new session's JVM is told to keep quiet. Airflow records everything the JVM writes to
stderr at level ERROR, and Spark's start-up lines ("Using Spark's default log4j profile",
"WARN NativeCodeLoader", "SparkUI could not bind on port 4040", ...) and console progress bars
buried consentgate's own step lines (:mod:`consentgate.logs`). So :func:`quiet_jvm_conf` adds
to the driver's ``spark.driver.extraJavaOptions`` ``-Dlog4j2.configurationFile=`` pointing at
the ``log4j2.properties`` shipped in this package (WARN for Spark, Hadoop, Delta and the rest;
ERROR for the known harmless warnings; every ERROR still shows), and sets
``spark.ui.showConsoleProgress=false`` unless stderr is a terminal. Both are only defaults:

- the user's own log4j configuration wins: ``-Dlog4j2.configurationFile`` (or log4j 1's
  properties) in ``spark.driver.extraJavaOptions`` / ``defaultJavaOptions`` (the config's
  ``spark.conf`` or ``spark-defaults.conf``) or in ``JAVA_TOOL_OPTIONS``, ``_JAVA_OPTIONS``,
  ``JDK_JAVA_OPTIONS``, ``SPARK_SUBMIT_OPTS``; ``$LOG4J_CONFIGURATION_FILE``; a ``log4j2.*``
  file in Spark's conf directory. Other ``extraJavaOptions`` are kept: ours is appended;
- ``spark.ui.showConsoleProgress`` in the config is kept;
- ``$CONSENTGATE_SPARK_LOG4J=spark`` gives Spark its own logging and progress bars back,
  ``$CONSENTGATE_SPARK_LOG4J=/path/to/log4j2.properties`` uses that file instead of ours.

A session that exists already (spark-submit's driver JVM, a test's) keeps its logging: its
JVM has read its log4j configuration before our code ran.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from consentgate.errors import ConsentgateError
from consentgate.jvm import local_java_options, start_gateway
from consentgate.logs import running

log = logging.getLogger(__name__)

#: Where ``make jars`` puts Delta's jars (relative to the repository root).
_REPO_JARS = Path(__file__).resolve().parents[2] / ".jars"
JARS_ENV = "CONSENTGATE_JARS"

#: Settings that make a session speak Delta.
DELTA_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

#: Settings every consentgate session needs, whatever the user's config adds.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
    # Spark's output committer writes _SUCCESS markers; Delta does not need them.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.sources.partitionOverwriteMode": "static",
    # delta-spark 4 ignores VACUUM's retention argument unless it is 0 and keeps the table's
    # delta.deletedFileRetentionDuration (7 days unless set) instead, printing "WARN
    # VacuumCommand: Vacuum with retention threshold other than 0 hours is ignored" for every
    # table: a window of 24 hours would erase after 7 days, one of 30 days after 7 (issue
    # #24). The window is the contract (erasure.py), so VACUUM must apply the one it is given.
    "spark.databricks.delta.vacuum.retentionWindowIgnore.enabled": "false",
}


#: The log4j2 configuration shipped with the package (see "Logs" above).
LOG4J_FILE: Final = Path(__file__).with_name("log4j2.properties")
#: Environment variable choosing the driver's log4j configuration (see "Logs" above).
LOG4J_ENV: Final = "CONSENTGATE_SPARK_LOG4J"
#: ``$CONSENTGATE_SPARK_LOG4J`` value that leaves Spark's logging and progress bars as Spark has them.
SPARK_LOGGING: Final = "spark"
DRIVER_JAVA_OPTIONS: Final = "spark.driver.extraJavaOptions"
DRIVER_DEFAULT_JAVA_OPTIONS: Final = "spark.driver.defaultJavaOptions"
CONSOLE_PROGRESS: Final = "spark.ui.showConsoleProgress"
#: JVM options that choose a log4j configuration (log4j 2, and log4j 1's that log4j 2 honours).
_LOG4J_OPTION: Final = re.compile(r"-Dlog4j2?\.configuration(File)?=")
#: Environment variables whose JVM options reach the driver JVM.
_JAVA_OPTIONS_ENV: Final = (
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "SPARK_SUBMIT_OPTS",
)
#: Files in Spark's conf directory that log4j 2 finds on the classpath by itself.
_LOG4J_FILE_SUFFIXES: Final = (".properties", ".xml", ".yaml", ".yml", ".json", ".jsn")


def spark_conf_dir(environ: Mapping[str, str]) -> Path:
    """Spark's configuration directory, as spark-submit finds it.

    ``$SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``, else the pip-installed pyspark's ``conf``
    (pyspark's own ``SPARK_HOME`` when none is set).
    """
    if environ.get("SPARK_CONF_DIR"):
        return Path(environ["SPARK_CONF_DIR"])
    if environ.get("SPARK_HOME"):
        return Path(environ["SPARK_HOME"]) / "conf"
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "conf"


def _spark_defaults(conf_dir: Path | None) -> dict[str, str]:
    """The settings :func:`quiet_jvm_conf` looks at, from ``spark-defaults.conf``.

    The session's settings reach spark-submit as ``--conf``, which replaces the file's value
    for the same key: the user's options must be read here to be kept.
    """
    path = None if conf_dir is None else conf_dir / "spark-defaults.conf"
    if path is None or not path.is_file():
        return {}
    found: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"^(\S+?)\s*[=:\s]\s*(.*)$", line.strip())
        if match and match.group(1) in (
            DRIVER_JAVA_OPTIONS,
            DRIVER_DEFAULT_JAVA_OPTIONS,
            CONSOLE_PROGRESS,
        ):
            found[match.group(1)] = match.group(2).strip()
    return found


def _has_log4j_file(conf_dir: Path | None) -> bool:
    """Whether Spark's conf directory holds a log4j 2 configuration (not the ``.template``)."""
    if conf_dir is None or not conf_dir.is_dir():
        return False
    return any(
        p.suffix in _LOG4J_FILE_SUFFIXES and p.stem in ("log4j2", "log4j2-test")
        for p in conf_dir.iterdir()
    )


def quiet_jvm_conf(
    settings: Mapping[str, str],
    *,
    environ: Mapping[str, str],
    interactive: bool,
    conf_dir: Path | None = None,
    jvm_started: bool = False,
) -> dict[str, str]:
    """The settings to add to a new session's ``settings`` so its JVM keeps quiet.

    Pure but for reading ``conf_dir`` (no JVM): :func:`get_spark` applies the result. See
    "Logs" in the module docstring for what is silenced and how a user keeps Spark's logs.

    Args:
        settings: Everything the session is about to be built with (the user's conf included).
        environ: The process environment (``$CONSENTGATE_SPARK_LOG4J``, JVM option variables).
        interactive: Whether stderr is a terminal (Spark's progress bars stay on then).
        conf_dir: Spark's conf directory (``spark-defaults.conf``, a user's ``log4j2.*``).
        jvm_started: The driver JVM runs already (spark-submit's, or an earlier session's): a
            Java option is too late, only the progress setting applies. Under spark-submit the
            package comes from a zip, where the packaged file is not on disk; the submitting
            task passed the option (see ``airflow_tasks.submit_step``).

    Returns:
        ``spark.ui.showConsoleProgress`` and/or ``spark.driver.extraJavaOptions`` (the user's
        options with ours appended), each only when the user has not chosen for themselves.

    Raises:
        ConsentgateError: ``$CONSENTGATE_SPARK_LOG4J`` names a file that does not exist (log4j
            would silently fall back to its own defaults).
    """
    choice = environ.get(LOG4J_ENV, "").strip()
    if choice.lower() == SPARK_LOGGING:
        return {}
    quiet: dict[str, str] = {}
    defaults = _spark_defaults(conf_dir)
    if not interactive and CONSOLE_PROGRESS not in settings and CONSOLE_PROGRESS not in defaults:
        quiet[CONSOLE_PROGRESS] = "false"
    if jvm_started or (not choice and not LOG4J_FILE.is_file()):
        return quiet
    extra = settings.get(DRIVER_JAVA_OPTIONS, defaults.get(DRIVER_JAVA_OPTIONS, "")).strip()
    options = [
        extra,
        settings.get(DRIVER_DEFAULT_JAVA_OPTIONS, defaults.get(DRIVER_DEFAULT_JAVA_OPTIONS, "")),
        *(environ.get(name, "") for name in _JAVA_OPTIONS_ENV),
    ]
    if (
        any(_LOG4J_OPTION.search(o) for o in options)
        or environ.get("LOG4J_CONFIGURATION_FILE")
        or _has_log4j_file(conf_dir)
    ):
        return quiet
    path = Path(choice).expanduser().resolve() if choice else LOG4J_FILE
    if not path.is_file():
        raise ConsentgateError(
            f"${LOG4J_ENV}: {path} is not a file; give a log4j2 configuration file, or "
            f"{SPARK_LOGGING!r} for Spark's own logging"
        )
    # A file: URI, so that a path with spaces stays one option when Spark splits them.
    option = f"-Dlog4j2.configurationFile={path.as_uri()}"
    quiet[DRIVER_JAVA_OPTIONS] = f"{extra} {option}" if extra else option
    return quiet


def _stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (Airflow's task runner replaces it with a pipe or a proxy)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _local_defaults(master: str | None) -> dict[str, str]:
    """Defaults for a local session (the user's config overrides them).

    delta-spark rebuilds a table's state from its log with ``snapshotPartitions`` tasks (50 by
    default, sized for clusters); on one machine that is 50 tiny tasks per table version read,
    which dominated local runs. Spark's 200 shuffle partitions are sized for clusters too: a
    local session gets two per core it runs on (adaptive execution, on by default, coalesces
    them further), so a decision over kilobytes is not 200 tasks per shuffle. A cluster keeps
    Spark's and Delta's defaults.
    """
    if master is None or not master.startswith("local"):
        return {}
    return {
        "spark.sql.shuffle.partitions": str(2 * _local_cores(master)),
        "spark.databricks.delta.snapshotPartitions": "2",
        # VACUUM lists a table's directories with this many tasks at most (10000 by default).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
        # No Java source generated and compiled per query: on a fresh JVM compiling it costs
        # more than it saves on what a local session reads (CLI night with nothing to remove
        # on the 2,000-asset demo lake: 38.1 s -> 32.6 s; consentgate.jvm, "Start-up").
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    }


def _with_local_java_options(settings: Mapping[str, str]) -> dict[str, str]:
    """``spark.driver.extraJavaOptions`` for a new local session: :func:`consentgate.jvm.
    local_java_options` first, then the user's (config or ``spark-defaults.conf``), which win
    where they set the same option (the JVM takes the last)."""
    user = settings.get(DRIVER_JAVA_OPTIONS)
    if user is None:
        user = _spark_defaults(spark_conf_dir(os.environ)).get(DRIVER_JAVA_OPTIONS, "")
    jars = [Path(j) for j in settings.get("spark.jars", "").split(",") if j.endswith(".jar")]
    merged = f"{local_java_options(jars)} {user}".strip()
    return {DRIVER_JAVA_OPTIONS: merged} if merged else {}


def _local_cores(master: str) -> int:
    """The cores a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master runs on."""
    inside = master.partition("[")[2].partition("]")[0].partition(",")[0].strip()
    if inside.isdigit() and int(inside) > 0:
        return int(inside)
    if inside in ("", "*") and master.strip() == "local":
        return 1
    return os.cpu_count() or 1


def _submitted_jars() -> str:
    """``spark.jars`` of the JVM that spark-submit started for this Python driver, if any.

    Under spark-submit the JVM exists before our code runs (it hands its gateway port to
    Python); in a plain process there is none yet and starting one here would lose our conf.
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return ""
    SparkContext._ensure_initialized()
    return str(SparkConf().get("spark.jars", ""))


def delta_jars() -> list[Path]:
    """The jar files to hand to a new session as ``spark.jars``.

    Raises:
        ConsentgateError: the directory is missing or holds no delta-spark jar.
    """
    directory = Path(os.environ.get(JARS_ENV) or _REPO_JARS)
    jars = sorted(directory.glob("*.jar")) if directory.is_dir() else []
    if not any(j.name.startswith("delta-spark_") for j in jars):
        raise ConsentgateError(
            f"Delta's jars are missing from {directory}: run `make jars` (Maven fetches them "
            f"from jvm/pom.xml) or point ${JARS_ENV} at a directory holding delta-spark's jars"
        )
    return jars


def get_spark(
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    app_name: str = "consentgate",
) -> SparkSession:
    """Return the active SparkSession, creating one if needed.

    An existing session (spark-submit's, or a test's) is reused and only our required settings
    are applied to it, so that the same job code runs locally and on a cluster. A new one also
    gets :func:`quiet_jvm_conf`'s logging defaults (the JVM's start-up noise and progress bars
    off, unless the user chose otherwise; see "Logs" in the module docstring).

    Args:
        master: Spark master URL for a new session; ignored when a session already exists.
        conf: Extra Spark settings from the user's config.
        app_name: Application name shown in the Spark UI.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is None:
        builder = SparkSession.builder.appName(app_name)
        if master:
            builder = builder.master(master)
        settings = {**_local_defaults(master), **dict(conf or {}), **DELTA_CONF, **REQUIRED_CONF}
        # Under spark-submit the jars came with --jars (SparkConf() reads them from the JVM
        # spark-submit started); otherwise they are ours from `make jars`.
        given = ",".join(
            j for j in (SparkConf().get("spark.jars", ""), settings.get("spark.jars")) if j
        )
        if "delta-spark_" not in given:
            given = ",".join([*([given] if given else []), *(str(j) for j in delta_jars())])
        settings["spark.jars"] = given
        if master is not None and master.startswith("local"):
            settings.update(_with_local_java_options(settings))
        quiet = quiet_jvm_conf(
            settings,
            environ=os.environ,
            interactive=_stderr_is_terminal(),
            conf_dir=spark_conf_dir(os.environ),
            jvm_started="PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._gateway is not None,
        )
        settings.update(quiet)
        for key, value in settings.items():
            builder = builder.config(key, value)
        # The JVM with two known console lines held back (consentgate.jvm).
        start_gateway(
            {**settings, "spark.app.name": app_name, **({"spark.master": master} if master else {})}
        )
        active = builder.getOrCreate()
    for key, value in REQUIRED_CONF.items():
        if not key.startswith("spark.hadoop."):
            active.conf.set(key, value)
    return active


# --------------------------------------------------------------------------------------------
# What a step ran on Spark (issue #20: "count and show the work")

#: Prefix of the job tag :func:`spark_work` puts on a step's jobs (then the step, a random id).
STEP_TAG_PREFIX: Final = "consentgate-step"
#: How long :func:`spark_work` waits for Spark's listener bus to deliver a step's last events.
LISTENER_WAIT_MS: Final = 5_000


@dataclass
class SparkWork:
    """What Spark ran during one step, for its step line (:func:`consentgate.logs.step`).

    ``jobs`` and ``tasks`` are None until the step's block has ended. ``partial`` says that
    Spark's status store had already forgotten part of the step (see :func:`spark_work`): the
    counts are then lower bounds, and the step line says so with ``spark_partial=true``.
    """

    started: float
    jobs: int | None = None
    tasks: int | None = None
    partial: bool = False

    def counts(self) -> dict[str, int | bool | None]:
        """The step line's fields: ``jobs``, ``tasks`` and, only when true, ``spark_partial``."""
        return {"jobs": self.jobs, "tasks": self.tasks, "spark_partial": self.partial or None}


@contextmanager
def spark_work(spark: SparkSession, step: str) -> Iterator[SparkWork]:
    """Count the Spark jobs and tasks the block runs; the yielded :class:`SparkWork` holds them
    once the block has ended (and its ``started`` is the block's ``time.monotonic()`` start).

    A regression in fixed cost (one more pass over a table, fifty tiny tasks per log read)
    hardly moves a step's seconds on a small lake but shows at once as more jobs or tasks, so
    every step line carries both.

    How: the block's jobs carry a job tag of their own (``SparkContext.addJobTag``; removed
    again when the block ends, whatever happens in it), and at the end Spark's status tracker
    lists the jobs with that tag. Tags rather than a job group, because tags add up: a job
    started in a nested block carries the inner *and* the outer tag, so an outer step's count
    includes its inner steps' jobs exactly, with nothing to restore or add up by hand; and
    setting a job group would replace the group of a caller (or of Spark's own code) that
    cancels by group. The tag is the thread's: jobs a step starts on threads of its own are not
    counted unless those threads inherit Spark's local properties (Spark SQL's and Delta's
    internal pools do; ``pyspark.InheritableThread`` does).

    ``tasks`` adds up each of those jobs' task attempts that ended (succeeded or failed), from
    the job's own totals in Spark's status store: a stage skipped because its shuffle output
    existed counts none; a stage shared by two jobs running at once counts in both.

    Limits, and how they show: Spark's status store keeps only the newest
    ``spark.ui.retainedJobs`` jobs (1000 by default; the test suite keeps 100), whether or not
    the UI is enabled, forgetting the oldest finished ones first. A step that runs more than
    about that many (with everything else the application ran meanwhile) loses its oldest
    jobs, and their tasks, from the count. That is detected, not ignored: job ids are
    sequential per SparkContext, so any id the scheduler handed out during the block that the
    store no longer knows may have been one of the step's jobs; that sets ``partial``, and
    ``jobs``/``tasks`` are then lower bounds. (``spark.ui.retainedStages`` does not matter:
    stage entries are not read.) Calls go through py4j: the Scala status tracker's
    ``getJobIdsForTag`` (public, but PySpark does not wrap it) and three Spark internals no
    public API offers, ``dagScheduler.nextJobId``, ``listenerBus.waitUntilEmpty`` (the store
    is fed asynchronously) and ``statusStore.job``. If one is missing, or the bus does not
    drain within :data:`LISTENER_WAIT_MS`, the counts are marked partial (and if the tagged
    jobs cannot be listed at all, the line has no counts, only ``spark_partial=true``):
    counting never fails a step.

    While the block runs, a ``progress=<step>`` line says it still runs whenever consentgate
    has logged nothing for about 10 s (:func:`consentgate.logs.running`).

    Never starts a JVM: it is given the live session. Only the step's name goes into the tag,
    never an id.
    """
    context = spark.sparkContext
    tag = f"{STEP_TAG_PREFIX}-{step}-{uuid.uuid4().hex[:12]}"
    work = SparkWork(started=time.monotonic())
    first = _next_job_id(context)
    context.addJobTag(tag)
    try:
        # A step that runs long says it still runs (``progress=<step>`` every ~10 s of quiet).
        with running(log, step):
            yield work
    finally:
        context.removeJobTag(tag)
    work.jobs, work.tasks, work.partial = _count_tagged(context, tag, first)


def _next_job_id(context: SparkContext) -> int | None:
    """The id the scheduler gives the next job (ids are sequential per SparkContext), if known."""
    try:
        return int(context._jsc.sc().dagScheduler().nextJobId())
    except Exception:  # an internal: another Spark may not have it
        return None


def _count_tagged(
    context: SparkContext, tag: str, first: int | None
) -> tuple[int | None, int | None, bool]:
    """``(jobs, tasks, partial)`` of the jobs tagged ``tag`` (see :func:`spark_work`); no
    counts at all if the tagged jobs cannot be listed."""
    partial = False
    scala = context._jsc.sc()
    try:  # the status store is fed asynchronously: let it see the block's last events
        scala.listenerBus().waitUntilEmpty(LISTENER_WAIT_MS)
    except Exception:
        partial = True
    try:
        ids = {int(j) for j in scala.statusTracker().getJobIdsForTag(tag)}
    except Exception:  # another Spark's internals: say nothing rather than fail the step
        return None, None, True
    end = _next_job_id(context)
    if first is None or end is None:
        partial = True
    elif end - first > len(ids):  # some jobs of the block are not ours, or were forgotten
        tracker = context.statusTracker()
        partial = partial or any(
            tracker.getJobInfo(j) is None for j in range(first, end) if j not in ids
        )
    tasks = 0
    for job in ids:
        try:
            # The job's own totals, kept as long as the job is: its stages' entries may be
            # forgotten sooner (a skipped stage first of all), so they are not read.
            data = scala.statusStore().job(job)
            tasks += int(data.numCompletedTasks()) + int(data.numFailedTasks())
        except Exception:  # forgotten since the ids were read, or another Spark's internals
            partial = True
    return len(ids), tasks, partial
