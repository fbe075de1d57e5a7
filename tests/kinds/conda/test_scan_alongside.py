"""A .zst body read through the window as it downloads, or decompressed whole instead."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import zstandard

from reconciler.conda import window_scan
from reconciler.conda.window_scan import Scanned, scan
from reconciler.kinds.conda.scan_alongside import scan_alongside
from reconciler.kinds.conda.upstream import parse_sparse
from reconciler.transport import unzstd as unzstd_module
from reconciler.transport.unzstd import ZstdError
from tests.hostile_server import zstd_bomb

LIMIT = 64 * 1024 * 1024
WANTED = {"foo", "bar"}


def document(count: int = 2000) -> bytes:
    rng = random.Random(count)
    names = ["foo", "bar", "baz", "qux"]
    records = {
        f"{name}-1.{i}-0.conda": {"name": name, "version": f"1.{i}", "depends": ["x >=1"]}
        for i in range(count)
        for name in [rng.choice(names)]
    }
    text = json.dumps({"info": {"subdir": "noarch"}, "packages.conda": records}, indent=1)
    return text.encode()


def pieces(body: bytes, seed: int) -> list[bytes]:
    """``body`` cut at random, with one-byte pieces first (a dribbled frame header)."""
    rng = random.Random(seed)
    cut = [body[i : i + 1] for i in range(min(8, len(body)))]
    at = len(cut)
    while at < len(body):
        size = rng.choice([1, 7, 100, 4096, 70_000])
        cut.append(body[at : at + size])
        at += size
    return cut


@pytest.fixture(autouse=True)
def judged_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unzstd_module, "JUDGE_AFTER", 0.0)
    monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", 0.0)


def fed(body: bytes, seed: int = 1) -> Scanned | bytearray:
    alongside = scan_alongside("u", WANTED.__contains__, LIMIT, len(body))
    for piece in pieces(body, seed):
        alongside.feed(piece)
    assert alongside.thread is not None
    return alongside.result()


@pytest.mark.parametrize("seed", range(4))
def test_a_body_read_as_it_arrives_is_read_as_the_whole_body_is(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window_scan, "WINDOW", 8192)  # many windows
    body = zstandard.ZstdCompressor().compress(document())
    found = fed(body, seed)
    assert found == scan(body, WANTED.__contains__, LIMIT)
    assert isinstance(found, Scanned) and len(found.sections[1].kept) > 0


def test_what_the_window_cannot_read_is_decompressed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(window_scan, "WINDOW", 8192)
    monkeypatch.setattr(window_scan, "MAX_OUTLINE", 8192)
    data = document()
    one_line = data.replace(b"\n", b"")  # no indentation: nothing to cut at
    body = zstandard.ZstdCompressor().compress(one_line)
    assert fed(body) == one_line
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert fed(unsized) == data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00garbage that is not zstd" * 4000, "not valid zstd data"),
        (zstd_bomb(), "decompressed repodata is larger than the limit"),
    ],
)
def test_garbage_and_bombs_stop_the_download_at_once(body: bytes, message: str) -> None:
    """The error comes at a next piece (the download stops), not after the last."""
    alongside = scan_alongside("u", WANTED.__contains__, LIMIT, None)
    with pytest.raises(ZstdError, match=message):
        for piece in pieces(body, 3):
            alongside.feed(piece)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alongside.feed(b"more")
            time.sleep(0.001)
    alongside.abandon()
    assert not [t for t in threading.enumerate() if t.name == "reconcile-unzstd"]


def test_a_body_cut_short_is_an_error() -> None:
    body = zstandard.ZstdCompressor().compress(document())
    alongside = scan_alongside("u", WANTED.__contains__, LIMIT, len(body))
    for piece in pieces(body[: len(body) // 2], 5):
        alongside.feed(piece)
    with pytest.raises(ZstdError, match="cut short"):
        alongside.result()


def test_a_stray_byte_after_the_frame_is_refused_as_the_whole_read_refuses_it() -> None:
    """The window stops at the frame's end; what follows is for the whole read to judge."""
    body = zstandard.ZstdCompressor().compress(document()) + b"\x28"
    found = fed(body)
    assert isinstance(found, Scanned)
    with pytest.raises(ZstdError) as whole:
        parse_sparse(body, "repodata.json.zst", "u")
    with pytest.raises(ZstdError) as windowed:
        parse_sparse(body, "repodata.json.zst", "u", found, WANTED.__contains__)
    assert windowed.value.message == whole.value.message
    assert "cut short" in whole.value.message
