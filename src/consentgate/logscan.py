"""The values a Delta log file holds of a table's rows, parsed (issue #22: parse, don't grep).

Erasure must prove that no removed key is left in ``_delta_log/``. Row values reach the log
in three places only, and this module reads each as the JSON it is, never as text:

- **partition values** of ``add``, ``remove`` and ``cdc`` actions (``partitionValues``, and
  a checkpoint's ``partitionValues_parsed``);
- **file statistics**: every leaf of ``minValues`` and ``maxValues``, nested structs
  included, whether the statistics are the JSON string of a commit (``stats``) or a
  checkpoint's parsed struct (``stats_parsed``). ``nullCount`` holds counts, not values;
- **operation parameters of other writers' commits** (``commitInfo.operationParameters``):
  the SQL literals of their predicates (a user's ``DELETE ... WHERE id = '...'`` records
  the id), quoted strings and integers, wherever a parameter holds them. Our own commits
  (``userMetadata`` with :data:`consentgate.lake.TXN_KEY`) are skipped: their MERGE joins on
  digests and names no id, while its text (``'k:'``, ``256``) would match a short key.

Everything else (sizes, counts, versions, timestamps of actions, schemas, table
properties) holds no row value, and matching there would only raise false alarms on numeric
keys. The same walk reads a commit line, a checkpoint row (as Spark's ``to_json`` renders
it: the same action objects), a v2 checkpoint's JSON or sidecar rows and a ``.crc``
checksum (its ``allFiles`` are ``add`` actions): any object under an action key is an
action, wherever it is.

A value is returned as text the way a key is hashed (:func:`consentgate.purge.key_digest`
casts the key to a string): strings as they are, integers in decimal, other numbers as
Python prints them; booleans and nulls are not values anyone is keyed by. Statistics may be
*truncated* (delta-spark keeps the first ``spark.databricks.io.skipping.stringPrefixLength``
characters of a string bound, and appends a character to a maximum): the caller compares
prefixes, this module returns what is stored.

Pure Python over one JSON text, so that it runs inside a Spark UDF on the executors (the log
is never collected to the driver) and is unit-tested without a JVM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

#: Keys whose value is a file action (commits, checkpoint rows).
_FILE_ACTIONS: Final = frozenset({"add", "remove", "cdc"})
#: The key of our transaction tag inside ``userMetadata`` (:data:`consentgate.lake.TXN_KEY`,
#: repeated here so that executors import nothing of Spark's to run this module).
_OUR_TAG: Final = "consentgate.txn"
#: A SQL string literal ('it''s', "x") and an integer literal not part of a name or a
#: decimal (``id#12``, ``c1``, ``1.5`` give nothing; ``= 256``, ``IN (7, -8)``, Spark's
#: ``7000000021L`` give 256, 7, -8, 7000000021).
_SQL_STRING: Final = re.compile(r"'((?:[^']|'')*)'|\"((?:[^\"\\]|\\.)*)\"")
_SQL_INTEGER: Final = re.compile(r"(?<![\w.#$'\"])(-?\d+)[LSY]?(?![\w.'\"])")


def values_in(text: str | None) -> list[str]:
    """Every row value one JSON text of a Delta log holds (see the module docstring).

    ``text`` is one JSON document: a commit's line, a checkpoint row rendered by ``to_json``,
    a ``.crc`` file. Text that is not JSON (Hadoop's binary ``.crc`` sidecars have no row
    values) gives nothing; ``None`` too.
    """
    if not text:
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    return list(_walk(doc))


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _FILE_ACTIONS and isinstance(value, dict):
            yield from _file_action(value)
        elif key == "allFiles" and isinstance(value, list):  # a .crc's add actions, unwrapped
            for action in value:
                if isinstance(action, dict):
                    yield from _file_action(action)
        elif key == "commitInfo" and isinstance(value, dict):
            yield from _commit_info(value)
        elif isinstance(value, dict | list):
            yield from _walk(value)


def _file_action(action: dict[str, Any]) -> Iterator[str]:
    for section in ("partitionValues", "partitionValues_parsed"):
        yield from _leaves(action.get(section))
    stats = action.get("stats")
    if isinstance(stats, str) and stats:
        try:
            stats = json.loads(stats)
        except ValueError:
            stats = None
    for parsed in (stats, action.get("stats_parsed")):
        if isinstance(parsed, dict):
            yield from _leaves(parsed.get("minValues"))
            yield from _leaves(parsed.get("maxValues"))


def _commit_info(info: dict[str, Any]) -> Iterator[str]:
    if _ours(info.get("userMetadata")):
        return
    params = info.get("operationParameters")
    if isinstance(params, dict):
        for value in params.values():
            yield from _literals(value)


def _ours(user_metadata: Any) -> bool:
    if not isinstance(user_metadata, str):
        return False
    try:
        parsed = json.loads(user_metadata)
    except ValueError:
        return False
    return isinstance(parsed, dict) and _OUR_TAG in parsed


def _literals(value: Any) -> Iterator[str]:
    """The literals of one operation parameter: a predicate's SQL text, or a JSON list of
    such texts (``["(id = 'x')"]``), or a plain value."""
    if isinstance(value, str):
        if value[:1] in ("[", "{"):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, list | dict):
                yield from _literals(parsed)
                return
        for match in _SQL_STRING.finditer(value):
            single, double = match.group(1), match.group(2)
            yield single.replace("''", "'") if single is not None else double
        yield from _SQL_INTEGER.findall(_SQL_STRING.sub(" ", value))
    elif isinstance(value, list):
        for item in value:
            yield from _literals(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _literals(item)
    else:
        yield from _scalar(value)


def _leaves(node: Any) -> Iterator[str]:
    """Every scalar under ``node`` (nested statistics of struct columns included)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield from _scalar(node)


def _scalar(value: Any) -> Iterator[str]:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str | int | float):
        yield str(value)
