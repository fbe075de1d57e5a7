"""A ``.zst`` upstream body read through the window while it downloads (a slow link).

The window scan (:mod:`reconciler.conda.window_scan`) reads the pieces as they arrive,
on the thread :class:`~reconciler.transport.unzstd.Alongside` starts. When it gives up
(a document it cannot split, or not zstd at all), the pieces so far and the rest are
decompressed whole on the same thread instead, so garbage or a bomb still stops the
download at once with the decompressor's error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain

from reconciler.conda.window_scan import HEADER_BYTES, Scanned, declared_size, scan_stream
from reconciler.transport import stopping
from reconciler.transport.unzstd import Alongside, PieceThread, unzstd_pieces


class _Arriving:
    """The pieces of a body read as a file, each piece kept as it is taken."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self.taken: list[bytes] = []
        self._pending = b""
        self._at = 0

    def _more(self) -> bool:
        piece = next(self._pieces, None)
        if piece is None:
            return False
        self.taken.append(piece)
        # (Only a peek leaves bytes pending when more come: no copy of every piece.)
        rest = self._pending[self._at :]
        self._pending = rest + piece if rest else piece
        self._at = 0
        return True

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), left to be read."""
        while len(self._pending) - self._at < size and self._more():
            pass
        return self._pending[self._at : self._at + size]

    def read(self, size: int = -1) -> bytes:
        while self._at == len(self._pending) and self._more():
            pass
        end = len(self._pending) if size < 0 else self._at + size
        out = self._pending[self._at : end]
        self._at += len(out)
        return out


def scan_alongside(
    source: str, wanted: Callable[[str], bool], limit: int, expected: int | None
) -> Alongside[Scanned | bytearray]:
    """What a ``.zst`` body is fed to as it arrives: on a slow link, read through the
    window (a :class:`Scanned`) or else decompressed whole (the document's bytes)."""
    # The scan runs on a thread of its own: it stops when the thread fetching stops.
    check = stopping.checker()

    def work(pieces: Iterator[bytes]) -> Scanned | bytearray:
        arriving = _Arriving(pieces)
        declared = declared_size(arriving.peek(HEADER_BYTES))
        scanned = scan_stream(arriving, declared, wanted, limit, check)
        if scanned is not None:
            return scanned
        taken, arriving.taken = arriving.taken, []
        return unzstd_pieces(chain(taken, pieces), source, limit)

    return Alongside(expected, lambda: PieceThread(work))
