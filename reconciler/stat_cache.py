"""Per-subdir cache of extracted package metadata, keyed by filename, mtime and size.

The cache only saves work: it is safe to delete, and a cache that cannot be read
is dropped and rebuilt. It lives under ``<channel>/.reconciler/cache/``, which is
never served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from reconciler.conda.metadata import PackageMetadata
from reconciler.storage import write_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class FileStat:
    mtime_ns: int
    size: int


@dataclass
class CacheEntry:
    stat: FileStat
    metadata: PackageMetadata
    # CEP-47: when this exact file was first indexed (ms); kept across re-index runs.
    indexed_timestamp: int


@dataclass
class StatCache:
    path: Path
    entries: dict[str, CacheEntry] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, path: Path) -> StatCache:
        """Read the cache at ``path``; a missing or unreadable cache is empty."""
        cache = cls(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cache
        except OSError as exc:
            log.warning("ignoring unreadable index cache %s: %s", path, exc)
            cache.dirty = True
            return cache
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
                raise ValueError("unknown cache format")
            for name, item in data["entries"].items():
                cache.entries[str(name)] = CacheEntry(
                    stat=FileStat(int(item["mtime_ns"]), int(item["size"])),
                    metadata=PackageMetadata.from_dict(item["metadata"]),
                    indexed_timestamp=int(item["indexed_timestamp"]),
                )
        except Exception as exc:  # any corruption means: start over
            log.warning("index cache %s is corrupt (%s); rebuilding it", path, exc)
            cache.entries.clear()
            cache.dirty = True
        return cache

    def lookup(self, filename: str, stat: FileStat) -> CacheEntry | None:
        """The cached entry if the file still has the same mtime and size."""
        entry = self.entries.get(filename)
        if entry is not None and entry.stat == stat:
            return entry
        return None

    def put(self, filename: str, entry: CacheEntry) -> None:
        self.entries[filename] = entry
        self.dirty = True

    def retain(self, filenames: set[str]) -> None:
        """Forget files that are no longer present."""
        gone = [name for name in self.entries if name not in filenames]
        for name in gone:
            del self.entries[name]
        if gone:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        data: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "entries": {
                name: {
                    "mtime_ns": entry.stat.mtime_ns,
                    "size": entry.stat.size,
                    "indexed_timestamp": entry.indexed_timestamp,
                    "metadata": entry.metadata.to_dict(),
                }
                for name, entry in sorted(self.entries.items())
            },
        }
        write_atomic(self.path, msgpack.packb(data, use_bin_type=True))
        self.dirty = False
