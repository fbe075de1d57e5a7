"""Files of passive mirrors, fetched from upstream the first time a client asks.

Only a file the channel's inventory lists as coming from a passive mirror is
fetched (the server is not an open proxy). It is downloaded to a temporary
file, checked against the recorded size and sha256, and renamed into place
before the first byte goes to the client, so a bad upstream file is a 502 and
never a corrupt download or a stored file. Concurrent requests for one file
share one download. Hits and fetches are counted in the channel's state folder.

What was verified is remembered in a sidecar (``.reconciler/passive-verified.json``:
size, mtime_ns and sha256 of each fetched file), so checking a file on disk
against the current record costs a ``stat``: when the upstream re-uploads a file
under the same name and the next apply records its new sha256, the old bytes
no longer match the record and are fetched again instead of served.

A failed fetch is remembered for ``serve.failed_fetch_ttl`` seconds: requests
for that file in the meantime get the same 502 without asking the upstream, so
a client retrying in a loop cannot turn the server into an amplifier.
"""

from __future__ import annotations

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
from reconciler.store import open_store
from reconciler.store.base import StorageError
from reconciler.transport.http import redact

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20

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


@dataclass(frozen=True)
class _Verified:
    size: int
    mtime_ns: int
    sha256: str


class PassiveFetcher:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        failed_fetch_ttl: float | None = None,
        observer: FetchObserver | None = None,
        clean: bool = True,
    ) -> None:
        self.loaded = loaded
        self.cache_dir = default_cache_dir()
        self.failed_fetch_ttl = failed_fetch_ttl
        self.observer = observer
        self._lock = threading.Lock()
        self._inflight: dict[Path, threading.Lock] = {}
        self._upstreams: dict[tuple[str, str], CondaUpstream] = {}
        self._states: dict[str, tuple[tuple[int, int], ChannelState]] = {}
        self._pypi_clients: dict[tuple[str, str], SimpleIndexClient] = {}
        self._verified: dict[Path, tuple[tuple[int, int], dict[str, _Verified]]] = {}
        # (channel, key) -> (monotonic time, wall time, message)
        self._failures: dict[tuple[str, str], tuple[float, str, str]] = {}
        if clean:  # partial downloads of a server that was killed: never served, removed
            for channel in loaded.config.channels:
                open_store(channel.path).clean_temporaries()

    def reconfigure(self, loaded: LoadedConfig) -> None:
        """Use a re-read configuration: later fetches use its mirrors' sources."""
        with self._lock:
            self.loaded = loaded
            self._upstreams.clear()
            self._pypi_clients.clear()
            self._states.clear()
            self._failures.clear()

    @property
    def ttl(self) -> float:
        if self.failed_fetch_ttl is not None:
            return self.failed_fetch_ttl
        return self.loaded.config.serve.failed_fetch_ttl

    # -- what the channel says ---------------------------------------------------------

    def _state(self, channel: AnyChannel) -> ChannelState:
        path = Path(channel.path) / ".reconciler" / "state.json"
        try:
            st = os.stat(path)
            key = (st.st_size, st.st_mtime_ns)
        except OSError:
            key = (0, 0)
        cached = self._states.get(channel.name)
        if cached is None or cached[0] != key:
            cached = (key, read_state(open_store(channel.path), channel.name))
            self._states[channel.name] = cached
        return cached[1]

    def entry(self, channel: AnyChannel, key: str) -> InventoryEntry | None:
        """The inventory entry of a passive file (``subdir/filename``), or None."""
        entry = self._state(channel).files.get(key)
        return entry if entry is not None and entry.passive else None

    def is_passive(self, channel: Channel, subdir: str, filename: str) -> bool:
        return self.entry(channel, f"{subdir}/{filename}") is not None

    def _verified_records(self, channel: AnyChannel) -> dict[str, _Verified]:
        path = Path(channel.path) / layout.PASSIVE_VERIFIED
        try:
            st = os.stat(path)
        except OSError:
            return {}
        key = (st.st_size, st.st_mtime_ns)
        cached = self._verified.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        records: dict[str, _Verified] = {}
        try:
            raw = json.loads(path.read_bytes())
            for name, value in raw.items() if isinstance(raw, dict) else ():
                size, mtime_ns, sha256 = value
                records[str(name)] = _Verified(int(size), int(mtime_ns), str(sha256))
        except (OSError, ValueError, TypeError):
            records = {}  # every file is hashed once more and recorded again
        self._verified[path] = (key, records)
        return records

    def _record_verified(self, channel: AnyChannel, key: str, target: Path, sha256: str) -> None:
        st = os.stat(target)
        with self._lock:
            records = dict(self._verified_records(channel))
            records[key] = _Verified(st.st_size, st.st_mtime_ns, sha256)
            data = {k: [v.size, v.mtime_ns, v.sha256] for k, v in sorted(records.items())}
            try:
                open_store(channel.path).write(
                    layout.PASSIVE_VERIFIED, json.dumps(data, separators=(",", ":")).encode()
                )
            except StorageError as exc:  # the next request hashes the file again
                log.warning("verified passive files not recorded: %s", exc.message)

    def current(self, channel: AnyChannel, key: str, target: str | Path) -> bool:
        """True when ``target`` holds the bytes the inventory records for ``key`` now.

        A ``stat`` and two dictionary look-ups: the sidecar says which bytes were
        verified at that (size, mtime_ns). False: call :meth:`fetch` (which hashes a
        file it has no record of, once, and fetches again what no longer matches).
        """
        entry = self.entry(channel, key)
        if entry is None:
            return True  # not passive: the channel's own file, served as it is
        try:
            st = os.stat(target)
        except OSError:
            return False
        seen = self._verified_records(channel).get(key)
        return (
            seen is not None
            and seen.size == st.st_size
            and seen.mtime_ns == st.st_mtime_ns
            and seen.sha256 == entry.sha256
            and (not entry.size or entry.size == st.st_size)
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

    def fetch(self, channel: Channel, subdir: str, filename: str) -> Path:
        """Make sure the passive file is on disk (verified, current) and return its path."""
        target = Path(channel.path) / subdir / filename
        key = f"{subdir}/{filename}"

        def download(entry: InventoryEntry) -> int:
            upstream = self._upstream(channel, entry.source)
            fetch = upstream.fetcher(subdir, filename, entry.size or None, entry.sha256)
            return _store(channel, key, fetch)

        result = self._ensure(channel, key, target, download)
        if result is None:
            raise FetchFailed(f"{key} is not a passive package")
        return result

    def fetch_pypi(self, channel: PypiChannel, project: str, filename: str) -> Path | None:
        """Fetch a passive PyPI file (or its metadata) listed in the inventory; None if not."""
        target = Path(channel.path) / PACKAGES / project / filename
        key = f"{project}/{filename}"

        def download(entry: InventoryEntry) -> int:
            url = entry.url
            assert url is not None
            client = self._pypi_client(channel, entry.source)

            def fetch(out: IO[bytes]) -> int:
                return client.upstream.download_url(
                    client.location(url), redact(url), out, entry.size or None, entry.sha256
                )

            return _store(channel, f"{PACKAGES}/{key}", fetch)

        entry = self.entry(channel, key)
        if entry is None or not entry.url:
            return None  # not a passive file of this channel: 404; upstream is never asked
        return self._ensure(channel, key, target, download)

    def _ensure(
        self,
        channel: AnyChannel,
        key: str,
        target: Path,
        download: Callable[[InventoryEntry], int],
    ) -> Path | None:
        with self._lock:
            file_lock = self._inflight.setdefault(target, threading.Lock())
        with file_lock:  # one download per file; the others wait and then find it there
            entry = self.entry(channel, key)
            if entry is None:
                return None
            if self._on_disk_and_current(channel, key, target, entry):
                self.count(channel, hits=1)
                return target
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
                message = f"cannot store {target}: {exc.strerror or exc}"
                self._failed(channel, key, message, started)
                raise FetchFailed(message) from None
            checkpoint("passive.fetched")  # in place and verified, not yet counted
            self._record_verified(channel, key, target, entry.sha256)
            with self._lock:
                self._failures.pop((channel.name, key), None)
            if self.observer is not None:
                self.observer.fetched(channel.name, time.monotonic() - started, written)
            self.count(channel, fetches=1, bytes=written)
            return target

    def _on_disk_and_current(
        self, channel: AnyChannel, key: str, target: Path, entry: InventoryEntry
    ) -> bool:
        if self.current(channel, key, target):
            return target.is_file()
        try:
            st = os.stat(target)
        except OSError:
            return False
        seen = self._verified_records(channel).get(key)
        if seen is not None and (seen.size, seen.mtime_ns) == (st.st_size, st.st_mtime_ns):
            log.info("%s/%s changed upstream (sha256 %s): fetching it again", channel.name, key,
                     entry.sha256)  # fmt: skip
            return False
        # On disk with no record of what was verified (fetched by an older server, or
        # left by an active mirror): hash it once and remember.
        if entry.size and st.st_size != entry.size:
            return False
        digest = hashlib.sha256()
        try:
            with open(target, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError:
            return False
        if digest.hexdigest() != entry.sha256:
            return False
        self._record_verified(channel, key, target, entry.sha256)
        return True

    def _cached_failure(self, channel: AnyChannel, key: str) -> FetchFailed | None:
        ttl = self.ttl
        with self._lock:
            failure = self._failures.get((channel.name, key))
        if failure is None or ttl <= 0:
            return None
        left = ttl - (time.monotonic() - failure[0])
        if left <= 0:
            return None
        if self.observer is not None:
            self.observer.refused(channel.name)
        return FetchFailed(
            f"{failure[2]} (failed at {failure[1]}; not asked again for {left:.0f} s)",
            retry_after=left,
        )

    def _failed(self, channel: AnyChannel, key: str, message: str, started: float) -> None:
        wall = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            self._failures[(channel.name, key)] = (time.monotonic(), wall, message)
        if self.observer is not None:
            self.observer.failed(channel.name, time.monotonic() - started)
        self.count(channel, failures=1, failure={"file": key, "time": wall, "error": message})

    def count(
        self, channel: AnyChannel, failure: dict[str, str] | None = None, **changes: int
    ) -> None:
        if self.observer is not None and changes.get("hits"):
            self.observer.hits(channel.name, changes["hits"])
        store = open_store(channel.path)
        with self._lock:
            stats = read_passive_stats(store)
            for key, value in changes.items():
                setattr(stats, key, getattr(stats, key) + value)
            if failure is not None:
                stats.recent_failures = [failure, *stats.recent_failures][:RECENT_FAILURES]
            try:  # statistics only: a full disk must not fail the request
                store.write(layout.PASSIVE_STATS, stats.model_dump_json().encode())
            except StorageError as exc:
                log.warning("passive fetch counts not saved: %s", exc.message)


def _store(channel: AnyChannel, key: str, fetch: Callable[[IO[bytes]], int]) -> int:
    """Fetch into a temporary object of the channel's store, committed once verified."""
    writer = open_store(channel.path).writer(key)
    try:
        written = fetch(writer.handle)
    except BaseException:
        writer.abort()
        raise
    writer.commit(step="download.placed")
    return written


def read_stats(channel_dir: Path) -> PassiveStats:
    return read_passive_stats(open_store(channel_dir))
