"""A zstd stream decompressed on a thread of its own, a few buffers ahead of its reader.

zstandard lets go of the GIL while it decompresses; msgspec, which decodes what comes
out, holds it. Decompressing on another thread lets the two run on two cores: a 450 MB
document is read in about the longer of the two times instead of their sum.

Memory stays bounded: the thread fills one of a few fixed buffers and waits for the
reader to hand one back. The buffers are reused, so their pages are touched once.
"""

from __future__ import annotations

import queue
import threading
from typing import IO, cast

import zstandard

# Decompressed bytes per step of the thread, and how many steps it may be ahead. A step
# is long enough (tens of ms) that waiting for the GIL once per step costs little.
BUFFER = 8 * 1024 * 1024
BUFFERS = 3
# Compressed bytes the decompressor asks a file-like source for at a time.
READ_SIZE = 1024 * 1024

_Filled = tuple[bytearray, int] | BaseException


class DecompressAhead:
    """``readinto`` of the decompressed data of ``source`` (bytes, or an object with
    ``read``), decompressed ahead on a thread. What decompression or the source raised
    is raised by ``readinto``, in order, and again at every later call. ``expected``:
    about how much will come out, so a small document gets small buffers."""

    def __init__(self, source: bytes | object, expected: int | None = None) -> None:
        # (zstandard reads any object with read(); its stubs say IO)
        self._stream = zstandard.ZstdDecompressor().stream_reader(
            source if isinstance(source, bytes) else cast(IO[bytes], source),
            read_size=READ_SIZE,
            read_across_frames=True,
        )
        self._free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        self._filled: queue.SimpleQueue[_Filled] = queue.SimpleQueue()
        self.buffer_size = BUFFER if expected is None else max(min(BUFFER, expected + 1), 4096)
        for _ in range(BUFFERS):
            self._free.put(bytearray(self.buffer_size))
        self._stopping = False
        self._current: bytearray | None = None
        self._at = self._end = 0
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._decompress, name="reconcile-unzstd-ahead", daemon=True
        )
        self._thread.start()

    def _decompress(self) -> None:
        while True:
            buffer = self._free.get()
            if buffer is None or self._stopping:
                return
            try:
                got = self._stream.readinto(buffer)
            except BaseException as error:  # for the reader to raise, in its thread
                # (the error's traceback holds this frame: not the buffer as well)
                buffer = bytearray()
                self._filled.put(error)
                return
            self._filled.put((buffer, got))
            if got == 0:
                return

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with what comes next (less at a buffer's end); 0 at the end."""
        if self._current is None:
            if self._error is not None:
                raise self._error
            if self._ended:
                return 0
            filled = self._filled.get()
            if isinstance(filled, BaseException):
                self._error = filled
                raise filled
            self._current, self._end = filled
            self._at = 0
            if self._end == 0:
                self._ended = True
                self._current = None
                return 0
        size = min(len(view), self._end - self._at)
        view[:size] = memoryview(self._current)[self._at : self._at + size]
        self._at += size
        if self._at == self._end:
            self._free.put(self._current)
            self._current = None
        return size

    def close(self) -> None:
        """Stop decompressing and wait for the thread: after the step under way, which
        may wait for its source (a download) to give the compressed bytes it asked for.
        (Whoever reads that source next needs those bytes first anyway.)"""
        self._stopping = True
        self._free.put(None)
        self._thread.join()
        self._current = None
        # The buffers go now, whatever still holds this reader (an error's traceback).
        for waiting in (self._free, self._filled):
            while not waiting.empty():
                waiting.get()
