"""A channel's mirrors, resolved: the upstream records each one brings in.

Fetches each mirror's upstream repodata, refuses unsafe records, applies the
channel's and the mirror's filters, merges mirrors (same filename and sha256 is
one package; a different sha256 is a conflict), and works out which files an
active mirror must download and which files a pruning mirror must delete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config.models import Channel, Mirror
from reconciler.errors import ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.records import MirroredRecord
from reconciler.kinds.conda.select import Selection, safe_records, select
from reconciler.transport.http import NotFound, Upstream

log = logging.getLogger(__name__)

UPSTREAM_STATE = ".reconciler/upstream"


@dataclass(frozen=True)
class Download:
    mirror: str
    subdir: str
    filename: str
    size: int | None
    sha256: str | None


@dataclass
class ResolvedMirror:
    mirror: Mirror
    upstream: Upstream
    run: bool = True  # False: not due; its records stay as last fetched, nothing is fetched
    selection: Selection = field(default_factory=Selection)
    not_modified: bool = True  # every subdir answered 304 (or came from disk unchanged)


@dataclass
class ResolvedMirrors:
    """Everything the mirrors of one channel want."""

    records: dict[str, dict[str, MirroredRecord]] = field(default_factory=dict)  # subdir → fn
    removed: dict[str, set[str]] = field(default_factory=dict)  # upstream `removed`, carried over
    downloads: list[Download] = field(default_factory=list)
    prune: list[tuple[str, str, str]] = field(default_factory=list)  # (mirror, subdir, filename)
    mirrors: list[ResolvedMirror] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> dict[str, set[str]]:
        """Files to prune, by subdir: never indexed as local packages meanwhile."""
        found: dict[str, set[str]] = {}
        for _mirror, subdir, filename in self.prune:
            found.setdefault(subdir, set()).add(filename)
        return found

    def owner(self, subdir: str, filename: str) -> str | None:
        entry = self.records.get(subdir, {}).get(filename)
        return entry.mirror if entry else None


def make_upstream(channel: Channel, mirror: Mirror, config_dir: Path | None) -> Upstream:
    token = os.environ.get(mirror.token_env) if mirror.token_env else None
    return Upstream(
        mirror.source,
        Path(channel.path) / UPSTREAM_STATE / mirror.name,
        token=token,
        timeout=mirror.timeout,
        retries=mirror.retries,
        config_dir=config_dir,
    )


def resolve_mirrors(
    channel: Channel,
    index: int,
    inventory: Mapping[str, Any],
    *,
    config_dir: Path | None = None,
    only: set[str] | None = None,
    not_due: set[str] | None = None,
) -> ResolvedMirrors:
    """Resolve the channel's mirrors (or those in ``only``) against their upstreams.

    ``inventory`` maps ``<subdir>/<filename>`` to objects with ``source`` and
    ``sha256`` (the channel state), to know which files each mirror placed.
    """
    resolved = ResolvedMirrors()
    channel_filters = FilterEngine(channel.filters, f"channels[{index}].filters")
    served = set(channel.served_subdirs)
    conflicts: list[str] = []
    for j, mirror in enumerate(channel.mirrors):
        if only is not None and mirror.name not in only:
            continue
        upstream = make_upstream(channel, mirror, config_dir)
        state = ResolvedMirror(mirror, upstream, run=mirror.name not in (not_due or set()))
        resolved.mirrors.append(state)
        records: dict[str, dict[str, dict[str, Any]]] = {}
        for subdir in channel.mirror_subdirs(mirror):
            if subdir not in served:
                continue
            try:
                # A mirror that is not due keeps what it published: its last copy.
                kept = None if state.run else upstream.cached_repodata(subdir)
                fetched = kept or upstream.fetch_repodata(subdir)
            except NotFound as exc:
                if subdir == "noarch":
                    raise ReconcileError(
                        f"mirror {mirror.name}: {exc.message}",
                        hint="every conda channel has noarch/repodata.json; check the source",
                    ) from None
                resolved.warnings.append(
                    f"mirror {mirror.name}: upstream has no {subdir} ({exc.message}); "
                    "mirroring it as empty"
                )
                records[subdir] = {}
                continue
            state.not_modified = state.not_modified and fetched.not_modified
            safe, refused = safe_records(subdir, fetched.repodata, upstream.shown(subdir, "")[:-1])
            resolved.warnings.extend(refused)
            records[subdir] = safe
            removed = {str(r) for r in fetched.repodata.get("removed") or () if isinstance(r, str)}
            resolved.removed.setdefault(subdir, set()).update(removed)
        mirror_filters = FilterEngine(mirror.filters, f"channels[{index}].mirrors[{j}].filters")
        state.selection = select(
            records, channel_filters, mirror_filters, dependencies=mirror.filters.dependencies
        )
        resolved.warnings.extend(f"mirror {mirror.name}: {w}" for w in state.selection.warnings)
        for (subdir, filename), record in sorted(state.selection.selected.items()):
            existing = resolved.records.setdefault(subdir, {}).get(filename)
            if existing is not None:
                if existing.record.get("sha256") == record.get("sha256"):
                    continue  # the same package from two mirrors
                message = (
                    f"{subdir}/{filename}: mirrors {existing.mirror} and {mirror.name} "
                    "offer different files (sha256 differs)"
                )
                if channel.on_conflict == "first":
                    resolved.warnings.append(f"{message}; keeping {existing.mirror}'s")
                else:
                    conflicts.append(message)
                continue
            resolved.records[subdir][filename] = MirroredRecord(record, mirror.name)
    if conflicts:
        raise ReconcileError(
            f"channel {channel.name}: {len(conflicts)} conflict(s) between mirrors:\n  "
            + "\n  ".join(conflicts),
            hint="set on_conflict: first on the channel to keep the mirror listed first",
        )
    _plan_files(channel, resolved, inventory)
    return resolved


def _plan_files(channel: Channel, resolved: ResolvedMirrors, inventory: Mapping[str, Any]) -> None:
    root = Path(channel.path)
    modes = {m.mirror.name: m.mirror for m in resolved.mirrors}
    running = {m.mirror.name for m in resolved.mirrors if m.run}
    missing: list[tuple[str, str]] = []
    for subdir, records in sorted(resolved.records.items()):
        for filename, entry in sorted(records.items()):
            mirror = modes[entry.mirror]
            path = root / subdir / filename
            if mirror.mode == "active" and entry.mirror not in running:
                # Not due: nothing is fetched, so nothing may be published without its file.
                if not path.is_file():
                    missing.append((subdir, filename))
                continue
            if mirror.mode != "active":
                continue
            known = inventory.get(f"{subdir}/{filename}")
            sha256 = entry.record.get("sha256")
            size = entry.record.get("size")
            on_disk = path.is_file() and (size is None or path.stat().st_size == size)
            if on_disk and known is not None and getattr(known, "sha256", None) == sha256:
                continue
            if on_disk and known is None:
                continue  # a file someone placed by hand wins; the index reads it as local
            resolved.downloads.append(
                Download(
                    entry.mirror,
                    subdir,
                    filename,
                    int(size) if isinstance(size, int) else None,
                    str(sha256) if sha256 else None,
                )
            )
    for subdir, filename in missing:
        del resolved.records[subdir][filename]
    wanted = {(s, f) for s, records in resolved.records.items() for f in records}
    for key, known in sorted(inventory.items()):
        source = getattr(known, "source", "local")
        if source not in running or not modes[source].prune:
            continue
        subdir, _, filename = key.partition("/")
        if (subdir, filename) not in wanted:
            resolved.prune.append((source, subdir, filename))
