"""The ``consentgate`` command line: the stable contract that scripts and the DAGs call.

Every command that reads the lake takes ``--conf``, commands where time matters take
``--as-of``, and ``--json`` prints exactly one JSON object on stdout (plain aligned text
otherwise, see :func:`render_human`; progress and Spark's own chatter go to stderr). Exit status: 0 success, 1 a check failed
(verification, a refused gate), 2 bad input (config, arguments, table schema), always with a
message naming the culprit.

Arguments and the config are checked before any JVM starts: every command loads its config
(:func:`_config`), checks its arguments against it (use case declared, model version
well-formed, ``--as-of`` parses, files that must exist do) and only then asks for Spark
(:func:`_spark`), so bad input fails fast, with the message alone and no JVM output first.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from consentgate.errors import ConsentgateError
from consentgate.openlineage_events import flow_run

if TYPE_CHECKING:
    from consentgate.config import Config

F = TypeVar("F", bound=Callable[..., Any])

stderr = Console(stderr=True)


def _emit(
    result: dict[str, Any],
    *,
    as_json: bool,
    title: str,
    human: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> None:
    """Print a result: one sorted JSON object, or :func:`render_human`'s text.

    The text goes out through click, not rich: nothing is cut or re-wrapped at a console
    width (a terminal soft-wraps a long line itself, a file or pipe gets every line whole), and
    click drops the title's bold when stdout is not a terminal.
    """
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
        return
    text = render_human(result if human is None else human(result), title=title)
    head, _, body = text.partition("\n")
    click.echo(click.style(head, bold=True))
    click.echo(body, nl=False)


#: Separator between the columns of a plain table.
_GAP: Final = "  "
#: The widest table printed as a table; a wider one (the erasure receipts: nineteen columns)
#: prints each record as a block under its name instead, so it reads on a 100-column terminal.
TABLE_WIDTH: Final = 100


@dataclass(frozen=True)
class PlainTable:
    """Rows of text cells, each column padded to its widest cell.

    Human output is copied into tickets and grepped in logs, so a cell is never cut, folded or
    wrapped: the table is as wide as its widest row, whatever the terminal.

    Attributes:
        rows: The body, one tuple of cells per line.
        header: Column names, printed above the body when given.
    """

    rows: tuple[tuple[str, ...], ...]
    header: tuple[str, ...] = ()

    def lines(self, *, indent: int = 0) -> list[str]:
        """The table as lines of text, each starting with ``indent`` spaces."""
        body = ((self.header,) if self.header else ()) + self.rows
        if not body:
            return []
        width = max(len(row) for row in body)
        widths = [
            max((len(row[i]) for row in body if i < len(row)), default=0) for i in range(width)
        ]
        return [
            (
                " " * indent + _GAP.join(c.ljust(w) for c, w in zip(row, widths, strict=False))
            ).rstrip()
            for row in body
        ]


def _is_leaf(value: object) -> bool:
    """A value printed in one cell: a scalar, or an empty container (printed as ``none``)."""
    return not isinstance(value, (Mapping, list, tuple)) or not value


def _cell(value: object) -> str:
    """One value as text, in JSON's spelling for the values JSON spells differently."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Mapping, list, tuple)):
        return "none"  # only empty containers reach a cell
    return str(value)


def _records(values: Sequence[Any]) -> tuple[str, ...] | None:
    """The columns of ``values`` when it is a list of flat mappings (a table), else ``None``."""
    if not values or not all(
        isinstance(v, Mapping) and v and all(_is_leaf(x) for x in v.values()) for v in values
    ):
        return None
    return tuple(dict.fromkeys(str(k) for v in values for k in v))


def _table_lines(
    rows: Sequence[Mapping[str, Any]],
    columns: tuple[str, ...],
    *,
    names: Sequence[str] | None,
    indent: int,
) -> list[str]:
    """Flat records as a table, one column per key; ``names`` adds a first ``name`` column.

    A record without some column shows ``-`` there, like a ``None``, so rows stay aligned.
    """
    header = (("name",) if names is not None else ()) + columns
    body = tuple(
        ((names[i],) if names is not None else ())
        + tuple(_cell(row[c]) if c in row else "-" for c in columns)
        for i, row in enumerate(rows)
    )
    lines = PlainTable(rows=body, header=header).lines(indent=indent)
    if max(map(len, lines), default=0) <= TABLE_WIDTH:
        return lines
    # Too wide for a terminal: each record as a key/value block under its name (or number).
    out: list[str] = []
    for i, row in enumerate(rows):
        out.append(" " * indent + (f"{names[i]}:" if names is not None else f"[{i + 1}]"))
        out += _block_lines(row, indent=indent + 2)
    return out


def _value_lines(value: Any, *, indent: int) -> list[str]:
    """A nested value: a key/value block, a table, or one item per line, never JSON."""
    pad = " " * indent
    if isinstance(value, Mapping):
        inner = list(value.values())
        columns = _records(inner)
        if columns is not None:
            # {name: {column: value}}, e.g. tables by name: one row per name.
            names = [str(k) for k in value]
            return _table_lines(inner, columns, names=names, indent=indent)
        return _block_lines(value, indent=indent)
    if isinstance(value, (list, tuple)):
        columns = _records(value)
        if columns is not None:
            return _table_lines(value, columns, names=None, indent=indent)
        lines: list[str] = []
        for number, item in enumerate(value, start=1):
            if _is_leaf(item):
                lines.append(pad + _cell(item))
            else:
                lines.append(f"{pad}[{number}]")
                lines += _value_lines(item, indent=indent + 2)
        return lines
    return [pad + _cell(value)]


def _block_lines(mapping: Mapping[str, Any], *, indent: int) -> list[str]:
    """Scalars first as aligned ``key  value`` rows, then each nested value under its key."""
    pad = " " * indent
    flat = tuple((str(k), _cell(v)) for k, v in mapping.items() if _is_leaf(v))
    lines = PlainTable(rows=flat).lines(indent=indent)
    for key, value in mapping.items():
        if _is_leaf(value):
            continue
        if indent == 0:
            lines.append("")  # top-level sections apart, the first one from the title too
        lines.append(f"{pad}{key}:")
        lines += _value_lines(value, indent=indent + 2)
    return lines


def render_human(result: Mapping[str, Any], *, title: str) -> str:
    """A command's result as plain text for people, the counterpart of ``--json``.

    The same facts as the JSON object, laid out as aligned ``key  value`` rows, nested objects
    under their key (a mapping of flat records becomes a table with a ``name`` column, a list
    of flat records a table), lists one item per line. Paths, digests and messages are printed
    whole on one line each, so the output can be pasted or grepped; ``None`` prints as ``-``,
    an empty list or object as ``none``.

    Args:
        result: The command's result, as ``--json`` would print it.
        title: First line, naming what the result is about.

    Returns:
        The text, ending with a newline.
    """
    return "\n".join([title, *_block_lines(result, indent=0)]) + "\n"


def _fail(exc: ConsentgateError, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.exit_code}))
    # Escaped (a message quotes user input) and not re-wrapped: a config error lists one
    # problem per line and each must stay on its own line.
    stderr.print(f"[bold red]consentgate:[/] {escape(str(exc))}", soft_wrap=True)
    sys.exit(exc.exit_code)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)


def conf_option(func: F) -> F:
    return click.option(
        "--conf",
        "conf_path",
        type=click.Path(path_type=Path),
        envvar="CONSENTGATE_CONF",
        required=True,
        help="Config YAML (or $CONSENTGATE_CONF).",
    )(func)


def as_of_option(func: F) -> F:
    return click.option(
        "--as-of", "as_of", default=None, help="Evaluation instant, ISO-8601 (default: now, UTC)."
    )(func)


def _as_of(value: str | None) -> dt.datetime | None:
    from consentgate.runtime import parse_instant

    return None if value is None else parse_instant(value)


def _config(conf_path: Path) -> Config:
    """Load and validate the config (no JVM): every problem in it, each with its key."""
    from consentgate.config import load_config

    return load_config(conf_path)


def _spark(config: Config) -> Any:
    """Start (or join) Spark: only once the config and every argument have been checked."""
    from consentgate.spark import get_spark

    with stderr.status("starting Spark"):
        spark = get_spark(master=config.spark.master, conf=config.spark.conf)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _use_case(config: Config, use_case: str) -> str:
    """``--use-case`` must be declared in the config."""
    from consentgate.config import closest

    if use_case not in config.use_cases:
        known = ", ".join(sorted(config.use_cases))
        match = closest(use_case, config.use_cases)
        hint = f"; did you mean {match!r}?" if match else ""
        raise ConsentgateError(f"--use-case: {use_case!r} is not configured (known: {known}){hint}")
    return use_case


def _model_version(value: str, *, name: str = "--model-version") -> str:
    """A model version names a snapshot directory, so it must match the registry's rule."""
    from consentgate.registry import check_model_version

    try:
        return check_model_version(value)
    except ConsentgateError as exc:
        raise ConsentgateError(str(exc).replace("--model-version", name, 1)) from None


def _manifest_of_lake(config: Config, manifest: Path, *, name: str = "--manifest") -> Path:
    """A manifest file that exists, is a JSON object, and lies in ``config``'s lake."""
    from consentgate.manifest import lake_root_of, load_manifest

    if not manifest.is_file():
        raise ConsentgateError(f"{name}: file {manifest} does not exist")
    load_manifest(manifest)
    if lake_root_of(manifest) != config.lake_root.resolve():
        raise ConsentgateError(f"{name}: {manifest} does not belong to lake {config.lake_root}")
    return manifest


def _out_dir_exists(out: Path, *, name: str = "--out") -> Path:
    """An output file's directory must exist (it is not created on the user's behalf)."""
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ConsentgateError(f"{name}: directory {parent} does not exist")
    return out


def _run(
    as_json: bool,
    title: str,
    job: Callable[[], dict[str, Any]],
    *,
    human: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run a command's job and print its result: ``--json`` as is, else as plain text.

    Args:
        as_json: Print the one JSON object instead of text.
        title: The text output's first line.
        job: Checks the arguments and does the work; a :class:`ConsentgateError` exits.
        human: Adapts the result for people (the JSON is never adapted).
    """
    try:
        result = job()
    except ConsentgateError as exc:
        partial = getattr(exc, "result", None)
        if isinstance(partial, dict):
            # A run that failed in part (a purge with a failed table): what it did to every
            # other table is part of the answer, then the failure and its exit status.
            failed = {**partial, "ok": False, "error": str(exc), "exit_code": exc.exit_code}
            _emit(failed, as_json=as_json, title=title, human=human)
            _fail(exc, as_json=False)
        _fail(exc, as_json=as_json)
        raise AssertionError("unreachable") from exc
    _emit(result, as_json=as_json, title=title, human=human)
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="consentgate")
def main() -> None:
    """Enforce creator consent on machine-learning training data (Spark + Delta + Airflow)."""
    from consentgate.logs import configure_cli_logging, quiet_dependency_warnings

    configure_cli_logging()  # step lines at INFO on stderr; stdout stays for the result
    quiet_dependency_warnings()  # our dependencies' deprecation notices are not for our users
    _keep_stdout_for_the_result()


def _keep_stdout_for_the_result() -> None:
    """Send whatever writes to file descriptor 1 behind our back to stderr.

    The JVM inherits the process's descriptors and prints to its stdout on its own (Delta's
    VACUUM prints "Deleted N files and directories…"), which would break ``--json``'s promise
    of exactly one JSON object on stdout. So before any JVM starts, descriptor 1 becomes a copy
    of stderr and ``sys.stdout`` writes to a private duplicate of the real stdout. Skipped when
    stdout is not the process's descriptor 1 (click's test runner, an embedding program).
    """
    try:
        if sys.stdout.fileno() != 1:
            return
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    encoding = sys.stdout.encoding or "utf-8"
    sys.stdout = io.TextIOWrapper(
        os.fdopen(result_fd, "wb"), encoding=encoding, line_buffering=True
    )


@main.command("init-demo")
@click.option("--lake", "lake_dir", type=click.Path(path_type=Path), required=True)
@click.option("--assets", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@json_option
def init_demo_command(lake_dir: Path, assets: int, seed: int, as_json: bool) -> None:
    """Write a synthetic creator-platform lake and its conf."""

    def job() -> dict[str, Any]:
        from consentgate.demo import init_demo
        from consentgate.spark import get_spark

        if lake_dir.exists() and not lake_dir.is_dir():
            raise ConsentgateError(f"--lake: {lake_dir} exists and is not a directory")
        if lake_dir.exists() and any(lake_dir.iterdir()):
            raise ConsentgateError(f"--lake: {lake_dir} exists and is not empty")
        spark = get_spark(master="local[*]")
        spark.sparkContext.setLogLevel("ERROR")
        with stderr.status(f"generating a demo lake of {assets} assets"):
            summary = init_demo(spark, lake_dir, assets=assets, seed=seed)
        result: dict[str, Any] = summary.to_json()
        return result

    _run(as_json, "demo lake", job)


@main.command("inventory")
@conf_option
@json_option
def inventory_command(conf_path: Path, as_json: bool) -> None:
    """Tables of the lake: rows, files, bytes and Delta version, from the log alone."""

    def job() -> dict[str, Any]:
        from consentgate import lake

        config = _config(conf_path)
        tables: dict[str, Any] = {}
        for name in ("consent_records", "assets", "lineage"):
            tables[name] = lake.table_inventory(config.table_path(name))
        for name in config.datasets:
            tables[name] = lake.table_inventory(config.dataset_path(name))
        return {"lake_root": str(config.lake_root), "tables": tables}

    _run(as_json, "inventory", job)


@main.command("evaluate")
@conf_option
@click.option("--use-case", required=True)
@as_of_option
@click.option("--out", type=click.Path(path_type=Path), default=None)
@json_option
def evaluate_command(
    conf_path: Path, use_case: str, as_of: str | None, out: Path | None, as_json: bool
) -> None:
    """Effective consent per asset for one use case, written as a Delta table."""

    def job() -> dict[str, Any]:
        from consentgate.evaluate import run_evaluate

        instant = _as_of(as_of)
        config = _config(conf_path)
        _use_case(config, use_case)
        if out is not None and out.exists():
            raise ConsentgateError(
                f"--out: {out} already exists; an evaluation is never overwritten"
            )
        with flow_run("evaluate", config) as lineage:
            return lineage.done(
                run_evaluate(_spark(config), config, use_case=use_case, as_of=instant, out=out)
            )

    _run(as_json, f"consent for {use_case}", job)


@main.command("gate")
@conf_option
@click.option("--use-case", required=True)
@click.option("--model-version", required=True)
@click.option("--datasets", default=None, help="Comma-separated dataset names (default: all).")
@as_of_option
@json_option
def gate_command(
    conf_path: Path,
    use_case: str,
    model_version: str,
    datasets: str | None,
    as_of: str | None,
    as_json: bool,
) -> None:
    """Allowlist, immutable snapshots, manifest, registry and audit for one training run."""

    def job() -> dict[str, Any]:
        from consentgate.gate import _resolve_datasets, run_gate

        instant = _as_of(as_of)
        names = [d.strip() for d in datasets.split(",") if d.strip()] if datasets else None
        _model_version(model_version)
        config = _config(conf_path)
        _use_case(config, use_case)
        _resolve_datasets(config, use_case, names)  # the gate's own dataset rules, JVM-free
        with flow_run("gate", config) as lineage:
            return lineage.done(
                run_gate(
                    _spark(config),
                    config,
                    use_case=use_case,
                    model_version=model_version,
                    datasets=names,
                    as_of=instant,
                )
            )

    _run(as_json, f"gate {model_version}", job)


expect_head_option = click.option(
    "--expect-head",
    "expect_head",
    default=None,
    metavar="SEQ:SHA256|FILE",
    help="A head published earlier (SEQ:SHA256, or a copy of _consentgate/heads.json): the "
    "chain must still hold that entry (catches truncation and roll-back).",
)


@main.command("verify")
@click.argument("manifest", type=click.Path(path_type=Path))
@expect_head_option
@json_option
def verify_command(manifest: Path, expect_head: str | None, as_json: bool) -> None:
    """Re-hash every snapshot and the manifest itself; exit 1 on any problem.

    Runs without Spark or a JVM (hashlib, delta-rs and the Spark-free verifier), so a creator
    or auditor can run it offline against a copy of the lake.
    """

    def job() -> dict[str, Any]:
        from consentgate.heads import parse_expected
        from consentgate.manifest import verify_manifest

        expected = None if expect_head is None else parse_expected(expect_head, "registry")
        result: dict[str, Any] = verify_manifest(manifest, expect_head=expected)
        return result

    result = _run(as_json, "verify", job)
    if not result.get("ok"):
        sys.exit(1)


@main.command("prove")
@conf_option
@click.option("--manifest", type=click.Path(path_type=Path), required=True)
@click.option("--asset", "asset_id", required=True)
@click.option("--out", type=click.Path(path_type=Path), default=None)
@json_option
def prove_command(
    conf_path: Path, manifest: Path, asset_id: str, out: Path | None, as_json: bool
) -> None:
    """Inclusion or exclusion proof for one asset in a gate run."""

    def job() -> dict[str, Any]:
        from consentgate.proofs import check_asset_id, prove

        # Asset ids are opaque strings (the demo's are UUIDs, other lakes' need not be): one
        # that is empty or not in canonical form (rule 2) is malformed; see consentgate.proofs.
        check_asset_id(asset_id)
        if out is not None:
            _out_dir_exists(out)
        config = _config(conf_path)
        _manifest_of_lake(config, manifest)
        result: dict[str, Any] = prove(
            _spark(config), config, manifest_path=manifest, asset_id=asset_id
        )
        if out is not None:
            out.write_text(json.dumps(result["proof"], indent=2, sort_keys=True))
            result = {**result, "out": str(out)}
        return result

    _run(as_json, "proof", job)


@main.command("verify-proof")
@click.argument("proof", type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), required=True)
@json_option
def verify_proof_command(proof: Path, manifest: Path, as_json: bool) -> None:
    """Check a proof against the manifest's root alone (no Spark, no lake)."""

    def job() -> dict[str, Any]:
        from consentgate.proofs import verify_proof

        if not proof.is_file():
            raise ConsentgateError(f"PROOF: file {proof} does not exist")
        try:
            document = json.loads(proof.read_text())
        except json.JSONDecodeError as exc:
            raise ConsentgateError(f"PROOF: {proof} is not JSON: {exc}") from None
        result: dict[str, Any] = verify_proof(document, manifest_path=manifest)
        return result

    result = _run(as_json, "verify-proof", job)
    if not result.get("ok"):
        sys.exit(1)


@main.command("explain-model")
@conf_option
@click.argument("model_version")
@json_option
def explain_model_command(conf_path: Path, model_version: str, as_json: bool) -> None:
    """Which assets trained a model version, under which consent records."""

    def job() -> dict[str, Any]:
        from consentgate import registry
        from consentgate.gate import explain_model

        _model_version(model_version, name="MODEL_VERSION")
        config = _config(conf_path)
        # The registry is read with delta-rs: an unknown version fails without a JVM.
        if registry.find_entry(config, model_version=model_version) is None:
            raise ConsentgateError(f"MODEL_VERSION: {model_version!r} is not in the registry")
        result: dict[str, Any] = explain_model(_spark(config), config, model_version=model_version)
        return result

    _run(as_json, f"model {model_version}", job)


@main.command("training-summary")
@conf_option
@click.option("--model-version", required=True, help="A model version in the registry.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write training-summary-<V>.md and training-summary-<V>.json into this directory.",
)
@json_option
def training_summary_command(
    conf_path: Path, model_version: str, out: Path | None, as_json: bool
) -> None:
    """EU AI Act public summary of a model version's training content (§2.4, §3.1).

    Rendered from the registry, the manifest and the audit log alone (delta-rs, no Spark or
    JVM): every figure cites the manifest SHA-256 or audit entry it came from, and a figure the
    record does not hold says "not recorded". Prints Markdown (``--json``: the JSON form).
    Exit 2 when the model version is not registered, or its manifest, the registry chain or the
    audit chain does not check out.
    """
    try:
        from consentgate.training_summary import (
            render_markdown,
            training_summary,
            write_summary,
        )

        config = _config(conf_path)
        if out is not None and not out.is_dir():
            raise ConsentgateError(f"--out: directory {out} does not exist")
        summary = training_summary(config.lake_root, model_version)
        written = write_summary(summary, out) if out is not None else {}
    except ConsentgateError as exc:
        _fail(exc, as_json=as_json)
        return
    for path in written.values():
        stderr.print(f"wrote {escape(str(path))}", soft_wrap=True)
    if as_json:
        result = summary.to_json()
        if written:
            result["written"] = {kind: str(path) for kind, path in written.items()}
        click.echo(json.dumps(result, sort_keys=True))
    else:
        click.echo(render_markdown(summary), nl=False)


@main.command("impact")
@conf_option
@as_of_option
@json_option
def impact_command(conf_path: Path, as_of: str | None, as_json: bool) -> None:
    """Gate runs whose assets have since lost consent, with counts per reason."""

    def job() -> dict[str, Any]:
        from consentgate.gate import impact

        instant = _as_of(as_of)
        config = _config(conf_path)
        result: dict[str, Any] = impact(_spark(config), config, as_of=instant)
        return result

    _run(as_json, "impact", job)


@main.command("purge")
@conf_option
@as_of_option
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--no-erase", is_flag=True, help="Remove logically; skip physical erasure.")
@json_option
def purge_command(
    conf_path: Path, as_of: str | None, dry_run: bool, no_erase: bool, as_json: bool
) -> None:
    """Remove non-consented rows from every dataset and snapshot, then erase and verify."""

    def job() -> dict[str, Any]:
        from consentgate.purge import run_purge

        instant = _as_of(as_of)
        config = _config(conf_path)
        with flow_run("purge", config) as lineage:
            return lineage.done(
                run_purge(  # Spark starts only if the night has work (a certified one has none)
                    lambda: _spark(config),
                    config,
                    as_of=instant,
                    dry_run=dry_run,
                    erase=not no_erase,
                )
            )

    _run(as_json, "purge", job)


@main.command("backfill")
@conf_option
@as_of_option
@click.option("--dry-run", is_flag=True, help="Print the plan and impact; write nothing.")
@json_option
def backfill_command(conf_path: Path, as_of: str | None, dry_run: bool, as_json: bool) -> None:
    """Purge what no longer complies with the current policy and report affected runs."""

    def job() -> dict[str, Any]:
        from consentgate.purge import run_backfill

        instant = _as_of(as_of)
        config = _config(conf_path)
        with flow_run("backfill", config) as lineage:
            return lineage.done(
                run_backfill(_spark(config), config, as_of=instant, dry_run=dry_run)
            )

    _run(as_json, "backfill", job)


@main.group("audit")
def audit_group() -> None:
    """The append-only, hash-chained audit log."""


@audit_group.command("verify")
@conf_option
@expect_head_option
@json_option
def audit_verify_command(conf_path: Path, expect_head: str | None, as_json: bool) -> None:
    """Check the audit log's hash chain and its published heads; exit 1 when it is broken."""

    def job() -> dict[str, Any]:
        from consentgate.audit import verify_chain
        from consentgate.heads import parse_expected

        expected = None if expect_head is None else parse_expected(expect_head, "audit")
        config = _config(conf_path)
        result: dict[str, Any] = verify_chain(_spark(config), config, expect=expected)
        return result

    result = _run(as_json, "audit", job)
    if not result.get("ok"):
        sys.exit(1)


@main.command("demo")
@click.option("--lake", "lake_dir", type=click.Path(path_type=Path), default=Path("lake"))
@click.option("--assets", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Evaluation instant (default: the demo lake's fixed 'now', for reproducible numbers).",
)
@json_option
def demo_command(lake_dir: Path, assets: int, as_of: str | None, as_json: bool) -> None:
    """The whole story on a demo lake: purge, gate, verify, proofs (through Airflow)."""
    import logging

    # A line at once (issue #24 item 2): the imports before the story's first progress line
    # took about 11 s on a slow machine. (Wrapping the whole story in logs.running silenced
    # the Spark progress lines inside the DAG tasks instead: measured, 28 s without a line.)
    logging.getLogger("consentgate.story").info(
        "demo: lake %s, Airflow home .airflow; a line per step follows", lake_dir
    )
    try:
        from consentgate.demo import DEMO_NOW
        from consentgate.runtime import iso, parse_instant
        from consentgate.story import render, run_story

        instant = iso(parse_instant(as_of) if as_of else DEMO_NOW)
        summary: dict[str, Any] = run_story(
            lake=lake_dir.resolve(),
            airflow_home=Path(".airflow").resolve(),
            assets=assets,
            as_of=instant,
        )
    except ConsentgateError as exc:
        _fail(exc, as_json=as_json)
        return
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True, default=str))
    else:
        click.echo(render(summary))
