"""The desired content of a PyPI channel: every mirror's projects, filtered.

Mirrors that refresh fetch their project pages (conditionally, on the page their
last apply kept); the others select from the kept page, without the network, so
a configuration change applies at the next apply whatever the schedule. A
project whose page cannot be read keeps what was published for it and fails its
mirror's run; a mirror outside ``--mirror`` keeps everything as published.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from reconciler.config.models import PypiChannel, PypiMirror
from reconciler.engine.plan import PlanWarning, UpstreamValidator
from reconciler.engine.state import InventoryEntry
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.client import FetchedPage, SimpleIndexClient, read_page_snapshot
from reconciler.kinds.pypi.names import METADATA_SUFFIX, normalize
from reconciler.kinds.pypi.pages import DistFile
from reconciler.kinds.pypi.select import Level, Verdict, select_files
from reconciler.kinds.pypi.simple_index import PACKAGES, PublishedFile
from reconciler.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WantedFile:
    mirror: str
    project: str
    file: DistFile
    passive: bool

    @property
    def key(self) -> str:
        return f"{self.project}/{self.file.filename}"


@dataclass
class MirrorPages:
    mirror: PypiMirror
    client: SimpleIndexClient
    refreshed: bool
    in_scope: bool
    pages: dict[str, FetchedPage] = field(default_factory=dict)  # what it selected from
    previous: dict[str, FetchedPage] = field(default_factory=dict)  # what its last apply used
    failed: dict[str, str] = field(default_factory=dict)  # project → why its page is unread
    pinned: set[str] = field(default_factory=set)  # projects kept as published

    @property
    def error(self) -> str | None:
        if not self.failed:
            return None
        return "; ".join(f"project {p}: {why}" for p, why in sorted(self.failed.items()))


@dataclass
class Resolution:
    wanted: dict[str, WantedFile] = field(default_factory=dict)  # by "<project>/<filename>"
    kept: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # published, left as is
    kept_sources: dict[str, str] = field(default_factory=dict)
    verdicts: list[tuple[str, str, Verdict]] = field(default_factory=list)  # mirror, project
    prune: dict[str, str] = field(default_factory=dict)  # key → mirror
    warnings: list[PlanWarning] = field(default_factory=list)
    mirrors: dict[str, MirrorPages] = field(default_factory=dict)

    def owner(self, key: str) -> str | None:
        item = self.wanted.get(key)
        if item is not None:
            return item.mirror
        return self.kept_sources.get(key)

    def verdict(self, mirror: str, key: str) -> Verdict | None:
        project, _, filename = key.partition("/")
        for name, proj, verdict in self.verdicts:
            if name == mirror and proj == project and verdict.file.filename == filename:
                return verdict
        return None

    def validators(self) -> list[UpstreamValidator]:
        return [
            UpstreamValidator(
                mirror=name,
                location=project,
                url=fetched.validators.url,
                sha256=fetched.sha256,
                etag=fetched.validators.etag,
                last_modified=fetched.validators.last_modified,
            )
            for name, state in sorted(self.mirrors.items())
            for project, fetched in sorted(state.pages.items())
        ]

    def close(self) -> None:
        for state in self.mirrors.values():
            state.client.close()


def levels(channel: PypiChannel, mirror: PypiMirror) -> list[Level]:
    return [
        Level(mirror.filters, f"mirror {mirror.name}", mirror_level=True),
        Level(channel.filters, f"channel {channel.name}", mirror_level=False),
    ]


def _warn(resolution: Resolution, message: str) -> None:
    resolution.warnings.append(PlanWarning(key=message, message=message))


def _page(
    state: MirrorPages,
    store: Store,
    project: str,
    expected: Mapping[tuple[str, str], str] | None,
) -> FetchedPage | None:
    name = state.mirror.name
    previous = read_page_snapshot(store, state.client, name, project)
    if previous is not None:
        state.previous[project] = previous
    want = expected.get((name, project)) if expected is not None else None
    if want is not None:
        if previous is not None and previous.sha256 == want:
            return previous
        cached = state.client.cached_page(project, want)
        if cached is not None:
            return cached
    if state.refreshed:
        try:
            return state.client.project_page(project, previous)
        except ReconcileError as exc:
            state.failed[project] = exc.message
            log.error("mirror %s: project %s: %s", name, project, exc.message)
            return None
    return previous


def resolve(
    channel: PypiChannel,
    store: Store,
    inventory: Mapping[str, InventoryEntry],
    published: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    config_dir: Path | None,
    cache_dir: Path | None,
    refresh: set[str],
    scope: set[str] | None,
    expected: Mapping[tuple[str, str], str] | None = None,
) -> Resolution:
    """What the channel should hold."""
    resolution = Resolution()
    for mirror in channel.mirrors:
        in_scope = scope is None or mirror.name in scope
        state = MirrorPages(
            mirror,
            SimpleIndexClient(mirror, config_dir, cache_dir),
            refreshed=in_scope and mirror.name in refresh,
            in_scope=in_scope,
        )
        resolution.mirrors[mirror.name] = state
        if not in_scope:
            continue
        for text in mirror.projects:
            requirement = Requirement(text)
            project = normalize(requirement.name)
            fetched = _page(state, store, project, expected)
            if fetched is None:
                state.pinned.add(project)
                if project not in state.failed:
                    _warn(
                        resolution,
                        f"mirror {mirror.name}: no page kept for {project} yet; its files stay "
                        "as published until the mirror runs",
                    )
                continue
            state.pages[project] = fetched
            for problem in fetched.page.problems:
                _warn(resolution, f"mirror {mirror.name}: {project}: {problem}")
            for verdict in select_files(requirement, fetched.page.files, levels(channel, mirror)):
                size = verdict.file.size
                if verdict.selected and size is not None and size > mirror.max_file_size:
                    verdict = Verdict(
                        verdict.file,
                        verdict.dist,
                        False,
                        f"claims {size} bytes, more than max_file_size ({mirror.max_file_size})",
                    )
                    _warn(
                        resolution,
                        f"mirror {mirror.name}: {project}: refusing {verdict.file.filename!r}: "
                        f"{verdict.reason}",
                    )
                resolution.verdicts.append((mirror.name, project, verdict))
                if verdict.selected:
                    wanted = WantedFile(
                        mirror.name, project, verdict.file, mirror.mode == "passive"
                    )
                    _add(channel, resolution, wanted)
    # Files mirrors placed before but do not want now: kept as published (their mirror
    # does not decide in this run), pruned, or just unpublished.
    mirrors = {m.name: m for m in channel.mirrors}
    for key, entry in sorted(inventory.items()):
        if key.endswith(METADATA_SUFFIX) or key in resolution.wanted or entry.source == "local":
            continue
        project, _, filename = key.partition("/")
        placed_by = resolution.mirrors.get(entry.source)
        keep = placed_by is not None and (not placed_by.in_scope or project in placed_by.pinned)
        if keep:
            if (project, filename) in published:
                resolution.kept[key] = published[(project, filename)]
                resolution.kept_sources[key] = entry.source
            continue
        configured = mirrors.get(entry.source)
        if configured is None or configured.prune:
            resolution.prune[key] = entry.source
    return resolution


def _add(channel: PypiChannel, resolution: Resolution, wanted: WantedFile) -> None:
    other = resolution.wanted.get(wanted.key)
    if other is None:
        resolution.wanted[wanted.key] = wanted
        return
    if other.file.sha256 == wanted.file.sha256:
        return  # the same file from two mirrors: one package
    message = (
        f"{wanted.key}: mirrors {other.mirror} and {wanted.mirror} offer different files "
        f"(sha256 {other.file.sha256[:12]}… and {wanted.file.sha256[:12]}…)"
    )
    if channel.on_conflict == "first":
        _warn(resolution, message + f"; keeping {other.mirror}'s (on_conflict: first)")
        return
    raise ReconcileError(
        f"channel {channel.name}: {message}",
        hint="remove the project from one mirror, or set on_conflict: first",
    )


def file_key(item: WantedFile) -> str:
    return f"{PACKAGES}/{item.project}/{item.file.filename}"


def file_size(store: Store, item: WantedFile) -> int | None:
    """The upstream's size, else (HTML pages give none) that of the verified file."""
    if item.file.size is not None:
        return item.file.size
    info = store.stat(file_key(item))
    return info.size if info is not None else None


def metadata_hash(store: Store, item: WantedFile) -> str | None:
    """The PEP 658 hash to publish: upstream's, else that of a file we extracted earlier."""
    if item.file.metadata_sha256:
        return item.file.metadata_sha256
    import hashlib

    try:
        data = store.read(file_key(item) + METADATA_SUFFIX)
    except ReconcileError:
        return None
    return hashlib.sha256(data).hexdigest() if data is not None else None


def published_file(store: Store, item: WantedFile) -> PublishedFile:
    return PublishedFile(
        project=item.project,
        filename=item.file.filename,
        sha256=item.file.sha256,
        size=file_size(store, item),
        requires_python=item.file.requires_python,
        yanked=item.file.yanked,
        metadata_sha256=metadata_hash(store, item),
        upload_time=item.file.upload_time,
    )
