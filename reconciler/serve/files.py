"""Which file a URL names inside a channel, safely; and how to describe it over HTTP."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote

from reconciler.conda.names import is_valid_subdir, package_suffix

_TYPES = {
    ".json": "application/json",
    ".zst": "application/zstd",
    ".bz2": "application/x-bzip2",
    ".html": "text/html; charset=utf-8",
    ".conda": "application/octet-stream",
}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Refused(Exception):
    """The URL is not one we serve (404), whatever is on disk."""


def split_url_path(raw: str) -> list[str]:
    """URL path → segments, refusing anything that could leave a channel folder.

    Percent-decoding happens once, here; a decoded segment that is ``..``, ``.``,
    hidden (``.reconciler``, ``.cache``), or holds a separator or a control character
    (NUL, CR, LF, ...: nothing from a URL may end up in a header) is refused.
    """
    path = raw.partition("?")[0].partition("#")[0]
    parts = path.split("/")
    segments = [unquote(s) for s in parts] if "%" in path else parts
    if segments and segments[0] == "":
        segments = segments[1:]
    trailing = bool(segments) and segments[-1] == ""
    if trailing:
        segments = segments[:-1]
    for segment in segments:
        if not segment or segment[0] == "." or "/" in segment or "\\" in segment:
            raise Refused(raw)
    if _CONTROL.search("".join(segments)):
        raise Refused(raw)
    return segments + ([""] if trailing else [])


def channel_relative(rest: list[str]) -> str:
    """The file ``rest`` (segments after the channel name) names, relative to the channel."""
    if not rest or rest == [""]:
        return "index.html"
    if len(rest) == 1:
        if rest[0] in ("channeldata.json", "index.html"):
            return rest[0]
        raise Refused("/".join(rest))
    subdir, *inner = rest
    if not is_valid_subdir(subdir):
        raise Refused(subdir)
    if inner == [""]:
        return f"{subdir}/index.html"
    if len(inner) == 1:
        return f"{subdir}/{inner[0]}"
    if len(inner) == 2 and inner[0] == "shards" and inner[1].endswith(".msgpack.zst"):
        return f"{subdir}/shards/{inner[1]}"
    raise Refused("/".join(rest))


def channel_file(root: Path, rest: list[str]) -> Path:
    """The file ``rest`` (segments after the channel name) names under ``root``."""
    return root / channel_relative(rest)


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` (symlinks resolved) stays inside ``root``."""
    try:
        real = os.path.realpath(path)
        top = os.path.realpath(root)
    except (ValueError, OSError):
        return False
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def stat_inside(root: str, relative: str) -> os.stat_result | None:
    """The status of ``root/relative`` unless it leads out of ``root``; None when not.

    ``root`` is a real path (no symlinks). Each component below it is ``lstat``-ed:
    with no symlink on the way (the usual case) the last one is the answer; a symlink
    is followed only when the real path it leads to is still inside ``root``.
    """
    found = resolve_inside(root, relative)
    return None if found is None else found[0]


def resolve_inside(root: str, relative: str) -> tuple[os.stat_result, str] | None:
    """:func:`stat_inside`, with the real path of what it found (no link in it)."""
    path = root
    st: os.stat_result | None = None
    for part in relative.split("/"):
        path = f"{path}/{part}"
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(f"{root}/{relative}")
            if not real.startswith(root.rstrip("/") + "/"):
                return None
            try:
                return os.stat(real), real
            except OSError:
                return None
    return (st, path) if st is not None else None


def open_inside(root: str, relative: str) -> int | None:
    """Open ``root/relative`` for reading unless it leads out of ``root``; None when not.

    ``root`` is a real path (no symlinks). Each component below it is ``lstat``-ed:
    with no symlink on the way (the usual case) nothing else is needed; a symlink is
    followed only when the real path it leads to is still inside ``root``.
    """
    path = root
    for part in relative.split("/"):
        path = f"{path}/{part}"
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(f"{root}/{relative}")
            if not real.startswith(root.rstrip("/") + "/"):
                return None
            break
    try:
        return os.open(f"{root}/{relative}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None


def content_type(name: str) -> str:
    if package_suffix(name) is not None:
        return "application/octet-stream"
    for suffix, kind in _TYPES.items():
        if name.endswith(suffix):
            return kind
    return "application/octet-stream"


def cache_control(
    path: Path | str, max_age: int = 60, *, private: bool = False, immutable: bool = False
) -> str:
    """Package files and shards never change under their name (``immutable``: another
    kind's files that never do); the rest (index files, pages) for ``max-age`` seconds
    (the channel's ``index_max_age``). A private channel's answers are for the client's
    own cache only: a shared cache must not hand them to a request without the token."""
    scope = "private" if private else "public"
    relative = os.fspath(path)
    name = relative.rsplit("/", 1)[-1]
    if immutable or package_suffix(name) is not None or relative.endswith(f"/shards/{name}"):
        return f"{scope}, max-age=31536000, immutable"
    return f"{scope}, max-age={max_age}"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` (one range) → inclusive (start, end); None when unsatisfiable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    spec = header[len("bytes=") :].strip()
    first, _, last = spec.partition("-")
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                return None
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or start < 0 or end < start:
        return None
    return start, min(end, size - 1)
