"""The heads of our two hash chains, published outside the tables they seal.

A hash chain (the audit log, the manifest registry) shows any entry edited, dropped or reordered
*inside* it, but not its newest entries removed, nor the table rolled back to an earlier copy
that is consistent in itself (Delta ``RESTORE``, a restored backup): what is left still chains.
DESIGN.md asks for the heads to be published outside, so that such a truncation shows.

The head of a chain is its newest entry's ``seq`` and SHA-256 (``SEQ:SHA256``; for the
registry the newest manifest's SHA-256). After every append it is published:

* in the **head file** ``_consentgate/heads.json`` (``{"audit": {"seq", "sha256"}, "registry":
  {...}}``), rewritten atomically under a lock, only ever forward;
* in the flow's result (``heads``: the CLI's JSON, the Airflow tasks' XComs), so a copy lives
  in Airflow's metadata DB and in whatever the caller keeps.

``consentgate audit verify`` and ``consentgate verify`` check the chain against the head file
when there is one, and against ``--expect-head`` (``SEQ:SHA256``, or a copy of the head file
kept elsewhere), which is what catches an attacker who rolled back the head file with the
table. The purge checks the registry against the head file before it trusts the registry's
list of snapshots: a removed entry would otherwise drop that snapshot from every later purge.

Decision: a chain that grew past a published head is fine (the head is a lower bound: the
entry at its ``seq`` must still be the same); a chain shorter than it, or with another entry
at its ``seq``, is a problem naming both.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from consentgate.errors import ConfigError, ConsentgateError
from consentgate.state import HEADS_FILE, STATE_DIR, file_lock

#: The two chains whose heads are published.
CHAINS: Final = ("audit", "registry")
_HEAD = re.compile(r"(\d+):([0-9a-f]{64})")


@dataclass(frozen=True)
class Head:
    """A chain's newest entry: its ``seq`` and SHA-256."""

    seq: int
    sha256: str

    def text(self) -> str:
        """``SEQ:SHA256``, the form ``--expect-head`` takes."""
        return f"{self.seq}:{self.sha256}"


def heads_path(lake_root: Path) -> Path:
    """The lake's head file."""
    return Path(lake_root) / STATE_DIR / HEADS_FILE


def _from_json(value: object, where: str) -> Head:
    if not isinstance(value, Mapping):
        raise ConsentgateError(f"{where}: not an object with seq and sha256")
    text = f"{value.get('seq')}:{value.get('sha256')}"
    match = _HEAD.fullmatch(text)
    if match is None:
        raise ConsentgateError(f"{where}: seq {value.get('seq')!r} / sha256 is not a head")
    return Head(int(match[1]), match[2])


def read_heads(lake_root: Path) -> dict[str, Head]:
    """The heads published in the lake's head file ({} when there is none).

    Raises:
        ConsentgateError: the file exists but does not hold heads (it is evidence: a garbled
            one is not read as "no head").
    """
    return read_heads_file(heads_path(lake_root), missing_ok=True)


def read_heads_file(path: Path, *, missing_ok: bool = False) -> dict[str, Head]:
    """The heads in a head file (the lake's, or a copy kept elsewhere)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(f"--expect-head: {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConsentgateError(f"head file {path}: unreadable ({type(exc).__name__})") from exc
    if not isinstance(data, Mapping):
        raise ConsentgateError(f"head file {path}: not a JSON object")
    return {c: _from_json(data[c], f"head file {path}: {c}") for c in CHAINS if c in data}


def parse_expected(value: str, chain: str) -> Head:
    """``--expect-head``: ``SEQ:SHA256``, or the path of a head file (its ``chain`` head).

    Raises:
        ConfigError: neither (exit 2, naming the option).
    """
    match = _HEAD.fullmatch(value.strip().lower())
    if match is not None:
        return Head(int(match[1]), match[2])
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--expect-head: {value!r} is neither SEQ:SHA256 (64 hex digits) nor a head file"
        )
    found = read_heads_file(path).get(chain)
    if found is None:
        raise ConfigError(f"--expect-head: {path} holds no {chain} head")
    return found


@contextmanager
def _locked(lake_root: Path) -> Iterator[None]:
    with file_lock(heads_path(lake_root).with_name("heads.lock")):
        yield


def publish(lake_root: Path, chain: str, head: Head) -> None:
    """Record ``head`` as ``chain``'s head in the head file (call right after the append).

    Only forward: a head below the published one is not written (the check will report the
    chain as truncated); the file is replaced atomically, so a reader never sees half of it.
    """
    if chain not in CHAINS:
        raise ValueError(f"unknown chain {chain!r}")
    path = heads_path(lake_root)
    with _locked(lake_root):
        heads = read_heads(lake_root)
        if chain in heads and heads[chain].seq > head.seq:
            return
        heads[chain] = head
        data = {c: {"seq": h.seq, "sha256": h.sha256} for c, h in sorted(heads.items())}
        tmp = path.with_name(f".{HEADS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def published(lake_root: Path) -> dict[str, str]:
    """The published heads as ``{chain: "SEQ:SHA256"}`` (what a flow's result carries)."""
    return {chain: head.text() for chain, head in sorted(read_heads(lake_root).items())}


def check(chain: str, digests: Sequence[str], expected: Head, *, source: str) -> list[str]:
    """Problems of a chain (its entries' SHA-256 in ``seq`` order) against a published head.

    ``source`` says where the head was published (the head file, ``--expect-head``).
    """
    if expected.seq >= len(digests):
        last = f"ends at seq {len(digests) - 1}" if digests else "has no entry"
        return [
            f"{chain}: the chain {last}, but {source} publishes its head at seq {expected.seq}: "
            "its newest entries were removed (truncated, or rolled back to an earlier copy)"
        ]
    if digests[expected.seq] != expected.sha256:
        return [
            f"{chain}: entry seq {expected.seq} is not the one {source} publishes "
            f"({expected.sha256[:12]}...): the table was rolled back or rewritten"
        ]
    return []


def check_published(
    lake_root: Path, chain: str, digests: Sequence[str], *, expect: Head | None = None
) -> list[str]:
    """:func:`check` against the lake's head file (when it has a head for ``chain``) and
    against ``expect`` (``--expect-head``)."""
    problems: list[str] = []
    try:
        head = read_heads(lake_root).get(chain)
    except ConsentgateError as exc:
        problems.append(f"{chain}: {exc}")
        head = None
    if head is not None:
        problems += check(chain, digests, head, source=f"{STATE_DIR}/{HEADS_FILE}")
    if expect is not None:
        problems += check(chain, digests, expect, source="--expect-head")
    return problems
