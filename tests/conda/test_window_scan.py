"""A .zst repodata body read through a window: the same document as a whole read, or None."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import pytest
import zstandard

from reconciler.conda import unzstd_ahead, window_scan
from reconciler.conda.sparse import SparseRepodata
from reconciler.conda.window_scan import scan

LIMIT = 1 << 30
NAMES = ["foo", "foo-bar", "foo.x", "bar", "zlib", "nodash", "é-accent"]


def records(seed: int, count: int) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    found = {}
    for i in range(count):
        name = rng.choice(NAMES)
        filename = f"{name}-1.{i}-h{rng.randrange(9)}_0.conda"
        found[filename] = {
            "name": name,
            "version": f"1.{i}",
            "build": "h_0",
            "depends": [f"{rng.choice(NAMES)} >=1" for _ in range(rng.randrange(4))],
            "note": rng.choice(["}", '",\n', "{[", "plain", 'packages": {']),
        }
    return found


def document(seed: int, count: int = 300) -> dict[str, Any]:
    return {
        "info": {"subdir": "linux-64"},
        "packages": {k.replace(".conda", ".tar.bz2"): v for k, v in records(seed, count).items()},
        "packages.conda": records(seed + 1, count),
        "removed": ["gone-1.0-0.conda"],
        "repodata_version": 1,
    }


def zst(text: str | bytes, **options: Any) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return zstandard.ZstdCompressor(**options).compress(data)


def whole(body: bytes) -> SparseRepodata:
    data = zstandard.ZstdDecompressor().decompress(body)
    return SparseRepodata(data, "whole", lambda: data)


def same_as_whole(body: bytes, wanted: set[str]) -> SparseRepodata:
    """The windowed read of ``body``, checked against a whole read of it."""
    scanned = scan(body, wanted.__contains__, LIMIT)
    assert scanned is not None
    data = zstandard.ZstdDecompressor().decompress(body)
    windowed = SparseRepodata.from_scan(scanned, "windowed", lambda: data)
    reference = whole(body)
    assert windowed.info == reference.info and windowed.removed == reference.removed
    for section in (0, 1):
        assert list(windowed.names(section)) == list(reference.names(section))
        assert windowed.names(section).names == reference.names(section).names
        for filename, name in reference.names(section).of_names(set(NAMES)):
            expected = reference.record(section, filename)
            assert windowed.record(section, filename) == expected, filename
            # Only records of wanted names were kept; any other is read again, the same.
            assert (filename in scanned.sections[section].kept) == (name in wanted)
    return windowed


@pytest.mark.parametrize("indent", [1, 2, 4, "\t"])
@pytest.mark.parametrize("window", [4096, 1 << 24])
@pytest.mark.parametrize("sort_keys", [True, False])
def test_the_windowed_read_is_the_whole_read(
    indent: int | str, window: int, sort_keys: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window_scan, "WINDOW", window)
    text = json.dumps(document(window + len(str(indent))), indent=indent, sort_keys=sort_keys)
    same_as_whole(zst(text), {"foo", "zlib", "é-accent"})


def test_a_filename_listed_twice_keeps_its_first_place_and_last_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(window_scan, "WINDOW", 2048)
    body = json.dumps(document(5), indent=1)
    first = '"foo-9.9-0.conda": {"name": "foo", "v": 1},'
    last = '"foo-9.9-0.conda": {"name": "foo", "v": 2}'
    # Far apart: in different windows, so in different pieces.
    body = body.replace('"packages.conda": {', '"packages.conda": {\n  ' + first, 1)
    body = body[: body.rindex("}\n }")] + "},\n  " + last + body[body.rindex("}\n }") + 1 :]
    windowed = same_as_whole(zst(body), {"foo"})
    assert windowed.record(1, "foo-9.9-0.conda")["v"] == 2
    assert list(windowed.names(1)).count("foo-9.9-0.conda") == 1


def test_empty_sections_and_a_section_on_one_line() -> None:
    text = json.dumps({"info": {}, "packages": {}, "packages.conda": {}}, indent=2)
    same_as_whole(zst(text), {"foo"})
    # A section on the document's first line is part of its outline, read as it is.
    one_line = json.dumps(document(3)["packages.conda"])
    text = '{"packages.conda": ' + one_line + ',\n "packages": {}\n}'
    same_as_whole(zst(text), {"foo"})
    # Its records on one line after a header on its own: read whole.
    text = '{\n "packages": {},\n "packages.conda": ' + one_line + "\n}"
    assert scan(zst(text), lambda name: True, LIMIT) is None


# -- what is read whole instead ---------------------------------------------------------------

INDENTED = json.dumps(document(11), indent=2)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(zst(INDENTED, write_content_size=False), id="no declared size"),
        pytest.param(zst(INDENTED) + zst("{}"), id="a second frame"),
        pytest.param(zst(INDENTED) + b"garbage", id="garbage after the frame"),
        pytest.param(zst(INDENTED) + b"\x28", id="a stray byte after the frame"),
        pytest.param(zst(INDENTED) + zst("x" * 1000)[:12], id="a second frame cut short"),
        pytest.param(zst(INDENTED) + zst(""), id="an empty frame after it"),
        pytest.param(zst(INDENTED) + b"\x50\x2a\x4d\x18\x00\x00\x00\x00", id="skippable"),
        pytest.param(zst(INDENTED)[:-40], id="cut short"),
        pytest.param(zst(INDENTED.replace('"name": "foo"', '"name": "foo",', 1)), id="bad JSON"),
        pytest.param(zst(INDENTED.rstrip("}")), id="never closes"),
        pytest.param(b"not zstd at all", id="not zstd"),
        pytest.param(zst("[" * 5000 + "]" * 5000), id="nested deep"),
    ],
)
def test_what_it_does_not_take_is_read_whole(body: bytes) -> None:
    assert scan(body, lambda name: True, LIMIT) is None


def test_giving_up_early_stops_the_decompression_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bad JSON in the first record of a document many buffers long: the thread
    # decompressing ahead is waiting for a buffer back when the read gives up.
    monkeypatch.setattr(unzstd_ahead, "BUFFER", 4096)
    monkeypatch.setattr(window_scan, "WINDOW", 8192)
    text = json.dumps(document(3, 3000), indent=1).replace('"h_0"', '"h_0",', 1)
    assert scan(zst(text), lambda name: True, LIMIT) is None
    assert not [t for t in threading.enumerate() if t.name == "reconcile-unzstd-ahead"]


def test_compact_json_is_read_as_an_outline_up_to_a_size(monkeypatch: pytest.MonkeyPatch) -> None:
    body = zst(json.dumps(document(11)))
    same_as_whole(body, {"foo"})
    monkeypatch.setattr(window_scan, "MAX_OUTLINE", 1000)
    assert scan(body, lambda name: True, LIMIT) is None


@pytest.mark.parametrize("options", [{}, {"write_checksum": True}, {"level": 19}])
def test_one_frame_is_told_from_its_block_headers(options: dict[str, Any]) -> None:
    body = zst(INDENTED * 3, **options)
    assert window_scan.one_frame(body)
    rle = zst("a" * 500_000, **options)  # RLE blocks hold one byte
    assert window_scan.one_frame(rle)
    for cut in (1, 3, len(body) // 2, len(body) - 1):
        assert not window_scan.one_frame(body[:cut])
    assert not window_scan.one_frame(body + b"\0")


def test_a_declared_size_over_the_limit_is_read_whole() -> None:
    assert scan(zst(INDENTED), lambda name: True, 100) is None


def test_a_record_larger_than_the_window_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window_scan, "WINDOW", 4096)
    doc = document(2)
    doc["packages.conda"]["foo-big-1.0-0.conda"] = {"name": "foo-big", "x": "y" * 8000}
    assert scan(zst(json.dumps(doc, indent=1)), lambda name: True, LIMIT) is None


def test_a_section_looking_header_inside_info_is_not_taken_for_the_section() -> None:
    # An indented "packages" object one level down, and the real (empty) one after it.
    fake = json.dumps({"foo-1-0.conda": {"name": "foo"}}, indent=2).replace("\n", "\n  ")
    text = '{\n "info": {\n  "packages": ' + fake + '\n },\n "packages": {},\n "x": 1\n}'
    scanned = scan(zst(text), lambda name: True, LIMIT)
    reference = whole(zst(text))
    if scanned is not None:  # read right, or read whole: never the fake records
        assert scanned.sections[0].files == list(reference.names(0)) == []
    assert reference.info["packages"] == {"foo-1-0.conda": {"name": "foo"}}


def test_a_record_closing_at_the_sections_indentation_is_not_its_end() -> None:
    # Lying indentation: a record's closing brace where the section's would be.
    text = (
        '{\n "packages.conda": {\n  "foo-1-0.conda": {\n "name": "foo"\n },\n'
        '  "bar-1-0.conda": {"name": "bar"}\n }\n}'
    )
    scanned = scan(zst(text), lambda name: True, LIMIT)
    assert scanned is None or scanned.sections[1].files == ["foo-1-0.conda", "bar-1-0.conda"]


def test_a_record_read_again_from_a_document_msgspec_cannot_read_whole() -> None:
    """Pieces nest two levels less than the whole document: one msgspec read in pieces
    can be too deep for it whole. Then the document is read in full, as load_repodata
    reads it, and the record comes from there."""
    deep = "[" * 1010 + "]" * 1010
    text = (
        '{\n "packages.conda": {\n  "bar-1-0.conda": {"name": "bar", "x": %s},\n'
        '  "foo-1-0.conda": {"name": "foo"}\n }\n}'
    )
    scanned = scan(zst(text % "[]"), {"foo"}.__contains__, LIMIT)
    assert scanned is not None
    again = (text % deep).encode()  # what reading it again gives, for this test
    sparse = SparseRepodata.from_scan(scanned, "x", lambda: again)
    assert sparse.record(1, "foo-1-0.conda") == {"name": "foo"}
    bar = sparse.record(1, "bar-1-0.conda")
    assert bar["name"] == "bar" and isinstance(bar["x"], list)
    with pytest.raises(KeyError):
        sparse.record(1, "absent-1-0.conda")
