"""Typed, validated configuration (`conf/*.yaml`, format in DESIGN.md).

Validation happens before any read or write: an unknown key, a dataset without a use case, a
use case without accepted policy versions, a dataset naming an undeclared use case, or a table
path that does not exist stops the run with a :class:`ConfigError` naming the key, e.g.
``datasets.gen_shards.use_case``.

Path rules (decided here, documented in the README): ``lake_root`` is resolved against the
directory of the config file; every table and dataset path is resolved against ``lake_root``
unless it is absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from consentgate.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TablesConfig(_Strict):
    """Where the three source tables live, relative to ``lake_root``."""

    consent_records: str = "consent_records"
    assets: str = "assets"
    lineage: str = "lineage"


class JurisdictionRules(_Strict):
    """Either an allow list or a deny list of jurisdiction codes, never both."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> JurisdictionRules:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("give exactly one of 'allow' or 'deny'")
        return self

    def permits(self, jurisdiction: str | None) -> bool:
        """Whether a (non-null) jurisdiction passes these rules."""
        if jurisdiction is None:
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
    def _datasets_name_known_use_cases(self) -> Config:
        for name, dataset in self.datasets.items():
            if dataset.use_case not in self.use_cases:
                raise ConfigError(
                    f"datasets.{name}.use_case: unknown use case {dataset.use_case!r} "
                    f"(declared: {', '.join(sorted(self.use_cases))})"
                )
        return self

    def resolve(self, path: str) -> Path:
        """Resolve a table or dataset path against ``lake_root``."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.lake_root / candidate

    def table_path(self, table: Literal["consent_records", "assets", "lineage"]) -> Path:
        """Absolute path of one of the three source tables."""
        return self.resolve(getattr(self.tables, table))

    def dataset_path(self, name: str) -> Path:
        """Absolute path of a configured dataset."""
        return self.resolve(self.datasets[name].path)

    @property
    def state_dir(self) -> Path:
        """Where consentgate keeps its own tables: manifests, snapshots, audit log."""
        return self.lake_root / "_consentgate"

    def check_paths(self) -> None:
        """Fail with the key's name when a configured table or dataset path does not exist."""
        if not self.lake_root.is_dir():
            raise ConfigError(f"lake_root: directory {self.lake_root} does not exist")
        for table in ("consent_records", "assets", "lineage"):
            path = self.table_path(table)
            if not path.exists():
                raise ConfigError(f"tables.{table}: path {path} does not exist")
        for name in self.datasets:
            path = self.dataset_path(name)
            if not path.exists():
                raise ConfigError(f"datasets.{name}.path: path {path} does not exist")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


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
        ConfigError: naming the first offending key.
    """
    if not isinstance(data, dict):
        raise ConfigError("<root>: the config must be a mapping")
    data = dict(data)
    if "lake_root" not in data:
        raise ConfigError("lake_root: required key is missing")
    lake_root = Path(str(data["lake_root"]))
    data["lake_root"] = (lake_root if lake_root.is_absolute() else base_dir / lake_root).resolve()
    data["source"] = source
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _format_loc(tuple(first["loc"]))
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "required key is missing"
        raise ConfigError(f"{loc}: {message}") from None
    if check_paths:
        config.check_paths()
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
