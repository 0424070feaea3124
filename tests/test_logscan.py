"""What :mod:`consentgate.logscan` reads as row values in Delta log JSON, and what it does not.

The documents are shaped as delta-spark writes them (commit lines, a checkpoint row as
Spark's ``to_json`` renders it, a ``.crc`` with ``allFiles``); the end-to-end proof that the
erasure finds truncated and nested keys in real logs is in ``test_user_tables``.
"""

from __future__ import annotations

import json

from consentgate.logscan import values_in

KEY = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"  # 36 characters
TRUNCATED_MIN = KEY[:32]
TRUNCATED_MAX = KEY[:32] + "\u007f"


def _line(doc: object) -> str:
    return json.dumps(doc)


def test_statistics_leaves_nested_and_truncated() -> None:
    stats = {
        "numRecords": 3,
        "minValues": {"meta": {"source": {"id": "inner-1"}}, "embedding_id": TRUNCATED_MIN},
        "maxValues": {"meta": {"source": {"id": "inner-9"}}, "embedding_id": TRUNCATED_MAX},
        "nullCount": {"meta": {"source": {"id": 0}}, "embedding_id": 0},
    }
    line = _line({"add": {"path": "part-0.parquet", "size": 812, "stats": json.dumps(stats)}})
    # A key after a struct column is read (a regex stopping at the first '}' missed it);
    # counts and sizes are not values.
    assert sorted(values_in(line)) == sorted(["inner-1", "inner-9", TRUNCATED_MIN, TRUNCATED_MAX])


def test_partition_values_of_every_file_action() -> None:
    for action in ("add", "remove", "cdc"):
        line = _line({action: {"path": "p", "partitionValues": {"asset_id": KEY, "d": None}}})
        assert values_in(line) == [KEY], action


def test_numeric_bounds_are_decimal_text() -> None:
    stats = {"numRecords": 2, "minValues": {"k": 256, "x": 1.5}, "maxValues": {"k": 7000000021}}
    line = _line({"add": {"path": "p", "size": 100, "stats": json.dumps(stats)}})
    assert sorted(values_in(line)) == ["1.5", "256", "7000000021"]


def test_a_checkpoint_row_with_parsed_statistics() -> None:
    row = {
        "add": {
            "path": "asset_id=x/part-1.parquet",
            "partitionValues": {"asset_id": "x"},
            "partitionValues_parsed": {"asset_id": "x"},
            "stats_parsed": {"numRecords": 1, "minValues": {"k": "a"}, "maxValues": {"k": "b"}},
        }
    }
    assert sorted(values_in(_line(row))) == ["a", "b", "x", "x"]


def test_a_checksum_lists_its_files() -> None:
    crc = {
        "tableSizeBytes": 256,
        "numFiles": 1,
        "metadata": {"id": "t", "configuration": {"delta.logRetentionDuration": "interval 256"}},
        "allFiles": [{"path": "p", "stats": json.dumps({"minValues": {"k": KEY}})}],
    }
    assert values_in(_line(crc)) == [KEY]


def test_literals_of_another_writers_predicates() -> None:
    info = {
        "commitInfo": {
            "operation": "DELETE",
            "operationParameters": {
                "predicate": json.dumps(
                    ["((embedding_id = 'it''s') OR (n IN (256, -8, 7000000021L)))"]
                )
            },
            "operationMetrics": {"numRemovedFiles": "1"},
            "userMetadata": "not ours",
        }
    }
    assert sorted(values_in(_line(info))) == sorted(["it's", "256", "-8", "7000000021"])


def test_names_decimals_and_metrics_are_not_literals() -> None:
    info = {
        "commitInfo": {
            "operation": "DELETE",
            "operationParameters": {"predicate": '["(c1#12 > 1.5)"]'},
            "operationMetrics": {"numDeletedRows": "256"},
            "readVersion": 256,
        }
    }
    assert values_in(_line(info)) == []


def test_our_own_commits_name_no_id() -> None:
    merge = {
        "commitInfo": {
            "operation": "MERGE",
            "operationParameters": {
                "predicate": "[\"(sha2(concat('k:', cast(t.k as string)), 256) = s.key_sha256)\"]"
            },
            "userMetadata": json.dumps({"consentgate.operation": "x", "consentgate.txn": "ab"}),
        }
    }
    assert values_in(_line(merge)) == []
    merge["commitInfo"]["userMetadata"] = json.dumps({"consentgate.operation": "forged"})
    assert "256" in values_in(_line(merge))  # without our tag the text is read as anyone's


def test_what_is_not_json_holds_nothing() -> None:
    assert values_in(None) == []
    assert values_in("") == []
    assert values_in("\x00crc binary") == []
    assert values_in(_line({"protocol": {"minReaderVersion": 3}})) == []
