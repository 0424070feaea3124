"""``consentgate.heads``: publishing a chain's head, and holding a chain to it (no Spark).

The chains themselves, truncated on real Delta tables, are in ``tests/test_audit.py`` (audit
log) and ``tests/test_gate.py`` (registry: ``verify`` and the purge).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consentgate import heads
from consentgate.errors import ConfigError, ConsentgateError

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


def test_heads_are_published_forward_only_and_atomically(tmp_path: Path) -> None:
    assert heads.read_heads(tmp_path) == {}
    heads.publish(tmp_path, "audit", heads.Head(1, B))
    heads.publish(tmp_path, "registry", heads.Head(0, A))
    heads.publish(tmp_path, "audit", heads.Head(0, A))  # behind the published head: ignored
    assert heads.read_heads(tmp_path) == {"audit": heads.Head(1, B), "registry": heads.Head(0, A)}
    assert heads.published(tmp_path) == {"audit": f"1:{B}", "registry": f"0:{A}"}
    names = sorted(p.name for p in heads.heads_path(tmp_path).parent.iterdir())
    assert names == ["heads.json", "heads.lock"]  # no temporary file left behind
    with pytest.raises(ValueError, match="unknown chain"):
        heads.publish(tmp_path, "other", heads.Head(0, A))


def test_a_chain_may_grow_past_its_head_but_not_end_before_it_or_change_it() -> None:
    head = heads.Head(1, B)
    assert heads.check("audit", [A, B], head, source="x") == []
    assert heads.check("audit", [A, B, C], head, source="x") == []  # grew since: fine
    (short,) = heads.check("audit", [A], head, source="the head file")
    assert "ends at seq 0" in short and "the head file publishes its head at seq 1" in short
    (empty,) = heads.check("audit", [], head, source="x")
    assert "has no entry" in empty
    (other,) = heads.check("registry", [A, C], head, source="--expect-head")
    assert "entry seq 1 is not the one --expect-head publishes" in other


def test_expect_head_takes_seq_and_digest_or_a_head_file(tmp_path: Path) -> None:
    assert heads.parse_expected(f"3:{C.upper()}", "audit") == heads.Head(3, C)
    heads.publish(tmp_path, "registry", heads.Head(2, B))
    kept = heads.heads_path(tmp_path)
    assert heads.parse_expected(str(kept), "registry") == heads.Head(2, B)
    with pytest.raises(ConfigError, match="holds no audit head"):
        heads.parse_expected(str(kept), "audit")
    for bad in ("3:abc", "x:" + A, str(tmp_path / "none.json")):
        with pytest.raises(ConfigError, match="--expect-head"):
            heads.parse_expected(bad, "audit")


def test_a_garbled_head_file_is_an_error_never_no_head(tmp_path: Path) -> None:
    path = heads.heads_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"audit": {"seq": "one", "sha256": A}}))
    with pytest.raises(ConsentgateError, match="audit"):
        heads.read_heads(tmp_path)
    problems = heads.check_published(tmp_path, "audit", [A])
    assert problems and "audit" in problems[0]
    path.write_text("{")
    with pytest.raises(ConsentgateError, match="unreadable"):
        heads.read_heads(tmp_path)
