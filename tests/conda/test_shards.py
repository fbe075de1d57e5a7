"""CEP-16 shards: content-addressed, binary digests, an index naming every shard."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import zstandard

from reconciler.conda.shards import build_shards, read_shard, read_shard_index


def repodata() -> dict[str, Any]:
    def rec(name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "build": "0",
            "md5": hashlib.md5(f"{name}{version}".encode()).hexdigest(),
            "sha256": hashlib.sha256(f"{name}{version}".encode()).hexdigest(),
            "depends": [],
        }

    return {
        "info": {"subdir": "linux-64"},
        "packages": {"a-1-0.tar.bz2": rec("a", "1")},
        "packages.conda": {"a-2-0.conda": rec("a", "2"), "b-1-0.conda": rec("b", "1")},
        "removed": [],
        "repodata_version": 1,
    }


def test_one_shard_per_name_keyed_by_sha256_of_compressed_bytes() -> None:
    sharded = build_shards(repodata())
    index = read_shard_index(sharded.index_bytes)
    assert index["version"] == 1
    assert index["info"] == {"base_url": "./", "shards_base_url": "./shards/", "subdir": "linux-64"}
    assert sorted(index["shards"]) == ["a", "b"]
    assert sorted(index["shards"].values()) == sorted(sharded.shards)
    for digest, data in sharded.shards.items():
        assert hashlib.sha256(data).hexdigest() == digest
    a = read_shard(sharded.shards[index["shards"]["a"]])
    assert sorted(a["packages"]) == ["a-1-0.tar.bz2"]
    assert sorted(a["packages.conda"]) == ["a-2-0.conda"]
    assert a["packages.conda"]["a-2-0.conda"] == repodata()["packages.conda"]["a-2-0.conda"]


def test_digests_are_raw_bytes_on_the_wire() -> None:
    sharded = build_shards(repodata())
    raw_index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(sharded.index_bytes))
    assert all(isinstance(d, bytes) and len(d) == 32 for d in raw_index["shards"].values())
    shard = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(next(iter(sharded.shards.values())))
    )
    record = next(iter({**shard["packages"], **shard["packages.conda"]}.values()))
    assert isinstance(record["sha256"], bytes) and len(record["sha256"]) == 32
    assert isinstance(record["md5"], bytes) and len(record["md5"]) == 16


def test_deterministic_and_change_moves_only_that_shard() -> None:
    first = build_shards(repodata())
    assert build_shards(repodata()) == first
    changed = repodata()
    changed["packages.conda"]["b-1-0.conda"]["depends"] = ["a"]
    second = build_shards(changed)
    old, new = read_shard_index(first.index_bytes), read_shard_index(second.index_bytes)
    assert old["shards"]["a"] == new["shards"]["a"]
    assert old["shards"]["b"] != new["shards"]["b"]
