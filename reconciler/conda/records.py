"""Repodata records built from a package's ``info/index.json``."""

from __future__ import annotations

from collections.abc import Mapping
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
