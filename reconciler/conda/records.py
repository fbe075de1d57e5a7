"""Repodata records built from a package's ``info/index.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import repeat
from typing import Any

# Keys of index.json that conda's indexers leave out of repodata.
IGNORED_INDEX_KEYS: frozenset[str] = frozenset(
    {
        "arch",
        "has_prefix",
        "mtime",
        "platform",
        "ucs",
        "requires_features",
        "binstar",
        "target-triplet",
        "machine",
        "operatingsystem",
    }
)


def make_record(index: Mapping[str, Any], md5: str, sha256: str, size: int) -> dict[str, Any]:
    """index.json verbatim (unknown keys kept) minus the ignored keys, plus the digests.

    Nested values are shared with ``index``, not copied: callers build new lists
    rather than mutating the record's.
    """
    record = {k: v for k, v in index.items() if k not in IGNORED_INDEX_KEYS}
    record["md5"] = md5
    record["sha256"] = sha256
    record["size"] = size
    return record


# The fields conda's readers (and ours: current_repodata, channeldata, shards, the
# filters) take as typed. Records come from upstreams, package files and patches,
# none of them trusted: one whose field has another type is refused where it enters,
# so nothing downstream meets a ``depends`` that is a number.
_TEXT_FIELDS = frozenset(
    {"name", "version", "build", "subdir", "md5", "sha256", "license", "license_family"}
)
_INTEGER_FIELDS = frozenset({"build_number", "size"})
# The end of year 9999 in milliseconds: past it no date can be shown, nor the value
# written back by every JSON writer of repodata.
MAX_TIMESTAMP = 253_402_300_799_999
_TEXT_LIST_FIELDS = frozenset({"depends", "constrains"})


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def field_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the record field ``key``, or None when it can.

    ``None`` (JSON null) passes: it means "not given", as conda reads it.
    """
    if value is None:
        return None
    if key in _TEXT_FIELDS and not isinstance(value, str):
        return f"{key!r} is {_kind(value)}, not a string"
    if key in _INTEGER_FIELDS and type(value) is not int:
        return f"{key!r} is {_kind(value)}, not an integer"
    if key in _INTEGER_FIELDS and not 0 <= value < 2**63:
        return f"{key!r} {value} is out of range"
    if key == "timestamp":
        if type(value) not in (int, float) or not math.isfinite(value):
            return f"'timestamp' is {value!r}, not a number"
        if not 0 <= value <= MAX_TIMESTAMP:
            return f"'timestamp' {value!r} is out of range (0 to {MAX_TIMESTAMP}, milliseconds)"
    if key in _TEXT_LIST_FIELDS and not (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        return f"{key!r} is {_kind(value)}, not a list of strings"
    return None


# What each checked field must be, for the loop below: most records pass every check,
# and a dict lookup per field is far cheaper than asking field_problem about each.
_TEXT, _INTEGER, _TEXT_LIST, _TIMESTAMP = range(4)
_FIELD_KINDS: dict[str, int] = {
    **dict.fromkeys(_TEXT_FIELDS, _TEXT),
    **dict.fromkeys(_INTEGER_FIELDS, _INTEGER),
    **dict.fromkeys(_TEXT_LIST_FIELDS, _TEXT_LIST),
    "timestamp": _TIMESTAMP,
}


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` is unusable (no name, a mistyped field), or None when it is usable."""
    if not isinstance(record.get("name"), str):
        return "record has no name"
    kinds = _FIELD_KINDS
    for key, value in record.items():
        kind = kinds.get(key)
        # The checks every usable record passes, inline (no call per field); anything
        # else is field_problem's to explain.
        if kind is None or value is None:
            continue
        if kind == _TEXT:
            if isinstance(value, str):
                continue
        elif kind == _INTEGER:
            if type(value) is int and 0 <= value < 2**63:
                continue
        elif kind == _TEXT_LIST:
            # map() in C: no Python frame per item, as a generator would take.
            if isinstance(value, list) and all(map(isinstance, value, repeat(str))):
                continue
        elif kind == _TIMESTAMP and type(value) is int and 0 <= value <= MAX_TIMESTAMP:
            continue
        problem = field_problem(str(key), value)
        if problem is not None:
            return problem
    return None
