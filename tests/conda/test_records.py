"""Records built from index.json: ignored keys dropped, everything else kept."""

from __future__ import annotations

from typing import Any

from reconciler.conda.records import IGNORED_INDEX_KEYS, make_record


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
