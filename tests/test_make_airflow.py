"""``make airflow`` as a user starts it (issue #24 item 5): Airflow standalone on the demo lake.

The test runs the Makefile target itself, in a process group of its own, with a plain ``PATH``
(the system's directories only: the target must find its own virtualenv's ``airflow``), its
own Airflow home, lake and port. It polls the API server's health endpoint until the
metadatabase, the scheduler and the DAG processor report healthy, signs in with the password
``airflow standalone`` generated, triggers ``consentgate_nightly_purge`` through the REST API,
waits for the run to succeed, and then stops every process it started (the whole group), also
when something fails. Minutes, so not part of ``make test``: ``make test-airflow`` runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consentgate import airflow_tasks
from tests.airflow_fixtures import free_port

pytestmark = [pytest.mark.airflow_server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DAG = "consentgate_nightly_purge"
#: Install is done; the target still writes the JVM archive (about 2 minutes, once per
#: machine), the 2,000-asset demo lake (about 30 s) and migrates Airflow's database.
HEALTHY_WITHIN = 600.0
#: The nightly purge of the demo lake through the scheduler (about 80 s in `consentgate demo`).
RUN_WITHIN = 600.0


class Server:
    """A running ``make airflow``: its base URL, home and log."""

    def __init__(self, base: str, home: Path, log: Path) -> None:
        self.base = base
        self.home = home
        self.log = log
        self.token: str | None = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def _healthy(server: Server) -> bool:
    try:
        health = server.request("GET", "/api/v2/monitor/health")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "dag_processor")
    return all(health.get(p, {}).get("status") == "healthy" for p in parts)


@pytest.fixture
def server(tmp_path: Path, jvm: None) -> Iterator[Server]:
    port = free_port()
    home = tmp_path / "airflow"
    log = tmp_path / "make-airflow.log"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    (tmp_path / "home").mkdir()
    command = [
        "make",
        "--no-print-directory",
        "-C",
        str(REPO),
        "airflow",
        f"AIRFLOW_DIR={home}",
        f"DEMO_LAKE={tmp_path / 'lake'}",
        f"AIRFLOW_PORT={port}",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = Server(f"http://127.0.0.1:{port}", home, log)
    try:
        deadline = time.monotonic() + HEALTHY_WITHIN
        while not _healthy(running):
            assert process.poll() is None, f"make airflow exited {process.returncode}"
            assert time.monotonic() < deadline, f"not healthy in {HEALTHY_WITHIN:.0f} s"
            time.sleep(2)
        yield running
    except BaseException:
        print(running.tail())
        raise
    finally:
        assert _stop(process), "processes of make airflow outlived SIGKILL"


def _stop(process: subprocess.Popen[bytes]) -> bool:
    """End the whole process group (make, airflow standalone and every child of theirs);
    whether it is gone."""
    group = process.pid  # start_new_session: the group's id is make's pid
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap make, or the group lingers as a zombie
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.5)
    return False


def _sign_in(server: Server) -> None:
    """A token for ``admin`` with the password ``airflow standalone`` wrote."""
    passwords = json.loads(
        (server.home / "simple_auth_manager_passwords.json.generated").read_text()
    )
    answer = server.request(
        "POST", "/auth/token", {"username": "admin", "password": passwords["admin"]}
    )
    server.token = str(answer["access_token"])


def _finished(server: Server, run_id: str) -> dict[str, Any]:
    """The DAG run once it has ended, with its tasks' states."""
    deadline = time.monotonic() + RUN_WITHIN
    while True:
        run: dict[str, Any] = server.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"{run_id} still {run['state']} after {RUN_WITHIN} s"
        time.sleep(5)
    path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances"
    run["tasks"] = {t["task_id"]: t["state"] for t in server.request("GET", path)["task_instances"]}
    return run


def test_make_airflow_serves_and_runs_the_nightly_purge(server: Server) -> None:
    """Unpausing the DAG makes the scheduler start the latest scheduled night as well, so
    the triggered run is either the night that purges the lake or the one after it, which
    the quiescence certificate answers; both must succeed, and one of them purged."""
    _sign_in(server)
    server.request("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    triggered = server.request("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None})
    _finished(server, triggered["dag_run_id"])
    listed = server.request("GET", f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
    runs = [_finished(server, r["dag_run_id"]) for r in listed]
    assert triggered["dag_run_id"] in {r["dag_run_id"] for r in runs}
    assert all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["tasks"]) for r in runs]
    purged = [r for r in runs if r["tasks"].get("audit_summary") == "success"]
    assert len(purged) == 1, [r["tasks"] for r in runs]
    assert purged[0]["tasks"]["erase_and_verify"] == "success"
    for quiet in (r for r in runs if r is not purged[0]):  # answered by the certificate
        assert quiet["tasks"]["quiescent"] == "success" and quiet["tasks"]["decide"] == "skipped"

    # Revocations landed: the consent service announces them on the consent table's Asset
    # (issue #25 item 2), and the scheduler starts a purge run for that event, not the cron.
    (asset,) = server.request(
        "GET", f"/api/v2/assets?name_pattern={airflow_tasks.CONSENT_ASSET_NAME}"
    )["assets"]
    server.request("POST", "/api/v2/assets/events", {"asset_id": asset["id"]})
    deadline = time.monotonic() + RUN_WITHIN
    while True:
        listed = server.request("GET", f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
        by_event = [r for r in listed if r["run_type"] == "asset_triggered"]
        if by_event:
            break
        assert time.monotonic() < deadline, "no run for the consent Asset's event"
        time.sleep(2)
    (event_run,) = by_event
    done = _finished(server, event_run["dag_run_id"])
    assert done["state"] == "success", done["tasks"]
