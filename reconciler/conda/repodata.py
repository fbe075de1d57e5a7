"""The shape and bytes of ``repodata.json`` and its compressed twins."""

from __future__ import annotations

import bz2
from collections.abc import Mapping
from typing import Any

import orjson
import zstandard

from reconciler.errors import ReconcileError

REPODATA_VERSION = 1

# zstd level for repodata. On a 5.6 MB repodata.json (7,500 records, 2 cores):
#   level  3: 1165 kB in 0.02 s    level 12: 1030 kB in 0.18 s
#   level 10: 1044 kB in 0.11 s    level 16:  898 kB in 1.2 s (conda-index's choice)
#   level 19:  862 kB in 2.7 s
# 16 is 13% smaller than 12 but 7x slower (about 5 s for a 20 MB subdir, on every
# re-index); beyond 12 each step costs far more time than it saves bytes.
ZST_LEVEL = 12
BZ2_LEVEL = 9


def empty_repodata(subdir: str) -> dict[str, Any]:
    return {
        "info": {"subdir": subdir},
        "packages": {},
        "packages.conda": {},
        "removed": [],
        "repodata_version": REPODATA_VERSION,
    }


def build_repodata(subdir: str, records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Repodata for ``subdir`` from records keyed by filename, split by format and sorted."""
    repodata = empty_repodata(subdir)
    tar_bz2: dict[str, Any] = repodata["packages"]
    conda: dict[str, Any] = repodata["packages.conda"]
    for filename in sorted(records):
        if filename.endswith(".conda"):
            conda[filename] = records[filename]
        elif filename.endswith(".tar.bz2"):
            tar_bz2[filename] = records[filename]
        else:
            raise ValueError(f"not a package filename: {filename!r}")
    return repodata


def serialize_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, two-space indent, trailing newline."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def compress_zst(data: bytes, level: int = ZST_LEVEL) -> bytes:
    """One zstd frame with the content size in its header.

    Always multi-threaded mode (``threads=-1``, at least one worker): zstd then gives
    the same bytes whatever the number of workers, so every machine writes the same
    file; it helps from about 10 MB (6.3 s → 4.6 s for 22 MB at level 16, 2 cores).
    """
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True, threads=-1)
    return compressor.compress(data)


def compress_bz2(data: bytes) -> bytes:
    return bz2.compress(data, BZ2_LEVEL)


def load_repodata(data: bytes | bytearray, source: str) -> dict[str, Any]:
    """Parse repodata bytes; garbage raises an error naming ``source``."""
    try:
        repodata = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ReconcileError(f"{source}: not valid JSON repodata ({exc})") from None
    if not isinstance(repodata, dict):
        raise ReconcileError(f"{source}: repodata is not a JSON object")
    if not isinstance(repodata.get("info", {}), dict):
        raise ReconcileError(f"{source}: repodata 'info' is not a mapping")
    for key in ("packages", "packages.conda"):
        section = repodata.setdefault(key, {})
        if not isinstance(section, dict) or not all(
            isinstance(record, dict) for record in section.values()
        ):
            raise ReconcileError(f"{source}: repodata {key!r} is not a mapping of records")
    removed = repodata.setdefault("removed", [])
    if not isinstance(removed, list):
        raise ReconcileError(f"{source}: repodata 'removed' is not a list")
    # Patching merges it into a set of filenames: anything else cannot be one.
    if not all(isinstance(name, str) for name in removed):
        raise ReconcileError(f"{source}: repodata 'removed' is not a list of filenames")
    return repodata
