"""zstd repodata decompressed within a limit: in one call, in pieces, on a thread."""

from __future__ import annotations

import random
import threading
import traceback
import tracemalloc
from functools import partial

import pytest
import zstandard

from reconciler.collector import collector_paused
from reconciler.transport import unzstd as unzstd_module
from reconciler.transport.errors import UpstreamError
from reconciler.transport.unzstd import Alongside, Unzstd, UnzstdThread, unzstd
from tests.hostile_server import zstd_bomb

# Random digests compress little: the compressed body spans many pieces.
DOCUMENT = b'{"packages": {%s}}' % b", ".join(
    b'"p%d": "%064x"' % (i, random.Random(i).getrandbits(256)) for i in range(3000)
)
LIMIT = 1 << 20


def frame(data: bytes = DOCUMENT, *, size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=size).compress(data)


def pieces(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    found, at = [], 0
    while at < len(data):
        step = rng.choice([1, 7, 100, 4096, 70_000])
        found.append(data[at : at + step])
        at += step
    return found


@pytest.mark.parametrize(
    "body",
    [
        frame(),
        frame(size=False),
        frame() + frame(b"[]", size=False),
        frame(b"") + frame(DOCUMENT),
    ],
    ids=["one frame", "no size", "two frames", "an empty frame first"],
)
def test_every_way_gives_the_same_bytes(body: bytes) -> None:
    expected = DOCUMENT + b"[]" if body.endswith(frame(b"[]", size=False)) else DOCUMENT
    assert bytes(unzstd(body, "u", LIMIT)) == expected
    for seed in range(3):
        one = Unzstd("u", LIMIT)
        for piece in pieces(body, seed):
            one.feed(piece)
        assert bytes(one.result()) == expected
        on_thread = UnzstdThread("u", LIMIT)
        for piece in pieces(body, seed):
            on_thread.feed(piece)
        assert bytes(on_thread.result()) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "u: empty, not zstd data"),
        (b"not zstd at all", "u: not valid zstd data"),
        (frame()[:-9], "u: zstd data cut short (the last frame does not end)"),
        (
            frame(b"x" * (LIMIT + 1)),
            "u: decompressed repodata is larger than the limit of 1 MiB "
            "(its frame declares 1 MiB); refused",
        ),
        (
            frame(b"x" * (LIMIT + 1), size=False),
            "u: decompressed repodata is larger than the limit of 1 MiB; gave up",
        ),
    ],
    ids=["empty", "garbage", "cut short", "declared too big", "too big"],
)
def test_bad_bodies_are_refused_every_way(body: bytes, message: str) -> None:
    with pytest.raises(UpstreamError) as one_call:
        unzstd(body, "u", LIMIT)
    assert one_call.value.message.startswith(message), one_call.value.message
    on_thread = UnzstdThread("u", LIMIT)
    with pytest.raises(UpstreamError) as threaded:
        for piece in pieces(body, 1):
            on_thread.feed(piece)
        on_thread.result()
    assert threaded.value.message.startswith(message), threaded.value.message
    assert not [t for t in threading.enumerate() if t.name == "reconcile-unzstd"]


def test_a_bomb_stops_within_a_step_of_the_limit() -> None:
    bomb = zstd_bomb()  # 4 GiB of zeros in a frame that does not say so
    decoding = Unzstd("u", LIMIT)
    with pytest.raises(UpstreamError, match="larger than the limit of 1 MiB; gave up"):
        decoding.feed(bomb)
    assert len(decoding._out) <= LIMIT


def test_an_error_on_the_thread_stops_the_feeder() -> None:
    on_thread = UnzstdThread("u", LIMIT)
    on_thread.feed(b"garbage, not zstd")
    with pytest.raises(UpstreamError, match="not valid zstd data"):
        for _ in range(10_000):  # the thread fails meanwhile: a later piece raises
            on_thread.feed(b"more")
            threading.Event().wait(0.001)
    on_thread.abandon()
    assert not [t for t in threading.enumerate() if t.name == "reconcile-unzstd"]


def test_a_fast_download_is_decompressed_afterwards(monkeypatch: pytest.MonkeyPatch) -> None:
    body = frame()
    monkeypatch.setattr(unzstd_module, "JUDGE_AFTER", 0.0)
    monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", float("inf"))
    fast = Alongside(len(body), partial(UnzstdThread, "u", LIMIT))
    for piece in pieces(body, 2):
        fast.feed(piece)
    assert fast.thread is None
    with pytest.raises(RuntimeError, match="judged fast"):
        fast.result()


def test_a_slow_download_is_decompressed_alongside(monkeypatch: pytest.MonkeyPatch) -> None:
    body = frame()
    monkeypatch.setattr(unzstd_module, "JUDGE_AFTER", 0.0)
    monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", 0.0)
    for expected in (len(body), None):
        slow = Alongside(expected, partial(UnzstdThread, "u", LIMIT))
        for piece in pieces(body, 3):
            slow.feed(piece)
        assert slow.thread is not None
        assert bytes(slow.result()) == DOCUMENT


def test_the_pieces_of_the_judging_window_go_to_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = frame()
    assert len(body) > 100_000
    monkeypatch.setattr(unzstd_module, "JUDGE_BYTES", 50_000)  # judged after some pieces
    monkeypatch.setattr(unzstd_module, "JUDGE_AFTER", 3600.0)
    monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", 0.0)
    slow = Alongside(len(body), partial(UnzstdThread, "u", LIMIT))
    for piece in pieces(body, 4):
        slow.feed(piece)
    assert slow.thread is not None
    assert bytes(slow.result()) == DOCUMENT


def test_a_failure_on_the_thread_is_raised_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Unzstd, data: object) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(Unzstd, "feed", broken)
    on_thread = UnzstdThread("u", LIMIT)
    on_thread.feed(b"anything")
    with pytest.raises(MemoryError, match="no room"):
        on_thread.result()
    assert not [t for t in threading.enumerate() if t.name == "reconcile-unzstd"]


def test_a_failed_thread_keeps_its_error_not_what_the_work_held() -> None:
    # A truncated body fed to the thread, then abandoned (a download that failed), three
    # times with the cycle collector paused (as it is while a plan is made): nothing the
    # work held (pieces, the output so far) may stay alive through the kept error.
    document = b"".join(b'{"a-%d": %d}\n' % (i, i) for i in range(400_000))
    body = zstandard.ZstdCompressor(write_content_size=True).compress(document)
    tracemalloc.start()
    try:
        with collector_paused():
            before = tracemalloc.get_traced_memory()[0]
            errors = []
            for _ in range(3):
                thread = UnzstdThread("x", len(document) + 1)
                for at in range(0, len(body) * 3 // 4, 65536):
                    thread.feed(body[at : at + 65536])
                thread.abandon()
                with pytest.raises(UpstreamError) as raised:
                    thread.result()
                errors.append(raised.value)
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(document) > 5_000_000
    assert held < 1_000_000, held  # each attempt held its output (MBs) before
    # The error is the work's, its traceback still showing where it was raised.
    shown = "".join(traceback.format_exception(errors[0]))
    assert "unzstd_pieces" in shown, shown
