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
from dataclasses import dataclass
from pathlib import Path

from reconciler.config.models import Channel, LoadedConfig, PypiChannel
from reconciler.engine.published import channel_folders
from reconciler.engine.state import ChannelState
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.kinds.conda.mirrors import make_upstream
from reconciler.kinds.pypi.client import SimpleIndexClient
from reconciler.store.local import StorageError, clean_temp_files, write_atomic
from reconciler.transport.http import Upstream, redact

log = logging.getLogger(__name__)

STATS_NAME = ".reconciler/passive.json"


class FetchFailed(Exception):
    """The upstream could not give us the file as recorded (502)."""


@dataclass
class PassiveStats:
    hits: int = 0  # served from disk, fetched earlier
    fetches: int = 0  # fetched from upstream on request
    bytes: int = 0
    failures: int = 0


class PassiveFetcher:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self._lock = threading.Lock()
        self._inflight: dict[Path, threading.Lock] = {}
        self._upstreams: dict[tuple[str, str], Upstream] = {}
        self._states: dict[str, tuple[float, ChannelState]] = {}
        self._pypi_clients: dict[tuple[str, str], SimpleIndexClient] = {}
        # Partial downloads of a server that was killed: never served, removed at start.
        for channel in loaded.config.channels:
            for folder in channel_folders(channel):
                clean_temp_files(folder)

    def _state(self, channel: Channel | PypiChannel) -> ChannelState:
        path = Path(channel.path) / ".reconciler" / "state.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        cached = self._states.get(channel.name)
        if cached is None or cached[0] != mtime:
            cached = (mtime, ChannelState.load(Path(channel.path), channel.name))
            self._states[channel.name] = cached
        return cached[1]

    def is_passive(self, channel: Channel, subdir: str, filename: str) -> bool:
        entry = self._state(channel).files.get(f"{subdir}/{filename}")
        return entry is not None and entry.passive

    def _upstream(self, channel: Channel, mirror_name: str) -> Upstream:
        key = (channel.name, mirror_name)
        with self._lock:
            if key not in self._upstreams:
                mirror = next((m for m in channel.mirrors if m.name == mirror_name), None)
                if mirror is None:
                    raise FetchFailed(f"mirror {mirror_name} is no longer in the configuration")
                self._upstreams[key] = make_upstream(channel, mirror, self.loaded.base_dir)
            return self._upstreams[key]

    def fetch(self, channel: Channel, subdir: str, filename: str) -> Path:
        """Make sure the passive file is on disk (verified) and return its path."""
        target = Path(channel.path) / subdir / filename
        with self._lock:
            file_lock = self._inflight.setdefault(target, threading.Lock())
        with file_lock:  # one download per file; the others wait and then find it there
            if target.is_file():
                self.count(channel, hits=1)
                return target
            entry = self._state(channel).files.get(f"{subdir}/{filename}")
            if entry is None or not entry.passive:
                raise FetchFailed(f"{subdir}/{filename} is not a passive package")
            upstream = self._upstream(channel, entry.source)
            try:
                written = upstream.download(subdir, filename, target, entry.size, entry.sha256)
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
                self._pypi_clients[key] = SimpleIndexClient(channel, mirror, self.loaded.base_dir)
            return self._pypi_clients[key]

    def fetch_pypi(self, channel: PypiChannel, project: str, filename: str) -> Path | None:
        """Fetch a passive PyPI file (or its metadata) listed in the inventory; None if not."""
        target = Path(channel.path) / "packages" / project / filename
        entry = self._state(channel).files.get(f"{project}/{filename}")
        if entry is None or not entry.passive or not entry.url:
            return None  # not a passive file of this channel: 404; upstream is never asked
        with self._lock:
            file_lock = self._inflight.setdefault(target, threading.Lock())
        with file_lock:
            if target.is_file():
                self.count(channel, hits=1)
                return target
            client = self._pypi_client(channel, entry.source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                written = client.upstream.download_url(
                    client.location(entry.url),
                    redact(entry.url),
                    target,
                    entry.size or None,
                    entry.sha256,
                )
            except ReconcileError as exc:
                self.count(channel, failures=1)
                raise FetchFailed(exc.message) from None
            except OSError as exc:
                self.count(channel, failures=1)
                raise FetchFailed(f"cannot store {target}: {exc.strerror or exc}") from None
            self.count(channel, fetches=1, bytes=written)
            return target

    def count(self, channel: Channel | PypiChannel, **changes: int) -> None:
        path = Path(channel.path) / STATS_NAME
        with self._lock:
            stats = read_stats(Path(channel.path))
            for key, value in changes.items():
                setattr(stats, key, getattr(stats, key) + value)
            try:  # statistics only: a full disk must not fail the request
                write_atomic(path, json.dumps(stats.__dict__).encode())
            except StorageError as exc:
                log.warning("passive fetch counts not saved: %s", exc.message)


def read_stats(channel_dir: Path) -> PassiveStats:
    try:
        data = json.loads((channel_dir / STATS_NAME).read_text())
        return PassiveStats(
            **{k: int(v) for k, v in data.items() if k in PassiveStats.__dataclass_fields__}
        )
    except (OSError, ValueError, TypeError):
        return PassiveStats()
