"""Manifest files: sealed canonical bytes, never overwritten, located by their lake."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from consentgate.canonical import canonical_json, check_manifest_digest, manifest_digest
from consentgate.errors import ConsentgateError
from consentgate.manifest import lake_root_of, load_manifest, write_manifest


def test_write_is_sealed_canonical_and_immutable(tmp_path: Path) -> None:
    path = tmp_path / "lake" / "_consentgate" / "manifests" / "run-1" / "manifest.json"
    body = {"run_id": "run-1", "b": [1, 2], "a": {"z": None, "y": "é"}}
    sha = write_manifest(path, body)
    data = load_manifest(path)
    assert sha == manifest_digest(body) == data["manifest_sha256"]
    assert check_manifest_digest(data)
    assert path.read_bytes() == canonical_json(data)
    with pytest.raises(ConsentgateError, match="immutable"):
        write_manifest(path, body)
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp files left


def test_lake_root_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "lake" / "_consentgate" / "manifests" / "r" / "manifest.json"
    assert lake_root_of(path) == (tmp_path / "lake").resolve()
    with pytest.raises(ConsentgateError, match="_consentgate"):
        lake_root_of(tmp_path / "elsewhere.json")
    with pytest.raises(ConsentgateError, match="does not exist"):
        load_manifest(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ConsentgateError, match="not a JSON object"):
        load_manifest(bad)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_manifest_mode_matches_the_files_beside_it(tmp_path: Path, umask: int) -> None:
    run_dir = tmp_path / "run-1"
    previous = os.umask(umask)
    try:
        datasheet = run_dir / "datasheet.md"
        run_dir.mkdir()
        datasheet.write_text("# sheet\n")  # how the datasheet files are written
        write_manifest(run_dir / "manifest.json", {"run_id": "run-1"})
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((run_dir / "manifest.json").stat().st_mode)
    assert mode == stat.S_IMODE(datasheet.stat().st_mode) == 0o666 & ~umask
