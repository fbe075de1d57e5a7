"""The download executor every kind uses: parallel, verified, atomic, with progress.

A kind describes each file to fetch as a :class:`DownloadJob`: the store key it
goes to, how many bytes it should be, and a ``fetch`` callable that streams the
upstream bytes into an open file while checking size and sha256 (the transport
does that). Each file goes to a temporary object of the store and is committed
under its key only when ``fetch`` returned; one failed file does not stop the
others, and every failure comes back with its reason. The room needed is
checked before anything starts.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import IO

from reconciler.engine.progress import NullReporter, Reporter
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.store.base import Store

# A full disk, a full quota, a file size limit: the user frees space and runs again.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True)
class DownloadJob:
    key: str  # where the file goes in the channel
    source: str  # the mirror it comes from
    size: int | None  # as recorded upstream (None: unknown)
    fetch: Callable[[IO[bytes]], int]  # writes the verified bytes, returns how many
    # Written after the main file commits (e.g. a wheel's PEP 658 metadata): key → fetch.
    followers: tuple[tuple[str, Callable[[IO[bytes]], int]], ...] = ()


@dataclass
class DownloadResult:
    done: list[DownloadJob] = field(default_factory=list)
    failed: list[tuple[DownloadJob, str]] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)  # by source
    seconds: dict[str, float] = field(default_factory=dict)  # by source: first start to last end

    @property
    def failed_keys(self) -> set[str]:
        return {job.key for job, _ in self.failed}

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def _fetch_into(store: Store, key: str, fetch: Callable[[IO[bytes]], int]) -> int:
    writer = store.writer(key)
    try:
        written = fetch(writer.handle)
    except BaseException:
        writer.abort()
        raise
    writer.commit(step="download.placed")
    return written


def _run(store: Store, job: DownloadJob) -> int:
    written = _fetch_into(store, job.key, job.fetch)
    for key, fetch in job.followers:
        written += _fetch_into(store, key, fetch)
    return written


def run_downloads(
    store: Store,
    jobs: Sequence[DownloadJob],
    *,
    parallel: int,
    reporter: Reporter | None = None,
    check_room: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Fetch ``jobs`` into ``store`` with up to ``parallel`` at a time."""
    result = DownloadResult()
    if not jobs:
        return result
    total = sum(job.size or 0 for job in jobs)
    if check_room is not None:
        check_room(total)
    reporter = reporter or NullReporter()
    reporter.start(f"downloading {len(jobs)} files", total, unit="bytes", files=len(jobs))
    first: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {}
        for job in jobs:
            futures[pool.submit(_run, store, job)] = job
            first.setdefault(job.source, time.monotonic())
        for future in as_completed(futures):
            job = futures[future]
            result.seconds[job.source] = time.monotonic() - first[job.source]
            try:
                written = future.result()
            except ReconcileError as exc:
                hint = f" ({exc.hint})" if exc.hint else ""
                result.failed.append((job, exc.message + hint))
                reporter.advance(0, files=1)
                continue
            except OSError as exc:  # the channel's disk: full, read-only, ...
                reason = f"cannot write {store.describe(job.key)}: {exc.strerror or exc}"
                if exc.errno in DISK_FULL:
                    reason += " (free some disk space and run again)"
                result.failed.append((job, reason))
                reporter.advance(0, files=1)
                continue
            result.bytes[job.source] = result.bytes.get(job.source, 0) + written
            result.done.append(job)
            checkpoint("download.done")  # in place, not yet named by any index
            reporter.advance(written, files=1)
    reporter.finish()
    return result
