"""What the processes of one ``reconcile serve --workers N`` share, in a folder of theirs.

- a lock per passive file (``flock``): a file asked of several processes at once is
  fetched from the upstream once, the others wait and then find it stored;
- failed passive fetches: a failure one process saw is answered from the negative
  cache by every process for ``failed_fetch_ttl`` seconds;
- the counted metrics: each process writes what it counted (every second and when it
  stops); ``/metrics`` adds them up, so a scrape sees the whole server whichever
  process answers it.

The folder is made by the supervisor (mode 0700) and removed when the server stops.
Every read here tolerates a missing, torn or foreign file: sharing saves work and
keeps figures whole, it never fails a request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_LOCKS = "locks"
_FAILURES = "failures"
_METRICS = "metrics"
# A failure older than this is never answered from another process's record, whatever
# the configured TTL says (the TTL is capped at a day by the configuration).
_OLDEST_FAILURE = 86400.0


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


class Shared:
    """One worker's view of the shared folder."""

    def __init__(self, folder: Path, worker: int) -> None:
        self.folder = folder
        self.worker = worker
        # This process's metrics file: a new name per process, never a dead one's (its
        # counts stay part of the sums, so counters never go down).
        self._metrics_name = f"{os.getpid()}-{secrets.token_hex(6)}.json"
        self._usable = self._prepare()

    def _prepare(self) -> bool:
        """Whether the folder is there (made again if it was removed) and private to us.

        A folder somebody else made in its place is not used: sharing stops (each
        process then fetches, remembers failures and counts for itself), requests go on.
        """
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(self.folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                log.warning("%s is not a private folder of ours: not shared", self.folder)
                return False
            for name in (_LOCKS, _FAILURES, _METRICS):
                (self.folder / name).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            log.warning("%s cannot be used (%s): not shared", self.folder, exc.strerror or exc)
            return False
        return True

    def _ready(self) -> bool:
        """Whether the folder can be used now (checked again after it disappeared)."""
        if self._usable and (self.folder / _LOCKS).is_dir():
            return True
        self._usable = self._prepare()
        return self._usable

    # -- locks ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *name: str) -> Iterator[None]:
        """Held by one process at a time (blocking: call it from a worker thread); without
        a usable folder, not held at all (each process then works for itself)."""
        fd = -1
        if self._ready():
            path = self.folder / _LOCKS / _digest(*name)
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock

    # -- failed fetches ------------------------------------------------------------------

    def _failure_path(self, channel: str, key: str) -> Path:
        return self.folder / _FAILURES / _digest(channel, key)

    def record_failure(self, channel: str, key: str, wall: str, message: str) -> None:
        data = {"channel": channel, "key": key, "at": time.time(), "wall": wall, "error": message}
        self._write(self._failure_path(channel, key), orjson.dumps(data))

    def forget_failure(self, channel: str, key: str) -> None:
        with contextlib.suppress(OSError):
            self._failure_path(channel, key).unlink()

    def forget_failures(self) -> None:
        """Every failure recorded (a reload: the upstreams may have changed)."""
        with contextlib.suppress(OSError):
            for path in (self.folder / _FAILURES).iterdir():
                with contextlib.suppress(OSError):
                    path.unlink()

    def failure(self, channel: str, key: str) -> tuple[float, str, str] | None:
        """(seconds since it failed, when as text, the error) as another process saw it."""
        try:
            data = orjson.loads(self._failure_path(channel, key).read_bytes())
            if data["channel"] != channel or data["key"] != key:
                return None
            age = time.time() - float(data["at"])
            if not 0 <= age <= _OLDEST_FAILURE:
                return None
            return age, str(data["wall"]), str(data["error"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- metrics -------------------------------------------------------------------------

    def publish_metrics(self, families: list[Any]) -> None:
        """What this process counted so far (plain JSON data, see ``ServeMetrics``)."""
        if self._ready():
            self._write(self.folder / _METRICS / self._metrics_name, orjson.dumps(families))

    def other_metrics(self) -> list[list[Any]]:
        """What the other processes (running or ended) last wrote."""
        found = []
        try:
            paths = sorted((self.folder / _METRICS).iterdir())
        except OSError:
            return []
        for path in paths:
            if path.name == self._metrics_name or not path.name.endswith(".json"):
                continue
            with contextlib.suppress(OSError, ValueError):
                data = orjson.loads(path.read_bytes())
                if isinstance(data, list):
                    found.append(data)
        return found

    # -- helpers -------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` whole (readers see the old or the new file, never a torn one)."""
        temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
        with contextlib.suppress(OSError):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temp, path)
