"""The JVM side is pinned like the Python side, and every session speaks Delta."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from importlib import resources
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


# --------------------------------------------------------------------------------------------
# Logs (issue #15 item 2): a new session's JVM keeps quiet unless the user chose otherwise.
# quiet_jvm_conf is pure (no JVM): what get_spark adds to a new session's settings.

OUR_OPTION = f"-Dlog4j2.configurationFile={spark_module.LOG4J_FILE.as_uri()}"


def quiet(
    conf: dict[str, str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    interactive: bool = False,
    conf_dir: Path | None = None,
) -> dict[str, str]:
    return spark_module.quiet_jvm_conf(
        conf or {}, environ=environ or {}, interactive=interactive, conf_dir=conf_dir
    )


def test_the_log4j_file_is_packaged_and_keeps_errors() -> None:
    shipped = resources.files("consentgate").joinpath("log4j2.properties")
    assert shipped.is_file()
    assert Path(str(shipped)) == spark_module.LOG4J_FILE
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "log4j2.properties" in package_data["package-data"]["consentgate"]
    props = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition("=")
            for line in spark_module.LOG4J_FILE.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        )
    )
    assert props["rootLogger.level"] == "warn"  # WARN and ERROR still show
    assert props["appender.stderr.target"] == "SYSTEM_ERR"
    assert props["rootLogger.appenderRef.stderr.ref"] == props["appender.stderr.name"]
    levels = {
        props[key]: props[key.replace(".name", ".level")]
        for key in props
        if key.startswith("logger.") and key.endswith(".name")
    }
    assert levels["org.apache.spark.util.Utils"] == "error"  # "could not bind on port 4040"
    assert levels["org.apache.hadoop.util.NativeCodeLoader"] == "error"
    assert levels["org.apache.spark.repl.Main"] == props["rootLogger.level"]
    assert not set(levels.values()) - {"warn", "error"}


def test_a_new_session_gets_our_log4j_file_and_no_progress_bars() -> None:
    assert quiet() == {
        "spark.driver.extraJavaOptions": OUR_OPTION,
        "spark.ui.showConsoleProgress": "false",
    }
    # On a terminal Spark's progress bars stay (the user is watching).
    assert quiet(interactive=True) == {"spark.driver.extraJavaOptions": OUR_OPTION}


@pytest.mark.parametrize(
    ("conf", "environ", "expected"),
    [
        # Other JVM options are kept, ours appended.
        (
            {"spark.driver.extraJavaOptions": "-XX:+UseG1GC -Dfoo=bar"},
            {},
            {"spark.driver.extraJavaOptions": f"-XX:+UseG1GC -Dfoo=bar {OUR_OPTION}"},
        ),
        # The user's own log4j configuration wins, wherever it is set.
        ({"spark.driver.extraJavaOptions": "-Dlog4j2.configurationFile=/etc/l.xml"}, {}, {}),
        ({"spark.driver.defaultJavaOptions": "-Dlog4j.configuration=file:/l"}, {}, {}),
        ({}, {"JAVA_TOOL_OPTIONS": "-Dlog4j2.configurationFile=/etc/l.xml"}, {}),
        ({}, {"LOG4J_CONFIGURATION_FILE": "/etc/l.xml"}, {}),
        # $CONSENTGATE_SPARK_LOG4J=spark: Spark's own logging and progress bars.
        ({}, {"CONSENTGATE_SPARK_LOG4J": "spark"}, None),
    ],
)
def test_the_users_logging_choices_are_kept(
    conf: dict[str, str], environ: dict[str, str], expected: dict[str, str] | None
) -> None:
    got = quiet(conf, environ=environ, interactive=True)
    assert got == (expected if expected is not None else {})


def test_console_progress_and_a_log4j_file_of_the_users_are_kept(tmp_path: Path) -> None:
    assert "spark.ui.showConsoleProgress" not in quiet({"spark.ui.showConsoleProgress": "true"})
    mine = tmp_path / "my-log4j2.properties"
    mine.write_text("rootLogger.level = info\n")
    chosen = quiet(environ={"CONSENTGATE_SPARK_LOG4J": str(mine)}, interactive=True)
    assert chosen == {
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={mine.as_uri()}"
    }
    with pytest.raises(ConsentgateError, match="CONSENTGATE_SPARK_LOG4J"):
        quiet(environ={"CONSENTGATE_SPARK_LOG4J": str(tmp_path / "nope.properties")})


def test_spark_conf_dir_settings_are_kept(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "log4j2.properties.template").write_text("")  # Spark's template: not a choice
    (conf_dir / "spark-defaults.conf").write_text(
        "# site defaults\nspark.driver.extraJavaOptions   -XX:+UseG1GC\n"
    )
    # A --conf replaces spark-defaults.conf's value: theirs is carried into ours.
    assert quiet(conf_dir=conf_dir, interactive=True) == {
        "spark.driver.extraJavaOptions": f"-XX:+UseG1GC {OUR_OPTION}"
    }
    (conf_dir / "log4j2.properties").write_text("rootLogger.level = info\n")
    assert quiet(conf_dir=conf_dir, interactive=True) == {}
    assert spark_module.spark_conf_dir({"SPARK_CONF_DIR": str(conf_dir)}) == conf_dir
    assert spark_module.spark_conf_dir({"SPARK_HOME": str(tmp_path)}) == conf_dir


def test_a_running_jvm_gets_no_java_option_even_from_a_zip(tmp_path: Path) -> None:
    """Under spark-submit the driver JVM runs already and the package is imported from the
    ``--py-files`` zip, where the log4j file is not on disk: no option, no error (the
    submitting task passed the option itself)."""
    assert spark_module.quiet_jvm_conf({}, environ={}, interactive=False, jvm_started=True) == {
        "spark.ui.showConsoleProgress": "false"
    }
    from consentgate.airflow_tasks import package_zip

    script = (
        "import json, sys\n"
        "from consentgate import spark\n"
        "assert '.zip' in spark.__file__, spark.__file__\n"
        "print(json.dumps(spark.quiet_jvm_conf({}, environ={}, interactive=False)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(package_zip())}  # as spark-submit's --py-files
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"spark.ui.showConsoleProgress": "false"}


@pytest.mark.parametrize(
    ("master", "partitions"),
    [
        ("local", "2"),
        ("local[3]", "6"),
        ("local[3,2]", "6"),
        ("local[*]", str(2 * (os.cpu_count() or 1))),
    ],
)
def test_a_local_session_shuffles_into_two_partitions_per_core(
    master: str, partitions: str
) -> None:
    defaults = spark_module._local_defaults(master)
    assert defaults["spark.sql.shuffle.partitions"] == partitions
    assert defaults["spark.databricks.delta.snapshotPartitions"] == "2"
    # no Java source generated per query on a JVM that lives for one command
    assert defaults["spark.sql.codegen.wholeStage"] == "false"
    assert defaults["spark.sql.codegen.factoryMode"] == "NO_CODEGEN"


@pytest.mark.parametrize("master", [None, "spark://host:7077", "yarn", "k8s://https://h:443"])
def test_a_cluster_keeps_spark_and_deltas_defaults(master: str | None) -> None:
    assert spark_module._local_defaults(master) == {}


# spark_work: the Spark jobs and tasks of a step, from Spark's own status tracker (issue #20).


def test_a_block_that_runs_jobs_counts_them_and_their_tasks(spark: SparkSession) -> None:
    with spark_module.spark_work(spark, "test") as work:
        spark.range(0, 100, numPartitions=3).count()
        spark.sparkContext.parallelize(range(10), 2).sum()
    assert work.jobs is not None and work.tasks is not None
    assert work.jobs >= 2 and work.tasks >= 2 + 3  # at least the RDD's 2 and the 3 scan tasks
    assert not work.partial
    assert not set(spark.sparkContext.getJobTags())  # the tag is gone with the block


def test_a_block_that_runs_no_job_counts_zero(spark: SparkSession) -> None:
    spark.range(5).count()  # a job just before the block is not the block's
    with spark_module.spark_work(spark, "idle") as work:
        spark.range(5).where("id > 1")  # a plan, no job
    assert (work.jobs, work.tasks, work.partial) == (0, 0, False)


def test_an_outer_step_counts_its_inner_steps_jobs(spark: SparkSession) -> None:
    with spark_module.spark_work(spark, "outer") as outer:
        spark.range(10).count()
        with spark_module.spark_work(spark, "inner") as inner:
            spark.sparkContext.parallelize(range(4), 2).count()
            spark.sparkContext.parallelize(range(4), 2).count()
        (left,) = set(spark.sparkContext.getJobTags())  # the inner block took only its own tag
        assert left.startswith(f"{spark_module.STEP_TAG_PREFIX}-outer-")
    assert inner.jobs == 2 and inner.tasks == 4
    assert outer.jobs is not None and outer.tasks is not None and inner.jobs is not None
    assert outer.jobs > inner.jobs and outer.tasks > inner.tasks


def test_a_failing_block_removes_its_tag_and_counts_nothing(spark: SparkSession) -> None:
    with pytest.raises(ZeroDivisionError), spark_module.spark_work(spark, "fails") as work:
        spark.range(1).count()
        raise ZeroDivisionError
    assert work.jobs is None and not set(spark.sparkContext.getJobTags())


def test_jobs_spark_has_forgotten_mark_the_counts_partial(spark: SparkSession) -> None:
    """The status store keeps spark.ui.retainedJobs jobs (100 in the test session): a step
    that ran more is reported as a lower bound, never as an exact but wrong count."""
    retained = int(spark.sparkContext.getConf().get("spark.ui.retainedJobs", "1000"))
    assert retained <= 100, "this test runs retained + 20 jobs; keep the test session's limit"
    # A JVM-side RDD: each count is one job of one task with no Python worker, about 20 ms
    # instead of about 250 ms for a Python RDD's (measured), and Spark counts it the same.
    rdd = spark.sparkContext._jsc.parallelize([1], 1)
    with spark_module.spark_work(spark, "many") as work:
        for _ in range(retained + 20):
            rdd.count()
    assert work.partial
    assert work.jobs is not None and 0 < work.jobs < retained + 20
