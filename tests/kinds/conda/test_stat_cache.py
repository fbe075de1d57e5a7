from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.conda.metadata import PackageMetadata
from reconciler.kinds.conda.stat_cache import CacheEntry, FileStat, StatCache
from reconciler.store.local import LocalStore


def _entry(name: str, mtime: int = 1, size: int = 10) -> CacheEntry:
    meta = PackageMetadata(
        filename=name,
        index={"name": "a", "version": "1", "build": "0", "weird": [1, {"x": None}]},
        about={"summary": "s"},
        flags={"post_link": True},
        md5="m",
        sha256="s",
        size=size,
    )
    return CacheEntry(FileStat(str(mtime), size), meta, indexed_timestamp=123)


def test_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cache = StatCache.load(store, "cache/noarch.msgpack")
    cache.put("a-1-0.conda", _entry("a-1-0.conda"))
    cache.save()
    again = StatCache.load(store, "cache/noarch.msgpack")
    assert again.entries == cache.entries
    assert again.lookup("a-1-0.conda", FileStat("1", 10)) is not None
    assert again.lookup("a-1-0.conda", FileStat("2", 10)) is None  # replaced file
    assert again.lookup("a-1-0.conda", FileStat("1", 11)) is None


def test_retain_drops_removed_files(tmp_path: Path) -> None:
    cache = StatCache(LocalStore(tmp_path), "c")
    cache.put("a-1-0.conda", _entry("a-1-0.conda"))
    cache.put("b-1-0.conda", _entry("b-1-0.conda"))
    cache.dirty = False
    cache.retain({"b-1-0.conda"})
    assert list(cache.entries) == ["b-1-0.conda"]
    assert cache.dirty


def test_save_skips_when_clean(tmp_path: Path) -> None:
    StatCache(LocalStore(tmp_path), "c").save()
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("garbage", [b"", b"\xc1\xc1", b"not msgpack at all", b"\x93\x01\x02\x03"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, garbage: bytes) -> None:
    (tmp_path / "c").write_bytes(garbage)
    store = LocalStore(tmp_path)
    cache = StatCache.load(store, "c")
    assert cache.entries == {}
    assert cache.dirty  # will be rewritten on save
    cache.save()
    assert StatCache.load(store, "c").entries == {}
