"""A channel in a local folder.

Clients may read a channel at any moment, so every file is written to a
temporary file in the same folder and renamed into place, after the file (and,
after the rename, its folder) is fsynced; a file whose bytes would not change is
left alone, keeping its mtime and ETag.

Nothing here follows a symlink inside the channel: folders are walked from the
channel's root one component at a time with ``O_NOFOLLOW``, temporary files are
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under random names, and reads
refuse anything but a regular file (a FIFO would block, a device would never
end). A symlink planted at ``shards``, ``.reconciler`` or a temporary name can
therefore never redirect a write or a deletion outside the channel.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from reconciler.faults import checkpoint, checkpoint_armed
from reconciler.store.base import (
    LockHolder,
    LockTimeout,
    ObjectInfo,
    PreconditionFailed,
    StorageError,
    Store,
    Writer,
    check_key,
)

TEMP_PREFIX = ".reconcile-tmp-"
# A full disk, a full quota, a file size limit: the user frees space and runs again.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
LOCK_KEY = ".reconciler/lock"
# Keep this much free beyond the downloads themselves (index files, temp copies).
DISK_MARGIN = 64 * 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def storage_error(action: str, where: str, exc: OSError) -> StorageError:
    """A StorageError naming the path, with the hint a full disk deserves."""
    if exc.errno == errno.ELOOP:
        reason = "a symbolic link inside the channel; refusing to follow it"
    elif exc.errno == errno.ENOTDIR:
        reason = "a path component is not a folder"
    else:
        reason = exc.strerror or str(exc)
    hint = "free some disk space and run again" if exc.errno in DISK_FULL else None
    return StorageError(f"cannot {action} {where}: {reason}", hint=hint)


def temp_name() -> str:
    """A fresh temporary name: the writer's pid (so cleaners spare live writers), random."""
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def temp_writer_alive(name: str, prefix: str = TEMP_PREFIX) -> bool:
    """Whether the process that is writing the temporary file ``name`` still runs.

    Names carry the writer's pid: ``<prefix><pid>-<random>``. Without one, the writer
    counts as gone.
    """
    rest = name[len(prefix) :]
    text = rest.partition("-")[0]
    if not (text.isascii() and text.isdigit()):  # "²" is a digit to isdigit, not to int
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# A dead process's temporaries in the system's temporary folder are removed once they
# have not changed for this long: a folder shared with another pid namespace (two
# containers with one /tmp) may hold a live run's under a pid this one cannot see.
DEAD_TEMPORARY_AGE = 3600.0


def remove_dead_temporaries(
    *prefixes: str, folder: Path | None = None, older_than: float = DEAD_TEMPORARY_AGE
) -> int:
    """Remove what killed processes left in the system's temporary folder (or ``folder``),
    in one look at it: files and folders named ``<prefix><pid>-...`` (for each of
    ``prefixes``) whose pid no longer runs, untouched for ``older_than`` seconds. A link
    is removed, never followed; what this user may not remove is left."""
    removed = 0
    now = time.time()
    with contextlib.suppress(OSError):  # (no usable temporary folder at all: nothing to do)
        where = folder if folder is not None else Path(tempfile.gettempdir())
        for path in where.iterdir():
            prefix = next((p for p in prefixes if path.name.startswith(p)), None)
            if prefix is None or temp_writer_alive(path.name, prefix):
                continue
            with contextlib.suppress(OSError):
                st = path.lstat()
                if now - st.st_mtime < older_than:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
    return removed


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``: on a filling disk ``os.write`` writes less, then raises."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _by_key(info: ObjectInfo) -> str:
    return info.key


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, str(st.st_mtime_ns), stat.S_ISREG(st.st_mode), st.st_mtime)


class _LocalWriter(Writer):
    def __init__(self, store: LocalStore, key: str, folder_fd: int, name: str) -> None:
        self.store = store
        self.key = key
        self._folder_fd = folder_fd
        self._final = key.rpartition("/")[2]
        self._temp = temp_name()
        fd = os.open(self._temp, _NEW_FLAGS, 0o644, dir_fd=folder_fd)
        os.fchmod(fd, 0o644)  # served files must be readable whatever the umask
        self.path = store.root / key.rpartition("/")[0] / self._temp
        self.handle = os.fdopen(fd, "w+b")
        self._done = False

    def commit(self, step: str | None = None) -> ObjectInfo:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            st = os.fstat(self.handle.fileno())
            self.handle.close()
            os.replace(
                self._temp, self._final, src_dir_fd=self._folder_fd, dst_dir_fd=self._folder_fd
            )
            if step is not None:
                checkpoint(step)
            os.fsync(self._folder_fd)
        except OSError as exc:
            self.abort()
            raise storage_error("write", self.store.describe(self.key), exc) from exc
        self._done = True
        self._close_folder()
        return _info(self.key, st)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temp, dir_fd=self._folder_fd)
        self._close_folder()

    def _close_folder(self) -> None:
        if self._folder_fd >= 0:
            os.close(self._folder_fd)
            self._folder_fd = -1


class LocalStore(Store):
    """A channel folder on the local disk (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    # -- walking folders without following links ----------------------------------------

    def _folder_fd(self, folder: str, *, create: bool) -> int:
        """An fd of the folder ``folder`` (a key, "" for the root), walked with O_NOFOLLOW.

        :class:`FileNotFoundError` when it does not exist and ``create`` is false.
        """
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in folder.split("/") if folder else ():
                try:
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    if _is_link(part, fd):  # O_NOFOLLOW | O_DIRECTORY says ENOTDIR for a link
                        raise OSError(errno.ELOOP, "a symbolic link", part) from None
                    raise
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _parent(self, key: str, *, create: bool) -> Iterator[tuple[int, str]]:
        check_key(key)
        folder, _, name = key.rpartition("/")
        fd = self._folder_fd(folder, create=create)
        try:
            yield fd, name
        finally:
            os.close(fd)

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.root.is_dir()

    def list_files(self, prefix: str = "") -> list[ObjectInfo]:
        return self.listing(prefix)[0]

    def list_dirs(self, prefix: str = "") -> list[str]:
        if prefix:
            check_key(prefix)
        try:
            fd = self._folder_fd(prefix, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return []
            raise storage_error("list", self.describe(prefix), exc) from exc
        try:
            with os.scandir(fd) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        finally:
            os.close(fd)

    def listing(self, prefix: str = "") -> tuple[list[ObjectInfo], list[str]]:
        # One pass over the folder: a re-index stats every package file of every subdir,
        # so this loop is most of what re-indexing an unchanged subdir costs.
        if prefix:
            check_key(prefix)
        try:
            fd = self._folder_fd(prefix, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return [], []  # a planted link: nothing in there is the channel's
            raise storage_error("list", self.describe(prefix), exc) from exc
        found = []
        folders = []
        base = f"{prefix}/" if prefix else ""
        is_dir, is_reg = stat.S_ISDIR, stat.S_ISREG
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(TEMP_PREFIX):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted while listing
                    mode = st.st_mode
                    if is_dir(mode):
                        folders.append(name)
                        continue
                    found.append(
                        ObjectInfo(
                            base + name, st.st_size, str(st.st_mtime_ns), is_reg(mode), st.st_mtime
                        )
                    )
        finally:
            os.close(fd)
        found.sort(key=_by_key)
        folders.sort()
        return found, folders

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._parent(key, create=False) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise storage_error("read", self.describe(key), exc) from exc
        if stat.S_ISDIR(st.st_mode):
            return None
        return _info(key, st)

    def _open_regular(self, key: str) -> int:
        """An fd of the regular file ``key``; FileNotFoundError, or StorageError for the rest."""
        try:
            with self._parent(key, create=False) as (folder, name):
                fd = os.open(name, _READ_FLAGS, dir_fd=folder)
        except NotADirectoryError:
            raise FileNotFoundError(key) from None
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise storage_error("read", self.describe(key), exc) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StorageError(f"cannot read {self.describe(key)}: not a regular file")
        return fd

    def read(self, key: str, *, limit: int | None = None) -> bytes | None:
        try:
            fd = self._open_regular(key)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:
                raise StorageError(
                    f"cannot read {self.describe(key)}: {size} bytes, more than the {limit} allowed"
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read()
        except OSError as exc:
            raise storage_error("read", self.describe(key), exc) from exc
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        fd = self._open_regular(key)
        with os.fdopen(fd, "rb") as handle:
            yield handle

    def check_room(self, needed: int) -> None:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed + DISK_MARGIN > free:
            raise StorageError(
                f"{self.root}: not enough free disk space to download {needed / 1e6:.1f} MB "
                f"({free / 1e6:.1f} MB free, {DISK_MARGIN / 1e6:.0f} MB margin)",
                hint="free some space or narrow the mirror's filters; nothing was downloaded",
            )

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    # -- writing -------------------------------------------------------------------------

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
        try:
            with self._parent(key, create=True) as (folder, name):
                if if_match is not None or if_absent:
                    self._check_condition(folder, name, key, if_match, if_absent)
                temp = temp_name()
                fd = os.open(temp, _NEW_FLAGS, 0o644, dir_fd=folder)
                try:
                    try:
                        os.fchmod(fd, 0o644)
                        _write_all(fd, data)
                        if durable:
                            os.fsync(fd)
                        st = os.fstat(fd)
                    finally:
                        os.close(fd)
                    checkpoint("storage.before_rename")
                    if step is not None:
                        checkpoint(step)
                    os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=folder)
                    raise
                checkpoint("storage.renamed")
                if durable:
                    os.fsync(folder)
        except StorageError:
            raise
        except OSError as exc:
            raise storage_error("write", self.describe(key), exc) from exc
        return _info(key, st)

    def _check_condition(
        self, folder: int, name: str, key: str, if_match: str | None, if_absent: bool
    ) -> None:
        try:
            current: str | None = str(
                os.stat(name, dir_fd=folder, follow_symlinks=False).st_mtime_ns
            )
        except FileNotFoundError:
            current = None
        if if_absent and current is not None:
            raise PreconditionFailed(f"{self.describe(key)} already exists")
        if if_match is not None and current != if_match:
            raise PreconditionFailed(f"{self.describe(key)} changed since it was read")

    def write_if_changed(self, key: str, data: bytes, **options: Any) -> bool:
        info = self.stat(key)
        # Unreadable: replaced (the rename never follows a link).
        if info is not None and self.same_bytes(info, data):
            return False
        self.write(key, data, **options)
        return True

    def writer(self, key: str) -> _LocalWriter:
        try:
            check_key(key)
            folder, _, name = key.rpartition("/")
            fd = self._folder_fd(folder, create=True)
        except OSError as exc:
            raise storage_error("write", self.describe(key), exc) from exc
        try:
            return _LocalWriter(self, key, fd, name)
        except OSError as exc:
            os.close(fd)
            raise storage_error("write", self.describe(key), exc) from exc

    def delete(self, key: str, *, if_match: str | None = None) -> bool:
        try:
            with self._parent(key, create=False) as (folder, name):
                if if_match is not None:
                    self._check_condition(folder, name, key, if_match, False)
                os.unlink(name, dir_fd=folder)  # a link itself, never its target
        except (FileNotFoundError, NotADirectoryError):
            return False
        except IsADirectoryError:
            return False
        except StorageError:
            raise
        except OSError as exc:
            raise storage_error("remove", self.describe(key), exc) from exc
        checkpoint("storage.removed")
        return True

    def remove_empty_folder(self, folder: str) -> bool:
        """Remove the folder ``folder`` if it is empty (a pruned project's, say)."""
        try:
            with self._parent(folder, create=False) as (parent, name):
                os.rmdir(name, dir_fd=parent)
        except OSError:
            return False
        return True

    def append_line(self, key: str, line: bytes) -> None:
        try:
            with self._parent(key, create=True) as (folder, name):
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                    0o644,
                    dir_fd=folder,
                )
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise StorageError(f"cannot write {self.describe(key)}: not a regular file")
                    size = os.fstat(fd).st_size
                    # A torn line left by an earlier crash must not swallow this one.
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line
                    if checkpoint_armed():
                        # Two writes only under the crash harness, to leave a torn line behind.
                        _write_all(fd, line[: len(line) // 2])
                        checkpoint("history.mid_append")
                        line = line[len(line) // 2 :]
                    _write_all(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except StorageError:
            raise
        except OSError as exc:
            raise storage_error("write", self.describe(key), exc) from exc

    def read_lines(self, key: str) -> Iterator[bytes]:
        try:
            fd = self._open_regular(key)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            yield from handle

    def clean_temporaries(self, prefix: str = "") -> int:
        """Remove temporary files of dead writers in every folder under ``prefix``."""
        removed = 0
        try:
            fd = self._folder_fd(prefix, create=False)
        except OSError:
            return 0
        pending = [fd]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            with contextlib.suppress(OSError):
                                pending.append(os.open(entry.name, _DIR_FLAGS, dir_fd=folder))
                        elif (
                            entry.name.startswith(TEMP_PREFIX)
                            and entry.is_file(follow_symlinks=False)
                            and not temp_writer_alive(entry.name)
                        ):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.name, dir_fd=folder)
                                removed += 1
            finally:
                os.close(folder)
        return removed

    # -- the lock ----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, timeout: float, command: str, poll: float = 0.2) -> Iterator[LockHolder]:
        """An ``flock`` on ``.reconciler/lock``: the kernel releases it however the holder
        dies, so a lock left by a dead process is free to take without guessing from pids.
        The file also names the holder, so a waiting or refused run can say whom it waits for.
        """
        me = _current_holder(command)
        try:
            with self._parent(LOCK_KEY, create=True) as (folder, name):
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=folder)
        except OSError as exc:
            raise storage_error("lock", self.describe(LOCK_KEY), exc) from exc
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            started = time.monotonic()
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - started >= timeout:
                        handle.seek(0)
                        raise LockTimeout(
                            self.location, _parse_holder(handle.read()), time.monotonic() - started
                        ) from None
                    time.sleep(poll)
            handle.seek(0)
            handle.truncate()
            # Who holds the lock is for messages only: a full disk must not stop the run.
            with contextlib.suppress(OSError):
                os.write(handle.fileno(), json.dumps(me.__dict__).encode())
            try:
                yield me
            finally:
                # Empty the record before releasing, so a reader never names a gone holder.
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def lock_holder(self) -> LockHolder | None:
        try:
            with self._parent(LOCK_KEY, create=False) as (folder, name):
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW, dir_fd=folder)
        except OSError:
            return None
        with os.fdopen(fd, "r+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _parse_holder(handle.read())
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None


def write_atomic(path: Path, data: bytes) -> None:
    """Atomically write a file that is not channel content (a saved plan, a report).

    The same temporary-file-and-rename as a channel write, in ``path``'s folder.
    """
    LocalStore(path.parent).write(path.name, data)


def _current_holder(command: str | None) -> LockHolder:
    started = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    text = command or " ".join(["reconcile", *sys.argv[1:2]])
    return LockHolder(os.getpid(), platform.node(), text, started)


def _parse_holder(text: str) -> LockHolder | None:
    try:
        data: dict[str, Any] = json.loads(text)
        return LockHolder(
            int(data["pid"]), str(data["host"]), str(data["command"]), str(data["started"])
        )
    except (ValueError, KeyError, TypeError):
        return None
