"""A ``.zst`` repodata body read through a small window, keeping only wanted records.

Decompressing a 450 MB document into one buffer and decoding it whole touches every
page of that buffer and of a million small objects pointing into it; on a virtual
machine those page faults cost as much as the decompression itself. A mirror whose
name filter selects a few hundred names needs only the filenames of the rest. Here the
body is decompressed a window at a time, each window's records are decoded (by msgspec,
in C) as one piece, and what is kept is every filename and, for the names a gate
accepts, a copy of the record's bytes.

Splitting JSON without parsing it: a raw newline byte cannot occur inside a JSON string
(nor inside a number or a literal), so in an indented document ``,\\n<indent>"`` can only
lie between tokens. A section's records are cut there into pieces, each decoded as an
object of its own (the comma and newline are overwritten with ``}{``: both are outside
every value). Once every piece decodes, and the document around the sections decodes
with a random sentinel object standing in for each section and found exactly there,
the whole document reads the same way: JSON's grammar is unambiguous, so members that
are valid on their own are valid, and the same, side by side.

Anything unexpected gives up (``None``) and the caller reads the document whole, as
before and with the same errors: no indentation, a record larger than the window, a
piece or the outline that does not decode, a frame that is not exactly its declared
size, data after it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Protocol

import msgspec
import zstandard

from reconciler.conda.unzstd_ahead import DecompressAhead

# Decompressed bytes looked at a time; a record must fit in a window.
WINDOW = 16 * 1024 * 1024
# The document around the sections (info, removed): past this, read it whole instead.
MAX_OUTLINE = 16 * 1024 * 1024
# Indentation deeper than this is not what a repodata writer makes: read it whole.
_INDENT = 64
_HEADER = re.compile(rb'\n([ \t]{0,%d})"(packages|packages\.conda)"[ \t]*:[ \t]*\{' % _INDENT)
# The longest header, so one cut by the window's end is found in the next.
_HEADER_SPAN = len(b'\n"packages.conda"') + 2 * _INDENT + 8
_SECTIONS = {b"packages": 0, b"packages.conda": 1}
_PIECE = msgspec.json.Decoder(dict[str, msgspec.Raw])


class _Outline(msgspec.Struct):
    info: Any = msgspec.field(default_factory=dict)
    packages: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    packages_conda: dict[str, msgspec.Raw] = msgspec.field(
        default_factory=dict, name="packages.conda"
    )
    removed: list[str] = msgspec.field(default_factory=list)


_OUTLINE = msgspec.json.Decoder(_Outline)


class _GiveUp(Exception):
    """The document is not one this reader takes: read it whole."""


@dataclass
class Section:
    """One section's filenames (in document order, each once), the name each gives, and
    the records of wanted names as their JSON bytes."""

    files: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    kept: dict[str, bytes] = field(default_factory=dict)
    ordered: bool = True  # filenames strictly increasing (so each is there once)


@dataclass
class Scanned:
    info: dict[str, Any]
    removed: list[str]
    sections: tuple[Section, Section]  # packages, packages.conda


class Readable(Protocol):
    """A body read as it arrives (what zstandard's reader reads from)."""

    def read(self, size: int = -1) -> bytes: ...


# A zstd frame header is at most this long: the declared size is known from these bytes.
HEADER_BYTES = 18


_MAGIC = b"\x28\xb5\x2f\xfd"


def one_frame(body: bytes) -> bool:
    """Whether ``body`` is exactly one whole zstd frame: the window reads nothing else (a
    frame or a stray byte after it is for the whole read to take or refuse). Walks the
    block headers (RFC 8878) without decompressing anything."""
    if not body.startswith(_MAGIC):
        return False
    try:
        at = zstandard.frame_header_size(body)
    except zstandard.ZstdError:
        return False
    checksum = body[4] & 0x04
    while True:
        if at + 3 > len(body):
            return False
        header = int.from_bytes(body[at : at + 3], "little")
        at += 3
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 3:  # reserved
            return False
        at += 1 if kind == 1 else size  # an RLE block holds one byte
        if header & 1:  # the last block
            break
    return at + (4 if checksum else 0) == len(body)


def declared_size(head: bytes | bytearray | memoryview) -> int | None:
    """The content size the first frame of a body starting with ``head`` declares (None:
    not said, said to be 0, or no whole frame header)."""
    try:
        size = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        return None
    return size if size > 0 else None


class _Reader:
    """The decompressed document a window at a time, checked against its declared size."""

    def __init__(self, body: bytes | Readable, declared: int) -> None:
        self._stream = DecompressAhead(body, declared)
        self._declared = declared
        self.total = 0

    def close(self) -> None:
        self._stream.close()

    def fill(self, view: memoryview) -> int:
        """Decompress into ``view``; 0 at the end of the data."""
        try:
            got = self._stream.readinto(view)
        except zstandard.ZstdError:
            raise _GiveUp from None
        self.total += got
        if self.total > self._declared or (got == 0 and self.total != self._declared):
            raise _GiveUp  # the frame lied about its size, or more data followed it
        return got


class _Scan:
    def __init__(self, wanted: Callable[[str], bool], declared: int) -> None:
        self.wanted = wanted
        self.verdicts: dict[str, bool] = {}
        # A small document is read in one window (it fills less than half of it, so
        # its end is seen at once), which allocates no more than it needs.
        self.size = min(WINDOW, 2 * declared + 64)
        self.window = bytearray(self.size)
        self.view = memoryview(self.window)
        self.have = 0  # bytes in the window
        self.outline = bytearray()  # the document outside the sections, sentinels in them
        self.sentinels: dict[int, str] = {}  # section → the sentinel key standing in for it
        self.sections = (Section(), Section())
        # Inside a section: its number, where the current piece starts (at its "{"), the
        # separator between records and the section's closing line.
        self.section: int | None = None
        self.start = 0
        self.separator: bytes | None = None
        self.closing = b""
        self.searched = 0  # where the next search for a header or a closing line starts

    # -- the window ----------------------------------------------------------------------

    def run(self, reader: _Reader, check: Callable[[], None]) -> None:
        while True:
            check()
            ended = False
            while self.have < self.size * 3 // 4:
                got = reader.fill(self.view[self.have :])
                if got == 0:
                    ended = True
                    break
                self.have += got
            self._consume(ended)
            if ended:
                break
            if self.have >= self.size * 3 // 4:
                raise _GiveUp  # nothing could be consumed: a record bigger than the window

    def _shift(self, keep_from: int) -> None:
        """Move what is still to be read (from ``keep_from``) to the window's start."""
        left = self.have - keep_from
        self.window[0:left] = self.window[keep_from : self.have]
        self.have = left
        self.start -= keep_from
        self.searched = max(self.searched - keep_from, 0)

    def _consume(self, ended: bool) -> None:
        done = 0  # what of the window has been dealt with
        while True:
            if self.section is None:
                found = _HEADER.search(self.window, self.searched, self.have)
                if found is None:
                    # Keep the tail that might start a header cut by the window's end.
                    upto = self.have if ended else max(done, self.have - _HEADER_SPAN)
                    self._outline(self.view[done:upto])
                    if ended:
                        return
                    self.searched = upto
                    self._shift(upto)
                    return
                number = _SECTIONS[found.group(2)]
                if number in self.sentinels:
                    raise _GiveUp  # listed twice
                brace = found.end() - 1
                sentinel = secrets.token_hex(16)
                self.sentinels[number] = sentinel
                self._outline(self.view[done:brace])
                self._outline(b'{"%s":0}' % sentinel.encode())
                self.section = number
                self.start = brace
                self.separator = None
                self.closing = b"\n" + found.group(1) + b"}"
                self.searched = brace + 1
                done = brace
            if self.separator is None and not self._first_record(ended):
                self._shift(done)
                return
            assert self.separator is not None
            # The last separator first: searching the whole window for the closing line
            # costs as much as decoding it. A piece that runs past the section's end does
            # not decode (msgspec refuses anything after the object), and only then is
            # the closing line looked for.
            cut = self.window.rfind(self.separator, self.start, self.have)
            if cut > self.start and self._cut(cut):
                self.start = self.searched = cut + 1
                if ended:
                    continue  # the section's end is after the last separator
                self._shift(self.start)
                return
            close = self.window.find(self.closing, max(self.searched, self.start), self.have)
            if close >= 0:
                end = close + len(self.closing)
                if not self._piece(self.start, end):
                    raise _GiveUp
                self.section = None
                self.searched = done = end
                continue
            if ended or cut > self.start:
                raise _GiveUp  # the section never closes, or a piece is not JSON
            self.searched = max(self.start, self.have - len(self.closing) + 1)
            self._shift(self.start)
            return

    def _first_record(self, ended: bool) -> bool:
        """Find how records are separated, from the first one's indentation (False: not
        enough of the section in the window yet)."""
        at = self.start + 1
        while at < self.have and self.window[at] in b" \t\r\n":
            at += 1
        if at == self.have:
            if ended or self.have >= self.size // 2:
                raise _GiveUp
            return False
        if self.window[at] == ord("}"):  # an empty section
            self.separator = b"\x00never"
            self.closing = b"}"
            self.searched = at
            return True
        line = self.window.rfind(b"\n", self.start, at)
        if line < 0 or self.window[at] != ord('"'):
            raise _GiveUp  # not one record per indented line
        self.separator = b",\n" + bytes(self.window[line + 1 : at]) + b'"'
        return True

    def _outline(self, data: bytes | memoryview) -> None:
        self.outline += data
        if len(self.outline) > MAX_OUTLINE:
            raise _GiveUp

    # -- records -------------------------------------------------------------------------

    def _cut(self, at: int) -> bool:
        """Read the records up to the separator at ``at`` as a piece (False: they do not
        decode as one object, and the separator is left as it was)."""
        self.window[at : at + 2] = b"}{"
        if self._piece(self.start, at + 1):
            return True
        self.window[at : at + 2] = b",\n"
        return False

    def _piece(self, start: int, end: int) -> bool:
        """Decode the window's ``[start, end)`` (``{`` … ``}``) as one section's records
        (False: not an object of records, and nothing was taken)."""
        assert self.section is not None
        try:
            records = _PIECE.decode(self.view[start:end])
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return False
        section = self.sections[self.section]
        files = list(records)
        names = [f.rsplit("-", 2)[0] for f in files]  # filename_name, inlined
        if section.ordered and files:
            before = section.files[-1] if section.files else None
            section.ordered = (before is None or before < files[0]) and files == sorted(files)
        verdicts = self.verdicts
        present = set(names)
        for name in present.difference(verdicts):
            verdicts[name] = self.wanted(name)
        # Most pieces hold no wanted name; the others are walked in C, not in Python.
        if any(map(verdicts.__getitem__, present)):
            kept = section.kept
            for filename in compress(files, map(verdicts.__getitem__, names)):
                kept[filename] = bytes(records[filename])
        section.files += files
        section.names += names
        return True

    def result(self) -> Scanned:
        if self.section is not None:
            raise _GiveUp
        try:
            outline = _OUTLINE.decode(self.outline)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise _GiveUp from None
        if not isinstance(outline.info, dict):
            raise _GiveUp
        found = (outline.packages, outline.packages_conda)
        for number, section in enumerate(self.sections):
            sentinel = self.sentinels.get(number)
            if sentinel is not None:
                # The sentinel must be exactly what the document's section is.
                if len(found[number]) != 1 or sentinel not in found[number]:
                    raise _GiveUp
                _dedupe(section)
            else:
                self._whole_section(section, found[number])
        return Scanned(outline.info, outline.removed, self.sections)

    def _whole_section(self, section: Section, records: dict[str, msgspec.Raw]) -> None:
        """A section found in the outline itself (written on one line, say)."""
        section.files = list(records)
        section.names = [f.rsplit("-", 2)[0] for f in section.files]
        section.ordered = False
        for filename, name in zip(section.files, section.names, strict=True):
            if self.wanted(name):
                section.kept[filename] = bytes(records[filename])


def _dedupe(section: Section) -> None:
    """A filename listed twice keeps its first place (its last record is kept already),
    as a JSON object read into a dict has it."""
    if section.ordered or len(set(section.files)) == len(section.files):
        return
    section.files = list(dict.fromkeys(section.files))
    section.names = [f.rsplit("-", 2)[0] for f in section.files]


def _go_on() -> None:
    pass


def scan(
    body: bytes,
    wanted: Callable[[str], bool],
    limit: int,
    check: Callable[[], None] = _go_on,
) -> Scanned | None:
    """The ``.zst`` repodata ``body`` read through a window, the records of names
    ``wanted`` accepts kept; None when it must be read whole (see the module's text).
    ``check`` is called before each window: what it raises ends the scan (the reading is
    no longer wanted)."""
    if not one_frame(body):
        return None
    return scan_stream(body, declared_size(body[:HEADER_BYTES]), wanted, limit, check)


def scan_stream(
    body: bytes | Readable,
    declared: int | None,
    wanted: Callable[[str], bool],
    limit: int,
    check: Callable[[], None] = _go_on,
) -> Scanned | None:
    """:func:`scan` of a body that may still be arriving; ``declared``: the size its
    first frame declares (:func:`declared_size`). Whether the body was :func:`one_frame`
    is for the caller to check once it has all of it."""
    if declared is None or declared > limit:
        return None
    walk = _Scan(wanted, declared)
    reader = _Reader(body, declared)
    try:
        walk.run(reader, check)
        return walk.result()
    except _GiveUp:
        return None
    finally:
        reader.close()
