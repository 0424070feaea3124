"""Datasheet for a gate run: what went into the training snapshot, for people.

The manifest is evidence for machines; the datasheet (in the spirit of "Datasheets for
Datasets", Gebru et al.) is the same run explained to the people who approve a training run or
answer a creator: where the data came from (tables and Delta versions), how many owners opted
in per jurisdiction, what was excluded and why, what the data may be used for, how long it is
kept, and what the numbers do not say. Written as Markdown and as self-contained HTML next to
the manifest, with a PNG chart (matplotlib, Agg backend: no display needed) of exclusions per
reason and jurisdiction. The manifest records each file's SHA-256, so the datasheet is covered
by the manifest's seal.

Everything here works on the run's small aggregates (counts per reason and jurisdiction); no
table is read.

Opt-in rate (defined here): granted assets / assets that exist at the evaluation instant
(every evaluated asset except ``asset_unknown`` and ``asset_deleted``), per jurisdiction (the
consent record's, else the asset's; ``(none)`` when both are null). A jurisdiction the use
case's jurisdiction rule shuts out has no rate: its owners' choices never count, so "0.0%"
would read as a refusal that nobody gave; the sheet says "blocked by jurisdiction rule".
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from consentgate.config import Config, JurisdictionRules

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Label for assets/records without a jurisdiction.
NO_JURISDICTION: Final = "(none)"
MARKDOWN_FILE: Final = "datasheet.md"
HTML_FILE: Final = "datasheet.html"
CHART_FILE: Final = "exclusions.png"
_NOT_EXISTING: Final = ("asset_unknown", "asset_deleted")

KNOWN_LIMITS: Final = (
    "Consent is evaluated at one instant (`evaluated_at`); grants withdrawn later are removed "
    "from this snapshot by the nightly purge, but a model already trained on it is not "
    "retrained automatically: run `consentgate impact` to find affected models.",
    "Rows reach assets through the lineage table as it was at the recorded version; a derivative "
    "whose lineage is missing or wrong upstream is excluded (`no_lineage`), never guessed.",
    "Consent records that cannot be attributed to the asset's owner are ignored, so an asset "
    "whose only grant came from someone else counts as `no_consent_record`.",
    "Jurisdiction is the consent record's, else the asset's; it is only as accurate as the "
    "platform's geolocation or the owner's declaration.",
    "Exclusion counts for datasets are per row key; a key shared by several rows counts once.",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class OptInRate:
    """One jurisdiction's row of the opt-in table.

    Attributes:
        jurisdiction: The code, or :data:`NO_JURISDICTION`.
        assets: Assets that exist at the evaluation instant.
        granted: Of those, the granted ones.
        rate: ``granted / assets``; ``None`` when no asset exists.
        blocked: The use case's jurisdiction rule shuts this jurisdiction out (a null
            jurisdiction never passes a rule), so no owner there could opt in.
    """

    jurisdiction: str
    assets: int
    granted: int
    rate: float | None
    blocked: bool

    def describe(self) -> str:
        """The rate as the sheet prints it, naming the rule when the rule is the cause."""
        if self.assets == 0:
            return "n/a"
        if self.blocked and self.granted == 0:
            if self.jurisdiction == NO_JURISDICTION:
                return "blocked by jurisdiction rule (jurisdiction unknown)"
            return "blocked by jurisdiction rule"
        return _pct(self.rate)


def opt_in_rates(
    by_jurisdiction: Mapping[str, Mapping[str, int]], *, rules: JurisdictionRules | None = None
) -> list[OptInRate]:
    """Per jurisdiction: existing assets, granted, the opt-in rate, and whether ``rules`` block it.

    Args:
        by_jurisdiction: Evaluated assets per jurisdiction and reason.
        rules: The use case's jurisdiction rule, if it has one.
    """
    out = []
    for jurisdiction, counts in sorted(by_jurisdiction.items()):
        existing = sum(n for r, n in counts.items() if r not in _NOT_EXISTING)
        granted = counts.get("granted", 0)
        code = None if jurisdiction == NO_JURISDICTION else jurisdiction
        out.append(
            OptInRate(
                jurisdiction=jurisdiction,
                assets=existing,
                granted=granted,
                rate=granted / existing if existing else None,
                blocked=rules is not None and not rules.permits(code),
            )
        )
    return out


def chart_figure(by_jurisdiction: Mapping[str, Mapping[str, int]], *, title: str) -> Figure:
    """Excluded assets per reason, stacked by jurisdiction; the caller closes the figure.

    The legend sits outside the plot, right of it, and the layout makes room for it: inside
    the axes it covered the end of the longest bar, the one a reader looks at first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reasons = sorted({r for c in by_jurisdiction.values() for r in c if r != "granted"})
    jurisdictions = sorted(by_jurisdiction)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        if reasons:
            bottoms = [0] * len(reasons)
            for jurisdiction in jurisdictions:
                values = [by_jurisdiction[jurisdiction].get(r, 0) for r in reasons]
                ax.barh(reasons, values, left=bottoms, label=jurisdiction)
                bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
            ax.legend(
                title="jurisdiction",
                fontsize=8,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0.0,
            )
        else:
            ax.text(0.5, 0.5, "no exclusions", ha="center", va="center")
        ax.set_xlabel("excluded assets")
        ax.set_title(title)
        fig.tight_layout()  # counts the outside legend, shrinking the axes to fit it
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _chart(path: Path, by_jurisdiction: Mapping[str, Mapping[str, int]], title: str) -> None:
    import matplotlib.pyplot as plt

    fig = chart_figure(by_jurisdiction, title=title)
    try:
        # Fixed metadata so the same counts always give the same bytes.
        fig.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def render_markdown(config: Config, *, run: Mapping[str, Any], snapshots: Mapping[str, Any]) -> str:
    """The datasheet as Markdown."""
    ev = run["evaluation"]
    uc = config.use_cases.get(str(run["use_case"]))
    policies = ", ".join(uc.accepted_policy_versions) if uc else "unknown"
    rules = ""
    if uc is not None and uc.jurisdictions is not None:
        j = uc.jurisdictions
        rules = (
            f" and whose jurisdiction is one of {', '.join(j.allow)}"
            if j.allow is not None
            else f" and whose jurisdiction is not {', '.join(j.deny or ())}"
        )
    lines = [
        f"# Datasheet: model {run['model_version']} ({run['use_case']})",
        "",
        f"Gate run `{run['run_id']}`, consent evaluated at {run['as_of']}. The manifest "
        "(`manifest.json`) next to this file is the verifiable record; this sheet explains it.",
        "",
        "## Intended use",
        "",
        f"Training model version **{run['model_version']}** for the use case "
        f"**{run['use_case']}** only. Every row in the snapshots comes from assets whose owners "
        f"granted this use case under an accepted policy version ({policies}){rules}. "
        "Any other use needs its own gate run.",
        "",
        "## Data sources",
        "",
        "| table | path | Delta version |",
        "|---|---|---|",
    ]
    for name, version in sorted(run["source_versions"].items()):
        lines.append(f"| {name} | `{config.tables.model_dump()[name]}` | {version} |")
    for name, snap in sorted(snapshots.items()):
        lines.append(
            f"| {name} (source) | `{snap['source']['path']}` | {snap['source']['version']} |"
        )
    lines += [
        "",
        "## Snapshots",
        "",
        "| dataset | snapshot | version | rows | assets | content Merkle root |",
        "|---|---|---|---|---|---|",
    ]
    for name, snap in sorted(snapshots.items()):
        lines.append(
            f"| {name} | `{snap['path']}` | {snap['version']} | {snap['rows']} | {snap['assets']} "
            f"| `{snap['content_merkle_root'][:16]}…` |"
        )
    lines += [
        "",
        f"Allowlist: **{run['allowlist']['asset_count']}** granted assets of {ev['assets']} "
        f"evaluated; Merkle root `{run['allowlist']['merkle_root']}`.",
        "",
        "## Opt-in rate per jurisdiction",
        "",
        "| jurisdiction | existing assets | granted | opt-in rate |",
        "|---|---|---|---|",
    ]
    # A jurisdiction with no existing asset (only unknown or deleted ones) has no rate to show.
    rates = [
        rate
        for rate in opt_in_rates(ev["by_jurisdiction"], rules=uc.jurisdictions if uc else None)
        if rate.assets
    ]
    for rate in rates:
        lines.append(
            f"| {rate.jurisdiction} | {rate.assets} | {rate.granted} | {rate.describe()} |"
        )
    if any(r.blocked and r.granted == 0 for r in rates):
        lines += [
            "",
            "A jurisdiction blocked by the use case's jurisdiction rule has no opt-in rate: its "
            "assets are left out whatever their owners chose.",
        ]
    lines += ["", "## Exclusions per reason", ""]
    lines += _exclusion_lines("Assets", "assets", ev["reasons"])
    for name, snap in sorted(snapshots.items()):
        rows = _exclusion_lines(f"Rows of `{name}` (by key)", "keys", snap["exclusions"])
        lines += ["", *rows]
    lines += [
        "",
        f"![Exclusions per reason and jurisdiction]({CHART_FILE})",
        "",
        "## Retention",
        "",
        "| dataset | retention (days) | measured on |",
        "|---|---|---|",
    ]
    for name, snap in sorted(snapshots.items()):
        days = snap["retention_days"] if snap["retention_days"] is not None else "none"
        column = snap["derived_at_column"] or "-"
        lines.append(f"| {name} | {days} | `{column}` |")
    lines += [
        "",
        "Rows older than the retention at the evaluation instant are excluded "
        "(`retention_expired`); the nightly purge keeps applying it to the snapshots.",
        "",
        "## Known limits",
        "",
    ]
    lines += [f"- {limit}" for limit in KNOWN_LIMITS]
    return "\n".join(lines) + "\n"


def _exclusion_lines(what: str, unit: str, counts: Mapping[str, int]) -> list[str]:
    """A reason table for ``what``, or one line saying nothing was excluded.

    ``granted`` is a decision, not an exclusion, so it never appears here; a table whose only
    row would read ``(none) | 0`` is replaced by the sentence it means.
    """
    excluded = {r: n for r, n in sorted(counts.items()) if r != "granted" and n}
    if not excluded:
        return [f"{what}: nothing excluded."]
    rows = [f"| {reason} | {n} |" for reason, n in excluded.items()]
    return [f"{what}:", "", f"| reason | {unit} |", "|---|---|", *rows]


def _markdown_to_html(markdown: str, title: str) -> str:
    """A minimal converter for the subset :func:`render_markdown` emits (headings, tables,
    lists, images, paragraphs), so the HTML needs no extra dependency."""
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 8px}"
        "code{font-size:90%}</style></head><body>",
    ]
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{inline(c)}</th>" for c in rows[0]) + "</tr>")
            for row in rows[2:]:
                out.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
            continue
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        elif line.startswith("!["):
            match = re.match(r"!\[(.*)\]\((.*)\)", line)
            if match:
                alt, src = match.groups()
                out.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(alt)}"></p>')
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_datasheet(
    config: Config,
    out_dir: Path,
    *,
    run: Mapping[str, Any],
    snapshots: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, str]]:
    """Write ``datasheet.md``, ``datasheet.html`` and ``exclusions.png`` into ``out_dir``.

    Returns:
        ``{"markdown"|"html"|"chart": {"path": file name, "sha256": hex}}`` for the manifest.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Datasheet: model {run['model_version']} ({run['use_case']})"
    markdown = render_markdown(config, run=run, snapshots=snapshots)
    (out_dir / MARKDOWN_FILE).write_text(markdown, encoding="utf-8")
    (out_dir / HTML_FILE).write_text(_markdown_to_html(markdown, title), encoding="utf-8")
    _chart(
        out_dir / CHART_FILE,
        run["evaluation"]["by_jurisdiction"],
        f"Excluded assets, {run['use_case']}, {run['as_of'][:10]}",
    )
    return {
        kind: {"path": name, "sha256": _sha256(out_dir / name)}
        for kind, name in (("markdown", MARKDOWN_FILE), ("html", HTML_FILE), ("chart", CHART_FILE))
    }


__all__ = [
    "CHART_FILE",
    "HTML_FILE",
    "KNOWN_LIMITS",
    "MARKDOWN_FILE",
    "NO_JURISDICTION",
    "OptInRate",
    "chart_figure",
    "opt_in_rates",
    "render_markdown",
    "write_datasheet",
]
