"""Project names and distribution filenames, which come from untrusted pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

WHEEL = ".whl"
SDIST_SUFFIXES = (".tar.gz", ".zip")
METADATA_SUFFIX = ".metadata"


def normalize(name: str) -> str:
    """PEP 503: lower case, runs of ``-``, ``_`` and ``.`` become one ``-``."""
    return str(canonicalize_name(name))


# File systems take names of up to 255 bytes; a file may get a ``.metadata`` twin.
NAME_MAX = 255 - len(METADATA_SUFFIX)


def _encoded_length(filename: str) -> int | None:
    try:
        return len(filename.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape: no file has it
        return None


def is_safe_filename(filename: str) -> bool:
    """A plain file name we may join to a folder: no separators, NUL or dot prefix."""
    length = _encoded_length(filename)
    return (
        bool(filename)
        and length is not None
        and length <= NAME_MAX
        and not filename.startswith(".")
        and not any(c in filename for c in "/\\\x00")
        and filename.endswith((WHEEL, *SDIST_SUFFIXES))
    )


@dataclass(frozen=True)
class Distribution:
    """What a distribution's filename says about it."""

    filename: str
    project: str  # normalised
    version: Version
    kind: Literal["wheel", "sdist"]
    tags: frozenset[Tag]


def parse_filename(filename: str) -> Distribution:
    """Parse a wheel or sdist filename; :class:`ValueError` says why one is refused."""
    if not is_safe_filename(filename):
        raise ValueError(f"{filename!r} is not a safe wheel or sdist filename")
    try:
        if filename.endswith(WHEEL):
            name, version, _build, tags = parse_wheel_filename(filename)
            return Distribution(filename, str(name), version, "wheel", frozenset(tags))
        name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename) as exc:
        raise ValueError(str(exc)) from None
    return Distribution(filename, str(name), version, "sdist", frozenset())
