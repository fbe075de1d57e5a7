"""Active mirrors: fetch the files the plan needs, in parallel, verified, atomically.

Each file streams into a temporary name next to its target while its size and
sha256 are checked against the upstream record, and is renamed into place only
when both match. One failed file does not stop the others; every failure is
returned with its reason. Free disk space is checked before anything starts.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.engine.progress import NullReporter, Reporter
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.kinds.conda.mirrors import Download
from reconciler.store.local import DISK_FULL
from reconciler.transport.http import Upstream

# Keep this much free beyond the downloads themselves (index files, temp copies).
DISK_MARGIN = 64 * 1024 * 1024


class DiskSpaceError(ReconcileError):
    pass


@dataclass
class DownloadResult:
    done: list[Download] = field(default_factory=list)
    failed: list[tuple[Download, str]] = field(default_factory=list)
    bytes: int = 0


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start when ``needed`` bytes (plus a margin) do not fit."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"{folder}: not enough free disk space to download {needed / 1e6:.1f} MB "
            f"({free / 1e6:.1f} MB free, {DISK_MARGIN / 1e6:.0f} MB margin)",
            hint="free some space or narrow the mirror's filters; nothing was downloaded",
        )


def download_all(
    channel_dir: Path,
    downloads: Sequence[Download],
    upstreams: Mapping[str, Upstream],
    *,
    parallel: Mapping[str, int],
    reporter: Reporter | None = None,
) -> DownloadResult:
    """Fetch ``downloads`` into ``channel_dir``; ``parallel`` bounds workers per mirror."""
    result = DownloadResult()
    if not downloads:
        return result
    check_free_space(channel_dir, sum(d.size or 0 for d in downloads))
    reporter = reporter or NullReporter()
    reporter.start(
        f"downloading {len(downloads)} files", sum(d.size or 0 for d in downloads), unit="bytes"
    )
    workers = max(1, max((parallel.get(d.mirror, 4) for d in downloads), default=4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {}
        for item in downloads:
            target = channel_dir / item.subdir / item.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            future = pool.submit(
                upstreams[item.mirror].download,
                item.subdir,
                item.filename,
                target,
                item.size,
                item.sha256,
            )
            futures[future] = item
        for future in as_completed(futures):
            item = futures[future]
            try:
                written = future.result()
                result.bytes += written
                result.done.append(item)
                checkpoint("download.done")  # in place, not yet named by any repodata
                reporter.advance(written)
            except ReconcileError as exc:
                result.failed.append((item, exc.message))
            except OSError as exc:  # the channel's disk: full, read-only, ...
                target = channel_dir / item.subdir / item.filename
                reason = f"{item.subdir}/{item.filename}: cannot write {target}: "
                reason += exc.strerror or str(exc)
                if exc.errno in DISK_FULL:
                    reason += " (free some disk space and run again)"
                result.failed.append((item, reason))
    reporter.finish()
    return result
