"""Test session: one JVM for the whole run, tiers from fixtures, Airflow configured first.

**One JVM per test process.** Every Spark test shares one SparkSession. Earlier the JVM was
restarted per module because the heap filled within the hour (cached Delta logs and snapshots,
plan trees, listener state outliving their tests); a restart per module cost ~25 JVM start-ups
and warm-ups per run. Now, after each module that used Spark, :func:`_jvm_hygiene` drops
cached frames and Delta's log cache, collects garbage in Python (py4j proxies) and in the JVM,
reads the used heap, and ends the JVM only when more than half the heap is still in use after
that, when the module carries the ``fresh_jvm`` marker, or when the gateway no longer answers.
Session-scoped fixtures may therefore return paths built with Spark; they must still never
return frames (the JVM may be replaced between modules).

**Tiers come from fixtures, not lists.** A test whose fixture closure holds one of
:data:`HEAVY_FIXTURES` gets the ``heavy`` marker (it starts or uses a JVM, in process or in
a child, or needs Airflow's metadata database); every other test gets ``fast``.
``make test-fast`` runs ``-m fast``. A ``fast`` test that tries to start or reach a JVM fails
at once (:func:`_no_jvm_guard`): in process, building a session raises; in a child process,
``SPARK_HOME`` points at a directory that does not exist, so ``spark-submit`` cannot start.

**Airflow is configured before anything imports it.** Airflow reads ``AIRFLOW_HOME`` once per
process, at its first import. :func:`pytest_configure` sets the whole Airflow environment
(:func:`consentgate.story.airflow_environment`) to one home under the run's base temp dir, so a
test that imports Airflow without the database fixture cannot leave the process configured for
the user's home (the order-dependence behind issue #19 item 7); ``airflow_db`` then only
migrates that same home.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark import SparkContext
from pyspark.sql import SparkSession

from consentgate.spark import get_spark

pytest_plugins = ["tests.airflow_fixtures", "tests.lakes"]

#: Fixtures that start or use a JVM, or Airflow's metadata DB: their tests are tier ``heavy``.
HEAVY_FIXTURES = frozenset({"spark", "jvm", "airflow_db"})

#: Session fixtures too costly to build once per xdist worker: every module that uses one runs
#: in the same worker (:data:`SHARED_GROUP`); every other module is a unit of its own, so its
#: module-scoped fixtures are built once (see :func:`pytest_xdist_make_scheduler`).
SHARED_RUN_FIXTURES = frozenset({"local_runs"})
SHARED_GROUP = "local_runs"

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

#: The used heap (after garbage collection) above which the JVM is replaced between modules.
HEAP_LIMIT_FRACTION = 0.5
#: Where ``SPARK_HOME`` points during a ``fast`` test: a child process cannot start Spark.
NO_SPARK_HOME = "/nonexistent/fast-tier-test-started-spark(give-it-the-spark-fixture)"

#: This process's Airflow home, chosen in :func:`pytest_configure`.
_AIRFLOW_HOME = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--airflow-server",
        action="store_true",
        help="also run the tests marked airflow_server (`make airflow` as a user starts it, "
        "`make demo` as a user watches it; minutes; `make test-airflow`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    from consentgate.story import airflow_environment

    config.addinivalue_line(
        "markers",
        "airflow_server: starts `make airflow` or `make demo`; runs only with --airflow-server",
    )
    config.addinivalue_line("markers", "heavy: uses a JVM or Airflow's DB (set by conftest)")
    config.addinivalue_line("markers", "fast: no JVM, no Airflow DB (set by conftest)")
    config.addinivalue_line("markers", "fresh_jvm: the module starts in a JVM of its own")
    # A directory of its own, not under pytest's base temp: a second TempPathFactory here would
    # make a numbered directory the tests never use, or (an xdist worker's given base temp)
    # empty the worker's base temp again later, this home with it.
    home = Path(tempfile.mkdtemp(prefix="consentgate-tests-airflow-")) / "airflow_home"
    home.mkdir()
    config.stash[_AIRFLOW_HOME] = home
    os.environ.update(airflow_environment(home, dags_dir=Path(__file__).parents[1] / "dags"))


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_AIRFLOW_HOME, None)
    if home is not None:
        shutil.rmtree(home.parent, ignore_errors=True)


def airflow_home_dir(config: pytest.Config) -> Path:
    """The one Airflow home of this test process (configured in :func:`pytest_configure`)."""
    return config.stash[_AIRFLOW_HOME]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--airflow-server"):
        # `make test` leaves `make airflow`'s own test out (minutes; `make test-airflow`).
        server = [i for i in items if i.get_closest_marker("airflow_server")]
        if server:
            config.hook.pytest_deselected(items=server)
            items[:] = [i for i in items if not i.get_closest_marker("airflow_server")]
    shared: set[str] = set()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.heavy if names & HEAVY_FIXTURES else pytest.mark.fast)
        if names & SHARED_RUN_FIXTURES:
            shared.add(_module(item.nodeid))
    # Each module's unit of work: its own, or the one shared by the modules in ``shared``.
    unit = {m: SHARED_GROUP if m in shared else m for m in map(_module, (i.nodeid for i in items))}
    slow = {unit[_module(i.nodeid)] for i in items if i.get_closest_marker("slow")}
    # Longest first, so that no worker starts a long module while the other has nothing left
    # (xdist hands out the units in this order): the shared unit, then the other units
    # holding ``slow`` tests, then the rest, each in collection order.
    rank = {SHARED_GROUP: 0, **{u: 1 for u in slow - {SHARED_GROUP}}}
    items.sort(key=lambda i: rank.get(unit[_module(i.nodeid)], 2))
    if getattr(config, "workerinput", None) is not None:
        # The controller schedules by node id only (it collects nothing): hand it the groups.
        target = _basetemp(config).parent / _GROUPS_FILE
        partial = target.with_name(f"{target.name}.{os.getpid()}")
        partial.write_text(json.dumps({m: u for m, u in unit.items() if u != m}))
        partial.replace(target)


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


#: Where xdist workers leave the module -> group map for the controller's scheduler.
_GROUPS_FILE = "xdist-groups.json"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, except that the modules sharing :data:`SHARED_RUN_FIXTURES` are one
    unit (xdist's own ``loadgroup`` renames node ids, which pytest 9.2 no longer allows), and
    the units go out in collection order (longest first, see above)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndSharedFixtures(LoadScopeScheduling):  # type: ignore[misc]
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                file = _basetemp(config) / _GROUPS_FILE
                self._groups = json.loads(file.read_text()) if file.exists() else {}
            module = _module(nodeid)
            return self._groups.get(module, module)

    config.option.loadscopereorder = False
    return ModulesAndSharedFixtures(config, log)


def spark_session() -> SparkSession:
    """The running test session, or a new one (in a new JVM if the last one was shut down)."""
    return get_spark(master="local[2]", conf=TEST_SPARK_CONF, app_name="consentgate-tests")


@pytest.fixture(scope="session")
def jvm() -> None:
    """Requested by tests and fixtures that need a JVM without holding a session: a child
    process that starts Spark, or a session fixture that builds a lake with
    :func:`spark_session` (which it must call itself: the JVM may change between modules)."""


@pytest.fixture(scope="module")
def spark(jvm: None) -> SparkSession:
    """The running SparkSession (one JVM across modules, see :func:`_jvm_hygiene`)."""
    return spark_session()


def shutdown_spark() -> None:
    """Stop the active session and end its JVM, so the next module starts from nothing."""
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


def heap_after_release(session: SparkSession) -> tuple[int, int]:
    """Drop what earlier tests left cached, collect garbage, return (used, max) heap bytes."""
    session.catalog.clearCache()
    gc.collect()  # Python's py4j proxies release their JVM objects
    jvm = session._jvm
    assert jvm is not None
    jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    jvm.java.lang.System.gc()
    runtime = jvm.java.lang.Runtime.getRuntime()
    return int(runtime.totalMemory() - runtime.freeMemory()), int(runtime.maxMemory())


#: Per module that left a JVM running: (module, MiB used after release, MiB max, restarted).
_HEAP_LOG: list[tuple[str, int, int, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _jvm_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep one JVM across modules unless a module needs a fresh one or the heap fills up."""
    if request.node.get_closest_marker("fresh_jvm") is not None:
        shutdown_spark()
    yield
    if SparkContext._gateway is None:
        return
    module = request.node.name
    if request.node.get_closest_marker("fresh_jvm") is not None:
        shutdown_spark()
        _HEAP_LOG.append((module, -1, -1, "restarted: fresh_jvm"))
        return
    session = SparkSession.getActiveSession()
    try:
        if session is None:
            raise RuntimeError("no active session")
        used, limit = heap_after_release(session)
    except Exception as exc:  # the gateway died, or a module stopped the session: start afresh
        shutdown_spark()
        _HEAP_LOG.append((module, -1, -1, f"restarted: {type(exc).__name__}"))
        return
    restart = used > HEAP_LIMIT_FRACTION * limit
    if restart:
        shutdown_spark()
    _HEAP_LOG.append(
        (module, used >> 20, limit >> 20, "restarted: heap over half" if restart else "kept")
    )


#: Where an xdist worker leaves its heap log for the controller's summary (in its base temp).
_HEAP_FILE = "jvm-heap.tsv"


def _basetemp(config: pytest.Config) -> Path:
    """This process's base temp (an xdist worker's lies in the controller's)."""
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    return factory.getbasetemp()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its heap log to the controller through a file."""
    worker = getattr(session.config, "workerinput", None)
    if worker is None or not _HEAP_LOG:
        return
    lines = [f"{worker['workerid']}:{m}\t{u}\t{lim}\t{w}" for m, u, lim, w in _HEAP_LOG]
    (_basetemp(session.config) / _HEAP_FILE).write_text("\n".join(lines) + "\n")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The JVM's heap after each module (per worker under xdist), so a CI log shows whether
    one JVM per test process holds."""
    entries = list(_HEAP_LOG)
    if not entries and getattr(config, "workerinput", None) is None:
        for file in sorted(_basetemp(config).glob(f"*/{_HEAP_FILE}")):
            for line in file.read_text().splitlines():
                module, used, limit, what = line.split("\t")
                entries.append((module, int(used), int(limit), what))
    if not entries:
        return
    terminalreporter.section("JVM heap after each module (after release and GC)")
    for module, used, limit, what in entries:
        figures = f"{used:>5} MiB of {limit} MiB" if used >= 0 else "-"
        terminalreporter.write_line(f"{module:<40} {figures:<22} {what}")


@pytest.fixture(autouse=True)
def _no_jvm_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``fast`` test fails loudly when it starts or reaches a JVM (see the module docstring)."""
    if request.node.get_closest_marker("fast") is None:
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(
            f"{request.node.nodeid} is in the fast tier (no JVM) but reached for Spark: "
            "give it the `spark` fixture (or `jvm` for a child process that starts one)"
        )

    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", refuse)
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(refuse))
    monkeypatch.setattr("pyspark.java_gateway.launch_gateway", refuse)
    monkeypatch.setattr("pyspark.core.context.launch_gateway", refuse)
    monkeypatch.setenv("SPARK_HOME", NO_SPARK_HOME)
