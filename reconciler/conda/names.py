"""Validation of subdir names and package filenames taken from untrusted metadata."""

from __future__ import annotations

import re
from collections.abc import Collection

# CEP-26 style platform subdirs: ``noarch`` or ``<platform>-<arch>``.
_SUBDIR_RE = re.compile(r"^[a-z0-9]+-[a-z0-9]+$")

PACKAGE_SUFFIXES: tuple[str, ...] = (".conda", ".tar.bz2")

# The longest file name Linux, macOS and Windows file systems take, in bytes: a longer
# one is valid text but can never be written into the channel.
NAME_MAX = 255

# A package filename is ``<name>-<version>-<build><suffix>``; none of the parts may
# contain path separators. Names and builds use conda's allowed characters.
_FILENAME_RE = re.compile(
    r"^[A-Za-z0-9_.+\-]+-[A-Za-z0-9_.+!]+-[A-Za-z0-9_.+]+(\.conda|\.tar\.bz2)$"
)


def is_valid_subdir(subdir: str) -> bool:
    """True for ``noarch`` and ``<os>-<arch>`` names such as ``linux-64``."""
    return subdir == "noarch" or bool(_SUBDIR_RE.match(subdir))


def package_suffix(filename: str) -> str | None:
    """The archive suffix of ``filename`` (``.conda`` or ``.tar.bz2``), or None."""
    for suffix in PACKAGE_SUFFIXES:
        if filename.endswith(suffix):
            return suffix
    return None


def filename_problem(filename: str) -> str | None:
    """Why ``filename`` is not a safe package filename, or None when it is.

    Filenames come from upstream metadata and are later joined to paths, so
    anything that could escape a directory is refused outright.
    """
    # The common case in one match: every check below passes.
    if (
        _FILENAME_RE.fullmatch(filename)
        and filename[0] != "."
        and ".." not in filename
        and len(filename) <= NAME_MAX
    ):
        return None
    if not filename:
        return "empty filename"
    if "\x00" in filename:
        return "filename contains a NUL byte"
    if "/" in filename or "\\" in filename:
        return "filename contains a path separator"
    if filename in (".", "..") or filename.startswith("."):
        return "filename starts with a dot"
    if ".." in filename:
        return "filename contains '..'"
    if package_suffix(filename) is None:
        return "filename does not end in .conda or .tar.bz2"
    if not _FILENAME_RE.match(filename):
        return "filename is not <name>-<version>-<build>.conda|.tar.bz2"
    if len(filename) > NAME_MAX:  # the pattern above allows ASCII only: chars are bytes
        return f"filename is longer than {NAME_MAX} bytes"
    return None


def is_safe_package_filename(filename: str) -> bool:
    return filename_problem(filename) is None


def strip_suffix(filename: str) -> str:
    """``numpy-1.26.0-py311_0.conda`` → ``numpy-1.26.0-py311_0``."""
    suffix = package_suffix(filename)
    return filename[: -len(suffix)] if suffix else filename


def filename_name(filename: str) -> str:
    """The package name a filename gives: ``python-dateutil-2.9.0-py_0.conda`` →
    ``python-dateutil`` (versions and builds hold no dash, names may)."""
    return filename.rsplit("-", 2)[0]


# The characters package filenames are made of, and the line break that joins them.
_ALLOWED_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+-!\n"


def suspect_filenames(filenames: Collection[str], suffix: str) -> list[str]:
    """Every filename that :func:`filename_problem` refuses or that does not end in
    ``suffix``, and maybe a few more: for half a million names, a handful of passes in
    C rather than a pattern match each. Check what it returns one by one."""
    if not filenames:
        return []
    listed = list(filenames)
    whole = "\n".join(listed).encode("utf-8", "surrogatepass")
    if whole.translate(None, _ALLOWED_BYTES) or whole.count(b"\n") != len(listed) - 1:
        # A character no package filename has (or a line break inside one): look at all.
        return listed
    found: set[int] = set()  # line numbers
    text = b"\n" + whole + b"\n"
    ending = suffix.encode() + b"\n"
    if text.count(ending) != len(listed):
        found.update(i for i, f in enumerate(listed) if not f.endswith(suffix))
    # With those characters and that suffix, what the pattern refuses has one of these:
    # fewer than two dashes, an empty part, a dot first, "..", "!" (allowed in the
    # version only), or too many characters.
    dashes = text.translate(None, _NOT_DASH_OR_BREAK)  # per line, its dashes only
    for piece in (b"\n\n", b"\n-\n"):
        found.update(_lines(dashes, piece))
    for piece in (b"\n.", b"..", b"--", b"\n-", b"-" + ending, b"!"):
        found.update(_lines(text, piece))
    if max(map(len, listed)) > NAME_MAX:
        found.update(i for i, f in enumerate(listed) if len(f) > NAME_MAX)
    return [listed[i] for i in sorted(found)]


_NOT_DASH_OR_BREAK = bytes(b for b in range(256) if b not in b"-\n")


def _lines(text: bytes, piece: bytes) -> list[int]:
    """The line numbers (0: the first after the leading break) where ``piece`` starts or
    whose break it starts with; every match, overlapping ones included."""
    found = []
    start = text.find(piece)
    while start >= 0:
        inside = start + 1 if piece[:1] == b"\n" else start  # a character of that line
        found.append(text.count(b"\n", 0, inside) - 1)
        start = text.find(piece, start + 1)
    return found
