"""CEP-16 sharded repodata: one zstd+msgpack shard per package name, content-addressed.

Built from the patched repodata, so clients that read shards see the same
hotfixes as those that read ``repodata.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

SHARDS_VERSION = 1
SHARD_ZST_LEVEL = 16  # shards are small and immutable: compress them well
INDEX_ZST_LEVEL = 16
_DIGEST_KEYS = ("md5", "sha256")


@dataclass(frozen=True)
class ShardedRepodata:
    index_bytes: bytes
    shards: dict[str, bytes]  # hex sha256 of the compressed bytes -> compressed shard


def _binary_digests(record: Mapping[str, Any]) -> dict[str, Any]:
    """CEP-16 stores md5 and sha256 as raw bytes, not hex."""
    out = dict(record)
    for key in _DIGEST_KEYS:
        value = out.get(key)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # a malformed digest stays as it is
                out[key] = bytes.fromhex(value)
    return out


def _pack(obj: Any, compressor: zstandard.ZstdCompressor) -> bytes:
    return compressor.compress(msgpack.packb(obj, use_bin_type=True))


def _sorted(obj: Any) -> Any:
    """Sort mapping keys recursively: same records, same bytes, same shard hash."""
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


def build_shards(
    repodata: Mapping[str, Any],
    *,
    base_url: str = "./",
    shards_base_url: str = "./shards/",
) -> ShardedRepodata:
    """Shards and their index for one subdir; URLs are relative to the index file."""
    by_name: dict[str, dict[str, dict[str, Any]]] = {}
    for section in ("packages", "packages.conda"):
        for filename, record in (repodata.get(section) or {}).items():
            name = record.get("name")
            if not isinstance(name, str):
                continue
            shard = by_name.setdefault(name, {"packages": {}, "packages.conda": {}})
            shard[section][filename] = _binary_digests(record)

    # One compressor for all shards: setting one up costs more than a small shard.
    compressor = zstandard.ZstdCompressor(level=SHARD_ZST_LEVEL, write_content_size=True)
    shards: dict[str, bytes] = {}
    index: dict[str, bytes] = {}
    for name in sorted(by_name):
        data = _pack(_sorted(by_name[name]) | {"removed": []}, compressor)
        digest = hashlib.sha256(data).digest()
        shards[digest.hex()] = data
        index[name] = digest
    info = {
        "base_url": base_url,
        "shards_base_url": shards_base_url,
        "subdir": str((repodata.get("info") or {}).get("subdir", "")),
    }
    index_compressor = zstandard.ZstdCompressor(level=INDEX_ZST_LEVEL, write_content_size=True)
    index_bytes = _pack(
        {"info": info, "shards": index, "version": SHARDS_VERSION}, index_compressor
    )
    return ShardedRepodata(index_bytes, shards)


def _unpack(data: bytes) -> Any:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return msgpack.unpackb(raw, raw=False)


def read_shard_index(data: bytes) -> dict[str, Any]:
    """The shard index with digests as hex strings."""
    index: dict[str, Any] = _unpack(data)
    index["shards"] = {name: bytes(d).hex() for name, d in index.get("shards", {}).items()}
    return index


def read_shard(data: bytes) -> dict[str, Any]:
    """A shard with record digests as hex strings, as repodata.json has them."""
    shard: dict[str, Any] = _unpack(data)
    for section in ("packages", "packages.conda"):
        for record in (shard.get(section) or {}).values():
            for key in _DIGEST_KEYS:
                if isinstance(record.get(key), bytes):
                    record[key] = record[key].hex()
    return shard
