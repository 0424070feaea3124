"""Typed, validated configuration (`conf/*.yaml`, format in DESIGN.md).

Validation happens before any read or write: an unknown key, a dataset without a use case, a
use case without accepted policy versions, a dataset naming an undeclared use case, or a table
path that does not exist stops the run with a :class:`ConfigError` naming the key, e.g.
``datasets.gen_shards.use_case``. Every problem is reported at once, one per line, each with
its dotted key; an unknown key comes with the closest key allowed at its level ("did you mean
'lake_root'?").

Path rules (decided here, documented in the README): ``lake_root`` is resolved against the
directory of the config file; every table and dataset path is resolved against ``lake_root``
unless it is absolute.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from consentgate.errors import ConfigError
from consentgate.state import STATE_DIR


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TablesConfig(_Strict):
    """Where the three source tables live, relative to ``lake_root``."""

    consent_records: str = "consent_records"
    assets: str = "assets"
    lineage: str = "lineage"


#: The syntax of a jurisdiction code unless a use case sets its own ``pattern``: ISO 3166-1
#: alpha-2 (``EU`` and the other reserved codes included), optionally with an ISO 3166-2
#: subdivision (``US-CA``).
JURISDICTION_PATTERN = "[A-Z]{2}(-[A-Z0-9]{1,3})?"


class JurisdictionRules(_Strict):
    """Either an allow list or a deny list of jurisdiction codes, never both, and the syntax
    of a code (``pattern``, a regular expression the whole canonical code must match).

    Decided (issue #23 item 6): a code that does not match is *unknown*, not a code: under
    ``deny: [EU]``, ``EU\u200b``, ``E U`` or ``EU.`` would otherwise pass as "not EU" and grant.
    The pattern is matched by Java (Spark) and Python (here): keep to classes, repetitions,
    groups and alternation, which both read alike.
    """

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None
    pattern: str = JURISDICTION_PATTERN

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        if not pattern or re.fullmatch(pattern, ""):
            raise ValueError(f"{pattern!r} matches the empty code")
        return pattern

    @field_validator("allow", "deny")
    @classmethod
    def _canonical(cls, codes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Codes in canonical form only (DESIGN rule 2: upper case, no surrounding spaces).

        A record's jurisdiction is canonicalised before it is compared; a code written
        otherwise would match nothing (an allow entry that grants nothing, a deny entry the
        datasheet would not show as a rule), so it is refused here, naming the spelling.
        """
        for code in codes or ():
            canonical = "".join(c.upper() if c.isascii() else c for c in code.strip())
            if not canonical:
                raise ValueError("a jurisdiction code cannot be empty")
            if canonical != code:
                raise ValueError(
                    f"{code!r} is not a canonical jurisdiction code (upper case, no "
                    f"surrounding spaces): write {canonical!r}"
                )
        return codes

    @model_validator(mode="after")
    def _one_of(self) -> JurisdictionRules:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("give exactly one of 'allow' or 'deny'")
        for code in (*(self.allow or ()), *(self.deny or ())):
            if not self.readable(code):
                raise ValueError(
                    f"{code!r} does not match the jurisdiction pattern {self.pattern!r}"
                )
        return self

    def readable(self, jurisdiction: str) -> bool:
        """Whether a canonical code has the syntax of a code (``pattern``)."""
        return re.fullmatch(self.pattern, jurisdiction) is not None

    def permits(self, jurisdiction: str | None) -> bool:
        """Whether a (non-null) jurisdiction is readable and passes these rules."""
        if jurisdiction is None or not self.readable(jurisdiction):
            return False
        if self.allow is not None:
            return jurisdiction in self.allow
        return jurisdiction not in (self.deny or ())


class UseCaseConfig(_Strict):
    """Which policy versions a use case accepts and where it may draw data from."""

    accepted_policy_versions: tuple[str, ...] = Field(min_length=1)
    jurisdictions: JurisdictionRules | None = None


class DatasetConfig(_Strict):
    """A derivative Delta table and how its rows trace back to assets.

    Rows name their asset directly through ``asset_column``; without one, sources come from
    the lineage table by ``key``.
    """

    path: str
    use_case: str
    key: str
    asset_column: str | None = None
    retention_days: int | None = Field(default=None, ge=0)
    derived_at_column: str | None = None

    @model_validator(mode="after")
    def _retention_needs_column(self) -> DatasetConfig:
        if self.retention_days is not None and self.derived_at_column is None:
            raise ValueError("retention_days needs derived_at_column")
        return self


class ErasureConfig(_Strict):
    """Delay between a purge and physical erasure (Delta VACUUM retention)."""

    window_hours: int = Field(default=168, ge=0)


class SparkConfig(_Strict):
    """Spark master and extra settings for sessions the jobs create themselves."""

    master: str = "local[*]"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class GateConfig(_Strict):
    """Thresholds below which the gate refuses to publish a snapshot."""

    min_allowlist_assets: int = Field(default=1, ge=1)


class AirflowConfig(_Strict):
    """How the DAGs run the jobs: in-process (``local``) or via ``spark-submit``."""

    mode: Literal["local", "spark-submit"] = "local"
    purge_schedule: str = "0 2 * * *"
    spark_conn_id: str = "spark_default"


class Config(_Strict):
    """The whole configuration, with paths already resolved."""

    lake_root: Path
    tables: TablesConfig = Field(default_factory=TablesConfig)
    use_cases: dict[str, UseCaseConfig] = Field(min_length=1)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    erasure: ErasureConfig = Field(default_factory=ErasureConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    source: Path | None = None

    @model_validator(mode="after")
    def _datasets_name_known_use_cases(self, info: ValidationInfo) -> Config:
        # parse_config checks this on the raw mapping (so that it is reported together with
        # every other problem) and tells us through the context not to raise it a second time.
        if not (info.context or {}).get(_CROSS_CHECKED):
            problems = _undeclared_use_cases(
                {name: d.use_case for name, d in self.datasets.items()}, self.use_cases
            )
            if problems:
                raise config_error(problems)
        return self

    def resolve(self, path: str, *, key: str | None = None) -> Path:
        """Resolve a table or dataset path against ``lake_root``; it must stay inside it.

        Raises:
            ConfigError: the path (symlinks followed) leaves the lake root, named by ``key``
                (the config key or registry entry it came from) — a registry entry or a
                config must never point a purge or a VACUUM at another directory.
        """
        full = _under(self.lake_root, path)
        escaped = outside_root(self.lake_root, full)
        if escaped is not None:
            raise ConfigError(f"{key or 'path'}: {escaped}")
        return full

    def table_path(self, table: Literal["consent_records", "assets", "lineage"]) -> Path:
        """Absolute path of one of the three source tables."""
        return self.resolve(getattr(self.tables, table), key=f"tables.{table}")

    def dataset_path(self, name: str) -> Path:
        """Absolute path of a configured dataset."""
        return self.resolve(self.datasets[name].path, key=f"datasets.{name}.path")

    @property
    def state_dir(self) -> Path:
        """Where consentgate keeps its own tables: manifests, snapshots, audit log."""
        return self.lake_root / STATE_DIR

    def check_paths(self) -> None:
        """Fail naming every configured table or dataset path that does not exist."""
        problems = _missing_paths(
            self.lake_root,
            self.tables.model_dump(),
            {name: d.path for name, d in self.datasets.items()},
        )
        if problems:
            raise config_error(problems, source=self.source)


#: Validation-context flag: the dataset/use-case cross-check was done on the raw mapping.
_CROSS_CHECKED = "consentgate.cross_checked"
#: Fields of :class:`Config` that parse_config fills in, never the user.
_INTERNAL_KEYS = frozenset({"source"})


def config_error(problems: Sequence[str], *, source: Path | None = None) -> ConfigError:
    """One :class:`ConfigError` listing every problem on its own line (``key: message``)."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    where = f" in {source}" if source is not None else ""
    return ConfigError(
        f"{len(problems)} problems{where}:\n" + "\n".join(f"  {p}" for p in problems)
    )


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (difflib's ratio), if any is reasonably close."""
    matches = difflib.get_close_matches(word, sorted(candidates), n=1)
    return matches[0] if matches else None


def _suggest(word: str, candidates: Iterable[str]) -> str:
    match = closest(word, candidates)
    return f"; did you mean {match!r}?" if match else ""


def _format_loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _unwrap_optional(rest[0])
    return annotation


def _allowed_keys(parent: Sequence[int | str]) -> list[str]:
    """The keys a mapping at ``parent`` (a pydantic error location) may hold."""
    node: Any = Config
    for part in parent:
        node = _unwrap_optional(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return []
    node = _unwrap_optional(node)
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return []
    internal = _INTERNAL_KEYS if node is Config else frozenset()
    return [key for key in node.model_fields if key not in internal]


def _validation_problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            hint = _suggest(str(loc[-1]), allowed)
            message = (
                f"unknown key{hint}"
                if hint
                else f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{_format_loc(loc)}: {message}")
    return problems


def _undeclared_use_cases(dataset_use_cases: Mapping[Any, Any], use_cases: Any) -> list[str]:
    """``datasets.<name>.use_case`` problems for datasets naming an undeclared use case."""
    if not isinstance(use_cases, Mapping):
        return []
    declared = sorted(str(k) for k in use_cases)
    problems: list[str] = []
    for name, use_case in dataset_use_cases.items():
        if isinstance(use_case, str) and use_case not in use_cases:
            problems.append(
                f"datasets.{name}.use_case: unknown use case {use_case!r} "
                f"(declared: {', '.join(declared) or 'none'}){_suggest(use_case, declared)}"
            )
    return problems


def _under(root: Path, value: str) -> Path:
    """A configured path: absolute as given, otherwise under ``root``."""
    candidate = Path(value)
    return candidate if candidate.is_absolute() else root / candidate


def _configured_paths(
    tables: Mapping[str, Any], dataset_paths: Mapping[Any, Any]
) -> list[tuple[str, str]]:
    """``(key, path)`` of every table and dataset path given as a string (values of the wrong
    type are skipped: validation reports those)."""
    keyed = [(f"tables.{name}", tables.get(name)) for name in TablesConfig.model_fields]
    keyed += [(f"datasets.{name}.path", path) for name, path in dataset_paths.items()]
    return [(key, value) for key, value in keyed if isinstance(value, str)]


def _missing_paths(
    lake_root: Any, tables: Mapping[str, Any], dataset_paths: Mapping[Any, Any]
) -> list[str]:
    """Problems for configured paths that do not exist."""
    if not isinstance(lake_root, Path):
        return []
    problems: list[str] = []
    root_exists = lake_root.is_dir()
    if not root_exists:
        problems.append(f"lake_root: directory {lake_root} does not exist")
    for key, value in _configured_paths(tables, dataset_paths):
        if not Path(value).is_absolute() and not root_exists:
            continue  # already reported as lake_root
        path = _under(lake_root, value)
        if not path.exists():
            problems.append(f"{key}: path {path} does not exist")
    return problems


def outside_root(root: Path, path: Path) -> str | None:
    """Why ``path`` is not inside ``root`` once both are resolved (symlinks followed, ``..``
    collapsed), or None when it is (issue #23 item 4)."""
    base = root.resolve()
    resolved = path.resolve()
    if resolved == base or resolved.is_relative_to(base):
        return None
    via = "" if path.absolute() == resolved else f" (it resolves to {resolved})"
    return f"{path} is outside lake_root {root}{via}; every table must live under the lake root"


def _escaping_paths(
    lake_root: Any, tables: Mapping[str, Any], dataset_paths: Mapping[Any, Any]
) -> list[str]:
    """Problems for configured paths that leave the lake root."""
    if not isinstance(lake_root, Path):
        return []
    return [
        f"{key}: {why}"
        for key, value in _configured_paths(tables, dataset_paths)
        for why in [outside_root(lake_root, _under(lake_root, value))]
        if why is not None
    ]


def _raw_problems(data: Mapping[str, Any], *, check_paths: bool) -> list[str]:
    """Cross-key problems found on the raw mapping, so that they are reported even when
    validation of unrelated keys fails."""
    datasets = data.get("datasets")
    datasets = datasets if isinstance(datasets, Mapping) else {}
    entries = {n: d for n, d in datasets.items() if isinstance(d, Mapping)}
    problems = _undeclared_use_cases(
        {n: d.get("use_case") for n, d in entries.items()}, data.get("use_cases")
    )
    tables = data.get("tables", {})
    defaults = TablesConfig().model_dump()
    known = {**defaults, **tables} if isinstance(tables, Mapping) else {}
    paths = {n: d.get("path") for n, d in entries.items()}
    problems += _escaping_paths(data.get("lake_root"), known, paths)
    if check_paths:
        problems += _missing_paths(data.get("lake_root"), known, paths)
    return problems


def parse_config(
    data: Any, *, base_dir: Path, source: Path | None = None, check_paths: bool = True
) -> Config:
    """Validate a parsed YAML mapping into a :class:`Config`.

    Args:
        data: The mapping read from YAML.
        base_dir: Directory that a relative ``lake_root`` is resolved against.
        source: The file the mapping came from, kept for error messages and job submission.
        check_paths: Also require every table and dataset path to exist (off only for
            writers that are about to create them, such as ``init-demo``).

    Raises:
        ConfigError: listing every problem found, one per line, each with its dotted key
            (schema errors, unknown keys with the closest allowed key, datasets naming an
            undeclared use case and, with ``check_paths``, paths that do not exist).
    """
    if not isinstance(data, dict):
        raise ConfigError("<root>: the config must be a mapping")
    data = dict(data)
    if isinstance(data.get("lake_root"), (str, Path)):
        lake_root = Path(data["lake_root"])
        data["lake_root"] = (
            lake_root if lake_root.is_absolute() else base_dir / lake_root
        ).resolve()
    data["source"] = source
    problems = _raw_problems(data, check_paths=check_paths)
    try:
        config = Config.model_validate(data, context={_CROSS_CHECKED: True})
    except ValidationError as exc:
        problems = _validation_problems(exc) + problems
    if problems:
        # Grouped by top-level key, in the file's order (a missing required key first).
        order = {str(key): index for index, key in enumerate(data)}
        problems.sort(key=lambda p: order.get(p.split(":", 1)[0].split(".", 1)[0], -1))
        raise config_error(problems, source=source)
    return config


def load_config(path: str | Path, *, check_paths: bool = True) -> Config:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: when the file is missing, is not YAML, or fails validation.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--conf: config file {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return parse_config(
        data, base_dir=file.resolve().parent, source=file.resolve(), check_paths=check_paths
    )
