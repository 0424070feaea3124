"""conf/default.yaml is the demo lake's conf and must stay valid and in step with the generator."""

from __future__ import annotations

from pathlib import Path

import yaml

from consentgate.config import load_config
from consentgate.demo import demo_config

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
