"""Atomic, write-if-changed file output for channel folders.

Clients may read a channel at any moment, so every file is written to a
temporary name in the same folder and renamed into place; a file whose bytes
would not change is left alone, keeping its mtime and ETag.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint

TEMP_PREFIX = ".reconcile-tmp-"


class StorageError(ReconcileError):
    """Writing into a channel folder failed (disk full, permissions, ...)."""


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


def write_atomic(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp creates 0600; served files must be readable
        checkpoint("storage.before_rename")
        os.replace(temp, path)
        checkpoint("storage.renamed")
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        hint = "free some disk space and run again" if exc.errno == errno.ENOSPC else None
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}", hint=hint) from exc


def write_if_changed(path: Path, data: bytes, *, fsync: bool = False) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly it; True if written."""
    if _same_bytes(path, data):
        return False
    write_atomic(path, data, fsync=fsync)
    return True


def remove_if_exists(path: Path) -> bool:
    """Delete ``path``; True if something was removed."""
    try:
        path.unlink()
        checkpoint("storage.removed")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    return True


def clean_temp_files(folder: Path) -> int:
    """Remove temporary files a crashed run left behind in ``folder``; returns the count."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed
