"""consentgate's own step lines (issue #15 item 2): key=value, counts only, on stderr."""

from __future__ import annotations

import importlib
import io
import logging
import sys
import time
from collections.abc import Iterator

import pytest

from consentgate import logs


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Undo what the CLI's set-up does to this process's loggers."""
    root = logging.getLogger()
    ours = logging.getLogger(logs.ROOT_LOGGER)
    handlers, level = list(root.handlers), ours.level
    yield
    root.handlers[:] = handlers
    ours.setLevel(level)


def test_a_step_line_is_key_value_pairs_step_first_seconds_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("consentgate.purge")
    with caplog.at_level(logging.INFO, logger="consentgate"):
        logs.step(
            log,
            "rewrite",
            table="track_embeddings",
            rows=212,
            files=3,
            bytes=48213,
            conflicts=None,  # unknown: left out
            since=time.monotonic() - 1.5,
        )
    (record,) = caplog.records
    assert record.name == "consentgate.purge" and record.levelno == logging.INFO
    message = record.getMessage()
    head, _, seconds = message.rpartition(" seconds=")
    assert head == "step=rewrite table=track_embeddings rows=212 files=3 bytes=48213"
    assert 1.5 <= float(seconds) < 60
    assert getattr(record, logs.RECORD_FIELDS)["rows"] == 212  # for structured handlers


def test_values_that_would_split_the_line_are_quoted() -> None:
    fields = logs.step_fields("gate", table="my table", counts={"ok": True, "n": 0})
    assert logs.format_fields(fields) == 'step=gate table="my table" ok=true n=0'


def test_library_loggers_propagate_and_have_no_handlers() -> None:
    """Under Airflow the task log is fed by the root logger: ours must reach it."""
    for name in ("gate", "purge", "erasure", "manifest"):
        module = importlib.import_module(f"consentgate.{name}")
        logger = module.log
        assert logger.name == f"consentgate.{name}"
        assert logger.propagate and not logger.handlers
    assert not logging.getLogger(logs.ROOT_LOGGER).handlers


@pytest.mark.usefixtures("clean_logging")
def test_cli_logging_goes_to_the_current_stderr_once(monkeypatch: pytest.MonkeyPatch) -> None:
    logs.configure_cli_logging()
    logs.configure_cli_logging()  # idempotent: one handler, one line per record
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)  # replaced after set-up, as click's runner does
    logs.step(logging.getLogger("consentgate.gate"), "publish", tables=2)
    logging.getLogger("py4j.clientserver").info("chatter")  # other libraries: WARNING and up
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(" INFO consentgate.gate step=publish tables=2")
    assert "\x1b[" not in lines[0]  # no colour codes
