"""The desired content of a PyPI channel: every mirror's projects, filtered.

Due mirrors fetch their project pages (conditionally); mirrors that are not due
reuse the pages kept from their last run, without network. A project whose page
cannot be fetched keeps what was published for it, and the run is marked failed:
a partial sync never unpublishes anything.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from reconciler.config.models import PypiChannel, PypiMirror
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.client import SimpleIndexClient
from reconciler.kinds.pypi.names import METADATA_SUFFIX, normalize
from reconciler.kinds.pypi.pages import DistFile, ProjectPage
from reconciler.kinds.pypi.select import Level, Verdict, select_files
from reconciler.kinds.pypi.simple_index import PACKAGES, PublishedFile, published_entries

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
class Resolution:
    wanted: dict[str, WantedFile] = field(default_factory=dict)  # by "<project>/<filename>"
    kept: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # published, left as is
    verdicts: list[tuple[str, str, Verdict]] = field(default_factory=list)  # mirror, project
    prune: list[tuple[str, str]] = field(default_factory=list)  # (mirror, key)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    clients: dict[str, SimpleIndexClient] = field(default_factory=dict)

    def owner(self, key: str) -> str | None:
        item = self.wanted.get(key)
        return item.mirror if item else None

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def levels(channel: PypiChannel, mirror: PypiMirror) -> list[Level]:
    return [
        Level(mirror.filters, f"mirror {mirror.name}", mirror_level=True),
        Level(channel.filters, f"channel {channel.name}", mirror_level=False),
    ]


def metadata_hash(channel_dir: Path, item: WantedFile) -> str | None:
    """The PEP 658 hash to publish: upstream's, else that of a file we extracted earlier."""
    if item.file.metadata_sha256:
        return item.file.metadata_sha256
    path = channel_dir / PACKAGES / item.project / (item.file.filename + METADATA_SUFFIX)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def file_size(channel_dir: Path, item: WantedFile) -> int | None:
    """The upstream's size, else (HTML pages give none) that of the verified file on disk."""
    if item.file.size is not None:
        return item.file.size
    try:
        return (channel_dir / PACKAGES / item.project / item.file.filename).stat().st_size
    except OSError:
        return None


def published_file(channel_dir: Path, item: WantedFile) -> PublishedFile:
    return PublishedFile(
        project=item.project,
        filename=item.file.filename,
        sha256=item.file.sha256,
        size=file_size(channel_dir, item),
        requires_python=item.file.requires_python,
        yanked=item.file.yanked,
        metadata_sha256=metadata_hash(channel_dir, item),
        upload_time=item.file.upload_time,
    )


def _page(
    client: SimpleIndexClient, project: str, due: bool, resolution: Resolution, mirror: str
) -> ProjectPage | None:
    if not due:
        return client.cached_page(project)
    try:
        return client.project_page(project)[0]
    except ReconcileError as exc:
        resolution.failures.append(f"mirror {mirror}: project {project}: {exc.message}")
        log.error("mirror %s: project %s: %s", mirror, project, exc.message)
        return client.cached_page(project)


def resolve(
    channel: PypiChannel,
    inventory: Mapping[str, Any],
    config_dir: Path | None,
    *,
    only: set[str] | None = None,
    not_due: set[str] | None = None,
) -> Resolution:
    """What the channel should hold; ``inventory`` is the state's ``files``."""
    resolution = Resolution()
    channel_dir = Path(channel.path)
    published = published_entries(channel_dir)
    fetched_projects: dict[str, set[str]] = {}  # mirror -> projects whose page was read
    for mirror in channel.mirrors:
        selected = only is None or mirror.name in only
        due = selected and mirror.name not in (not_due or set())
        client = SimpleIndexClient(channel, mirror, config_dir)
        resolution.clients[mirror.name] = client
        fetched_projects[mirror.name] = set()
        for text in mirror.projects:
            requirement = Requirement(text)
            project = normalize(requirement.name)
            page = _page(client, project, due, resolution, mirror.name)
            if page is None:
                if due:
                    resolution.warnings.append(f"mirror {mirror.name}: no page for {project}")
                continue
            fetched_projects[mirror.name].add(project)
            for problem in page.problems:
                resolution.warnings.append(f"mirror {mirror.name}: {project}: {problem}")
            for verdict in select_files(requirement, page.files, levels(channel, mirror)):
                resolution.verdicts.append((mirror.name, project, verdict))
                if not verdict.selected:
                    continue
                wanted = WantedFile(mirror.name, project, verdict.file, mirror.mode == "passive")
                _add(channel, resolution, wanted)
    # Files a mirror placed before but does not want now: pruned, or kept as published.
    mirrors = {m.name: m for m in channel.mirrors}
    for key, entry in inventory.items():
        source = getattr(entry, "source", None)
        if key.endswith(METADATA_SUFFIX) or key in resolution.wanted or source not in mirrors:
            continue
        project, _, filename = key.partition("/")
        mirror = mirrors[str(source)]
        listed = {normalize(Requirement(text).name) for text in mirror.projects}
        # Pruned only on the word of a page read in this run, or when no longer listed.
        decided = project in fetched_projects.get(mirror.name, set()) or project not in listed
        if mirror.prune and decided:
            resolution.prune.append((str(source), key))
        elif (project, filename) in published:
            resolution.kept[key] = published[(project, filename)]
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
        resolution.warnings.append(message + f"; keeping {other.mirror}'s (on_conflict: first)")
        return
    raise ReconcileError(
        f"channel {channel.name}: {message}",
        hint="remove the project from one mirror, or set on_conflict: first",
    )
