"""One SparkSession per test module, each in a JVM of its own.

A single JVM for the whole session (as chispa's suite has) filled its heap within the hour:
every test creates new Delta tables, and what Spark and Delta keep per table and per query
(cached logs and snapshots, plan trees, listener state, broadcasts) outlived the test. Old
generation at 96 % 38 minutes in, concurrent GC on most of a core, and in CI the JVM died of
OutOfMemoryError in the cluster module, failing every test after it. A fresh JVM per module
costs a few seconds each and makes no test depend on what earlier modules left behind.

Session-scoped fixtures that need Spark call :func:`spark_session` (and must return only paths or
plain values, never frames: the JVM they ran in is gone after the module).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark import SparkContext
from pyspark.sql import SparkSession

from consentgate.spark import get_spark

#: Settings of every test session: small, quiet, no UI, few partitions.
TEST_SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Two cores, tiny tables: one task per core, and no Java code generated and compiled for
    # every query (compiling costs more than it saves on a few rows; the results are the same).
    # Measured on test_verify_spark_free: 111 s -> 86 s (load average about 2).
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.driver.memory": "3g",
    "spark.sql.ui.retainedExecutions": "50",
    "spark.ui.retainedJobs": "100",
    "spark.ui.retainedStages": "100",
    "spark.sql.adaptive.enabled": "false",
    # Delta caches up to 10,000 DeltaLogs (with their snapshots' plans) for 60 minutes; tests
    # create hundreds of tables.
    "spark.databricks.delta.delta.log.cacheSize": "32",
}


def spark_session() -> SparkSession:
    """The running test session, or a new one (in a new JVM if the last one was shut down)."""
    return get_spark(master="local[2]", conf=TEST_SPARK_CONF, app_name="consentgate-tests")


@pytest.fixture(scope="module")
def spark() -> SparkSession:
    return spark_session()


def shutdown_spark() -> None:
    """Stop the active session and end its JVM, so the next module starts from nothing."""
    import gc

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()
    elif SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    gc.collect()  # py4j proxies of the old JVM detach now, while the gateway still answers
    gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc is not None:
        proc.stdin.close()  # the JVM exits when its stdin closes
        try:
            proc.wait(timeout=60)
        except Exception:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def _fresh_jvm_per_module() -> Iterator[None]:
    """End any JVM a module started (by the ``spark`` fixture or by code it ran in-process)."""
    yield
    shutdown_spark()
