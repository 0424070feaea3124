"""The demo's story: its text fits a terminal (issue #24 item 6)."""

from __future__ import annotations

from typing import Any

from consentgate.consent import DENIAL_REASONS
from consentgate.demo import DATASETS
from consentgate.purge import USE_CASE_NOT_CONFIGURED
from consentgate.registry import snapshot_name
from consentgate.story import RENDER_WIDTH, render

#: Every reason a purge can report for a row (consent's, then the purge's own).
ALL_REASONS = (*DENIAL_REASONS, "no_lineage", "retention_expired", USE_CASE_NOT_CONFIGURED)


def _summary() -> dict[str, Any]:
    """A demo summary at its widest: every demo dataset and a snapshot of each, every reason
    with a six-digit count, a model version as the demo names them."""
    version = "demo-20261207T050000Z"
    names = [*DATASETS, *(snapshot_name(version, d) for d in DATASETS)]
    reasons = {reason: 100_000 + i for i, reason in enumerate(ALL_REASONS)}
    return {
        "lake": "/home/someone/a/rather/long/path/to/the/consentgate/demo/lake",
        "lake_built": True,
        "purge": {
            "dag_run_id": "manual__2026-12-07T04:57:08.369382+00:00",
            "rows_deleted": 9_999_999,
            "audit_chain_ok": True,
            "datasets": {
                name: {"rows_before": 1_234_567, "rows_deleted": 999_999, "reasons": reasons}
                for name in names
            },
        },
        "gate": {
            "dag_run_id": "manual__2026-12-07T04:59:10.123456+00:00",
            "model_version": version,
            "use_case": "generative_training",
            "allowlist_assets": 123_456,
            "manifest_path": "/home/someone/lake/_consentgate/manifests/" + "m" * 80 + ".json",
            "manifest_sha256": "ab" * 32,
            "verification": {"ok": True, "problems": []},
            "snapshots": {name: 1_000_000 for name in DATASETS},
        },
        "proof": {
            "asset_id": "0b0c0d0e-1f20-4122-8324-252627282930",
            "included": True,
            "verified_offline": True,
        },
    }


def test_every_line_of_the_story_fits_100_columns_but_whole_paths() -> None:
    summary = _summary()
    text = render(summary)
    paths = (summary["lake"], summary["gate"]["manifest_path"])
    wide = [line for line in text.splitlines() if len(line) > RENDER_WIDTH]
    assert RENDER_WIDTH == 100
    assert all(any(p in line for p in paths) for line in wide), wide


def test_each_tables_reasons_are_wrapped_under_it_whole() -> None:
    """Under each table's line, its reasons and counts, every one whole and on one line."""
    summary = _summary()
    lines = render(summary).splitlines()
    for name, facts in summary["purge"]["datasets"].items():
        (at,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert lines[at].split()[1:] == ["999999", "of", "1234567"]
        under: list[str] = []
        for line in lines[at + 1 :]:
            if not line.startswith(" " * 6):
                break
            under.append(line)
        assert len(under) > 1  # the reasons did not fit one line: they were wrapped
        items = [item for line in under for item in line.strip().rstrip(",").split(", ")]
        assert items == [f"{r} {n}" for r, n in sorted(facts["reasons"].items())]


def test_a_table_without_reasons_has_no_line_under_it() -> None:
    summary = _summary()
    summary["purge"]["datasets"] = {"stems": {"rows_before": 5, "rows_deleted": 0, "reasons": {}}}
    lines = render(summary).splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["stems"])
    assert lines[at + 1] == "  audit chain ok: True"
