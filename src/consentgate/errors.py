"""Error types that map to the command line's exit statuses.

The contract: exit 2 for bad input (config, arguments, table schema) and exit 1 for a check
that failed (verification, a refused gate). Every error names its culprit in the message so an
operator can fix it without reading a stack trace.
"""

from __future__ import annotations

import re
from typing import Final


class ConsentgateError(Exception):
    """Base class; ``exit_code`` is what the command line exits with."""

    exit_code = 2


class ConfigError(ConsentgateError):
    """The configuration file is invalid; the message names the offending key."""


class TableError(ConsentgateError):
    """A Delta table is missing, unreadable, or needs a feature this engine cannot honour."""


class SchemaError(TableError):
    """A table lacks a column the caller needs or has it with the wrong type."""


class AsOfRefused(ConsentgateError):
    """An explicit evaluation instant is earlier than changes already recorded in the lake.

    Bad input (exit 2), not a failed check: the instant the caller asked for would cut a
    snapshot that ignores known withdrawals; the message says how many later changes there are.
    """


class CheckFailed(ConsentgateError):
    """A verification failed or the gate refused; nothing was published."""

    exit_code = 1


class ConflictError(ConsentgateError):
    """A concurrent writer moved the table in a way we could not reconcile within our retries."""

    exit_code = 1


#: An error class in Spark's message, e.g. ``[FAILED_READ_FILE.NO_HINT]``.
_ERROR_CLASS: Final = re.compile(r"\[([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?:\.[A-Z0-9_]+)*)\]")
#: A data file's name (never its directories, which can be ``column=value`` partitions).
_DATA_FILE: Final = re.compile(r"(?<=/)([^/\\\s'\"=:]+\.parquet)(?![\w/-])(?!\.\w)")


def foreign_cause(exc: BaseException) -> str:
    """What may be repeated of an error raised by Spark, Delta or pyarrow: its error class (or
    type) and, for a data file, the file's name only.

    Their own text can quote a file's full path, whose directories can be partitions such as
    ``asset_id=<id>``, or row values; it stays in the engine's log, never in our messages,
    logs or audit entries.
    """
    text = str(exc)
    found = _ERROR_CLASS.search(text)
    cause = found.group(1) if found else type(exc).__name__
    file = _DATA_FILE.search(text)
    return f"{cause} reading data file {file.group(1)}" if file else cause
