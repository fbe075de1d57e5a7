"""PyPI channels as the engine sees them: plan, execute, counts, explain.

A plan works out the files each project should list (what mirrors select from
their pages, and files kept as published), diffs them against our own published
JSON pages, and lists the files active mirrors must download. Executing it puts
files (and their PEP 658 metadata) in place first, then writes project pages,
the root page last, each on the condition that it is still what the plan saw;
stale pages and pruned files are handed to the engine, which deletes them after
the grace period, so a client never sees a page naming a missing file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from reconciler.config.models import AnyChannelModel, PypiChannel
from reconciler.engine.diff import Absence, Desired, diff_records
from reconciler.engine.downloads import DownloadJob, run_downloads
from reconciler.engine.kind import (
    ChannelWork,
    Explanation,
    MirrorOutcome,
    Outcome,
    PlanRequest,
    Unpublished,
)
from reconciler.engine.plan import Action, ChannelPlan, Reason
from reconciler.engine.progress import Reporter
from reconciler.engine.state import InventoryEntry
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.client import write_page_snapshot
from reconciler.kinds.pypi.explain import PypiQuery
from reconciler.kinds.pypi.names import METADATA_SUFFIX
from reconciler.kinds.pypi.resolve import (
    Resolution,
    WantedFile,
    file_key,
    published_file,
    resolve,
)
from reconciler.kinds.pypi.simple_index import (
    PACKAGES,
    SIMPLE,
    PublishedFile,
    published_entries,
    published_pages,
    render_pages,
)
from reconciler.store.base import ObjectInfo, Store

log = logging.getLogger(__name__)

# A wheel's METADATA bigger than this is not extracted (real ones are a few kB).
MAX_METADATA_BYTES = 8 * 1024 * 1024
# A wheel bigger than this is not opened to extract its METADATA.
MAX_WHEEL_READ = 2 * 1024 * 1024 * 1024


def extract_wheel_metadata(data: io.BufferedIOBase | Any) -> bytes | None:
    """The ``*.dist-info/METADATA`` of a wheel, for PEP 658 (None if absent or odd)."""
    try:
        with zipfile.ZipFile(data) as archive:
            names = [
                n
                for n in archive.namelist()
                if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(names) != 1 or archive.getinfo(names[0]).file_size > MAX_METADATA_BYTES:
                return None
            return archive.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return None


@dataclass
class PypiWork:
    plan: ChannelPlan
    channel: PypiChannel
    store: Store
    resolution: Resolution
    files: dict[str, PublishedFile]  # what the pages list, by "<project>/<filename>"
    downloads: list[DownloadJob] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)
    seen: dict[str, str | None] = field(default_factory=dict)  # page → tag when planned
    pending: set[str] = field(default_factory=set)  # keys waiting for their deletion
    previous: Mapping[str, InventoryEntry] = field(default_factory=dict)
    written_tags: dict[str, str | None] = field(default_factory=dict)  # our own writes

    def close(self) -> None:
        self.resolution.close()


def _tree_digest(store: Store, top: str) -> str:
    h = hashlib.sha256()
    folders = [top]
    found = False
    while folders:
        folder = folders.pop()
        for info in store.list_files(folder):
            found = True
            if not info.name.startswith("."):
                h.update(f"{info.key}\0{info.size}\0{info.tag}\n".encode())
        folders.extend(
            f"{folder}/{name}" for name in store.list_dirs(folder) if not name.startswith(".")
        )
    return h.hexdigest() if found else "absent"


class PypiKind:
    name = "pypi"

    def published(self, channel: AnyChannelModel, store: Store) -> dict[str, str]:
        return {SIMPLE: _tree_digest(store, SIMPLE), PACKAGES: _tree_digest(store, PACKAGES)}

    def named(self, channel: AnyChannelModel, store: Store, keys: Collection[str]) -> set[str]:
        """Files a project page lists, and project pages the root page lists."""
        pages: dict[str, set[str] | None] = {}
        root: set[str] | None = None
        found = set()
        for key in keys:
            top, _, rest = key.partition("/")
            project, _, name = rest.partition("/")
            if top == PACKAGES and name:
                if project not in pages:
                    pages[project] = _page_files(store, project)
                listed = pages[project]
                if listed is None or name in listed:
                    found.add(key)
            elif top == SIMPLE and name:
                if root is None:
                    root = _root_projects(store)
                if project in root:
                    found.add(key)
        return found

    def counts(self, channel: AnyChannelModel, store: Store) -> dict[str, int | None]:
        if store.stat(f"{SIMPLE}/index.json") is None:
            return {SIMPLE: None}
        return {SIMPLE: len(published_entries(store))}

    # -- plan --------------------------------------------------------------------------

    def plan(self, request: PlanRequest) -> PypiWork:
        channel = request.channel
        assert isinstance(channel, PypiChannel)
        store = request.store
        inventory = request.state.state.files
        published = published_entries(store)
        resolution = resolve(
            channel,
            store,
            inventory,
            published,
            config_dir=request.config_dir,
            cache_dir=request.cache_dir,
            refresh=request.refresh,
            scope=request.scope,
            expected=request.expected,
        )
        try:
            return self._plan(request, channel, store, inventory, published, resolution)
        except BaseException:
            resolution.close()
            raise

    def _plan(
        self,
        request: PlanRequest,
        channel: PypiChannel,
        store: Store,
        inventory: Mapping[str, InventoryEntry],
        published: Mapping[tuple[str, str], Mapping[str, Any]],
        resolution: Resolution,
    ) -> PypiWork:
        lost = request.state.lost is not None
        files: dict[str, PublishedFile] = {
            key: published_file(store, item) for key, item in resolution.wanted.items()
        }
        for key, entry in resolution.kept.items():
            files[key] = PublishedFile.from_entry(key.split("/", 1)[0], entry)
        downloads: list[DownloadJob] = []
        sizes: dict[str, int] = {}
        replaced: set[str] = set()
        for key, item in sorted(resolution.wanted.items()):
            if item.passive:
                continue
            info = store.stat(file_key(item))
            known = inventory.get(key)
            trusted = known.sha256 if known is not None else None
            if lost and info is not None:
                listed = published.get((item.project, item.file.filename))
                hashes = listed.get("hashes") if listed else None
                trusted = hashes.get("sha256") if isinstance(hashes, dict) else None
            size_ok = info is not None and (item.file.size is None or info.size == item.file.size)
            if info is not None and info.regular and size_ok and trusted == item.file.sha256:
                continue
            if info is not None and trusted is not None and trusted != item.file.sha256:
                replaced.add(key)
            client = resolution.mirrors[item.mirror].client
            followers: tuple[tuple[str, Callable[[IO[bytes]], int]], ...] = ()
            if item.file.metadata_sha256:
                followers = (
                    (file_key(item) + METADATA_SUFFIX, client.metadata_fetcher(item.file)),
                )
            downloads.append(
                DownloadJob(
                    key=file_key(item),
                    source=item.mirror,
                    size=item.file.size,
                    fetch=client.fetcher(item.file),
                    followers=followers,
                )
            )
            sizes[key] = item.file.size or 0

        by_project_desired: dict[str, dict[str, Desired]] = {}
        for key, published_item in files.items():
            project, _, filename = key.partition("/")
            wanted = resolution.wanted.get(key)
            source = (
                wanted.mirror if wanted is not None else resolution.kept_sources.get(key, "local")
            )
            reason, detail = (
                self._why(resolution, wanted) if wanted is not None else (Reason.SELECTED, "kept")
            )
            by_project_desired.setdefault(project, {})[filename] = Desired(
                published_item.json_entry(),
                source,
                reason,
                detail,
                sizes.get(key),
            )
        by_project_published: dict[str, dict[str, Mapping[str, Any]]] = {}
        for (project, filename), entry in published.items():
            by_project_published.setdefault(project, {})[filename] = entry

        actions: list[Action] = []
        for project in sorted(by_project_desired.keys() | by_project_published.keys()):
            actions.extend(
                diff_records(
                    project,
                    by_project_desired.get(project, {}),
                    by_project_published.get(project, {}),
                    lambda name, p=project: self._absence(  # type: ignore[misc]
                        f"{p}/{name}", inventory, resolution
                    ),
                )
            )
        pages = render_pages(files.values())
        pending = {p.key for p in request.state.state.pending_deletions}
        stale = sorted(set(published_pages(store)) - pages.keys() - pending)
        seen: dict[str, str | None] = {}
        changed = []
        for name, body in pages.items():
            info = store.stat(name)
            seen[name] = info.tag if info is not None else None
            if info is None or not store.same_bytes(info, body):
                changed.append(name)
        changed.sort()
        if (changed or stale) and not actions:
            missing = any(store.stat(name) is None for name in changed)
            actions.append(
                Action(
                    kind="reindex",
                    location=SIMPLE,
                    reason=Reason.INDEX_MISSING if missing else Reason.INDEX_OUTDATED,
                    detail="index pages missing" if missing else "index pages out of date",
                    files=changed + [f"{name} (delete)" for name in stale],
                )
            )
        errors = {name: state.error for name, state in resolution.mirrors.items()}
        plan = ChannelPlan(
            name=channel.name,
            kind=self.name,
            path=str(channel.path),
            create=not store.exists(),
            upstream=resolution.validators(),
            actions=actions,
            warnings=list(resolution.warnings),
            mirrors=[m.model_copy(update={"error": errors.get(m.name)}) for m in request.mirrors],
        )
        return PypiWork(
            plan,
            channel,
            store,
            resolution,
            files,
            downloads,
            replaced,
            seen=seen,
            pending=pending,
            previous=inventory,
        )

    @staticmethod
    def _why(resolution: Resolution, item: WantedFile) -> tuple[Reason, str]:
        state = resolution.mirrors[item.mirror]
        previous = state.previous.get(item.project)
        if previous is None:
            return Reason.NEW_UPSTREAM, f"from mirror {item.mirror}"
        if not any(f.filename == item.file.filename for f in previous.page.files):
            return Reason.NEW_UPSTREAM, f"new upstream in mirror {item.mirror}"
        verdict = resolution.verdict(item.mirror, item.key)
        return Reason.SELECTED, f"mirror {item.mirror}: {verdict.reason if verdict else 'selected'}"

    @staticmethod
    def _absence(
        key: str, inventory: Mapping[str, InventoryEntry], resolution: Resolution
    ) -> Absence:
        entry = inventory.get(key)
        source = entry.source if entry is not None else "local"
        deleted = " (file deleted)" if key in resolution.prune else ""
        state = resolution.mirrors.get(source)
        if state is None:
            if source == "local":
                return Absence(Reason.FILTERED, "no longer wanted; unpublished", source)
            return Absence(Reason.MIRROR_REMOVED, f"mirror {source} left the configuration", source)
        project = key.partition("/")[0]
        if project not in state.pages:
            return Absence(
                Reason.FILTERED, f"project no longer mirrored by {source}{deleted}", source
            )
        verdict = resolution.verdict(source, key)
        if verdict is None:
            return Absence(
                Reason.REMOVED_UPSTREAM, f"no longer upstream in mirror {source}{deleted}", source
            )
        return Absence(Reason.FILTERED, f"{verdict.reason}{deleted}", source)

    # -- execute -----------------------------------------------------------------------

    def execute(self, work: ChannelWork, store: Store, reporter: Reporter) -> Outcome:
        assert isinstance(work, PypiWork)
        outcome = Outcome()
        resolution = work.resolution
        for name, state in resolution.mirrors.items():
            if state.refreshed:
                for fetched in state.pages.values():
                    write_page_snapshot(store, name, fetched)
        files = dict(work.files)
        if work.replaced:
            # Re-uploaded files: unpublish them before their bytes change (and list no file
            # still to be downloaded: it is not there yet).
            pending = {job.key.removeprefix(f"{PACKAGES}/") for job in work.downloads}
            self._write_pages(
                work, store, {k: v for k, v in files.items() if k not in pending}, outcome
            )
        parallel = max((m.parallel_downloads for m in work.channel.mirrors), default=4)
        downloaded = run_downloads(
            store, work.downloads, parallel=parallel, reporter=reporter, check_room=store.check_room
        )
        failed = {job.key.removeprefix(f"{PACKAGES}/") for job, _ in downloaded.failed}
        outcome.failures.extend(reason for _, reason in downloaded.failed)
        for key in failed:
            files.pop(key, None)
        for job in downloaded.done:
            key = job.key.removeprefix(f"{PACKAGES}/")
            item = resolution.wanted.get(key)
            if item is not None and not item.file.metadata_sha256:
                self._extract_metadata(store, job.key)
            if item is not None:
                files[key] = published_file(store, item)
        outcome.written = self._write_pages(work, store, files, outcome)
        # Pruned files: deleted by the engine after the grace period.
        for key, mirror in sorted(resolution.prune.items()):
            if key in files:
                continue
            known = work.previous.get(key)
            sha256 = known.sha256 if known is not None and known.sha256 else None
            for target in (f"{PACKAGES}/{key}", f"{PACKAGES}/{key}{METADATA_SUFFIX}"):
                if target not in work.pending:
                    digest = sha256 if target.endswith(key) else None
                    outcome.unpublished.append(Unpublished(target, mirror, digest))
        outcome.executed = [
            a for a in work.plan.actions if a.name is None or f"{a.location}/{a.name}" not in failed
        ]
        outcome.inventory = self._inventory(work, files, failed)
        for name, state in resolution.mirrors.items():
            failures = sum(1 for job, _ in downloaded.failed if job.source == name)
            outcome.mirrors[name] = MirrorOutcome(
                bytes=downloaded.bytes.get(name, 0),
                seconds=downloaded.seconds.get(name, 0.0),
                error=state.error or (f"{failures} download(s) failed" if failures else None),
            )
        return outcome

    @staticmethod
    def _extract_metadata(store: Store, key: str) -> None:
        path = store.local_path(key)
        try:
            if path is not None:
                with path.open("rb") as handle:
                    extracted = extract_wheel_metadata(handle)
            else:
                data = store.read(key, limit=MAX_WHEEL_READ)
                extracted = extract_wheel_metadata(io.BytesIO(data or b""))
        except (OSError, ReconcileError):
            extracted = None
        if extracted is not None:
            store.write_if_changed(key + METADATA_SUFFIX, extracted)

    @staticmethod
    def _write_pages(
        work: PypiWork, store: Store, files: Mapping[str, PublishedFile], outcome: Outcome
    ) -> list[str]:
        """Write the pages that change, each only if it is still what the plan saw (or
        what this run wrote since); stale pages are unpublished (deleted later)."""
        pages = render_pages(files.values())
        written = []
        # Project pages first, the root page (which makes a project visible) last.
        for name in sorted(pages, key=lambda n: (n.count("/") == 1, n)):
            body = pages[name]
            info = store.stat(name)
            if info is not None and store.same_bytes(info, body):
                work.written_tags[name] = info.tag
                continue
            expected = work.written_tags.get(name, work.seen.get(name))
            done: ObjectInfo = (
                store.write(name, body, if_absent=True)
                if expected is None
                else store.write(name, body, if_match=expected)
            )
            work.written_tags[name] = done.tag
            written.append(name)
        known = {u.key for u in outcome.unpublished}
        for name in published_pages(store):
            if name not in pages and name not in work.pending and name not in known:
                # A client may hold the root page that lists it: deleted after the grace.
                outcome.unpublished.append(Unpublished(name))
                written.append(f"{name} (unpublished)")
        return written

    @staticmethod
    def _inventory(
        work: PypiWork, files: Mapping[str, PublishedFile], failed: set[str]
    ) -> dict[str, InventoryEntry]:
        resolution = work.resolution
        inventory: dict[str, InventoryEntry] = {}
        for key, source in resolution.kept_sources.items():
            item = files.get(key)
            if item is not None:
                inventory[key] = InventoryEntry(
                    source=source, sha256=item.sha256, size=item.size or 0
                )
        for key, wanted in resolution.wanted.items():
            if key in failed:
                continue
            listed = files.get(key)
            inventory[key] = InventoryEntry(
                source=wanted.mirror,
                sha256=wanted.file.sha256,
                size=(listed.size if listed is not None else None) or 0,
                passive=wanted.passive,
                url=wanted.file.url if wanted.passive else None,
            )
            if wanted.passive and wanted.file.metadata_sha256:
                inventory[key + METADATA_SUFFIX] = InventoryEntry(
                    source=wanted.mirror,
                    sha256=wanted.file.metadata_sha256,
                    size=0,
                    passive=True,
                    url=wanted.file.url + METADATA_SUFFIX,
                )
        return dict(sorted(inventory.items()))

    # -- explain -----------------------------------------------------------------------

    def explain(self, request: PlanRequest, query: str) -> Iterator[Explanation]:
        try:
            matcher = PypiQuery(query)
        except ReconcileError as exc:
            raise ValueError(exc.message) from None
        work = self.plan(request)
        try:
            for mirror, project, verdict in work.resolution.verdicts:
                filename = verdict.file.filename
                if not matcher.matches(filename, verdict.dist, project):
                    continue
                selected, reason = verdict.selected, verdict.reason
                owner = work.resolution.owner(f"{project}/{filename}")
                if selected and owner not in (None, mirror):
                    selected, reason = False, f"the same filename comes from mirror {owner}"
                yield Explanation(work.channel.name, project, filename, mirror, selected, reason)
        finally:
            work.close()


def _page_files(store: Store, project: str) -> set[str] | None:
    """Files (and their metadata files) a project's JSON page lists; None: unreadable."""
    try:
        data = orjson.loads(store.read(f"{SIMPLE}/{project}/index.json") or b"{}")
    except (ReconcileError, orjson.JSONDecodeError):
        return None
    names: set[str] = set()
    for entry in data.get("files") or () if isinstance(data, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("filename"), str):
            names.add(entry["filename"])
            names.add(entry["filename"] + METADATA_SUFFIX)
    return names


def _root_projects(store: Store) -> set[str]:
    """Projects the root JSON page lists (every one when it is unreadable)."""
    try:
        data = orjson.loads(store.read(f"{SIMPLE}/index.json") or b"{}")
        return {str(p["name"]) for p in data.get("projects") or () if isinstance(p, dict)}
    except (ReconcileError, orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
        return set(store.list_dirs(SIMPLE))
