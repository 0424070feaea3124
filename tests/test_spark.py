"""The JVM side is pinned like the Python side, and every session speaks Delta."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from consentgate import spark as spark_module
from consentgate.errors import ConsentgateError

ROOT = Path(__file__).resolve().parents[1]
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def locked(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.lock")


def pom_property(name: str) -> str:
    root = ET.parse(ROOT / "jvm" / "pom.xml").getroot()
    found = root.find(f"m:properties/m:{name}", POM_NS)
    assert found is not None and found.text, f"jvm/pom.xml has no <{name}>"
    return found.text.strip()


def test_maven_delta_version_equals_the_pip_pin() -> None:
    assert pom_property("delta.version") == locked("delta-spark")


def test_maven_artifact_is_built_for_the_pinned_spark() -> None:
    pyspark = locked("pyspark")
    assert pom_property("spark.binary.version") == ".".join(pyspark.split(".")[:2])
    assert locked("pyspark-client") == pyspark  # the provider's client must not drift


def test_the_fetched_jar_is_the_pinned_one() -> None:
    jars = [p.name for p in spark_module.delta_jars()]
    expected = (
        f"delta-spark_{pom_property('spark.binary.version')}_2.13-"
        f"{pom_property('delta.version')}.jar"
    )
    assert expected in jars
    # One copy of each library: nothing pyspark already ships is added again.
    assert not [j for j in jars if re.match(r"(scala-library|hadoop-client|parquet-)", j)]


def test_missing_jars_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(spark_module.JARS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConsentgateError, match=r"make jars"):
        spark_module.delta_jars()


def test_session_speaks_delta(spark: SparkSession, tmp_path: Path) -> None:
    assert "DeltaSparkSessionExtension" in spark.conf.get("spark.sql.extensions", "")
    assert spark.conf.get("spark.sql.catalog.spark_catalog", "").endswith("DeltaCatalog")
    assert not spark.conf.get("spark.jars.packages", "")  # nothing resolved at run time
    table = tmp_path / "t"
    spark.sql(f"CREATE TABLE delta.`{table}` (k STRING) USING DELTA")
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{table}`").collect()[0]
    assert detail["format"] == "delta"
