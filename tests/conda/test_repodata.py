"""Repodata shape, deterministic bytes, compressed twins, and the checked reader."""

from __future__ import annotations

import bz2
import io
import json

import pytest
import zstandard

from reconciler.conda.repodata import (
    build_repodata,
    compress_bz2,
    compress_zst,
    load_repodata,
    serialize_json,
)
from reconciler.errors import ReconcileError


def test_build_repodata_splits_and_sorts() -> None:
    repodata = build_repodata(
        "noarch", {"b-1-0.conda": {"n": 2}, "a-1-0.tar.bz2": {"n": 1}, "a-1-0.conda": {"n": 3}}
    )
    assert list(repodata["packages.conda"]) == ["a-1-0.conda", "b-1-0.conda"]
    assert list(repodata["packages"]) == ["a-1-0.tar.bz2"]
    assert repodata["info"] == {"subdir": "noarch"} and repodata["repodata_version"] == 1
    assert repodata["removed"] == []
    assert repodata["packages.conda"]["b-1-0.conda"] == {"n": 2}
    with pytest.raises(ValueError, match=r"a-1-0\.zip"):
        build_repodata("noarch", {"a-1-0.zip": {}})


def test_empty_subdir_has_every_section() -> None:
    assert json.loads(serialize_json(build_repodata("linux-64", {}))) == {
        "info": {"subdir": "linux-64"},
        "packages": {},
        "packages.conda": {},
        "removed": [],
        "repodata_version": 1,
    }


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


def test_serialisation_keeps_unicode_and_indents() -> None:
    data = serialize_json({"about": "Zürich ☃", "n": [1]})
    assert data == '{\n  "about": "Zürich ☃",\n  "n": [\n    1\n  ]\n}\n'.encode()


@pytest.mark.parametrize("level", [1, 3, 19])
def test_zst_frames_are_streamable_and_carry_their_size(level: int) -> None:
    data = serialize_json({f"k{i}": list(range(i % 50)) for i in range(5000)})
    compressed = compress_zst(data, level)
    assert zstandard.get_frame_parameters(compressed).content_size == len(data)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed))
    assert reader.read() == data
    assert len(compressed) < len(data) // 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html>", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"packages": []}', "'packages' is not a mapping"),
        (b'{"packages.conda": {"a-1-0.conda": 1}}', "'packages.conda' is not a mapping"),
        (b'{"removed": {}}', "'removed' is not a list"),
        (b'{"info": []}', "'info' is not a mapping"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_load_repodata_names_the_source(data: bytes, message: str) -> None:
    with pytest.raises(ReconcileError) as info:
        load_repodata(data, "https://example.org/c/noarch/repodata.json")
    assert info.value.message.startswith("https://example.org/c/noarch/repodata.json: ")
    assert message in info.value.message


def test_load_repodata_round_trips() -> None:
    repodata = build_repodata("osx-arm64", {"a-1-0.conda": {"name": "a", "depends": ["b"]}})
    assert load_repodata(serialize_json(repodata), "x") == repodata


def test_load_repodata_fills_missing_sections() -> None:
    repodata = load_repodata(b'{"info": {"subdir": "noarch"}}', "x")
    assert repodata["packages"] == {} and repodata["packages.conda"] == {}
    assert repodata["removed"] == []
