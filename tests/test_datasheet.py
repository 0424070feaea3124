"""The datasheet: every section the issue asks for, a PNG chart, digests for the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from consentgate import datasheet
from consentgate.config import Config, parse_config

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


def _config(tmp_path: Path, **use_case: Any) -> Config:
    return parse_config(
        {
            "lake_root": str(tmp_path),
            "use_cases": {
                "generative_training": {
                    "accepted_policy_versions": ["2026-03"],
                    "jurisdictions": {"deny": ["EU"]},
                    **use_case,
                }
            },
        },
        base_dir=tmp_path,
        check_paths=False,
    )


def test_opt_in_rates_ignore_nonexistent_assets() -> None:
    rates = {
        r.jurisdiction: r for r in datasheet.opt_in_rates(RUN["evaluation"]["by_jurisdiction"])
    }
    assert rates["US"].assets == 5 and rates["US"].rate == 3 / 5
    assert rates["EU"].rate == 0 and not rates["EU"].blocked  # no rule given, none applied


def test_write_datasheet(tmp_path: Path) -> None:
    config = _config(tmp_path)
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


def test_jurisdiction_shut_out_by_the_rule_is_named_not_rated(tmp_path: Path) -> None:
    by_jurisdiction = {
        "EU": {"jurisdiction_blocked": 4, "denied": 1},
        "US": {"granted": 3, "revoked": 2},
        "JP": {"denied": 2},
        datasheet.NO_JURISDICTION: {"jurisdiction_unknown": 1},
        "BR": {"asset_unknown": 2},  # no existing asset: no row
    }
    run = {**RUN, "evaluation": {**RUN["evaluation"], "by_jurisdiction": by_jurisdiction}}
    markdown = datasheet.render_markdown(_config(tmp_path), run=run, snapshots=SNAPSHOTS)
    assert "| EU | 5 | 0 | blocked by jurisdiction rule |" in markdown
    # JP passes the deny rule, so its 0 % is real; a null jurisdiction never passes a rule.
    assert "| JP | 2 | 0 | 0.0% |" in markdown
    assert "| (none) | 1 | 0 | blocked by jurisdiction rule (jurisdiction unknown) |" in markdown
    assert "| BR |" not in markdown
    allow_jp = _config(tmp_path, jurisdictions={"allow": ["JP"]})
    markdown = datasheet.render_markdown(allow_jp, run=run, snapshots=SNAPSHOTS)
    assert "| JP | 2 | 0 | 0.0% |" in markdown
    assert "| US | 5 | 3 | 60.0% |" in markdown  # granted anyway: the counts, not the rule, speak
    assert "| EU | 5 | 0 | blocked by jurisdiction rule |" in markdown


def test_nothing_excluded_is_said_not_tabulated(tmp_path: Path) -> None:
    snapshots = {
        "gen_shards": {**SNAPSHOTS["gen_shards"], "exclusions": {}},
        "stems": {**SNAPSHOTS["gen_shards"], "exclusions": {"no_lineage": 1}},
    }
    run = {
        **RUN,
        "evaluation": {
            **RUN["evaluation"],
            "reasons": {"granted": 3},
            "by_jurisdiction": {"US": {"granted": 3}},
        },
    }
    markdown = datasheet.render_markdown(_config(tmp_path), run=run, snapshots=snapshots)
    assert "(none) | 0" not in markdown
    assert "Assets: nothing excluded." in markdown
    assert "Rows of `gen_shards` (by key): nothing excluded." in markdown
    assert (
        "Rows of `stems` (by key):\n\n| reason | keys |\n|---|---|\n| no_lineage | 1 |" in markdown
    )
    assert "| granted | 3 |" not in markdown  # a grant is no exclusion


def _overlaps(a: Any, b: Any) -> bool:
    return bool(a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1)


def test_chart_legend_covers_no_bar_and_stays_in_the_picture() -> None:
    import matplotlib.pyplot as plt

    # The largest bar is also the lowest one: where the old lower-right legend sat.
    by_jurisdiction = {
        code: {"asset_deleted": 30, "denied": 2, "revoked": 1} for code in ("BR", "EU", "IN", "US")
    }
    fig = datasheet.chart_figure(by_jurisdiction, title="Excluded assets")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        (ax,) = fig.axes
        legend = ax.get_legend()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        bars = [patch.get_window_extent(renderer) for patch in ax.patches]
        assert len(bars) == 12
        assert not [bar for bar in bars if _overlaps(bar, box)]
        picture = fig.bbox
        assert picture.x0 <= box.x0 and box.x1 <= picture.x1
        assert picture.y0 <= box.y0 and box.y1 <= picture.y1
    finally:
        plt.close(fig)
