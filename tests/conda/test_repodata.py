"""Repodata shape, deterministic bytes, compressed twins, and the checked reader."""

from __future__ import annotations

import bz2

import pytest
import zstandard

from reconciler.conda.records import make_record
from reconciler.conda.repodata import (
    build_repodata,
    compress_bz2,
    compress_zst,
    load_repodata,
    serialize_json,
)
from reconciler.errors import ReconcileError


def test_make_record_drops_ignored_keys_keeps_unknown() -> None:
    index = {"name": "a", "arch": "x86_64", "platform": "linux", "mtime": 1, "custom": [1]}
    record = make_record(index, "m", "s", 3)
    assert record == {"name": "a", "custom": [1], "md5": "m", "sha256": "s", "size": 3}
    assert "arch" in index  # the input stays whole


def test_build_repodata_splits_and_sorts() -> None:
    repodata = build_repodata(
        "noarch", {"b-1-0.conda": {"n": 2}, "a-1-0.tar.bz2": {"n": 1}, "a-1-0.conda": {"n": 3}}
    )
    assert list(repodata["packages.conda"]) == ["a-1-0.conda", "b-1-0.conda"]
    assert list(repodata["packages"]) == ["a-1-0.tar.bz2"]
    assert repodata["info"] == {"subdir": "noarch"} and repodata["repodata_version"] == 1
    with pytest.raises(ValueError):
        build_repodata("noarch", {"a-1-0.zip": {}})


def test_serialisation_is_deterministic_and_compressions_round_trip() -> None:
    one = serialize_json({"b": 1, "a": {"d": [3, 1], "c": None}})
    two = serialize_json({"a": {"c": None, "d": [3, 1]}, "b": 1})
    assert one == two and one.endswith(b"\n")
    assert one.index(b'"a"') < one.index(b'"b"')
    compressed = compress_zst(one)
    assert compressed == compress_zst(one)
    # Content size in the frame header: one-shot decompression works without a size hint.
    assert zstandard.ZstdDecompressor().decompress(compressed) == one
    assert bz2.decompress(compress_bz2(one)) == one


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html>", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"packages": []}', "'packages' is not a mapping"),
        (b'{"packages.conda": {"a-1-0.conda": 1}}', "'packages.conda' is not a mapping"),
        (b'{"removed": {}}', "'removed' is not a list"),
    ],
)
def test_load_repodata_names_the_source(data: bytes, message: str) -> None:
    with pytest.raises(ReconcileError) as info:
        load_repodata(data, "https://example.org/c/noarch/repodata.json")
    assert info.value.message.startswith("https://example.org/c/noarch/repodata.json: ")
    assert message in info.value.message


def test_load_repodata_fills_missing_sections() -> None:
    repodata = load_repodata(b'{"info": {"subdir": "noarch"}}', "x")
    assert repodata["packages"] == {} and repodata["packages.conda"] == {}
    assert repodata["removed"] == []
