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
            "spark.sql.adaptive.enabled": "false",
        },
        app_name="consentgate-tests",
    )
    yield session
    session.stop()
