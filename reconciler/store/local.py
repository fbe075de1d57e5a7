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
# A full disk, a full quota, a file size limit: the user frees space and runs again.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class StorageError(ReconcileError):
    """Writing into a channel folder failed (disk full, permissions, ...)."""


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


def write_atomic(path: Path, data: bytes, *, fsync: bool = False, step: str | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    ``step`` names an extra crash checkpoint between the two (see ``faults``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name: cleaners leave temporary files of live writers alone.
    fd, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp creates 0600; served files must be readable
        checkpoint("storage.before_rename")
        if step is not None:
            checkpoint(step)
        os.replace(temp, path)
        checkpoint("storage.renamed")
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        hint = "free some disk space and run again" if exc.errno in DISK_FULL else None
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}", hint=hint) from exc


def write_if_changed(
    path: Path, data: bytes, *, fsync: bool = False, step: str | None = None
) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly it; True if written."""
    if _same_bytes(path, data):
        return False
    write_atomic(path, data, fsync=fsync, step=step)
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


def temp_writer_alive(name: str) -> bool:
    """Whether the process that is writing the temporary file ``name`` still runs.

    Names carry the writer's pid: ``<prefix><pid>-<random>`` (:func:`write_atomic`)
    or ``<prefix><file>.<pid>`` (downloads). Without one, the writer counts as gone.
    """
    rest = name[len(TEMP_PREFIX) :]
    text = rest.rpartition(".")[2] if "." in rest else rest.partition("-")[0]
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_temp_files(folder: Path) -> int:
    """Remove temporary files crashed runs left in ``folder``; returns the count.

    Files of writers still running (another apply, a server fetching) are kept.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if (
            entry.name.startswith(TEMP_PREFIX)
            and entry.is_file(follow_symlinks=False)
            and not temp_writer_alive(entry.name)
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed
