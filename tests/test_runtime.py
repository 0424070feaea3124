"""Run ids and instants (:mod:`consentgate.runtime`)."""

from __future__ import annotations

import datetime as dt
import re

from consentgate.runtime import dag_run_origin, new_run_id

AT = dt.datetime(2026, 12, 6, 13, 57, 9, 123456, tzinfo=dt.UTC)


def test_a_run_id_is_sortable_and_random_unless_an_origin_is_given() -> None:
    first, second = new_run_id("gate", at=AT), new_run_id("gate", at=AT)
    assert re.fullmatch(r"gate-20261206T135709Z-[0-9a-f]{8}", first)
    assert first != second


def test_a_dag_run_always_gets_the_same_id_and_another_dag_run_another() -> None:
    origin = dag_run_origin("consentgate_pretraining_gate", "manual__2026-12-06T13:57:09+00:00")
    same = new_run_id("gate", at=AT, origin=origin)
    assert same == new_run_id("gate", at=AT, origin=origin)
    assert re.fullmatch(r"gate-20261206T135709Z-[0-9a-f]{8}", same)
    other = dag_run_origin("consentgate_nightly_purge", "manual__2026-12-06T13:57:09+00:00")
    assert new_run_id("gate", at=AT, origin=other) != same
