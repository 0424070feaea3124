"""What outputs show of values that could be raw ids (:mod:`consentgate.redact`)."""

from __future__ import annotations

import hashlib

from consentgate.redact import redact_partitions, redact_uuids

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def test_uuids_are_replaced_wherever_they_stand() -> None:
    text = f"file part-00001-{UUID}.c000.parquet of asset {UUID.upper()}"
    assert redact_uuids(text) == "file part-00001-<uuid>.c000.parquet of asset <uuid>"


def test_partition_values_are_digested_and_the_file_name_kept() -> None:
    path = f"asset_id={UUID}/day=2026-01-01/part-00000-{UUID}.c000.snappy.parquet"
    digest = hashlib.sha256(f"asset_id={UUID}".encode()).hexdigest()[:12]
    day = hashlib.sha256(b"day=2026-01-01").hexdigest()[:12]
    assert redact_partitions(path) == (
        f"asset_id=sha256:{digest}/day=sha256:{day}/part-00000-{UUID}.c000.snappy.parquet"
    )
    assert redact_partitions(path) == redact_partitions(path)  # the same in every output
    other = redact_partitions(f"asset_id={UUID}x/p.parquet")  # another partition
    assert other.startswith("asset_id=sha256:") and not other.startswith(
        f"asset_id=sha256:{digest}"
    )


def test_paths_without_partitions_are_unchanged() -> None:
    for path in ("part-0.parquet", "_delta_log/00000.json", "a/b=/c.parquet", "=x/c.parquet"):
        assert redact_partitions(path) == path
