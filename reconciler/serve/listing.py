"""Which files a channel's published index names: nothing else is served.

A package file on disk that the published index does not list (left out by a
licence filter, dropped in a subdir by hand, not yet indexed) is a 404, like a
file that does not exist. The parsed name sets are cached per index file and
keyed on its (size, mtime_ns), so a request costs one ``stat``; a publish
changes the key and the next request parses the new index (in a worker thread,
never on the event loop).

For a channel in a bucket (:class:`StoreListings`) a ``HEAD`` per request would
cost a round trip, so a parsed index is trusted for a few seconds; a name it does
not list makes it checked again at once (a new package is never refused because
of a stale copy). A file an index stopped listing stays in the store for the
grace period, so serving it from a copy a few seconds old is safe.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from reconciler.kinds.pypi.names import METADATA_SUFFIX
from reconciler.store.base import StorageError, Store

log = logging.getLogger(__name__)

Parser = Callable[[bytes], frozenset[str]]


def conda_packages(data: bytes) -> frozenset[str]:
    """Filenames a ``repodata.json`` lists (``packages`` and ``packages.conda``)."""
    repodata = orjson.loads(data)
    if not isinstance(repodata, dict):
        return frozenset()
    names: set[str] = set()
    for key in ("packages", "packages.conda"):
        section = repodata.get(key)
        if isinstance(section, dict):
            names.update(k for k in section if isinstance(k, str))
    return frozenset(names)


def conda_shards(data: bytes) -> frozenset[str]:
    """Shard filenames (``<sha256>.msgpack.zst``) a ``repodata_shards.msgpack.zst`` names."""
    from reconciler.conda.shards import read_shard_index

    index = read_shard_index(data)
    return frozenset(f"{digest}.msgpack.zst" for digest in index.get("shards", {}).values())


def pypi_files(data: bytes) -> frozenset[str]:
    """Filenames a project's JSON page lists, with their ``.metadata`` when it says so."""
    page = orjson.loads(data)
    names: set[str] = set()
    files: Any = page.get("files") if isinstance(page, dict) else None
    for entry in files if isinstance(files, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            continue
        names.add(entry["filename"])
        if entry.get("core-metadata") or entry.get("dist-info-metadata"):
            names.add(entry["filename"] + METADATA_SUFFIX)
    return frozenset(names)


class Listings:
    """Parsed name sets of index files, each valid while the file's (size, mtime_ns) hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int], frozenset[str]]] = {}

    @staticmethod
    def _key(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def cached(self, path: str) -> frozenset[str] | None:
        """The names, when the cached parse is current (one stat); None: call :meth:`load`.

        A missing index lists nothing.
        """
        key = self._key(path)
        if key is None:
            return frozenset()
        hit = self._cache.get(path)
        return hit[1] if hit is not None and hit[0] == key else None

    def load(self, path: str, parse: Parser) -> frozenset[str]:
        """Parse ``path`` (blocking: call it from a worker thread)."""
        key = self._key(path)
        if key is None:
            return frozenset()
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            names = parse(data)
        except FileNotFoundError:
            return frozenset()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s is unreadable (%s): it lists nothing", path, exc)
            names = frozenset()
        with self._lock:
            # Keyed on what was stat'ed before reading: a publish in between changes the
            # key on disk, and the next request parses again.
            self._cache[path] = (key, names)
        return names


class StoreListings:
    """Parsed name sets of index files in a store (a bucket), trusted for ``ttl`` seconds;
    then, or when asked about a name they lack, checked again with a ``HEAD``."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        # where → (when checked, tag, names)
        self._cache: dict[str, tuple[float, str, frozenset[str]]] = {}

    def cached(self, store: Store, key: str) -> frozenset[str] | None:
        """The names, when checked less than ``ttl`` seconds ago; None: call :meth:`load`."""
        hit = self._cache.get(store.describe(key))
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[2]
        return None

    def load(self, store: Store, key: str, parse: Parser) -> frozenset[str]:
        """Check the index (a ``HEAD``) and parse it if it changed (blocking)."""
        where = store.describe(key)
        checked = time.monotonic()
        try:
            info = store.stat(key)
        except StorageError as exc:
            log.warning("%s: %s", where, exc.message)
            return frozenset()
        if info is None:
            names: frozenset[str] = frozenset()
            tag = ""
        else:
            tag = info.tag
            hit = self._cache.get(where)
            if hit is not None and hit[1] == tag:
                names = hit[2]
            else:
                try:
                    names = parse(store.read(key) or b"null")
                except (StorageError, ValueError, TypeError, KeyError) as exc:
                    log.warning("%s is unreadable (%s): it lists nothing", where, exc)
                    names = frozenset()
        with self._lock:
            self._cache[where] = (checked, tag, names)
        return names
