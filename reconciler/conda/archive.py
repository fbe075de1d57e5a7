"""Read what the index needs from a ``.conda`` or ``.tar.bz2`` file without unpacking it.

Only ``info/`` is decompressed (for ``.conda``, just the small ``info-*.tar.zst``
member). ``md5``, ``sha256`` and ``size`` come from the same read of the file:
small files are read into memory once and parsed from there; large ``.tar.bz2``
files are hashed as they stream through the decompressor, and large ``.conda``
files are hashed in one pass while the zip reader seeks to the info member.

Archives are untrusted: members outside ``info/`` are ignored, members with
absolute paths or ``..`` are refused, and what is read from ``info/`` is capped.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from reconciler.conda.metadata import CHANNELDATA_FLAGS, PackageMetadata
from reconciler.conda.names import package_suffix, strip_suffix
from reconciler.conda.records import record_problem
from reconciler.conda.tar import TarError, TarReader
from reconciler.errors import PackageError

# Files up to this size are read into memory once, hashed and parsed from there.
IN_MEMORY_LIMIT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024

# Caps on what is read from info/: paths.json of a huge package is a few MB.
MEMBER_LIMIT = 64 * 1024 * 1024
INFO_TOTAL_LIMIT = 256 * 1024 * 1024
# Caps on what finding info/ may cost. Members are parsed one by one and the ones
# skipped are still decompressed, so an archive of millions of empty members, or of a
# member declaring terabytes of zeros (which compress a million to one), would run for
# hours. A member may end no further into the decompressed stream than STREAM_RATIO
# times the compressed size (real packages compress 3 to 20 times), or STREAM_FLOOR
# for small files; 100,000 members take about 3 s to parse.
MAX_MEMBERS = 200_000
STREAM_RATIO = 200
STREAM_FLOOR = 1024 * 1024 * 1024

# The info/ files the index reads; the rest of info/ is skipped unread.
_WANTED = {
    "info/index.json",
    "info/about.json",
    "info/run_exports.json",
    "info/paths.json",
    "info/files",
    "info/has_prefix",
}


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes every byte it hands out."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._update(data)
        return n

    def _update(self, data: bytes) -> None:
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def drain(self) -> None:
        """Hash the rest of the file (after the parser stopped reading)."""
        while data := self._raw.read(_CHUNK):
            self._update(data)


def _digests_of_file(path: Path) -> tuple[str, str, int]:
    md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
    with path.open("rb") as handle:
        while data := handle.read(_CHUNK):
            md5.update(data)
            sha256.update(data)
            size += len(data)
    return md5.hexdigest(), sha256.hexdigest(), size


def _check_member_name(filename: str, name: str) -> None:
    if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
        raise PackageError(filename, f"archive member {name!r} tries to escape its folder")


def _info_members(
    filename: str,
    fileobj: IO[bytes],
    zf: zipfile.ZipFile | None,
    stop_after_info: bool,
    compressed: int,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for the wanted ``info/`` members of an archive.

    ``compressed`` is the size of what is streamed (the file, or the .conda's info
    member), which bounds how far into the decompressed stream a member may reach.
    """
    stream_limit = max(STREAM_FLOOR, STREAM_RATIO * compressed)
    total = 0
    count = 0
    seen_info = False
    with _component_stream(filename, fileobj, zf) as stream:
        reader = TarReader(stream)
        try:
            for member in reader:
                _check_member_name(filename, member.name)
                count += 1
                if count > MAX_MEMBERS:
                    raise PackageError(filename, f"more than {MAX_MEMBERS} archive members")
                if member.offset_data + member.size > stream_limit:
                    raise PackageError(
                        filename,
                        f"{member.name!r} would decompress past {stream_limit} bytes, over "
                        f"{STREAM_RATIO} times the {compressed} compressed bytes "
                        "(a decompression bomb?)",
                    )
                name = member.name
                if name.startswith("./"):
                    name = name[2:]
                if not name.startswith("info/"):
                    # conda-build writes info/ first in .tar.bz2; stop at the payload after it.
                    if stop_after_info and seen_info:
                        return
                    continue
                seen_info = True
                if name not in _WANTED or not member.isfile():
                    continue
                if member.size > MEMBER_LIMIT:
                    raise PackageError(filename, f"{name} is {member.size} bytes, over the limit")
                total += member.size
                if total > INFO_TOTAL_LIMIT:
                    raise PackageError(filename, "info/ is larger than the limit")
                yield name, reader.read()
        except TarError as exc:
            raise PackageError(filename, f"not a valid package archive: {exc}") from None


@contextlib.contextmanager
def _component_stream(
    filename: str, fileobj: IO[bytes], zf: zipfile.ZipFile | None
) -> Iterator[IO[bytes]]:
    """The decompressed tar stream holding ``info/``: a .conda's info-*.tar.zst member,
    or the whole .tar.bz2."""
    if zf is None:
        with bz2.BZ2File(fileobj) as stream:
            yield stream
        return
    stem = strip_suffix(filename)
    name = next(n for n in zf.namelist() if n.startswith(f"info-{stem}.tar"))
    with zf.open(name) as member:
        if name.endswith(".tar.zst"):
            with zstandard.ZstdDecompressor().stream_reader(member) as stream:
                yield stream
        elif name.endswith(".tar"):
            yield member
        else:
            raise PackageError(filename, f"{name}: an info member compressed an unknown way")


def _load_json(filename: str, member: str, data: bytes) -> dict[str, Any]:
    try:
        # orjson, as for repodata: what it reads it can write back (no NaN, no integer
        # beyond 64 bits), and the records from index.json are written into repodata.
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PackageError(filename, f"{member} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise PackageError(filename, f"{member} is not a JSON object")
    return value


def _open_conda(filename: str, fileobj: IO[bytes]) -> tuple[zipfile.ZipFile, int]:
    """Open a ``.conda`` and size its info member, which must be named after the file."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise PackageError(filename, f"not a valid .conda (zip) archive: {exc}") from None
    names = zf.namelist()
    stem = strip_suffix(filename)
    info = [i for i in zf.infolist() if i.filename.startswith(f"info-{stem}.tar")]
    if not info:
        inner = sorted(n for n in names if n.startswith("info-"))
        found = ", ".join(inner) or "no info-*.tar.zst member"
        raise PackageError(
            filename,
            f"the inner names do not match the filename (expected info-{stem}.tar.zst, "
            f"found {found})",
        )
    return zf, sum(i.compress_size for i in info)


def _flags(paths_json: dict[str, Any] | None, files: list[str], has_prefix: str) -> dict[str, bool]:
    """The channeldata flags, from paths.json (or info/files + has_prefix for old packages)."""
    binary = text = False
    if paths_json is not None:
        entries = paths_json.get("paths") or []
        paths = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            paths.append(str(entry.get("_path", "")))
            if entry.get("prefix_placeholder") or entry.get("file_mode"):
                mode = entry.get("file_mode", "text")
                binary = binary or mode == "binary"
                text = text or mode == "text"
    else:
        paths = files
        for line in has_prefix.splitlines():
            parts = line.split()
            mode = parts[1] if len(parts) == 3 else "text"
            binary = binary or mode == "binary"
            text = text or (mode == "text" and bool(parts))

    def script(kind: str) -> bool:
        return any(
            p.startswith(("bin/.", "Scripts/.")) and p.endswith((f"-{kind}.sh", f"-{kind}.bat"))
            for p in paths
        )

    flags = {
        "binary_prefix": binary,
        "text_prefix": text,
        "activate.d": any("etc/conda/activate.d/" in p for p in paths),
        "deactivate.d": any("etc/conda/deactivate.d/" in p for p in paths),
        "pre_link": script("pre-link"),
        "post_link": script("post-link"),
        "pre_unlink": script("pre-unlink"),
    }
    assert set(flags) == set(CHANNELDATA_FLAGS)
    return flags


def _parse(filename: str, fileobj: IO[bytes], suffix: str, size: int) -> PackageMetadata:
    members: dict[str, bytes] = {}
    try:
        zf, compressed = _open_conda(filename, fileobj) if suffix == ".conda" else (None, size)
        for name, data in _info_members(filename, fileobj, zf, True, compressed):
            members[name] = data
    except PackageError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, LookupError) as exc:
        raise PackageError(filename, f"corrupt or truncated archive ({exc})") from None
    except Exception as exc:  # decompressor errors come in many types
        raise PackageError(
            filename, f"corrupt or truncated archive ({type(exc).__name__}: {exc})"
        ) from None

    if "info/index.json" not in members:
        raise PackageError(filename, "no info/index.json in the archive")
    index = _load_json(filename, "info/index.json", members["info/index.json"])
    missing = [key for key in ("name", "version", "build") if not isinstance(index.get(key), str)]
    if missing:
        raise PackageError(filename, f"info/index.json lacks {', '.join(missing)}")
    problem = record_problem(index)
    if problem is not None:
        raise PackageError(filename, f"info/index.json: {problem}")
    about = (
        _load_json(filename, "info/about.json", members["info/about.json"])
        if "info/about.json" in members
        else {}
    )
    run_exports = (
        _load_json(filename, "info/run_exports.json", members["info/run_exports.json"])
        if "info/run_exports.json" in members
        else {}
    )
    paths_json = (
        _load_json(filename, "info/paths.json", members["info/paths.json"])
        if "info/paths.json" in members
        else None
    )
    files = members.get("info/files", b"").decode("utf-8", "replace").splitlines()
    has_prefix = members.get("info/has_prefix", b"").decode("utf-8", "replace")
    return PackageMetadata(
        filename=filename,
        index=index,
        about=about,
        run_exports=run_exports,
        flags=_flags(paths_json, files, has_prefix),
    )


def read_package(path: Path) -> PackageMetadata:
    """Metadata and digests of the package at ``path``; :class:`PackageError` if unusable."""
    filename = path.name
    suffix = package_suffix(filename)
    if suffix is None:
        raise PackageError(filename, "not a .conda or .tar.bz2 file")
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise PackageError(filename, "empty file")
        if size <= IN_MEMORY_LIMIT:
            data = path.read_bytes()
            meta = _parse(filename, io.BytesIO(data), suffix, size)
            md5, sha256 = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
            size = len(data)
        elif suffix == ".tar.bz2":
            with path.open("rb") as raw:
                reader = _HashingReader(raw)
                meta = _parse(filename, io.BufferedReader(reader, _CHUNK), suffix, size)
                reader.drain()
            md5, sha256, size = reader.md5.hexdigest(), reader.sha256.hexdigest(), reader.size
        else:
            with path.open("rb") as raw:
                meta = _parse(filename, raw, suffix, size)
            md5, sha256, size = _digests_of_file(path)
    except OSError as exc:
        raise PackageError(filename, f"cannot read file: {exc.strerror or exc}") from None
    return PackageMetadata(
        filename=meta.filename,
        index=meta.index,
        about=meta.about,
        run_exports=meta.run_exports,
        flags=meta.flags,
        md5=md5,
        sha256=sha256,
        size=size,
    )
