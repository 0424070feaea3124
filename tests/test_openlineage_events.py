"""OpenLineage run events of the CLI flows (#25 item 1): received, valid, free of ids, off by default.

The spec's schema is vendored as test data (``tests/data/openlineage/OpenLineage-2-0-2.json``,
Apache-2.0, copied unchanged from the OpenLineage repository's ``spec/OpenLineage.json`` at
commit 8f02abfb7a25, whose ``$id`` is the ``2-0-2`` the pinned client names in every event):
openlineage-python ships no schema file.

The heavy tests run the real command line in process (click's runner, the test session's
Spark) on a copy of the small lake: one gate and one purge send their events to an HTTP server
this module starts on 127.0.0.1 (:func:`http_run`, once per module); one more gate writes them
through the file transport named by ``OPENLINEAGE_CONFIG``. The fast tests check the switch
(child processes with a plain environment) and the FAIL event without Spark.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator, FormatChecker
from pyspark.sql import SparkSession
from referencing import Registry, Resource

from consentgate import openlineage_events as ole
from consentgate.cli import main
from consentgate.config import load_config
from consentgate.lineage import ROW_REASONS
from tests.lakes import copy_small_lake, small_lake_conf

SPEC = Path(__file__).parent / "data" / "openlineage" / "OpenLineage-2-0-2.json"
ROOT = Path(__file__).parents[1]
#: Every id the small lake holds (assets, users, consent records, embedding keys).
LAKE_IDS = ("a1", "a2", "a3", "u1", "u2", "u3", "u9", "r1", "r2", "r3", "r4", "e1", "e2", "e3")


# --------------------------------------------------------------------------------------------
# helpers


def _registry() -> Registry[Any]:
    spec = json.loads(SPEC.read_text())
    return Registry().with_resources(
        [
            (spec["$id"], Resource.from_contents(spec)),
            (ole.FACET_SCHEMA_ID, Resource.from_contents(ole.facet_schema())),
        ]
    )


def check_event(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate one event against the spec and each consent facet against the schema its
    ``_schemaURL`` names; return the consent facets."""
    registry = _registry()
    spec = json.loads(SPEC.read_text())
    assert event["schemaURL"].startswith(spec["$id"])
    Draft202012Validator(spec, registry=registry, format_checker=FormatChecker()).validate(event)
    uuid.UUID(event["run"]["runId"])
    assert dt.datetime.fromisoformat(event["eventTime"]).tzinfo is not None
    facets = []
    for ds in event.get("inputs", []) + event.get("outputs", []):
        assert ds["namespace"] == "file" and Path(ds["name"]).is_absolute(), ds
        facet = ds.get("facets", {}).get(ole.FACET_KEY)
        if facet is None:
            continue
        assert facet["_schemaURL"] == ole.FACET_SCHEMA_URL
        assert facet["_producer"] == ole.PRODUCER
        Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=registry).validate(facet)
        facets.append(facet)
    return facets


def ids_in(text: str) -> set[str]:
    """The lake's ids found in ``text`` as whole tokens (not inside a hex digest or a word)."""
    return {i for i in LAKE_IDS if re.search(rf"(?<![0-9A-Za-z]){i}(?![0-9A-Za-z])", text)}


def by_job(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        out.setdefault(event["job"]["name"], []).append(event)
    return out


def outputs_by_name(event: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    return {
        os.path.relpath(o["name"], root.resolve()): o["facets"][ole.FACET_KEY]
        for o in event["outputs"]
    }


def cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


class _Receiver(BaseHTTPRequestHandler):
    events: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).events.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def lineage_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on 127.0.0.1 that keeps every event POSTed to it."""
    handler = type("Receiver", (_Receiver,), {"events": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.events
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ol_env(tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No OpenLineage setting from outside; variables the client adds itself go at teardown."""
    with _clean_openlineage_env(tmp_path) as patch:
        yield patch


@contextmanager
def _clean_openlineage_env(home: Path) -> Iterator[pytest.MonkeyPatch]:
    """No OPENLINEAGE_* setting from outside (nor ``~/.openlineage``) while it is open."""
    patch = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("OPENLINEAGE"):
            patch.delenv(key)
    patch.setenv("HOME", str(home))
    before = set(os.environ)
    try:
        yield patch
    finally:
        # openlineage-python writes OPENLINEAGE__TRANSPORT__... aliases of OPENLINEAGE_URL
        # into os.environ; they must not configure later tests.
        for key in set(os.environ) - before:
            if key.startswith("OPENLINEAGE"):
                del os.environ[key]
        patch.undo()


# --------------------------------------------------------------------------------------------
# heavy: the real command line, events over HTTP


@pytest.fixture(scope="module")
def http_run(
    spark: SparkSession,
    pristine_small_lake: Path,
    tmp_path_factory: pytest.TempPathFactory,
    lineage_server: tuple[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """One gate and one purge through the CLI with ``OPENLINEAGE_URL`` set."""
    url, events = lineage_server
    base = tmp_path_factory.mktemp("ol-http")
    conf = copy_small_lake(pristine_small_lake, base / "lake")
    with _clean_openlineage_env(base) as patch:
        patch.setenv("OPENLINEAGE_URL", url)
        gate = cli("gate", "--conf", str(conf), "--use-case", "recommendation",
                   "--model-version", "m1")  # fmt: skip
        purge = cli("purge", "--conf", str(conf))
    return {"events": list(events), "root": conf.parent, "gate": gate, "purge": purge}


def test_gate_and_purge_send_start_and_complete_over_http(http_run: dict[str, Any]) -> None:
    jobs = by_job(http_run["events"])
    assert sorted(jobs) == ["consentgate.gate", "consentgate.purge"]
    root = http_run["root"]
    for events in jobs.values():
        assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
        assert len({e["run"]["runId"] for e in events}) == 1
        assert {Path(i["name"]).name for i in events[0]["inputs"]} >= {
            "consent_records",
            "assets",
            "lineage",
        }
    gate = outputs_by_name(jobs["consentgate.gate"][1], root)
    assert list(gate) == ["_consentgate/snapshots/m1/track_embeddings"]
    snap = gate["_consentgate/snapshots/m1/track_embeddings"]
    assert snap["rowsKept"] == 1
    assert snap["rowsRemoved"] == {"no_consent_record": 1, "revoked": 1}
    assert snap["manifestSha256"] == http_run["gate"]["manifest_sha256"]
    assert snap["registryHead"] == {"seq": 0, "manifestSha256": snap["manifestSha256"]}
    purge = outputs_by_name(jobs["consentgate.purge"][1], root)
    table = purge["derived/track_embeddings"]
    assert table["rowsKept"] == 1 and table["rowsRemoved"] == {"no_consent_record": 1, "revoked": 1}
    assert table["erasure"] == "verified"
    assert purge["_consentgate/snapshots/m1/track_embeddings"]["rowsRemoved"] == {}


def test_every_event_is_valid_openlineage_and_every_facet_matches_its_schema(
    http_run: dict[str, Any],
) -> None:
    facets = [f for e in http_run["events"] for f in check_event(e)]
    assert {f["flow"] for f in facets} == {"gate", "purge"}


def test_no_event_holds_an_asset_or_user_id(http_run: dict[str, Any]) -> None:
    assert ids_in(json.dumps({"asset_id": "a2", "user": "u9"})) == {"a2", "u9"}  # grep works
    for event in http_run["events"]:
        assert ids_in(json.dumps(event)) == set(), event["eventType"]


def test_file_transport_via_openlineage_config_writes_the_same_events(
    spark: SparkSession, pristine_small_lake: Path, tmp_path: Path, http_run: dict[str, Any]
) -> None:
    conf = copy_small_lake(pristine_small_lake, tmp_path / "lake")
    log = tmp_path / "events.jsonl"
    config = tmp_path / "openlineage.yml"
    config.write_text(
        yaml.safe_dump({"transport": {"type": "file", "log_file_path": str(log), "append": True}})
    )
    with _clean_openlineage_env(tmp_path) as patch:
        patch.setenv("OPENLINEAGE_CONFIG", str(config))
        cli("gate", "--conf", str(conf), "--use-case", "recommendation", "--model-version", "m1")
    written = [json.loads(line) for line in log.read_text().splitlines()]
    for event in written:
        check_event(event)

    def shape(event: dict[str, Any], root: Path) -> str:
        text = json.dumps({k: v for k, v in event.items() if k not in ("eventTime", "run")})
        text = text.replace(str(root.resolve()), "<lake>")
        return re.sub(r"[0-9a-f]{64}", "<sha256>", text)

    http_gate = by_job(http_run["events"])["consentgate.gate"]
    assert [shape(e, conf.parent) for e in written] == [
        shape(e, http_run["root"]) for e in http_gate
    ]


# --------------------------------------------------------------------------------------------
# fast: the switch, the FAIL event, the schema


def _bare_config(root: Path) -> Path:
    """A valid config over empty table directories (enough for events without Spark)."""
    for table in ("consent_records", "assets", "lineage", "derived/track_embeddings"):
        (root / table).mkdir(parents=True, exist_ok=True)
    conf = root / "consentgate.yaml"
    conf.write_text(yaml.safe_dump(small_lake_conf()))
    return conf


CHILD = """
import json, sys
from pathlib import Path
import consentgate.cli  # the command line imports the module at start-up
from consentgate.config import load_config
from consentgate.openlineage_events import flow_run
config = load_config(Path(sys.argv[1]))
with flow_run("evaluate", config) as run:
    run.done({"use_case": "recommendation", "granted": 1, "reasons": {"granted": 1},
              "output": str(config.state_dir / "evaluations" / "x")})
print("LOADED " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "openlineage")))
"""


@pytest.mark.parametrize(
    ("setting", "emits"),
    [
        ({}, False),
        ({"OPENLINEAGE_DISABLED": "true", "OPENLINEAGE_URL": "http://127.0.0.1:9"}, False),
        ({"OPENLINEAGE_CONFIG": "{config}"}, True),  # the control: the check can see an import
    ],
    ids=["no-setting", "disabled", "file-transport"],
)
def test_off_by_default_imports_nothing_and_emits_nothing(
    tmp_path: Path, setting: dict[str, str], emits: bool
) -> None:
    conf = _bare_config(tmp_path / "lake")
    log = tmp_path / "events.jsonl"
    config = tmp_path / "ol.yml"
    config.write_text(
        yaml.safe_dump({"transport": {"type": "file", "log_file_path": str(log), "append": True}})
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    }
    env.update({k: v.format(config=config) for k, v in setting.items()})
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(conf)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(done.stdout.rsplit("LOADED ", 1)[1])
    assert done.stdout.startswith("LOADED "), done.stdout  # nothing printed (no console events)
    assert bool(loaded) is emits, loaded
    assert log.exists() is emits
    if emits:
        assert [json.loads(x)["eventType"] for x in log.read_text().splitlines()] == [
            "START",
            "COMPLETE",
        ]


def _file_transport(env: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, Path]:
    """A bare config, and the file the events go to (openlineage-python's own variables)."""
    log = tmp_path / "events.jsonl"
    env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(log))
    env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    return load_config(_bare_config(tmp_path / "lake")), log


def test_a_failed_flow_sends_fail_with_the_error_class_only(
    ol_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config, log = _file_transport(ol_env, tmp_path)
    with pytest.raises(KeyError), ole.flow_run("purge", config):
        raise KeyError("asset a2 of user u2")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert events[1]["run"]["facets"]["errorMessage"]["message"] == "KeyError"
    assert events[1]["outputs"] == []
    for event in events:
        check_event(event)
        assert ids_in(json.dumps(event)) == set()


def test_transport_configured_reads_openlineage_settings_only(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    on = {"cwd": cwd, "home": home}
    assert not ole.transport_configured({}, **on)
    assert ole.transport_configured({"OPENLINEAGE_URL": "http://x"}, **on)
    assert ole.transport_configured({"OPENLINEAGE__TRANSPORT__TYPE": "console"}, **on)
    assert not ole.transport_configured({"OPENLINEAGE_CONFIG": str(tmp_path / "none.yml")}, **on)
    assert not ole.transport_configured(
        {"OPENLINEAGE_URL": "http://x", "OPENLINEAGE_DISABLED": "TRUE"}, **on
    )
    (cwd / "openlineage.yml").write_text("transport: {type: console}\n")
    assert ole.transport_configured({}, **on)


def test_facet_schema_ships_with_the_package_and_counts_only_reason_codes() -> None:
    schema = ole.facet_schema()
    assert schema["$id"] == ole.FACET_SCHEMA_URL.split("#")[0]
    assert set(schema["$defs"]["ReasonCounts"]["propertyNames"]["enum"]) == set(ROW_REASONS)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"schemas/*.json"' in pyproject  # package data: the schema is installed
    facet = {
        "_producer": ole.PRODUCER,
        "_schemaURL": ole.FACET_SCHEMA_URL,
        "flow": "purge",
        "useCase": "recommendation",
        "acceptedPolicyVersions": ["2026-03"],
        "rowsKept": 1,
        "rowsRemoved": {"revoked": 1},
    }
    validator = Draft202012Validator({"$ref": ole.FACET_SCHEMA_URL}, registry=_registry())
    validator.validate(facet)
    for bad in (
        {"rowsRemoved": {"a2": 1}},  # an id as a reason
        {"assetIds": ["a2"]},  # any field the schema does not name
        {"manifestSha256": "a2"},
    ):
        assert not validator.is_valid(facet | bad), bad


def test_schema_1_0_0_still_ships_unchanged_and_1_1_0_adds_the_erase_flow() -> None:
    """A published schema never changes: 1-1-0 is a new file; erase facets count no rows."""
    shipped = ROOT / "src" / "consentgate" / "schemas"
    old = json.loads((shipped / "ConsentgateConsentDatasetFacet-1-0-0.json").read_text())
    assert old["$id"].endswith("-1-0-0.json")
    assert "erase" not in json.dumps(old["$defs"]["ConsentgateConsentDatasetFacet"])
    assert ole.FACET_SCHEMA_FILE == "ConsentgateConsentDatasetFacet-1-1-0.json"
    validator = Draft202012Validator({"$ref": ole.FACET_SCHEMA_URL}, registry=_registry())
    erase = {
        "_producer": ole.PRODUCER,
        "_schemaURL": ole.FACET_SCHEMA_URL,
        "flow": "erase",
        "useCase": "recommendation",
        "acceptedPolicyVersions": ["2026-03"],
        "erasure": "verified",
    }
    validator.validate(erase)
    assert not validator.is_valid({k: v for k, v in erase.items() if k != "erasure"})
    assert not validator.is_valid(erase | {"flow": "purge"})  # a purge counts its rows


def _parent() -> ole.ParentRun:
    return ole.ParentRun(
        namespace="airflow",
        name="consentgate_nightly_purge.erase_and_verify",
        run_id="01938a4f-0000-7000-8000-000000000001",
        root_namespace="airflow",
        root_name="consentgate_nightly_purge",
        root_run_id="01938a4f-0000-7000-8000-000000000002",
    )


def test_parent_run_is_read_from_the_environment_as_other_integrations_pass_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parent = _parent()
    assert ole.parent_from_env(parent.context_env()) == parent  # OPENLINEAGE_CONTEXT
    legacy = {
        "OPENLINEAGE_PARENT_ID": f"{parent.namespace}/{parent.name}/{parent.run_id}",
        "OPENLINEAGE_ROOT_PARENT_ID": f"airflow/consentgate_nightly_purge/{parent.root_run_id}",
    }
    assert ole.parent_from_env(legacy) == parent
    alone = ole.parent_from_env({"OPENLINEAGE_PARENT_ID": legacy["OPENLINEAGE_PARENT_ID"]})
    assert alone is not None and (alone.root_name, alone.root_run_id) == (
        parent.name,
        parent.run_id,
    )  # no root given: the parent is its own root, as dbt's integration reads it
    assert ole.parent_from_env({}) is None
    for bad in (
        {"OPENLINEAGE_CONTEXT": "{not json"},
        {"OPENLINEAGE_CONTEXT": json.dumps({"parent": {"job": {}}})},
        {"OPENLINEAGE_PARENT_ID": "airflow/only-two"},
    ):
        caplog.clear()
        assert ole.parent_from_env(bad) is None, bad
        assert "ignored, it does not parse" in caplog.text


def test_a_flow_started_by_a_task_nests_under_it_and_the_erase_flow_names_each_receipt(
    ol_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config, log = _file_transport(ol_env, tmp_path)
    # the environment names another parent: the one handed in wins
    ol_env.setenv("OPENLINEAGE_PARENT_ID", "other/job/01938a4f-0000-7000-8000-00000000000f")
    with ole.flow_run("erase", config, parent=_parent()) as run:
        run.done({"ok": True, "datasets": {"track_embeddings": {"result": "verified"}}})
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for event in events:
        check_event(event)
        parent = event["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == _parent().run_id
        assert (parent["job"]["namespace"], parent["job"]["name"]) == ("airflow", _parent().name)
        assert parent["root"]["run"]["runId"] == _parent().root_run_id
        assert parent["root"]["job"]["name"] == "consentgate_nightly_purge"
    (output,) = events[1]["outputs"]
    assert output["name"] == str((tmp_path / "lake" / "derived" / "track_embeddings").resolve())
    facet = output["facets"][ole.FACET_KEY]
    assert (facet["flow"], facet["erasure"]) == ("erase", "verified")
    assert "rowsKept" not in facet
