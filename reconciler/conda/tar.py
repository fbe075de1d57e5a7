"""A small, strict reader of tar streams: member names and sizes, data only when asked.

The index reads a handful of ``info/`` files from each package. Python's ``tarfile``
builds a full ``TarInfo`` per member (owner, mode, times, checksums in pure Python),
which is most of a cold index's time; this reader parses only what the index needs —
the name (ustar prefix, GNU long names, pax ``path``), the size (octal or base-256)
and the type — verifies each header's checksum, and skips the data of members nobody
asked for. It reads forward only, so it works on decompressing streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

BLOCK = 512
_SKIP_CHUNK = 1024 * 1024
# A long name or a pax header bigger than this is refused (real ones are short).
MAX_HEADER_DATA = 1024 * 1024


class TarError(ValueError):
    """The stream is not a tar archive this reader accepts."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    kind: str  # "file", "dir", "link" or "other"
    offset_data: int  # where its data starts in the stream

    def isfile(self) -> bool:
        return self.kind == "file"


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256: big-endian, first byte's top bit set
        value = int.from_bytes(field, "big") & ((1 << (8 * len(field) - 1)) - 1)
        if field[0] & 0x40:
            raise TarError("negative size in a tar header")
        return value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError(f"tar header number {text!r} is not octal") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(header: bytes) -> bool:
    stored = header[148:156].split(b"\0", 1)[0].strip()
    if not stored:
        return False
    try:
        expected = int(stored, 8)
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if unsigned == expected:
        return True
    # Some writers sum signed bytes.
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    return signed == expected


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        try:
            length = int(data[position:space])
        except ValueError:
            raise TarError("malformed pax header") from None
        if length <= 0 or position + length > len(data):
            raise TarError("malformed pax header")
        record = data[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


class TarReader:
    """Iterate the members of a tar stream; :meth:`read` the current member's data."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._position = 0
        self._left = 0  # unread data (with padding) of the current member
        self._current: Member | None = None

    def _read_exactly(self, size: int) -> bytes:
        chunks = []
        needed = size
        while needed:
            chunk = self._stream.read(needed)
            if not chunk:
                raise TarError("the archive ends in the middle of a member")
            chunks.append(chunk)
            needed -= len(chunk)
        self._position += size
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def _skip(self, size: int) -> None:
        while size:
            chunk = self._stream.read(min(size, _SKIP_CHUNK))
            if not chunk:
                raise TarError("the archive ends in the middle of a member")
            size -= len(chunk)
            self._position += len(chunk)

    @staticmethod
    def _padded(size: int) -> int:
        return (size + BLOCK - 1) // BLOCK * BLOCK

    def _data_block(self, size: int) -> bytes:
        if size > MAX_HEADER_DATA:
            raise TarError(f"a tar header extension of {size} bytes")
        data = self._read_exactly(self._padded(size))
        return data[:size]

    def read(self) -> bytes:
        """The current member's data (once)."""
        if self._current is None:
            raise TarError("no current member")
        member, self._current = self._current, None
        data = self._read_exactly(self._padded(member.size))
        self._left = 0
        return data[: member.size]

    def __iter__(self) -> Iterator[Member]:
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            if self._left:
                self._skip(self._left)
                self._left = 0
            self._current = None
            header = self._stream.read(BLOCK)
            if not header:
                return  # no end-of-archive blocks: tolerated, as tarfile does
            self._position += len(header)
            if len(header) < BLOCK:
                header += self._read_exactly(BLOCK - len(header))
            if header.count(0) == BLOCK:
                return  # end of archive
            if not _checksum_ok(header):
                raise TarError("bad tar header checksum")
            size = _number(header[124:136])
            kind = header[156:157]
            if kind in (b"L", b"K"):  # GNU long name / long link name
                data = self._data_block(size)
                if kind == b"L":
                    long_name = _text(data)
                continue
            if kind in (b"x", b"g"):  # pax extended header (g: global, ignored)
                data = self._data_block(size)
                if kind == b"x":
                    pax = _pax_records(data)
                continue
            name = _text(header[0:100])
            if header[257:262] == b"ustar":
                prefix = _text(header[345:500])
                if prefix:
                    name = f"{prefix}/{name}"
            if long_name is not None:
                name, long_name = long_name, None
            if "path" in pax:
                name = pax["path"].rstrip("/")  # as tarfile reads it
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise TarError("pax size is not a number") from None
            pax = {}
            if size < 0:
                raise TarError("negative member size")
            if kind in (b"0", b"\0", b"7"):
                member_kind = "file"
            elif kind == b"5":
                member_kind = "dir"
                name = name.rstrip("/")
            elif kind in (b"1", b"2"):
                member_kind = "link"
                size = 0 if kind == b"2" else size
            else:
                member_kind = "other"
            member = Member(name, size, member_kind, self._position)
            self._left = self._padded(size) if member_kind in ("file", "other") else 0
            self._current = member if member_kind == "file" else None
            yield member
