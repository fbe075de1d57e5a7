"""Validation of subdir names and package filenames taken from untrusted metadata."""

from __future__ import annotations

import re

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
