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
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

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
        for name in (_LOCKS, _FAILURES, _METRICS):
            (folder / name).mkdir(mode=0o700, exist_ok=True)

    # -- locks ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *name: str) -> Iterator[None]:
        """Held by one process at a time (blocking: call it from a worker thread)."""
        path = self.folder / _LOCKS / _digest(*name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
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
        self._write(self.folder / _METRICS / f"{os.getpid()}.json", orjson.dumps(families))

    def other_metrics(self) -> list[list[Any]]:
        """What the other processes (running or ended) last wrote."""
        found = []
        mine = f"{os.getpid()}.json"
        try:
            paths = sorted((self.folder / _METRICS).iterdir())
        except OSError:
            return []
        for path in paths:
            if path.name == mine or not path.name.endswith(".json"):
                continue
            with contextlib.suppress(OSError, ValueError):
                data = orjson.loads(path.read_bytes())
                if isinstance(data, list):
                    found.append(data)
        return found

    # -- helpers -------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` whole (readers see the old or the new file, never a torn one)."""
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            temp.write_bytes(data)
            os.replace(temp, path)
