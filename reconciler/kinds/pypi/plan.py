"""The plan for a PyPI channel: files to add, update (page entry changed) or remove,
files to download, and pages to rewrite."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.config.models import PypiChannel
from reconciler.engine.plan import Action, ChannelPlan
from reconciler.engine.planner import field_diff, interrupted_action, mirror_schedules
from reconciler.engine.state import ChannelState
from reconciler.kinds.pypi.resolve import Resolution, WantedFile, published_file, resolve
from reconciler.kinds.pypi.simple_index import (
    PACKAGES,
    SIMPLE,
    PublishedFile,
    published_entries,
    published_pages,
    render_pages,
)


@dataclass
class PypiPlanning:
    plan: ChannelPlan
    resolution: Resolution
    files: list[PublishedFile]  # what the pages will list
    pages: dict[str, bytes]  # every page, rendered
    downloads: list[WantedFile]  # active files to fetch
    stale_pages: list[str]  # pages of projects no longer listed


def tree_digest(folder: Path) -> str:
    """Digest of the names, sizes and mtimes of every visible file under ``folder``."""
    h = hashlib.sha256()
    if not folder.is_dir():
        return "absent"
    for root, dirs, files in sorted(os.walk(folder)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            st = os.stat(path)
            rel = os.path.relpath(path, folder)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def needs_download(channel_dir: Path, item: WantedFile, inventory: Mapping[str, Any]) -> bool:
    if item.passive:
        return False
    target = channel_dir / PACKAGES / item.project / item.file.filename
    entry = inventory.get(item.key)
    try:
        size = target.stat().st_size
    except OSError:
        return True
    recorded = getattr(entry, "sha256", None)
    if recorded != item.file.sha256:
        return True
    return item.file.size is not None and size != item.file.size


def plan_pypi_channel(
    channel: PypiChannel,
    config_dir: Path | None = None,
    mirrors: set[str] | None = None,
    run_now: bool | set[str] = False,
) -> PypiPlanning:
    path = Path(channel.path)
    statuses = [
        s for s in mirror_schedules(channel, run_now) if mirrors is None or s.name in mirrors
    ]
    not_due = {s.name for s in statuses if not s.due}
    inventory = ChannelState.load(path, channel.name).files
    resolution = resolve(channel, inventory, config_dir, only=mirrors, not_due=not_due)
    files = [published_file(path, item) for item in resolution.wanted.values()]
    for key, entry in resolution.kept.items():
        files.append(PublishedFile.from_entry(key.split("/", 1)[0], entry))
    desired = {f"{f.project}/{f.filename}": f for f in files}
    published = {f"{p}/{n}": e for (p, n), e in published_entries(path).items()}
    pruned = dict((key, mirror) for mirror, key in resolution.prune)

    actions: list[Action] = []
    downloads = [
        item for item in resolution.wanted.values() if needs_download(path, item, inventory)
    ]
    fetch = {item.key for item in downloads}
    for key in sorted(desired.keys() - published.keys()):
        project, filename = key.split("/", 1)
        owner = resolution.owner(key) or "local"
        how = " (download)" if key in fetch else ""
        actions.append(
            Action(
                kind="add",
                subdir=project,
                filename=filename,
                source=owner,
                reason=f"new from mirror {owner}{how}",
            )
        )
    for key in sorted(desired.keys() & published.keys()):
        old, new = dict(published[key]), desired[key].json_entry()
        if old == new:
            continue
        project, filename = key.split("/", 1)
        owner = resolution.owner(key) or "local"
        changed_file = old.get("hashes") != new.get("hashes")
        reason = (
            f"file changed upstream in mirror {owner} (download)"
            if changed_file
            else f"entry changed upstream in mirror {owner}"
        )
        actions.append(
            Action(
                kind="update",
                subdir=project,
                filename=filename,
                source=owner,
                reason=reason,
                diff=field_diff(old, new),
            )
        )
    for key in sorted(published.keys() - desired.keys()):
        project, filename = key.split("/", 1)
        mirror = pruned.get(key)
        reason = (
            f"no longer wanted by mirror {mirror}; file deleted"
            if mirror
            else "no longer wanted; unpublished"
        )
        actions.append(
            Action(
                kind="remove",
                subdir=project,
                filename=filename,
                source=mirror or "local",
                reason=reason,
            )
        )
    listed = {f"{a.subdir}/{a.filename}" for a in actions}
    for item in downloads:
        if item.key not in listed:
            actions.append(
                Action(
                    kind="add",
                    subdir=item.project,
                    filename=item.file.filename,
                    source=item.mirror,
                    reason=f"file missing: download from mirror {item.mirror}",
                )
            )
    for mirror, key in resolution.prune:
        project, filename = key.split("/", 1)
        if key not in listed and (path / PACKAGES / key).exists():
            actions.append(
                Action(
                    kind="remove",
                    subdir=project,
                    filename=filename,
                    source=mirror,
                    reason=f"no longer wanted by mirror {mirror}; file deleted",
                )
            )

    pages = render_pages(files)
    stale = sorted(set(published_pages(path)) - pages.keys())
    changed = sorted(name for name, body in pages.items() if not _same(path / name, body))
    if changed or stale:
        missing = any(not (path / name).exists() for name in changed)
        actions.append(
            Action(
                kind="reindex",
                subdir=SIMPLE,
                reason="index pages missing" if missing else "index pages out of date",
                files=changed + [f"{name} (delete)" for name in stale],
            )
        )
    interrupted = interrupted_action(path)
    if interrupted is not None:
        actions.append(interrupted)
    observed = {SIMPLE: tree_digest(path / SIMPLE), PACKAGES: tree_digest(path / PACKAGES)}
    plan = ChannelPlan(
        name=channel.name,
        path=str(path),
        create=not path.exists(),
        observed=observed,
        actions=actions,
        warnings=resolution.warnings
        + resolution.failures
        + [f"mirror {s.name}: {s.warning}" for s in statuses if s.warning],
        mirrors=statuses,
    )
    return PypiPlanning(plan, resolution, files, pages, downloads, stale)


def _same(path: Path, body: bytes) -> bool:
    try:
        return path.stat().st_size == len(body) and path.read_bytes() == body
    except OSError:
        return False
