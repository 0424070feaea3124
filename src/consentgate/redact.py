"""What an output may show of a value that could be a raw id: where messages, plans and
receipts leave the process (CLI JSON, Airflow XComs, logs, the audit log).

Why a module of its own: the same two rules apply wherever a path or a message goes out, and
each caller would otherwise grow its own variant.

* :func:`redact_uuids` replaces every UUID-shaped part of a text with ``<uuid>``: a failure
  message names a data file, and a data file's name holds a UUID (the audit log refuses
  anything that could be a raw id).
* :func:`redact_partitions` replaces the value of every Hive-style partition directory of a
  path (``asset_id=<uuid>/part-….parquet``) with a digest: a table partitioned by an id column
  would otherwise print one raw id per file into a dry run's plan or an erasure receipt, and
  from there into Airflow's metadata database, which nothing erases (issue #23 item 5).
  Decided: every partition value is digested, whatever its column, as nobody keeps a list of
  which columns are ids; the digest (``sha256:`` and 12 hex digits of SHA-256 over
  ``column=value``) still tells two partitions apart and is the same in every output.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

#: What the audit log refuses as a possible raw id (see :mod:`consentgate.audit`).
UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def redact_uuids(text: str) -> str:
    """``text`` with every UUID-shaped part replaced by ``<uuid>``: how a failure message goes
    into the audit log, which refuses anything that could be a raw id (a data file's name
    holds a UUID; the message shown and logged keeps it, so the file can be found)."""
    return UUID.sub("<uuid>", text)


def redact_partitions(path: str) -> str:
    """``path`` (relative to its table, ``/``-separated) with each ``column=value`` directory's
    value replaced by its digest; the file name itself is kept."""
    *directories, name = path.split("/")
    out = []
    for part in directories:
        column, equals, value = part.partition("=")
        if equals and column:
            digest = hashlib.sha256(part.encode()).hexdigest()[:12]
            out.append(f"{column}=sha256:{digest}" if value else part)
        else:
            out.append(part)
    return "/".join([*out, name])
