"""conf/default.yaml is the demo lake's conf and must stay valid and in step with the generator;
config errors are all reported at once, each with its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from consentgate.config import (
    Config,
    DatasetConfig,
    JurisdictionRules,
    UseCaseConfig,
    load_config,
    parse_config,
)
from consentgate.demo import demo_config
from consentgate.errors import ConfigError

DEFAULT = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"


def test_default_conf_matches_demo_generator() -> None:
    committed = yaml.safe_load(DEFAULT.read_text())
    expected = demo_config()
    assert committed.pop("lake_root") == "../lake"
    expected.pop("lake_root")
    assert committed == expected


def test_default_conf_validates() -> None:
    config = load_config(DEFAULT, check_paths=False)
    assert config.lake_root == (DEFAULT.parent / ".." / "lake").resolve()
    for dataset in config.datasets.values():
        assert dataset.use_case in config.use_cases


# --------------------------------------------------------------------------------------------
# Every problem at once, each with its key (issue #15, item 5)


def _valid() -> dict[str, Any]:
    return {
        "lake_root": ".",
        "use_cases": {"recommendation": {"accepted_policy_versions": ["2026-03"]}},
        "datasets": {
            "track_embeddings": {
                "path": "derived/track_embeddings",
                "use_case": "recommendation",
                "key": "embedding_id",
                "asset_column": "asset_id",
            }
        },
    }


def _problems(data: Any, base_dir: Path, *, check_paths: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=base_dir, check_paths=check_paths)
    return str(caught.value).splitlines()


def test_mistyped_key_is_named_with_the_closest_known_key(tmp_path: Path) -> None:
    data = _valid()
    data["lake_rooot"] = data.pop("lake_root")
    lines = _problems(data, tmp_path)
    assert "  lake_rooot: unknown key; did you mean 'lake_root'?" in lines
    assert "  lake_root: required key is missing" in lines
    assert lines[0] == "2 problems:"


def test_nested_typos_are_matched_against_the_keys_of_their_own_level(tmp_path: Path) -> None:
    data = _valid()
    data["datasets"]["track_embeddings"]["pth"] = data["datasets"]["track_embeddings"].pop("path")
    data["erasure"] = {"window_hour": 1}
    data["spark"] = {"mastr": "local[2]"}
    lines = _problems(data, tmp_path)
    assert "  datasets.track_embeddings.pth: unknown key; did you mean 'path'?" in lines
    assert "  datasets.track_embeddings.path: required key is missing" in lines
    assert "  erasure.window_hour: unknown key; did you mean 'window_hours'?" in lines
    assert "  spark.mastr: unknown key; did you mean 'master'?" in lines


def test_unknown_key_with_nothing_close_lists_the_allowed_keys(tmp_path: Path) -> None:
    data = {**_valid(), "zzz": 1}
    (line,) = _problems(data, tmp_path)  # one problem: one line, no header
    assert line.startswith("zzz: unknown key (allowed: airflow, datasets, erasure, gate,")
    assert "source" not in line  # filled in by the loader, never written by the user


def test_every_problem_is_reported_at_once_each_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "consent_records").mkdir()
    (tmp_path / "assets").mkdir()
    data = _valid()
    data["use_cases"]["generative_training"] = {
        "accepted_policy_versions": [],
        "jurisdictions": {"allow": ["US"], "deny": ["EU"]},
    }
    data["datasets"]["track_embeddings"]["use_case"] = "recomendation"
    data["datasets"]["track_embeddings"]["retention_days"] = 30
    data["datasets"]["gen_shards"] = {"path": "derived/gen_shards", "key": "sample_id"}
    data["tables"] = {"lineage": "lineage", "asets": "assets"}
    conf = tmp_path / "consentgate.yaml"
    conf.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    header, *lines = str(caught.value).splitlines()
    assert header == f"{len(lines)} problems in {conf.resolve()}:"
    keys = {line.strip().split(": ", 1)[0] for line in lines}
    assert keys == {
        "tables.asets",
        "tables.lineage",
        "use_cases.generative_training.accepted_policy_versions",
        "use_cases.generative_training.jurisdictions",
        "datasets.track_embeddings",
        "datasets.track_embeddings.use_case",
        "datasets.track_embeddings.path",
        "datasets.gen_shards.use_case",
        "datasets.gen_shards.path",
    }
    text = str(caught.value)
    assert "tables.asets: unknown key; did you mean 'assets'?" in text
    assert "datasets.track_embeddings: retention_days needs derived_at_column" in text
    assert (
        "datasets.track_embeddings.use_case: unknown use case 'recomendation' "
        "(declared: generative_training, recommendation); did you mean 'recommendation'?"
    ) in text
    assert f"tables.lineage: path {tmp_path.resolve() / 'lineage'} does not exist" in text
    assert "use_cases.generative_training.jurisdictions: give exactly one of" in text


def test_a_missing_lake_root_directory_is_one_problem_not_one_per_table(tmp_path: Path) -> None:
    data = {**_valid(), "lake_root": "nowhere"}
    (line,) = _problems(data, tmp_path, check_paths=True)
    assert line == f"lake_root: directory {tmp_path.resolve() / 'nowhere'} does not exist"


def test_an_undeclared_use_case_is_still_refused_when_config_is_built_directly() -> None:
    with pytest.raises(ConfigError, match=r"datasets\.d\.use_case: unknown use case 'x'"):
        Config(
            lake_root=Path("/"),
            use_cases={"y": UseCaseConfig(accepted_policy_versions=("1",))},
            datasets={"d": DatasetConfig(path="d", use_case="x", key="k")},
        )


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"deny": ["EU", "eu"]}, "'eu' is not a canonical jurisdiction code"),
        ({"deny": ["EU "]}, "write 'EU'"),
        ({"allow": ["us"]}, "write 'US'"),
        ({"allow": [" "]}, "a jurisdiction code cannot be empty"),
    ],
)
def test_jurisdiction_codes_must_be_canonical(
    tmp_path: Path, rules: dict[str, list[str]], message: str
) -> None:
    """DESIGN rule 2: records' jurisdictions are compared in canonical form, so a code in the
    config written otherwise would match nothing; it is refused, naming the spelling to use."""
    data = _valid()
    data["use_cases"]["recommendation"]["jurisdictions"] = rules
    (line,) = _problems(data, tmp_path)
    assert line.startswith("use_cases.recommendation.jurisdictions."), line
    assert message in line
    data["use_cases"]["recommendation"]["jurisdictions"] = {"deny": ["EU", "BR"]}
    assert parse_config(data, base_dir=tmp_path, check_paths=False).use_cases[
        "recommendation"
    ].jurisdictions == JurisdictionRules(deny=("EU", "BR"))


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"deny": ["EU."]}, "'EU.' does not match the jurisdiction pattern"),
        ({"allow": ["USA"]}, "'USA' does not match the jurisdiction pattern"),
        ({"allow": ["US"], "pattern": "[A-Z]{3}"}, "'US' does not match"),
        ({"deny": ["EU"], "pattern": "[A-Z"}, "is not a regular expression"),
        ({"deny": ["EU"], "pattern": "[A-Z]*"}, "matches the empty code"),
    ],
)
def test_jurisdiction_codes_must_read_as_codes(
    tmp_path: Path, rules: dict[str, Any], message: str
) -> None:
    """Issue #23 item 6: the use case's code syntax (``pattern``, default ISO 3166-1 alpha-2
    with an optional ISO 3166-2 subdivision) must be a regular expression that no empty code
    matches, and the config's own codes must match it."""
    data = _valid()
    data["use_cases"]["recommendation"]["jurisdictions"] = rules
    (line,) = _problems(data, tmp_path)
    assert line.startswith("use_cases.recommendation.jurisdictions"), line
    assert message in line
    data["use_cases"]["recommendation"]["jurisdictions"] = {
        "allow": ["USA", "CAN"],
        "pattern": "[A-Z]{3}",
    }
    rules_read = (
        parse_config(data, base_dir=tmp_path, check_paths=False)
        .use_cases["recommendation"]
        .jurisdictions
    )
    assert rules_read is not None and rules_read.permits("USA") and not rules_read.permits("US")
    default = JurisdictionRules(deny=("EU",))
    assert default.readable("US-CA") and default.readable("EU")
    assert not any(default.readable(c) for c in ("EU\u200b", "E U", "EU.", "USA", "US-"))


# --------------------------------------------------------------------------------------------
# Every path stays inside the lake root (issue #23 item 4)


def test_paths_that_leave_the_lake_root_are_refused_naming_their_key(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "derived").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "derived" / "linked").symlink_to(elsewhere, target_is_directory=True)
    data = _valid()
    data["lake_root"] = str(root)
    data["tables"] = {"lineage": str(elsewhere / "lineage")}  # absolute, outside
    base = data["datasets"]["track_embeddings"]
    data["datasets"] = {
        "up": {**base, "path": "../elsewhere/up"},
        "linked": {**base, "path": "derived/linked"},
        "inside": {**base, "path": str(root / "derived" / "inside")},  # absolute, inside
    }
    problems = _problems(data, tmp_path)
    escaping = [p for p in problems if "outside lake_root" in p]
    assert {p.split(":", 1)[0].strip() for p in escaping} == {
        "tables.lineage",
        "datasets.up.path",
        "datasets.linked.path",
    }, problems
    linked = next(p for p in escaping if "datasets.linked.path" in p)
    assert f"resolves to {elsewhere.resolve()}" in linked


def test_a_registry_path_outside_the_lake_is_refused_when_resolved(tmp_path: Path) -> None:
    """Snapshot paths come from the registry, not the config: every table path is resolved
    through Config.resolve, which refuses one that leaves the lake (a tampered entry would
    otherwise point the purge and VACUUM at any directory)."""
    root = tmp_path / "lake"
    root.mkdir()
    data = _valid()
    data["lake_root"] = str(root)
    config = parse_config(data, base_dir=tmp_path, check_paths=False)
    assert config.resolve("_consentgate/snapshots/m1/x") == root / "_consentgate/snapshots/m1/x"
    with pytest.raises(ConfigError, match=r"^registry entry snapshot/m1/x: .* outside lake_root"):
        config.resolve("../../etc", key="registry entry snapshot/m1/x")
