"""Records built from index.json: ignored keys dropped, everything else kept; a record's
typed fields checked."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.conda.records import (
    IGNORED_INDEX_KEYS,
    MAX_TIMESTAMP,
    field_problem,
    make_record,
    record_problem,
)


def test_ignored_keys_are_the_ones_conda_indexers_drop() -> None:
    assert {
        "arch",
        "binstar",
        "has_prefix",
        "machine",
        "mtime",
        "operatingsystem",
        "platform",
        "requires_features",
        "target-triplet",
        "ucs",
    } == IGNORED_INDEX_KEYS


def test_make_record_drops_ignored_keys_keeps_unknown_and_adds_digests() -> None:
    index: dict[str, Any] = {key: "x" for key in IGNORED_INDEX_KEYS}
    index.update(
        name="a",
        version="1.0",
        subdir="linux-64",  # kept: only "platform" and "arch" go
        depends=["b >=1"],
        custom={"nested": [1]},
        indexed_timestamp=5,
    )
    record = make_record(index, "m" * 32, "s" * 64, 3)
    assert record == {
        "name": "a",
        "version": "1.0",
        "subdir": "linux-64",
        "depends": ["b >=1"],
        "custom": {"nested": [1]},
        "indexed_timestamp": 5,
        "md5": "m" * 32,
        "sha256": "s" * 64,
        "size": 3,
    }
    assert set(index) >= IGNORED_INDEX_KEYS  # the input stays whole


def test_digests_from_the_file_win_over_index_json() -> None:
    record = make_record({"name": "a", "md5": "stale", "size": 0}, "fresh", "sha", 42)
    assert (record["md5"], record["sha256"], record["size"]) == ("fresh", "sha", 42)


def test_each_record_is_a_new_dict() -> None:
    index = {"name": "a"}
    first = make_record(index, "m", "s", 1)
    first["name"] = "changed"
    assert index == {"name": "a"}
    assert make_record(index, "m", "s", 1) is not make_record(index, "m", "s", 1)


# Values each field may meet in hostile records: every type JSON gives, and the edges.
_ODD_VALUES: list[Any] = [
    None,
    "",
    "x",
    0,
    -1,
    2**63 - 1,
    2**63,
    MAX_TIMESTAMP,
    MAX_TIMESTAMP + 1,
    1.5,
    float("nan"),
    float("inf"),
    True,
    False,
    [],
    ["a", "b"],
    ["a", 1],
    [None],
    {},
    {"a": "b"},
]
_FIELDS = [
    "name",
    "version",
    "build",
    "subdir",
    "md5",
    "sha256",
    "license",
    "license_family",
    "build_number",
    "size",
    "timestamp",
    "depends",
    "constrains",
    "noarch",
    "features",
]


def _first_field_problem(record: dict[str, Any]) -> str | None:
    """What record_problem must say: the first field, in the record's order, that
    field_problem refuses."""
    if not isinstance(record.get("name"), str):
        return "record has no name"
    for key, value in record.items():
        problem = field_problem(str(key), value)
        if problem is not None:
            return problem
    return None


@pytest.mark.parametrize("field", _FIELDS)
def test_record_problem_says_what_field_problem_says_for_every_odd_value(field: str) -> None:
    base: dict[str, Any] = {
        "name": "a",
        "version": "1.0",
        "build": "0",
        "build_number": 0,
        "depends": ["b >=1"],
        "size": 10,
        "timestamp": 1_700_000_000_000,
    }
    for value in _ODD_VALUES:
        record = {**base, field: value}
        assert record_problem(record) == _first_field_problem(record), (field, value)
        # Two bad fields: the first in the record's order is the one told.
        twice = {**record, "zz": 1, "size": "big"} if field != "size" else record
        assert record_problem(twice) == _first_field_problem(twice), (field, value)
