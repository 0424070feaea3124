"""The one place a SparkSession is built.

Every job runs with the session time zone pinned to UTC (consent instants are UTC whatever the
machine says), with Parquet written the way Delta readers expect (INT64 microsecond timestamps,
not Spark's legacy INT96), and with delta-spark loaded: its jars (fetched by Maven from
``jvm/pom.xml`` into ``.jars/`` by ``make jars``, never resolved at run time), the Delta SQL
extension and the Delta catalog.

Where the jars come from: ``$CONSENTGATE_JARS`` (a directory) if set, else the repository's
``.jars/``. A session built elsewhere (spark-submit, a cluster) that already has Delta's classes
is reused as it is; one without them fails with a message saying how to get them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from consentgate.errors import ConsentgateError

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
    # VACUUM below Delta's 7-day default is the erasure window's business (erasure.py checks
    # the window itself), so Delta's own safety check would only refuse a configured window.
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
}


def _local_defaults(master: str | None) -> dict[str, str]:
    """Defaults for a local session (the user's config overrides them).

    delta-spark rebuilds a table's state from its log with ``snapshotPartitions`` tasks (50 by
    default, sized for clusters); on one machine that is 50 tiny tasks per table version read,
    which dominated local runs. A cluster keeps Delta's default.
    """
    if master is None or not master.startswith("local"):
        return {}
    return {
        "spark.databricks.delta.snapshotPartitions": "2",
        # VACUUM lists a table's directories with this many tasks at most (10000 by default).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    }


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
    are applied to it, so that the same job code runs locally and on a cluster.

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
        for key, value in settings.items():
            builder = builder.config(key, value)
        active = builder.getOrCreate()
    for key, value in REQUIRED_CONF.items():
        if not key.startswith("spark.hadoop."):
            active.conf.set(key, value)
    return active
