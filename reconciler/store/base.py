"""The channel store: every read, list, write and delete of a channel's content.

A store is rooted at one channel. Keys are POSIX-style paths relative to that
root (``linux-64/repodata.json``, ``.reconciler/state.json``); a key with ``..``,
an empty or hidden-by-accident segment, a backslash or NUL is refused before it
reaches a backend. Backends keep the same guarantees: a write is atomic (readers
see the old bytes or the new ones), conditional writes detect a concurrent
writer, and a fingerprint (size plus a backend tag: the mtime on disk, the ETag in
a bucket) says cheaply whether an object changed.
"""

from __future__ import annotations

import abc
import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from reconciler.errors import ReconcileError


class StorageError(ReconcileError):
    """Reading or writing channel content failed (disk full, permissions, ...)."""


class PreconditionFailed(StorageError):
    """A conditional write lost: another writer changed the object first."""


class LockTimeout(StorageError):
    """The channel stayed locked by another run for longer than we were willing to wait."""

    def __init__(self, channel: str, holder: LockHolder | None, waited: float) -> None:
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"channel {channel} is locked by {who}; gave up after {waited:.0f} s",
            hint="wait for that run to finish, or raise --lock-timeout",
        )
        self.holder = holder


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    command: str
    started: str  # ISO 8601, UTC
    # A lease (object storage): its generation, a fencing token that grows with every
    # holder, and when it runs out unless renewed. None for a file lock.
    generation: int | None = None
    expires: str | None = None

    def describe(self) -> str:
        text = f"pid {self.pid} on {self.host} ({self.command}) since {self.started}"
        if self.expires is not None:
            text += f", lease {self.generation} until {self.expires}"
        return text


@dataclass(frozen=True)
class ObjectInfo:
    """An object as listed: its key, size and backend tag (mtime_ns or ETag)."""

    key: str
    size: int
    tag: str
    regular: bool = True  # False: a symlink, FIFO, device... on disk (never read)
    modified: float | None = None  # seconds since the epoch (mtime, Last-Modified)

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def fingerprint(self) -> tuple[int, str]:
        return (self.size, self.tag)


def check_key(key: str) -> str:
    """``key`` if it names something inside the store; :class:`StorageError` otherwise."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"refusing the path {key!r}: not a plain relative path")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StorageError(f"refusing the path {key!r}: empty, '.' or '..' segment")
    return key


def join(*parts: str) -> str:
    """Join key segments, skipping empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Writer(abc.ABC):
    """A new object being written: a local temporary file, published on :meth:`commit`."""

    path: Path  # the temporary file (local), for code that needs a real file
    handle: IO[bytes]

    @abc.abstractmethod
    def commit(self, step: str | None = None) -> ObjectInfo:
        """Publish the written bytes under the key (atomically)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the temporary file; the key is left as it was."""


class Store(abc.ABC):
    """One channel's content; see the module docstring."""

    #: what messages call the channel's location (a folder or an s3:// URL)
    location: str

    def describe(self, key: str) -> str:
        """The full name of ``key`` for messages."""
        return f"{self.location.rstrip('/')}/{key}"

    # -- reading -----------------------------------------------------------------------

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the channel has been created."""

    @abc.abstractmethod
    def list_files(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects directly under ``prefix`` (a folder key, "" for the top), sorted by key."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the folders directly under ``prefix``, sorted."""

    def listing(self, prefix: str = "") -> tuple[list[ObjectInfo], list[str]]:
        """:meth:`list_files` and :meth:`list_dirs` of ``prefix`` (one request in a bucket)."""
        return self.list_files(prefix), self.list_dirs(prefix)

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and tag, or None when it does not exist."""

    @abc.abstractmethod
    def read(self, key: str, *, limit: int | None = None) -> bytes | None:
        """The whole object, or None when it does not exist. ``limit`` refuses bigger ones."""

    @abc.abstractmethod
    def open(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A binary stream of the object; :class:`FileNotFoundError` when absent."""

    @contextlib.contextmanager
    def open_range(
        self, key: str, start: int, end: int, *, if_match: str | None = None
    ) -> Iterator[IO[bytes]]:
        """Bytes ``start`` to ``end`` (inclusive) of the object; :class:`FileNotFoundError`
        when absent, :class:`PreconditionFailed` when ``if_match`` no longer holds."""
        if if_match is not None:
            info = self.stat(key)
            if info is None:
                raise FileNotFoundError(key)
            if info.tag != if_match:
                raise PreconditionFailed(f"{self.describe(key)} changed")
        with self.open(key) as handle:
            handle.seek(start)
            yield io.BufferedReader(_Limited(handle, end - start + 1))

    def presign(self, key: str, expires: int) -> str | None:
        """A URL that reads the object without credentials for ``expires`` seconds, when
        the store can make one (a bucket can; a folder cannot: None)."""
        return None

    def check_room(self, needed: int) -> None:  # noqa: B027 (a no-op unless overridden)
        """Refuse to start writing ``needed`` bytes that cannot fit (a no-op where room is
        not limited)."""

    def local_path(self, key: str) -> Path | None:
        """A path on the local disk holding exactly the object, when the store has one."""
        return None

    # -- writing -----------------------------------------------------------------------

    @abc.abstractmethod
    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_absent: bool = False,
        durable: bool = True,
        step: str | None = None,
    ) -> ObjectInfo:
        """Replace the object atomically. ``if_match``: only if its tag is still that;
        ``if_absent``: only if there is none (else :class:`PreconditionFailed`);
        ``durable``: on disk, fsynced with its folder before it is relied on."""

    def write_if_changed(self, key: str, data: bytes, **options: object) -> bool:
        """Write unless the object already holds exactly ``data``; True when written."""
        info = self.stat(key)
        if info is not None and self.same_bytes(info, data):
            return False
        self.write(key, data, **options)  # type: ignore[arg-type]
        return True

    def same_bytes(self, info: ObjectInfo, data: bytes) -> bool:
        """Whether the object ``info`` describes holds exactly ``data`` (it is read unless
        the backend can tell from its tag)."""
        if info.size != len(data) or not info.regular:
            return False
        try:
            return self.read(info.key) == data
        except StorageError:
            return False

    @abc.abstractmethod
    def writer(self, key: str) -> Writer:
        """A temporary file for a new version of ``key`` (downloads stream into it)."""

    @abc.abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> bool:
        """Delete the object; True when something was deleted."""

    def remove_empty_folder(self, folder: str) -> bool:
        """Remove the folder ``folder`` if it is empty (stores without folders: no-op)."""
        return False

    @abc.abstractmethod
    def append_line(self, key: str, line: bytes) -> None:
        """Append one line to a log object (history), whole or not at all."""

    @abc.abstractmethod
    def read_lines(self, key: str) -> Iterator[bytes]:
        """The lines of a log object, oldest first (torn lines included: callers skip them)."""

    def compact_lines(self, key: str) -> None:  # noqa: B027 (a no-op unless overridden)
        """Merge a log's pieces where appending made many (stores without append); call
        it holding the lock."""

    @abc.abstractmethod
    def clean_temporaries(self, prefix: str = "") -> int:
        """Remove temporary objects crashed writers left under ``prefix`` (not live ones)."""

    # -- one writer at a time ------------------------------------------------------------

    @abc.abstractmethod
    def lock(
        self, *, timeout: float, command: str
    ) -> contextlib.AbstractContextManager[LockHolder]:
        """Hold the channel's lock (waiting up to ``timeout`` s); :class:`LockTimeout`."""

    @abc.abstractmethod
    def lock_holder(self) -> LockHolder | None:
        """Who holds the channel's lock now, or None."""


class _Limited(io.RawIOBase):
    """At most ``left`` bytes of ``inner`` (a range of an open file)."""

    def __init__(self, inner: IO[bytes], left: int) -> None:
        self.inner = inner
        self.left = left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buffer)[: self.left]
        data = self.inner.read(len(view))
        view[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        wanted = self.left if size is None or size < 0 else min(size, self.left)
        data = self.inner.read(wanted) if wanted > 0 else b""
        self.left -= len(data)
        return data
