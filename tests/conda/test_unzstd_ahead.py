"""zstd decompressed on a thread a few buffers ahead: the same bytes, errors in order,
memory bounded, and no thread left behind."""

from __future__ import annotations

import io
import threading
import time

import pytest
import zstandard

from reconciler.conda import unzstd_ahead
from reconciler.conda.unzstd_ahead import DecompressAhead


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small buffers, so a few MB of data take many steps of the thread.
    monkeypatch.setattr(unzstd_ahead, "BUFFER", 64 * 1024)
    monkeypatch.setattr(unzstd_ahead, "BUFFERS", 2)


def data(size: int) -> bytes:
    return b"".join(b'"f-%d-0.conda": {"size": %d},\n' % (i, i) for i in range(size // 30))


def read_all(reader: DecompressAhead, view_size: int) -> bytes:
    out = bytearray()
    view = memoryview(bytearray(view_size))
    while got := reader.readinto(view):
        out += view[:got]
    assert reader.readinto(view) == 0  # the end stays the end
    return bytes(out)


def unzstd_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reconcile-unzstd-ahead"]


@pytest.mark.parametrize("view_size", [1000, 64 * 1024, 1 << 20])
def test_gives_the_decompressed_bytes(view_size: int) -> None:
    plain = data(3 << 20)
    reader = DecompressAhead(zstandard.ZstdCompressor().compress(plain))
    try:
        assert read_all(reader, view_size) == plain
    finally:
        reader.close()
    assert not unzstd_threads()


def test_reads_a_file_like_source_and_frames_one_after_the_other() -> None:
    first, second = data(1 << 20), data(200_000)
    body = zstandard.ZstdCompressor().compress(first) + zstandard.ZstdCompressor().compress(second)
    reader = DecompressAhead(io.BytesIO(body))
    try:
        assert read_all(reader, 4096) == first + second
    finally:
        reader.close()


def test_garbage_is_the_decompressors_error_at_every_read() -> None:
    reader = DecompressAhead(b"\x28\xb5\x2f\xfd" + b"not zstd at all" * 100)
    try:
        for _ in range(3):  # never taken for a clean end afterwards
            with pytest.raises(zstandard.ZstdError):
                reader.readinto(memoryview(bytearray(4096)))
    finally:
        reader.close()


def test_a_small_document_gets_small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unzstd_ahead, "BUFFER", 8 << 20)
    plain = data(12_000)
    reader = DecompressAhead(zstandard.ZstdCompressor().compress(plain), expected=len(plain))
    try:
        assert reader.buffer_size <= max(len(plain) + 1, 4096)
        assert read_all(reader, 1000) == plain
    finally:
        reader.close()
    # A declared size that lies (smaller than what comes) still reads it all, in steps.
    reader = DecompressAhead(zstandard.ZstdCompressor().compress(plain * 10), expected=100)
    try:
        assert read_all(reader, 100_000) == plain * 10
    finally:
        reader.close()


class Failing(io.RawIOBase):
    """A body that breaks off with the transport's error after ``good`` bytes."""

    def __init__(self, body: bytes, good: int) -> None:
        self.body, self.good, self.at = body, good, 0

    def read(self, size: int = -1) -> bytes:
        if self.at >= self.good:
            raise ConnectionError("upstream went away")
        piece = self.body[self.at : min(self.at + size, self.good)]
        self.at += len(piece)
        return piece


def test_the_sources_error_comes_after_what_was_read_before_it() -> None:
    plain = data(2 << 20)
    body = zstandard.ZstdCompressor(level=1).compress(plain)
    reader = DecompressAhead(Failing(body, len(body) // 2))
    out = bytearray()
    view = memoryview(bytearray(4096))
    try:
        with pytest.raises(ConnectionError, match="went away"):
            while got := reader.readinto(view):
                out += view[:got]
    finally:
        reader.close()
    assert out and plain.startswith(bytes(out))
    assert not unzstd_threads()


def test_decompresses_no_more_than_its_buffers_ahead() -> None:
    # A bomb: 256 MiB of zeros in a few kB. Read one byte, and the thread stops a few
    # buffers on, not at the end.
    bomb = zstandard.ZstdCompressor().compress(bytes(256 << 20))
    reader = DecompressAhead(bomb)
    try:
        assert reader.readinto(memoryview(bytearray(1))) == 1
        time.sleep(0.3)  # time enough to run far ahead if it could
        assert reader._filled.qsize() <= unzstd_ahead.BUFFERS
        assert reader._stream.tell() <= (unzstd_ahead.BUFFERS + 1) * unzstd_ahead.BUFFER
    finally:
        reader.close()
    assert not unzstd_threads()


def test_close_part_way_stops_the_thread() -> None:
    reader = DecompressAhead(zstandard.ZstdCompressor().compress(data(4 << 20)))
    reader.readinto(memoryview(bytearray(1000)))
    reader.close()
    assert not reader._thread.is_alive()
