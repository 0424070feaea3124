"""One SparkSession for the whole test session, as chispa's own suite does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from consentgate.spark import get_spark


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = get_spark(
        master="local[2]",
        conf={
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            # 2g ran out of execution memory 55 minutes into CI (the demo-lake purge, after
            # hundreds of tests had cached frames): more heap, a smaller protected storage
            # region, and the context cleaner's GC every two minutes instead of every 30.
            "spark.driver.memory": "4g",
            "spark.memory.storageFraction": "0.3",
            "spark.cleaner.periodicGC.interval": "2min",
            # Delta caches up to 10,000 DeltaLogs (each with its snapshot's plans) for 60
            # minutes; a test session creates thousands of tables, so cap it.
            "spark.databricks.delta.delta.log.cacheSize": "32",
            "spark.sql.ui.retainedExecutions": "50",
            "spark.ui.retainedJobs": "100",
            "spark.ui.retainedStages": "100",
            "spark.sql.adaptive.enabled": "false",
        },
        app_name="consentgate-tests",
    )
    yield session
    session.stop()


@pytest.fixture(scope="module", autouse=True)
def _release_spark_state() -> Iterator[None]:
    """After each module, drop what its tables and frames left in the shared JVM.

    Cached frames, Delta's cached logs (with their snapshots' plans) and stale broadcasts
    otherwise accumulate over hundreds of tests until the heap is full and every test pays
    for garbage collection. Modules that never start Spark pay nothing.
    """
    yield
    import gc

    from pyspark import SparkContext

    gc.collect()  # Python frames still holding py4j references keep their JVM objects alive

    context = SparkContext._active_spark_context
    if context is None:
        return
    jvm = context._jvm
    assert jvm is not None
    session = SparkSession.getActiveSession()
    if session is not None:
        session.catalog.clearCache()
    jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    jvm.java.lang.System.gc()
