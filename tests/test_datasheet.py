"""The datasheet: every section the issue asks for, a PNG chart, digests for the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from consentgate import datasheet
from consentgate.config import parse_config

RUN: dict[str, Any] = {
    "run_id": "gate-20261101T000000Z-abcd1234",
    "use_case": "generative_training",
    "model_version": "m1",
    "as_of": "2026-11-01T00:00:00.000000Z",
    "source_versions": {"assets": 0, "consent_records": 3, "lineage": 0},
    "allowlist": {"asset_count": 3, "merkle_root": "ab" * 32},
    "evaluation": {
        "assets": 10,
        "granted": 3,
        "reasons": {"granted": 3, "jurisdiction_blocked": 4, "revoked": 2, "asset_deleted": 1},
        "by_jurisdiction": {
            "EU": {"jurisdiction_blocked": 4},
            "US": {"granted": 3, "revoked": 2, "asset_deleted": 1},
        },
    },
}
SNAPSHOTS: dict[str, Any] = {
    "gen_shards": {
        "source": {"path": "derived/gen_shards", "version": 2},
        "path": "_consentgate/snapshots/m1/gen_shards",
        "version": 0,
        "rows": 7,
        "assets": 3,
        "content_merkle_root": "cd" * 32,
        "exclusions": {"no_lineage": 1, "retention_expired": 2},
        "retention_days": 540,
        "derived_at_column": "derived_at",
    }
}


def test_opt_in_rates_ignore_nonexistent_assets() -> None:
    rates = {
        r["jurisdiction"]: r for r in datasheet.opt_in_rates(RUN["evaluation"]["by_jurisdiction"])
    }
    assert rates["US"]["assets"] == 5 and rates["US"]["rate"] == 3 / 5
    assert rates["EU"]["rate"] == 0


def test_write_datasheet(tmp_path: Path) -> None:
    config = parse_config(
        {
            "lake_root": str(tmp_path),
            "use_cases": {
                "generative_training": {
                    "accepted_policy_versions": ["2026-03"],
                    "jurisdictions": {"deny": ["EU"]},
                }
            },
        },
        base_dir=tmp_path,
        check_paths=False,
    )
    out = datasheet.write_datasheet(config, tmp_path / "run", run=RUN, snapshots=SNAPSHOTS)
    assert set(out) == {"markdown", "html", "chart"}
    for item in out.values():
        data = (tmp_path / "run" / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
    markdown = (tmp_path / "run" / "datasheet.md").read_text()
    for section in (
        "## Intended use",
        "## Data sources",
        "## Opt-in rate per jurisdiction",
        "## Exclusions per reason",
        "## Retention",
        "## Known limits",
    ):
        assert section in markdown
    assert "| US | 5 | 3 | 60.0% |" in markdown
    assert "not EU" in markdown and "| consent_records | `consent_records` | 3 |" in markdown
    html = (tmp_path / "run" / "datasheet.html").read_text()
    assert '<img src="exclusions.png"' in html and "<h2>Known limits</h2>" in html
    assert (tmp_path / "run" / "exclusions.png").read_bytes()[:4] == b"\x89PNG"
