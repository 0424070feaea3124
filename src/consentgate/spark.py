"""The one place a SparkSession is built.

Every job runs with the session time zone pinned to UTC (consent instants are UTC whatever the
machine says) and with Parquet written the way Delta readers expect (INT64 microsecond
timestamps, not Spark's legacy INT96).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession

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
}


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
        for key, value in {**dict(conf or {}), **REQUIRED_CONF}.items():
            builder = builder.config(key, value)
        active = builder.getOrCreate()
    for key, value in REQUIRED_CONF.items():
        if not key.startswith("spark.hadoop."):
            active.conf.set(key, value)
    return active
