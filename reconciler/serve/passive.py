"""Files of passive mirrors, fetched from upstream the first time a client asks.

Only a file the channel's inventory lists as coming from a passive mirror is
fetched (the server is not an open proxy). It is downloaded to a temporary
file, checked against the recorded size and sha256, and renamed into place
before the first byte goes to the client, so a bad upstream file is a 502 and
never a corrupt download or a stored file. Concurrent requests for one file
share one download. Hits and fetches are counted in the channel's state folder.

What was verified is remembered in a sidecar (``.reconciler/passive-verified.json``:
size, store tag — the mtime_ns on disk, the ETag in a bucket — and sha256 of each
fetched file), so checking a stored file against the current record costs a
``stat`` (a ``HEAD`` in a bucket): when the upstream re-uploads a file under the
same name and the next apply records its new sha256, the old bytes no longer
match the record and are fetched again instead of served. In a bucket the file
is stored with ``If-None-Match: *``; the state and the sidecar are re-read at most
every few seconds, and fetch counts are written at most every few seconds.

A failed fetch is remembered for ``serve.failed_fetch_ttl`` seconds: requests
for that file in the meantime get the same 502 without asking the upstream, so
a client retrying in a loop cannot turn the server into an amplifier.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Protocol

from reconciler.config.models import Channel, LoadedConfig, PypiChannel
from reconciler.engine import layout
from reconciler.engine.planner import default_cache_dir
from reconciler.engine.state import ChannelState, InventoryEntry, read_state
from reconciler.engine.status import RECENT_FAILURES, PassiveStats, read_passive_stats
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.kinds.conda.upstream import CondaUpstream
from reconciler.kinds.pypi.client import SimpleIndexClient
from reconciler.kinds.pypi.simple_index import PACKAGES
from reconciler.serve.shared import Shared
from reconciler.store import channel_store
from reconciler.store.base import StorageError, Store, check_key
from reconciler.store.local import LocalStore
from reconciler.transport.http import redact

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
# A channel in a bucket: how long its state and sidecar are trusted without a HEAD, and
# how often fetch counts are written (each write is a request).
REMOTE_TTL = 5.0
STATS_FLUSH = 10.0

AnyChannel = Channel | PypiChannel


class FetchFailed(Exception):
    """The upstream could not give us the file as recorded (502)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # set when answered from the negative cache


class FetchObserver(Protocol):
    """Told about every fetch (the server's metrics)."""

    def fetched(self, channel: str, seconds: float, size: int) -> None: ...
    def failed(self, channel: str, seconds: float) -> None: ...
    def hits(self, channel: str, count: int) -> None: ...
    def refused(self, channel: str) -> None: ...


def _local_path(store: Store, key: str) -> str | None:
    """``store.local_path(key)`` as text. Joined as a string for a folder: pathlib's
    joins were most of the time a package request took to check its inventory."""
    if isinstance(store, LocalStore):
        return f"{store.location}/{check_key(key)}"
    path = store.local_path(key)
    return None if path is None else os.fspath(path)


@dataclass(frozen=True)
class _Verified:
    size: int
    tag: str  # the store's tag of the verified bytes
    sha256: str


class PassiveFetcher:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        failed_fetch_ttl: float | None = None,
        observer: FetchObserver | None = None,
        clean: bool = True,
        shared: Shared | None = None,
    ) -> None:
        self.loaded = loaded
        self.shared = shared  # the other processes of the server, if any
        self.cache_dir = default_cache_dir()
        self.failed_fetch_ttl = failed_fetch_ttl
        self.observer = observer
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str], threading.Lock] = {}
        self._upstreams: dict[tuple[str, str], CondaUpstream] = {}
        self._pypi_clients: dict[tuple[str, str], SimpleIndexClient] = {}
        # channel -> (when read, fingerprint of the object, what it held)
        self._states: dict[str, tuple[float, tuple[int, str], ChannelState]] = {}
        self._verified: dict[str, tuple[float, tuple[int, str], dict[str, _Verified]]] = {}
        self._stores: dict[str, Store] = {}
        # counts not yet written (channels in a bucket): channel -> (changes, failures)
        self._unsaved: dict[str, tuple[dict[str, int], list[dict[str, str]]]] = {}
        self._saved_at: dict[str, float] = {}
        # (channel, key) -> (monotonic time, wall time, message)
        self._failures: dict[tuple[str, str], tuple[float, str, str]] = {}
        if clean:  # partial downloads of a server that was killed: never served, removed
            for channel in loaded.config.channels:
                self.store(channel).clean_temporaries()

    def reconfigure(self, loaded: LoadedConfig) -> None:
        """Use a re-read configuration: later fetches use its mirrors' sources."""
        self.flush()
        if self.shared is not None:
            self.shared.forget_failures()
        with self._lock:
            self.loaded = loaded
            self._upstreams.clear()
            self._pypi_clients.clear()
            self._states.clear()
            self._verified.clear()
            self._stores.clear()
            self._failures.clear()

    @property
    def ttl(self) -> float:
        if self.failed_fetch_ttl is not None:
            return self.failed_fetch_ttl
        return self.loaded.config.serve.failed_fetch_ttl

    def store(self, channel: AnyChannel) -> Store:
        store = self._stores.get(channel.name)
        if store is None:
            store = self._stores[channel.name] = channel_store(channel)
        return store

    # -- what the channel says ---------------------------------------------------------

    def _fingerprint(self, store: Store, key: str) -> tuple[int, str] | None:
        """(size, tag) of ``key``: an ``os.stat`` on disk, a ``HEAD`` in a bucket."""
        path = _local_path(store, key)
        if path is not None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return st.st_size, str(st.st_mtime_ns)
        try:
            info = store.stat(key)
        except StorageError:
            return None
        return (info.size, info.tag) if info is not None else None

    def _fresh(self, store: Store, when: float) -> bool:
        """Whether a copy read at ``when`` is used without looking (a bucket, briefly)."""
        return not isinstance(store, LocalStore) and time.monotonic() - when < REMOTE_TTL

    def _state(self, channel: AnyChannel) -> ChannelState:
        store = self.store(channel)
        cached = self._states.get(channel.name)
        if cached is not None and self._fresh(store, cached[0]):
            return cached[2]
        key = self._fingerprint(store, layout.STATE) or (0, "")
        if cached is None or cached[1] != key:
            cached = (time.monotonic(), key, read_state(store, channel.name))
        else:
            cached = (time.monotonic(), key, cached[2])
        self._states[channel.name] = cached
        return cached[2]

    def entry(self, channel: AnyChannel, key: str) -> InventoryEntry | None:
        """The inventory entry of a passive file (``subdir/filename``), or None."""
        entry = self._state(channel).files.get(key)
        return entry if entry is not None and entry.passive else None

    def is_passive(self, channel: Channel, subdir: str, filename: str) -> bool:
        return self.entry(channel, f"{subdir}/{filename}") is not None

    def _verified_records(self, channel: AnyChannel) -> dict[str, _Verified]:
        store = self.store(channel)
        cached = self._verified.get(channel.name)
        if cached is not None and self._fresh(store, cached[0]):
            return cached[2]
        key = self._fingerprint(store, layout.PASSIVE_VERIFIED)
        if key is None:
            return {}
        if cached is not None and cached[1] == key:
            self._verified[channel.name] = (time.monotonic(), key, cached[2])
            return cached[2]
        records: dict[str, _Verified] = {}
        try:
            raw = json.loads(store.read(layout.PASSIVE_VERIFIED) or b"{}")
            for name, value in raw.items() if isinstance(raw, dict) else ():
                size, tag, sha256 = value
                records[str(name)] = _Verified(int(size), str(tag), str(sha256))
        except (StorageError, ValueError, TypeError):
            records = {}  # every file is hashed once more and recorded again
        self._verified[channel.name] = (time.monotonic(), key, records)
        return records

    def _record_verified(
        self, channel: AnyChannel, key: str, stored: tuple[int, str], sha256: str
    ) -> None:
        store = self.store(channel)
        # Read, add, write: one process of the server at a time, from the file as it is.
        with self._lock, self._shared_lock("verified", channel.name):
            if self.shared is not None:
                self._verified.pop(channel.name, None)
            records = dict(self._verified_records(channel))
            records[key] = _Verified(stored[0], stored[1], sha256)
            data = {k: [v.size, v.tag, v.sha256] for k, v in sorted(records.items())}
            try:
                info = store.write(
                    layout.PASSIVE_VERIFIED, json.dumps(data, separators=(",", ":")).encode()
                )
                fingerprint = self._fingerprint(store, layout.PASSIVE_VERIFIED) or (
                    info.size,
                    info.tag,
                )
                self._verified[channel.name] = (time.monotonic(), fingerprint, records)
            except StorageError as exc:  # the next request hashes the file again
                log.warning("verified passive files not recorded: %s", exc.message)

    def current(self, channel: AnyChannel, key: str, stored: str) -> bool:
        """True when the store's ``stored`` holds the bytes the inventory records for
        ``key`` now.

        A ``stat`` and two dictionary look-ups: the sidecar says which bytes were
        verified at that (size, tag). False: call :meth:`fetch` (which hashes a
        file it has no record of, once, and fetches again what no longer matches).
        """
        entry = self.entry(channel, key)
        if entry is None:
            return True  # not passive: the channel's own file, served as it is
        found = self._fingerprint(self.store(channel), stored)
        if found is None:
            return False
        seen = self._verified_records(channel).get(key)
        return (
            seen is not None
            and (seen.size, seen.tag) == found
            and seen.sha256 == entry.sha256
            and (not entry.size or entry.size == found[0])
        )

    # -- fetching ------------------------------------------------------------------------

    def _upstream(self, channel: Channel, mirror_name: str) -> CondaUpstream:
        key = (channel.name, mirror_name)
        with self._lock:
            if key not in self._upstreams:
                mirror = next((m for m in channel.mirrors if m.name == mirror_name), None)
                if mirror is None:
                    raise FetchFailed(f"mirror {mirror_name} is no longer in the configuration")
                self._upstreams[key] = CondaUpstream(mirror, self.loaded.base_dir, self.cache_dir)
            return self._upstreams[key]

    def _pypi_client(self, channel: PypiChannel, mirror_name: str) -> SimpleIndexClient:
        key = (channel.name, mirror_name)
        with self._lock:
            if key not in self._pypi_clients:
                mirror = next((m for m in channel.mirrors if m.name == mirror_name), None)
                if mirror is None:
                    raise FetchFailed(f"mirror {mirror_name} is no longer in the configuration")
                self._pypi_clients[key] = SimpleIndexClient(
                    mirror, self.loaded.base_dir, self.cache_dir
                )
            return self._pypi_clients[key]

    def fetch(self, channel: Channel, subdir: str, filename: str) -> str:
        """Make sure the passive file is stored (verified, current); its store key."""
        key = f"{subdir}/{filename}"

        def download(entry: InventoryEntry) -> int:
            upstream = self._upstream(channel, entry.source)
            fetch = upstream.fetcher(subdir, filename, entry.size or None, entry.sha256)
            return self._store_file(channel, key, fetch)

        result = self._ensure(channel, key, key, download)
        if result is None:
            raise FetchFailed(f"{key} is not a passive package")
        return result

    def fetch_pypi(self, channel: PypiChannel, project: str, filename: str) -> str | None:
        """Fetch a passive PyPI file (or its metadata) listed in the inventory; its store
        key, or None when it is not one."""
        key = f"{project}/{filename}"
        stored = f"{PACKAGES}/{key}"

        def download(entry: InventoryEntry) -> int:
            url = entry.url
            assert url is not None
            client = self._pypi_client(channel, entry.source)

            def fetch(out: IO[bytes]) -> int:
                return client.upstream.download_url(
                    client.location(url), redact(url), out, entry.size or None, entry.sha256
                )

            return self._store_file(channel, stored, fetch)

        entry = self.entry(channel, key)
        if entry is None or not entry.url:
            return None  # not a passive file of this channel: 404; upstream is never asked
        return self._ensure(channel, key, stored, download)

    def _ensure(
        self,
        channel: AnyChannel,
        key: str,
        stored: str,
        download: Callable[[InventoryEntry], int],
    ) -> str | None:
        with self._lock:
            file_lock = self._inflight.setdefault((channel.name, stored), threading.Lock())
        # One download per file; the others wait and then find it there (the other
        # processes of the server too).
        with file_lock, self._shared_lock("fetch", channel.name, stored):
            entry = self.entry(channel, key)
            if entry is None:
                return None
            if self._stored_and_current(channel, key, stored, entry):
                self.count(channel, hits=1)
                return stored
            cached = self._cached_failure(channel, key)
            if cached is not None:
                raise cached
            started = time.monotonic()
            try:
                written = download(entry)
            except FetchFailed as exc:
                self._failed(channel, key, str(exc), started)
                raise
            except ReconcileError as exc:
                self._failed(channel, key, exc.message, started)
                raise FetchFailed(exc.message) from None
            except OSError as exc:  # our disk, not the upstream: full, read-only, ...
                where = self.store(channel).describe(stored)
                message = f"cannot store {where}: {exc.strerror or exc}"
                self._failed(channel, key, message, started)
                raise FetchFailed(message) from None
            checkpoint("passive.fetched")  # in place and verified, not yet counted
            found = self._fingerprint(self.store(channel), stored)
            if found is not None:
                self._record_verified(channel, key, found, entry.sha256)
            with self._lock:
                self._failures.pop((channel.name, key), None)
            if self.shared is not None:
                self.shared.forget_failure(channel.name, key)
            if self.observer is not None:
                self.observer.fetched(channel.name, time.monotonic() - started, written)
            self.count(channel, fetches=1, bytes=written)
            return stored

    def _stored_and_current(
        self, channel: AnyChannel, key: str, stored: str, entry: InventoryEntry
    ) -> bool:
        store = self.store(channel)
        if self.current(channel, key, stored):
            return self._fingerprint(store, stored) is not None
        found = self._fingerprint(store, stored)
        if found is None:
            return False
        seen = self._verified_records(channel).get(key)
        if seen is not None and (seen.size, seen.tag) == found:
            log.info("%s/%s changed upstream (sha256 %s): fetching it again", channel.name, key,
                     entry.sha256)  # fmt: skip
            return False
        # Stored with no record of what was verified (fetched by an older server, or
        # left by an active mirror): hash it once and remember.
        if entry.size and found[0] != entry.size:
            return False
        digest = hashlib.sha256()
        try:
            with store.open(stored) as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        except (OSError, StorageError):
            return False
        if digest.hexdigest() != entry.sha256:
            return False
        self._record_verified(channel, key, found, entry.sha256)
        return True

    def _store_file(self, channel: AnyChannel, key: str, fetch: Callable[[IO[bytes]], int]) -> int:
        """Fetch into a temporary object of the channel's store, committed once verified
        (in a bucket: ``If-None-Match: *``; the same bytes already there are success)."""
        writer = self.store(channel).writer(key)
        try:
            written = fetch(writer.handle)
        except BaseException:
            writer.abort()
            raise
        writer.commit(step="download.placed")
        return written

    def _cached_failure(self, channel: AnyChannel, key: str) -> FetchFailed | None:
        ttl = self.ttl
        with self._lock:
            failure = self._failures.get((channel.name, key))
        if ttl <= 0:
            return None
        if failure is not None:
            age, wall, message = time.monotonic() - failure[0], failure[1], failure[2]
        elif self.shared is not None and (seen := self.shared.failure(channel.name, key)):
            age, wall, message = seen
        else:
            return None
        left = ttl - age
        if left <= 0:
            return None
        if self.observer is not None:
            self.observer.refused(channel.name)
        return FetchFailed(
            f"{message} (failed at {wall}; not asked again for {left:.0f} s)",
            retry_after=left,
        )

    def _failed(self, channel: AnyChannel, key: str, message: str, started: float) -> None:
        wall = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            self._failures[(channel.name, key)] = (time.monotonic(), wall, message)
        if self.shared is not None:
            self.shared.record_failure(channel.name, key, wall, message)
        if self.observer is not None:
            self.observer.failed(channel.name, time.monotonic() - started)
        self.count(channel, failures=1, failure={"file": key, "time": wall, "error": message})

    def count(
        self, channel: AnyChannel, failure: dict[str, str] | None = None, **changes: int
    ) -> None:
        if self.observer is not None and changes.get("hits"):
            self.observer.hits(channel.name, changes["hits"])
        store = self.store(channel)
        with self._lock:
            pending, failures = self._unsaved.setdefault(channel.name, ({}, []))
            for key, value in changes.items():
                pending[key] = pending.get(key, 0) + value
            if failure is not None:
                failures.insert(0, failure)
            # On disk every count is written at once; in a bucket (a request per write)
            # at most every STATS_FLUSH seconds, and when the server stops.
            remote = store.local_path(layout.PASSIVE_STATS) is None
            last = self._saved_at.get(channel.name, 0.0)
            if remote and failure is None and time.monotonic() - last < STATS_FLUSH:
                return
            self._save_counts(channel, store)

    def flush(self) -> None:
        """Write the counts not written yet (a server that stops)."""
        with self._lock:
            for channel in self.loaded.config.channels:
                if channel.name in self._unsaved:
                    self._save_counts(channel, self.store(channel))

    def _save_counts(self, channel: AnyChannel, store: Store) -> None:
        pending, failures = self._unsaved.pop(channel.name, ({}, []))
        self._saved_at[channel.name] = time.monotonic()
        if not pending and not failures:
            return
        # Read, add, write: one process of the server at a time, or counts get lost.
        with self._shared_lock("stats", channel.name):
            stats = read_passive_stats(store)
            for key, value in pending.items():
                setattr(stats, key, getattr(stats, key) + value)
            if failures:
                stats.recent_failures = [*failures, *stats.recent_failures][:RECENT_FAILURES]
            try:  # statistics only: a full disk must not fail the request
                store.write(layout.PASSIVE_STATS, stats.model_dump_json().encode())
            except StorageError as exc:
                log.warning("passive fetch counts not saved: %s", exc.message)

    def _shared_lock(self, *name: str) -> contextlib.AbstractContextManager[None]:
        if self.shared is None:
            return contextlib.nullcontext()
        return self.shared.lock(*name)


def read_stats(channel_dir: Path) -> PassiveStats:
    from reconciler.store import open_store

    return read_passive_stats(open_store(channel_dir))
