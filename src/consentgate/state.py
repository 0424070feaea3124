"""What consentgate has left in a lake's ``_consentgate/`` directory, read without Spark.

Used to tell a lake where nothing has happened yet (no audit log, and rightly so) from one
whose audit log is gone (issue #23: "truncation is invisible"): every flow that leaves one of
:data:`RECORDED` behind also appends to the audit log, so a missing log beside any of them is a
failure, never "ok, zero entries". Evaluations, locks and a failed gate's rolled-back
directories are not evidence: they are written without an audit entry.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

#: consentgate's own directory under ``lake_root`` (``Config.state_dir``).
STATE_DIR: Final = "_consentgate"

#: The quiescence certificate's file in the state directory (``consentgate.quiescence``).
CERTIFICATE_FILE: Final = "quiescence.json"

#: The heads of the audit log and the registry, published after every append
#: (``consentgate.heads``).
HEADS_FILE: Final = "heads.json"

#: Entries of the state directory that only an audited flow leaves behind: the registry
#: (a published gate), manifests (a published gate), purge key tables (a committed purge
#: attempt), the quiescence certificate (a certified night) and the head file (an append).
RECORDED: Final = ("registry", "manifests", "purge_keys", CERTIFICATE_FILE, HEADS_FILE)


def recorded_runs(lake_root: Path) -> list[str]:
    """The :data:`RECORDED` entries present under ``lake_root`` (a directory counts only when
    it holds something), sorted."""
    state = lake_root / STATE_DIR
    found = []
    for name in RECORDED:
        path = state / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return sorted(found)


def missing_audit_problem(lake_root: Path) -> str | None:
    """The problem to report when the audit log is missing: ``None`` on a lake where no
    audited flow has run, else a message naming what shows that one did."""
    found = recorded_runs(lake_root)
    if not found:
        return None
    return (
        f"the audit log {STATE_DIR}/audit is missing, but audited runs left "
        f"{', '.join(f'{STATE_DIR}/{n}' for n in found)}: the log was removed or never written"
    )


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created, with its directory) while open.

    The one lock every writer of ours takes (audit log, registry, head file, a table's
    purges): blocking, released by the kernel if the process dies, not re-entrant.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
