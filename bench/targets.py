"""Targets, their phase breakdowns, and step lines: the pure part (no Spark) shared by the
scenarios, which measure, and the report, which renders (also from an older results file).

A target entry is ``{"target": "<= 1.5", "value": 1.3, "met": True, "phases": [...]}``:
``met`` is None when the value could not be measured; ``phases`` say where the time went, each
``{"phase", "seconds", "jobs", "tasks"}`` (a phase may lack some, or carry files and bytes
instead), so that a missed target shows its reason next to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def step_entry(logger: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """One step line as the results keep it: which module, the step, its table, its seconds,
    Spark jobs and tasks, and its row count when it has one (counts only: a step line never
    carries an id, :mod:`consentgate.logs`)."""
    entry: dict[str, Any] = {"logger": logger, "step": str(fields.get("step", "?"))}
    for key in ("table", "rows", "jobs", "tasks", "seconds"):
        if key in fields:
            entry[key] = fields[key]
    return entry


def contender_phases(
    result: Mapping[str, Any], contenders: Sequence[str], *, steps_of: str | None = None
) -> list[dict[str, Any]]:
    """The phase breakdown of a comparing target: each contender's median seconds, Spark jobs
    and tasks (and its plan's seconds where it has one), then the step lines of ``steps_of``'s
    median repeat (an outer step, such as ``purge``, includes the steps inside it)."""
    spark = result.get("spark") or {}
    phases: list[dict[str, Any]] = []
    for c in contenders:
        seconds = (result.get("seconds") or {}).get(c) or {}
        phases.append(
            {
                "phase": c,
                "seconds": seconds.get("median"),
                "jobs": ((spark.get("jobs") or {}).get(c) or {}).get("median"),
                "tasks": ((spark.get("tasks") or {}).get(c) or {}).get("median"),
            }
        )
        plan = (result.get("plan_seconds") or {}).get(c)
        if plan and plan.get("median") is not None:
            phases.append({"phase": f"{c}: of which plan", "seconds": plan["median"]})
    if steps_of is not None:
        for line in (result.get("steps") or {}).get(steps_of) or []:
            phases.append(step_phase(steps_of, line))
    return phases


def step_phase(who: str, line: Mapping[str, Any]) -> dict[str, Any]:
    """A step line as a phase row: ``<who> step <step>``, its table apart (so that a report can
    sum a step over its tables)."""
    row: dict[str, Any] = {
        "phase": f"{who} step {line.get('step')}",
        "seconds": line.get("seconds"),
        "jobs": line.get("jobs"),
        "tasks": line.get("tasks"),
    }
    if line.get("table"):
        row["table"] = line["table"]
    return row


def at_most(limit: float) -> Callable[[float], bool]:
    """``value <= limit``, as a target's test."""
    return lambda value: value <= limit


def target(
    text: str, value: float | None, ok: Callable[[float], bool], phases: list[dict[str, Any]]
) -> dict[str, Any]:
    """A target entry: what is asked, what was measured, whether it was met (None: could not
    be measured) and where the time went."""
    return {
        "target": text,
        "value": value,
        "met": None if value is None else bool(ok(value)),
        "phases": phases,
    }


def sweep_targets(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Issue 20's sweep target: consentgate's purge at a smaller revoked fraction (0.01%) is
    no slower than at the run's main fraction (0.1%) plus 20%, per scale, clustered layout.

    The main fraction is that of the result that also ran the baselines. Unlike the paired
    ratios, this compares the medians of two scenarios of the same run (the same session, a
    few minutes apart). Computed from the results, so it also applies to an older results
    file when it is re-rendered.
    """
    ok = [
        r
        for r in results
        if r.get("scenario") == "purge_clustered"
        and r.get("status") == "ok"
        and ((r.get("seconds") or {}).get("consentgate") or {}).get("median") is not None
    ]
    out: list[dict[str, Any]] = []
    for main in ok:
        if len(main["seconds"]) < 2:  # the sweep runs consentgate alone
            continue
        for small in ok:
            if (
                small["scale"] != main["scale"]
                or len(small["seconds"]) != 1
                or small["revoked_fraction"] >= main["revoked_fraction"]
            ):
                continue
            a = small["seconds"]["consentgate"]["median"]
            b = main["seconds"]["consentgate"]["median"]
            phases = [
                {
                    "phase": f"consentgate at revoked {r['revoked_fraction']:g}",
                    "seconds": r["seconds"]["consentgate"]["median"],
                    "jobs": (r.get("spark") or {})
                    .get("jobs", {})
                    .get("consentgate", {})
                    .get("median"),
                    "tasks": (r.get("spark") or {})
                    .get("tasks", {})
                    .get("consentgate", {})
                    .get("median"),
                }
                for r in (small, main)
            ]
            for r in (small, main):
                for line in (r.get("steps") or {}).get("consentgate") or []:
                    row = step_phase("consentgate", line)
                    row["phase"] = f"r={r['revoked_fraction']:g}: {row['phase']}"
                    phases.append(row)
            out.append(
                {
                    "scenario": "purge_clustered",
                    "scale": main["scale"],
                    "revoked_fraction": small["revoked_fraction"],
                    "figure": (
                        f"consentgate at {small['revoked_fraction']:g} / at "
                        f"{main['revoked_fraction']:g} revoked"
                    ),
                    **target("<= 1.2", ratio(a, b), at_most(1.2), phases),
                }
            )
    return out


#: A step line on a command's stderr (``consentgate.logs.CLI_FORMAT``): the logger's name, then
#: the ``key=value`` pairs from ``step=`` on.
_STEP_LINE = re.compile(r"(?:^|\s)(?P<logger>consentgate[\w.]*)\s+(?P<pairs>step=.*)$")
#: One pair: a JSON-quoted string value (``consentgate.logs`` quotes those with spaces) or a bare one.
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _field(text: str) -> int | float | bool | str:
    if text.startswith('"'):
        return str(json.loads(text))
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_step_lines(stderr: str) -> list[dict[str, Any]]:
    """The step lines (:func:`consentgate.logs.step`) in a command's stderr, in order, as
    :func:`step_entry` keeps them; any other line (Spark's, the JVM's) is ignored."""
    out: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        m = _STEP_LINE.search(line.rstrip())
        if m is None:
            continue
        fields = {k: _field(v) for k, v in _PAIR.findall(m.group("pairs"))}
        out.append(step_entry(m.group("logger"), fields))
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, None when either is missing or ``b`` is 0."""
    return None if a is None or b is None or b == 0 else a / b
