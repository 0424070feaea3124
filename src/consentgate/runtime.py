"""Small shared facts about a run: its instant, its id, the code and engine versions."""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import uuid
from importlib import metadata

from consentgate.errors import ConsentgateError


def now_utc() -> dt.datetime:
    """The current instant, UTC, microsecond precision (Spark's timestamp precision)."""
    return dt.datetime.now(dt.UTC)


def parse_instant(text: str, *, name: str = "--as-of") -> dt.datetime:
    """Parse an ISO-8601 instant; a value without an offset is taken as UTC.

    Raises:
        ConsentgateError: naming the argument when the text is not ISO-8601.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConsentgateError(f"{name}: {text!r} is not an ISO-8601 instant") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def iso(value: dt.datetime) -> str:
    """Render an instant as ISO-8601 UTC with a trailing Z (what manifests and logs carry)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id(kind: str, *, at: dt.datetime | None = None, origin: str | None = None) -> str:
    """A sortable, unique run id such as ``gate-20261126T021500Z-1a2b3c4d``.

    The suffix is random, or, for a run started by an orchestrator, the first 8 hex digits of
    SHA-256 of ``origin`` (for Airflow ``<dag_id>/<dag_run_id>``, :func:`dag_run_origin`): with
    the run's instant, anyone holding the DAG run id can recompute the id its manifest and
    audit entries carry (issue #24 item 4). A retried first task keeps the suffix; its stamp
    changes only if the instant was filled in as "now" again. A DAG run id itself (``manual__2026-12-06T13:57:09.123+00:00``) is no
    directory name: the id keeps one shape for every run.
    """
    stamp = (at or now_utc()).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if origin is None:
        return f"{kind}-{stamp}-{uuid.uuid4().hex[:8]}"
    return f"{kind}-{stamp}-{hashlib.sha256(origin.encode()).hexdigest()[:8]}"


def dag_run_origin(dag_id: str, dag_run_id: str) -> str:
    """The ``origin`` of :func:`new_run_id` for an Airflow DAG run."""
    return f"{dag_id}/{dag_run_id}"


def versions() -> dict[str, str]:
    """Code and engine versions recorded in manifests and audit entries."""
    out = {"python": platform.python_version()}
    for package in ("consentgate", "pyspark", "delta-spark", "deltalake", "pyarrow"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out
