"""Per-subdir cache of extracted package metadata, keyed by filename and fingerprint.

A file's fingerprint is its size and the store's tag for it (the mtime on disk,
the ETag in a bucket). The cache only saves work: it is safe to delete, and a
cache that cannot be read is dropped and rebuilt. It lives under
``<channel>/.reconciler/cache/``, which is never served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgpack

from reconciler.conda.metadata import PackageMetadata, decode_metadata, encode_metadata
from reconciler.errors import ReconcileError
from reconciler.store.base import Store

log = logging.getLogger(__name__)

# 2: metadata stored as a nested msgpack blob, decoded only when needed.
# 3: files keyed by the store's tag (text) instead of an mtime.
CACHE_FORMAT = 3


@dataclass(frozen=True)
class FileStat:
    tag: str  # mtime_ns on disk, ETag in a bucket
    size: int


class CacheEntry:
    """One package file as last read: its stat, digest, CEP-47 stamp and metadata.

    The metadata stays an encoded blob until something asks for it, so a no-op
    re-index of a big channel never decodes it.
    """

    __slots__ = ("_blob", "_metadata", "indexed_timestamp", "sha256", "stat")

    def __init__(
        self,
        stat: FileStat,
        metadata: PackageMetadata | None = None,
        indexed_timestamp: int = 0,
        *,
        sha256: str | None = None,
        blob: bytes | None = None,
    ) -> None:
        if metadata is None and blob is None:
            raise ValueError("a cache entry needs metadata or its encoded blob")
        self.stat = stat
        self._metadata = metadata
        self._blob = blob
        # CEP-47: when this exact file was first indexed (ms); kept across re-index runs.
        self.indexed_timestamp = indexed_timestamp
        self.sha256 = sha256 if sha256 is not None else self.metadata.sha256

    @property
    def metadata(self) -> PackageMetadata:
        if self._metadata is None:
            assert self._blob is not None
            self._metadata = decode_metadata(self._blob)
        return self._metadata

    def decode(self) -> PackageMetadata:
        """The metadata, not kept decoded here: the caller holds it only while it needs it,
        so computing a big channel's outputs never holds every package's metadata at once."""
        if self._metadata is not None:
            return self._metadata
        assert self._blob is not None
        return decode_metadata(self._blob)

    def blob(self) -> bytes:
        if self._blob is None:
            self._blob = encode_metadata(self.metadata)
        return self._blob

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheEntry):
            return NotImplemented
        return (self.stat, self.sha256, self.indexed_timestamp, self.metadata) == (
            other.stat,
            other.sha256,
            other.indexed_timestamp,
            other.metadata,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass
class StatCache:
    store: Store
    key: str
    entries: dict[str, CacheEntry] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, store: Store, key: str) -> StatCache:
        """Read the cache at ``key``; a missing or unreadable cache is empty."""
        cache = cls(store, key)
        path = store.describe(key)
        try:
            raw = store.read(key)
        except ReconcileError as exc:
            log.warning("ignoring unreadable index cache %s: %s", path, exc.message)
            cache.dirty = True
            return cache
        if raw is None:
            return cache
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if not isinstance(data, dict):
                raise ValueError("not a cache")
            if data.get("format") != CACHE_FORMAT:  # an older version's: rebuilt quietly
                cache.dirty = True
                return cache
            for name, item in data["entries"].items():
                tag, size, sha256, stamp, blob = item
                if not isinstance(blob, bytes):
                    raise ValueError(f"bad entry for {name}")
                cache.entries[str(name)] = CacheEntry(
                    FileStat(str(tag), int(size)),
                    indexed_timestamp=int(stamp),
                    sha256=str(sha256),
                    blob=blob,
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
                name: [
                    entry.stat.tag,
                    entry.stat.size,
                    entry.sha256,
                    entry.indexed_timestamp,
                    entry.blob(),
                ]
                for name, entry in sorted(self.entries.items())
            },
        }
        self.store.write(self.key, msgpack.packb(data, use_bin_type=True))
        self.dirty = False
