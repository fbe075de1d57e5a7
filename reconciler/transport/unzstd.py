"""zstd repodata decompressed within a size limit, in one call or as its bytes arrive.

Upstream bodies are untrusted: a frame that declares more than the limit is refused
before anything is decompressed, output past the limit stops decompression (a step of
1 kB makes at most 32 MiB, so a bomb overshoots by that much at most), and a frame cut
short is an error, not a silently shorter document.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from functools import partial
from typing import Generic, TypeVar

import zstandard

from reconciler.conda.window_scan import declared_size
from reconciler.transport.errors import UpstreamError

R = TypeVar("R")


class ZstdError(UpstreamError):
    """A body that is not zstd data, is cut short, or decompresses past the limit."""


# Compressed input is decompressed this much at a time. A zstd block of 4 bytes can
# stand for 128 KiB, so one step makes at most 32 MiB. (Small steps cost little: 450 MB
# come out of 1 kB steps in about 1.2 times the time of one call.)
STEP = 1024


def amount(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def _too_big(source: str, limit: int, declared: int | None = None) -> ZstdError:
    said = f" (its frame declares {amount(declared)}); refused" if declared else "; gave up"
    return ZstdError(
        f"{source}: decompressed repodata is larger than the limit of {amount(limit)}{said}",
        hint="no real channel comes near it: a compression bomb?",
    )


class Unzstd:
    """zstd frames decompressed as their bytes are fed, one output buffer growing."""

    def __init__(self, source: str, limit: int) -> None:
        self.source = source
        self.limit = limit
        self._out = bytearray()
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._in_frame = False  # fed bytes of a frame that has not ended yet
        self._head = b""  # the first bytes, until the first frame's header is read
        self._fed = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self._fed < 32:
            self._check_header(bytes(view[:32]))
        self._fed += len(view)
        try:
            for start in range(0, len(view), STEP):
                self._step(view[start : start + STEP])
        except zstandard.ZstdError as exc:
            raise ZstdError(f"{self.source}: not valid zstd data ({exc})") from None

    def _check_header(self, data: bytes) -> None:
        self._head = (self._head + data)[:32]
        declared = declared_size(self._head)
        if declared is not None and declared > self.limit:
            raise _too_big(self.source, self.limit, declared)

    def _step(self, piece: bytes | memoryview) -> None:
        while piece:
            chunk = self._frame.decompress(piece)
            self._in_frame = True
            piece = b""
            if len(self._out) + len(chunk) > self.limit:
                raise _too_big(self.source, self.limit)
            self._out += chunk
            if self._frame.eof:  # the rest of this piece starts another frame
                piece = self._frame.unused_data
                self._frame = self._decompressor.decompressobj()
                self._in_frame = False

    def result(self) -> bytearray:
        """All that was decompressed; an error when nothing came or the last frame is cut."""
        if not self._fed:
            raise ZstdError(f"{self.source}: empty, not zstd data")
        if self._in_frame:
            raise ZstdError(f"{self.source}: zstd data cut short (the last frame does not end)")
        return self._out


def unzstd(data: bytes | bytearray, source: str, limit: int) -> bytes | bytearray:
    """``data`` decompressed, at most ``limit`` bytes of it."""
    declared = declared_size(data)
    # (A frame declaring nothing is read the careful way: the one call would read an
    # empty frame and stop there, ignoring any frame after it.)
    if declared and declared <= limit:
        # One frame that says how big it is (what every repodata writer makes): one call,
        # into a buffer of exactly that size. Anything else (several frames, a frame cut
        # short, a size that lies) fails here and goes the careful way.
        with suppress(zstandard.ZstdError, TypeError):  # TypeError: before allow_extra_data
            one: bytes = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=limit, allow_extra_data=False
            )
            return one
    return unzstd_pieces([data], source, limit)


def unzstd_pieces(pieces: Iterable[bytes | bytearray], source: str, limit: int) -> bytearray:
    """``pieces`` of zstd data decompressed as they come, at most ``limit`` bytes."""
    decoding = Unzstd(source, limit)
    for piece in pieces:
        decoding.feed(piece)
    return decoding.result()


def _kept_error(exc: BaseException) -> BaseException:
    """``exc`` without what its frames held (the pieces taken, a window, the output so
    far) and without the frame catching it: that frame holds the thread's object, which
    will hold the error, a cycle only the collector frees (and plans pause it). The
    traceback's lines stay."""
    seen: set[int] = set()
    chained: list[BaseException | None] = [exc]
    while chained:
        each = chained.pop()
        if each is None or id(each) in seen:
            continue
        seen.add(id(each))
        traceback.clear_frames(each.__traceback__)  # the frame still running is left
        chained += [each.__cause__, each.__context__]
    here = exc.__traceback__
    return exc.with_traceback(here.tb_next if here is not None else None)


class PieceThread(Generic[R]):
    """``work`` on a thread of its own, given a body's pieces as they are fed (while it
    downloads): decompressing and msgspec let go of the GIL or take little of it, and
    waiting for the network does, so on a slow link the work is done by the time the last
    byte arrives. An error of ``work`` (garbage, a bomb) is raised at the next
    :meth:`feed`, which stops the download.
    """

    def __init__(self, work: Callable[[Iterator[bytes]], R]) -> None:
        self._work = work
        self._pieces: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._done: list[R] = []
        self._thread = threading.Thread(target=self._run, name="reconcile-unzstd", daemon=True)
        self._thread.start()

    def _arriving(self) -> Iterator[bytes]:
        while (piece := self._pieces.get()) is not None:
            yield piece

    def _run(self) -> None:
        pieces = self._arriving()
        try:
            self._done.append(self._work(pieces))
        except BaseException as exc:  # raised again, as it is, to the feeder
            self._error = _kept_error(exc)
        for _ in pieces:
            pass  # drain: the feeder stops at its next piece

    def feed(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._pieces.put(piece)

    def result(self) -> R:
        self._pieces.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._done[0]

    def abandon(self) -> None:
        """Stop, with nothing more to come (the download failed)."""
        self._error = self._error or ZstdError("abandoned")
        self._pieces.put(None)
        self._thread.join()


class UnzstdThread(PieceThread[bytearray]):
    """:class:`Unzstd` on a thread of its own, fed while a body downloads."""

    def __init__(self, source: str, limit: int) -> None:
        super().__init__(partial(unzstd_pieces, source=source, limit=limit))


# A download is decompressed alongside only when it is slow enough for that to pay:
# decompressing in pieces costs about a fifth more than in one call afterwards, so on a
# fast link (loopback, a LAN mirror) the one call wins. The rate is judged once, this long
# after the first piece; the download must then look like it will take at least
# ``ALONGSIDE_IF_LEFT`` seconds more.
JUDGE_AFTER = 0.1
JUDGE_BYTES = 8 * 1024 * 1024  # or once this much came (faster than 80 MB/s)
ALONGSIDE_IF_LEFT = 0.3
ASSUMED_LEFT = 32 * 1024 * 1024


class Alongside(Generic[R]):
    """What a download feeds: nothing happens until the transfer rate is known, then
    either the pieces go on to a thread ``start`` makes (a slow link), or not at all (a
    fast one: the caller reads the whole body afterwards, in one call).

    Only the pieces of the judging window are kept meanwhile.
    """

    def __init__(self, expected: int | None, start: Callable[[], PieceThread[R]]) -> None:
        self.expected = expected  # Content-Length, when given
        self._start = start
        self._started: float | None = None
        self._received = 0
        self._waiting: list[bytes] | None = []  # None once judged
        self.thread: PieceThread[R] | None = None

    def feed(self, piece: bytes) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        self._received += len(piece)
        if self.thread is not None:
            self.thread.feed(piece)
            return
        if self._waiting is None:
            return  # judged fast: the caller decompresses afterwards
        self._waiting.append(piece)
        elapsed = now - self._started
        if elapsed < JUDGE_AFTER and self._received < JUDGE_BYTES:
            return
        waiting, self._waiting = self._waiting, None
        if self._slow(elapsed):
            self.thread = self._start()
            for kept in waiting:
                self.thread.feed(kept)

    def _slow(self, elapsed: float) -> bool:
        rate = self._received / elapsed if elapsed > 0 else float("inf")
        # Of a body of unknown size, assume as much is left as repodata worth it weighs.
        left = ASSUMED_LEFT if self.expected is None else max(self.expected - self._received, 0)
        return left / rate >= ALONGSIDE_IF_LEFT

    def result(self) -> R:
        """What the thread made of the body (only when it ran: see :attr:`thread`)."""
        self._waiting = None
        if self.thread is None:
            raise RuntimeError("the body was judged fast: nothing was read alongside")
        return self.thread.result()

    def abandon(self) -> None:
        if self.thread is not None:
            self.thread.abandon()
