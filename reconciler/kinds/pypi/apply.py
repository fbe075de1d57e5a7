"""Carrying out a PyPI channel's plan, under the channel lock the caller holds.

Order, so a client never sees a page naming a missing file: files (and their
PEP 658 metadata) are downloaded, verified and renamed into place; then project
pages are written, the root page last; then pages of projects no longer listed
and pruned files are deleted. Failed downloads are left out of the pages and
reported; what worked is published.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

from reconciler.config.models import PypiChannel
from reconciler.engine.downloads import check_free_space
from reconciler.engine.plan import ChannelPlan, Plan
from reconciler.engine.report import ChannelReport
from reconciler.engine.state import ChannelState, InventoryEntry
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import METADATA_SUFFIX
from reconciler.kinds.pypi.plan import plan_pypi_channel
from reconciler.kinds.pypi.resolve import Resolution, WantedFile, file_size, published_file
from reconciler.kinds.pypi.simple_index import PACKAGES, SIMPLE, render_pages
from reconciler.store.local import remove_if_exists, write_if_changed

log = logging.getLogger(__name__)

# A wheel's METADATA bigger than this is not extracted (real ones are a few kB).
MAX_METADATA_BYTES = 8 * 1024 * 1024


def extract_wheel_metadata(wheel: Path) -> bytes | None:
    """The ``*.dist-info/METADATA`` of a wheel, for PEP 658 (None if absent or odd)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [
                n
                for n in archive.namelist()
                if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(names) != 1 or archive.getinfo(names[0]).file_size > MAX_METADATA_BYTES:
                return None
            return archive.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def _fetch(resolution: Resolution, channel_dir: Path, item: WantedFile) -> int:
    client = resolution.clients[item.mirror]
    folder = channel_dir / PACKAGES / item.project
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / item.file.filename
    written = client.download(item.file, target)
    metadata = folder / (item.file.filename + METADATA_SUFFIX)
    if item.file.metadata_sha256:
        written += client.download_metadata(item.file, metadata)
    elif item.file.filename.endswith(".whl"):
        extracted = extract_wheel_metadata(target)
        if extracted is not None:
            write_if_changed(metadata, extracted)
    return written


def _download(
    channel: PypiChannel, resolution: Resolution, downloads: list[WantedFile], report: ChannelReport
) -> set[str]:
    """Fetch ``downloads``; returns the keys that failed."""
    failed: set[str] = set()
    if not downloads:
        return failed
    channel_dir = Path(channel.path)
    check_free_space(channel_dir, sum(item.file.size or 0 for item in downloads))
    workers = max(m.parallel_downloads for m in channel.mirrors)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_fetch, resolution, channel_dir, item): item for item in downloads}
        for future in as_completed(futures):
            item = futures[future]
            try:
                report.bytes += future.result()
            except ReconcileError as exc:
                failed.add(item.key)
                report.failures.append(exc.message)
            except OSError as exc:
                failed.add(item.key)
                report.failures.append(f"{item.key}: {exc}")
    return failed


def _update_state(
    channel: PypiChannel, resolution: Resolution, failed: set[str], plan: Plan
) -> ChannelState:
    path = Path(channel.path)
    state = ChannelState.load(path, channel.name)
    files: dict[str, InventoryEntry] = {
        key: entry for key, entry in state.files.items() if key in resolution.kept
    }
    for key, item in resolution.wanted.items():
        if key in failed:
            if key in state.files:
                files[key] = state.files[key]
            continue
        files[key] = InventoryEntry(
            source=item.mirror,
            sha256=item.file.sha256,
            size=file_size(path, item) or 0,
            passive=item.passive,
            url=item.file.url if item.passive else None,
        )
        if item.passive and item.file.metadata_sha256:
            files[key + METADATA_SUFFIX] = InventoryEntry(
                source=item.mirror,
                sha256=item.file.metadata_sha256,
                size=0,
                passive=True,
                url=item.file.url + METADATA_SUFFIX,
            )
    state.files = dict(sorted(files.items()))
    state.serial += 1
    state.config_digest = plan.config_digest
    state.revision = plan.revision
    state.updated = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    state.save(path)
    return state


def converge_pypi(
    channel: PypiChannel,
    planned: ChannelPlan,
    plan: Plan,
    config_dir: Path | None,
    only_mirrors: set[str] | None,
    not_due: set[str],
    report: ChannelReport,
) -> int:
    """Download, publish pages, prune; returns the new state serial."""
    path = Path(channel.path)
    run_now = {m.name for m in planned.mirrors if m.due} if planned.mirrors else False
    planning = plan_pypi_channel(channel, config_dir, only_mirrors, run_now)
    resolution = planning.resolution
    try:
        report.failures.extend(resolution.failures)
        failed = _download(channel, resolution, planning.downloads, report)
        for key in failed:
            resolution.wanted.pop(key, None)
        files = [published_file(path, item) for item in resolution.wanted.values()]
        files += [f for f in planning.files if f"{f.project}/{f.filename}" in resolution.kept]
        pages = render_pages(files)
        written = []
        # Project pages first, the root page (which makes a project visible) last.
        for name in sorted(pages, key=lambda n: (n.count("/") == 1, n)):
            if write_if_changed(path / name, pages[name]):
                written.append(name)
        for name in planning.stale_pages:
            if name not in pages and remove_if_exists(path / name):
                written.append(f"{name} (deleted)")
                _remove_empty(path / name)
        for mirror, key in resolution.prune:
            if key in resolution.wanted:
                continue
            for target in (path / PACKAGES / key, path / PACKAGES / (key + METADATA_SUFFIX)):
                if remove_if_exists(target):
                    log.info("pruned %s (mirror %s)", key, mirror)
                    _remove_empty(target)
        for action in planned.actions:
            where = f"{action.subdir}/{action.filename}"
            if where in failed:
                continue  # reported as a failure, not as done
            bucket = {"add": report.added, "update": report.updated, "remove": report.removed}
            if action.kind in bucket:
                bucket[action.kind].append(where)
        report.written = sorted(written)
        return _update_state(channel, resolution, failed, plan).serial
    finally:
        resolution.close()


def _remove_empty(path: Path) -> None:
    """Remove a project folder left empty (never the channel's own folders)."""
    folder = path.parent
    if folder.name in (SIMPLE, PACKAGES):
        return
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()
