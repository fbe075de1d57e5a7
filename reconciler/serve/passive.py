"""Files of passive mirrors, fetched from upstream the first time a client asks.

Only a file the channel's inventory lists as coming from a passive mirror is
fetched (the server is not an open proxy). It is downloaded to a temporary
file, checked against the recorded size and sha256, and renamed into place
before the first byte goes to the client, so a bad upstream file is a 502 and
never a corrupt download or a stored file. Concurrent requests for one file
share one download. Hits and fetches are counted in the channel's state folder.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from reconciler.config.models import AnyChannelModel, Channel, LoadedConfig, PypiChannel
from reconciler.engine import layout
from reconciler.engine.planner import default_cache_dir
from reconciler.engine.state import ChannelState, read_state
from reconciler.engine.status import PassiveStats, read_passive_stats
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.kinds.conda.upstream import CondaUpstream
from reconciler.kinds.pypi.client import SimpleIndexClient
from reconciler.store import open_store
from reconciler.store.base import StorageError, Store
from reconciler.transport.http import redact

log = logging.getLogger(__name__)


class FetchFailed(Exception):
    """The upstream could not give us the file as recorded (502)."""


class PassiveFetcher:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.cache_dir = default_cache_dir()
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}
        self._upstreams: dict[tuple[str, str], CondaUpstream] = {}
        self._states: dict[str, tuple[str, ChannelState]] = {}
        self._pypi_clients: dict[tuple[str, str], SimpleIndexClient] = {}
        # Partial downloads of a server that was killed: never served, removed at start.
        for channel in loaded.config.channels:
            open_store(channel.path).clean_temporaries()

    def _state(self, channel: AnyChannelModel, store: Store) -> ChannelState:
        info = store.stat(layout.STATE)
        tag = info.tag if info is not None else ""
        cached = self._states.get(channel.name)
        if cached is None or cached[0] != tag:
            cached = (tag, read_state(store, channel.name))
            self._states[channel.name] = cached
        return cached[1]

    def is_passive(self, channel: Channel, subdir: str, filename: str) -> bool:
        store = open_store(channel.path)
        entry = self._state(channel, store).files.get(f"{subdir}/{filename}")
        return entry is not None and entry.passive

    def _upstream(self, channel: Channel, mirror_name: str) -> CondaUpstream:
        key = (channel.name, mirror_name)
        with self._lock:
            if key not in self._upstreams:
                mirror = next((m for m in channel.mirrors if m.name == mirror_name), None)
                if mirror is None:
                    raise FetchFailed(f"mirror {mirror_name} is no longer in the configuration")
                self._upstreams[key] = CondaUpstream(mirror, self.loaded.base_dir, self.cache_dir)
            return self._upstreams[key]

    def _store_file(
        self, channel: AnyChannelModel, store: Store, key: str, fetch: Callable[[IO[bytes]], int]
    ) -> int:
        writer = store.writer(key)
        try:
            written = fetch(writer.handle)
        except BaseException:
            writer.abort()
            raise
        writer.commit(step="download.placed")
        return written

    def fetch(self, channel: Channel, subdir: str, filename: str) -> Path:
        """Make sure the passive file is on disk (verified) and return its path."""
        store = open_store(channel.path)
        key = f"{subdir}/{filename}"
        target = Path(channel.path) / subdir / filename
        with self._lock:
            file_lock = self._inflight.setdefault(f"{channel.name}/{key}", threading.Lock())
        with file_lock:  # one download per file; the others wait and then find it there
            if store.stat(key) is not None:
                self.count(channel, hits=1)
                return target
            entry = self._state(channel, store).files.get(key)
            if entry is None or not entry.passive:
                raise FetchFailed(f"{key} is not a passive package")
            upstream = self._upstream(channel, entry.source)
            try:
                written = self._store_file(
                    channel,
                    store,
                    key,
                    upstream.fetcher(subdir, filename, entry.size or None, entry.sha256),
                )
            except ReconcileError as exc:
                self.count(channel, failures=1)
                raise FetchFailed(exc.message) from None
            except OSError as exc:  # our disk, not the upstream: full, read-only, ...
                self.count(channel, failures=1)
                raise FetchFailed(f"cannot store {target}: {exc.strerror or exc}") from None
            checkpoint("passive.fetched")  # in place and verified, not yet counted
            self.count(channel, fetches=1, bytes=written)
            return target

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

    def fetch_pypi(self, channel: PypiChannel, project: str, filename: str) -> Path | None:
        """Fetch a passive PyPI file (or its metadata) listed in the inventory; None if not."""
        store = open_store(channel.path)
        key = f"packages/{project}/{filename}"
        target = Path(channel.path) / key
        entry = self._state(channel, store).files.get(f"{project}/{filename}")
        if entry is None or not entry.passive or not entry.url:
            return None  # not a passive file of this channel: 404; upstream is never asked
        with self._lock:
            file_lock = self._inflight.setdefault(f"{channel.name}/{key}", threading.Lock())
        with file_lock:
            if store.stat(key) is not None:
                self.count(channel, hits=1)
                return target
            client = self._pypi_client(channel, entry.source)
            url = entry.url

            def fetch(out: IO[bytes]) -> int:
                return client.upstream.download_url(
                    client.location(url), redact(url), out, entry.size or None, entry.sha256
                )

            try:
                written = self._store_file(channel, store, key, fetch)
            except ReconcileError as exc:
                self.count(channel, failures=1)
                raise FetchFailed(exc.message) from None
            except OSError as exc:
                self.count(channel, failures=1)
                raise FetchFailed(f"cannot store {target}: {exc.strerror or exc}") from None
            self.count(channel, fetches=1, bytes=written)
            return target

    def count(self, channel: AnyChannelModel, **changes: int) -> None:
        store = open_store(channel.path)
        with self._lock:
            stats = read_passive_stats(store)
            values = stats.model_dump()
            for key, value in changes.items():
                values[key] = values.get(key, 0) + value
            try:  # statistics only: a full disk must not fail the request
                store.write(layout.PASSIVE_STATS, json.dumps(values).encode())
            except StorageError as exc:
                log.warning("passive fetch counts not saved: %s", exc.message)


def read_stats(channel_dir: Path) -> PassiveStats:
    return read_passive_stats(open_store(channel_dir))
