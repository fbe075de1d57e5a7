"""Conda channels as the engine sees them: plan, execute, counts, explain.

A plan works out, per subdir, the records the channel should publish — local
packages read from the folder, and what each mirror selects from its upstream
metadata (fetched now if it refreshes, else the copy its last apply kept) — and
diffs them against the published ``repodata.json``. It lists the files active
mirrors must download (new ones, and ones that went missing: *restored*), the
files to delete once nothing names them, and the index files that change. It
writes nothing. Executing it downloads, publishes the index (files first, then
the index naming them), and keeps the upstream metadata the mirrors used; what
it unpublished (pruned packages, stale shards) is handed to the engine, which
deletes it after the grace period.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import rattler

from reconciler.conda.names import filename_name, is_valid_subdir, package_suffix
from reconciler.conda.shards import read_shard_index
from reconciler.config.models import AnyChannelModel, Channel
from reconciler.engine.diff import Absence, Desired, default_update_reason, diff_records
from reconciler.engine.downloads import DownloadJob, run_downloads
from reconciler.engine.kind import (
    ChannelWork,
    Explanation,
    MirrorOutcome,
    Outcome,
    PlanRequest,
    Unpublished,
)
from reconciler.engine.plan import Action, ChannelPlan, PlanWarning, Reason
from reconciler.engine.progress import Reporter
from reconciler.engine.state import InventoryEntry
from reconciler.errors import ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.indexer import ChannelIndexer, Computation, SubdirResult
from reconciler.kinds.conda.mirrors import MirrorResolution, Resolution, resolve_mirrors
from reconciler.kinds.conda.records import MirroredRecord
from reconciler.kinds.conda.upstream import Metadata, write_snapshot
from reconciler.store.base import Store

log = logging.getLogger(__name__)


def _listed(previous: Metadata, state: MirrorResolution, subdir: str, filename: str) -> bool:
    """Whether the upstream metadata a mirror's last apply used lists ``filename``."""
    current = state.metadata.get(subdir)
    if current is not None and current.sha256 == previous.sha256:
        # The same document as now: what was selected from it is listed in it.
        selection = state.selection
        if selection is not None and (subdir, filename) in selection.selected:
            return True
        return current.sparse.listed(filename)
    return previous.sparse.listed(filename)


def _records(repodata: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not repodata:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for section in ("packages", "packages.conda"):
        value = repodata.get(section)
        if isinstance(value, dict):
            found.update({k: v for k, v in value.items() if isinstance(v, dict)})
    return found


class Published:
    """The channel's published index, read lazily per subdir."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._patched: dict[str, dict[str, dict[str, Any]]] = {}
        self._unpatched: dict[str, dict[str, dict[str, Any]]] = {}

    def _load(self, key: str) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self.store.read(key) or b"null")
        except (ReconcileError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def records(self, subdir: str) -> dict[str, dict[str, Any]]:
        """What ``repodata.json`` publishes (patched)."""
        if subdir not in self._patched:
            self._patched[subdir] = _records(self._load(f"{subdir}/repodata.json"))
        return self._patched[subdir]

    def unpatched(self, subdir: str) -> dict[str, dict[str, Any]]:
        """The records before patches (``repodata_from_packages.json``, else ``repodata.json``)."""
        if subdir not in self._unpatched:
            data = self._load(f"{subdir}/repodata_from_packages.json")
            self._unpatched[subdir] = _records(data) if data else dict(self.records(subdir))
        return self._unpatched[subdir]


@dataclass
class CondaWork:
    plan: ChannelPlan
    channel: Channel
    store: Store
    indexer: ChannelIndexer
    computation: Computation
    resolution: Resolution
    mirrored: dict[str, dict[str, MirroredRecord]]
    published: Published
    downloads: list[DownloadJob] = field(default_factory=list)
    prune: dict[str, str] = field(default_factory=dict)  # key → mirror that placed it
    inventory: dict[str, InventoryEntry] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)  # re-uploads: other bytes, same name
    previous: Mapping[str, InventoryEntry] = field(default_factory=dict)  # as last saved

    def close(self) -> None:
        self.resolution.close()


def _key(subdir: str, filename: str) -> str:
    return f"{subdir}/{filename}"


def _split(key: str) -> tuple[str, str]:
    subdir, _, filename = key.partition("/")
    return subdir, filename


def _shard_digests(store: Store, subdir: str) -> set[str]:
    try:
        data = store.read(f"{subdir}/repodata_shards.msgpack.zst")
        if data is None:
            return set()
        return {str(d) for d in read_shard_index(data).get("shards", {}).values()}
    except (ReconcileError, ValueError, TypeError, KeyError, AttributeError):
        # Unreadable: as if it named every shard, so none is deleted on its word.
        return {
            info.name.removesuffix(".msgpack.zst") for info in store.list_files(f"{subdir}/shards")
        }


def _file_sha256(store: Store, key: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with store.open(key) as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    except (OSError, ReconcileError):
        return None
    return digest.hexdigest()


class CondaKind:
    name = "conda"

    # -- what is published -------------------------------------------------------------

    def published(self, channel: AnyChannelModel, store: Store) -> dict[str, str]:
        assert isinstance(channel, Channel)
        digests: dict[str, str] = {}
        subdirs = {*channel.served_subdirs, *(d for d in store.list_dirs() if is_valid_subdir(d))}
        for location in [".", *sorted(subdirs)]:
            entries = store.list_files("" if location == "." else location)
            if not entries and location != ".":
                digests[location] = "absent"
                continue
            h = hashlib.sha256()
            for info in entries:
                if info.name.startswith("."):
                    continue  # state, caches and temp files are not what clients see
                h.update(f"{info.name}\0{info.size}\0{info.tag}\n".encode())
            digests[location] = h.hexdigest()
        return digests

    def named(self, channel: AnyChannelModel, store: Store, keys: Collection[str]) -> set[str]:
        """Package files ``repodata.json`` lists, and shards the shard index names."""
        published = Published(store)
        shard_digests: dict[str, set[str]] = {}
        found = set()
        for key in keys:
            parts = key.split("/")
            if len(parts) == 2 and parts[1] in published.records(parts[0]):
                found.add(key)
            elif len(parts) == 3 and parts[1] == "shards":
                subdir = parts[0]
                if subdir not in shard_digests:
                    shard_digests[subdir] = _shard_digests(store, subdir)
                if parts[2].removesuffix(".msgpack.zst") in shard_digests[subdir]:
                    found.add(key)
        return found

    def counts(self, channel: AnyChannelModel, store: Store) -> dict[str, int | None]:
        assert isinstance(channel, Channel)
        published = Published(store)
        counts: dict[str, int | None] = {}
        for subdir in channel.served_subdirs:
            if store.stat(f"{subdir}/repodata.json") is None:
                counts[subdir] = None
            else:
                counts[subdir] = len(published.records(subdir))
        return counts

    # -- plan --------------------------------------------------------------------------

    def plan(self, request: PlanRequest) -> CondaWork:
        channel = request.channel
        assert isinstance(channel, Channel)
        store = request.store
        state = request.state.state
        lost = request.state.lost is not None
        inventory = state.files
        published = Published(store)
        modes = {m.name: m for m in channel.mirrors}
        warnings: list[PlanWarning] = []

        resolution = (
            resolve_mirrors(
                channel,
                request.position,
                store,
                config_dir=request.config_dir,
                cache_dir=request.cache_dir,
                refresh=request.refresh,
                scope=request.scope,
                expected=request.expected,
            )
            if channel.mirrors
            else Resolution()
        )
        try:
            return self._plan(
                request, channel, store, inventory, lost, published, modes, resolution, warnings
            )
        except BaseException:
            resolution.close()
            raise

    def _plan(
        self,
        request: PlanRequest,
        channel: Channel,
        store: Store,
        inventory: Mapping[str, InventoryEntry],
        lost: bool,
        published: Published,
        modes: Mapping[str, Any],
        resolution: Resolution,
        warnings: list[PlanWarning],
    ) -> CondaWork:
        selecting = {m.mirror.name for m in resolution.mirrors if m.selects}
        mirrored: dict[str, dict[str, MirroredRecord]] = {
            subdir: dict(records) for subdir, records in resolution.records.items()
        }
        pinned_local = request.scope is not None
        listed: dict[str, dict[str, Any]] = {}  # subdir → name → ObjectInfo

        def files(subdir: str) -> dict[str, Any]:
            if subdir not in listed:
                listed[subdir] = {info.name: info for info in store.list_files(subdir)}
            return listed[subdir]

        # Records of mirrors that do not select in this run (another mirror was named
        # with --mirror, or its upstream failed) stay exactly as published; with
        # --mirror, local packages too.
        for key, entry in sorted(inventory.items()):
            subdir, filename = _split(key)
            keep = entry.source in modes and entry.source not in selecting
            keep = keep or (pinned_local and entry.source == "local")
            if not keep:
                continue
            record = published.unpatched(subdir).get(filename)
            if record is not None and filename not in mirrored.get(subdir, {}):
                mirrored.setdefault(subdir, {})[filename] = MirroredRecord(record, entry.source)
        # Active mirrors: the file must be in place, with the record's bytes.
        downloads: list[DownloadJob] = []
        sizes: dict[str, int] = {}
        replaced: set[str] = set()
        for subdir, records in sorted(mirrored.items()):
            for filename, brought in sorted(records.items()):
                mirror = modes.get(brought.mirror)
                if mirror is None or mirror.mode != "active" or brought.mirror not in selecting:
                    continue
                key = _key(subdir, filename)
                info = files(subdir).get(filename)
                known = inventory.get(key)
                sha256, size = brought.record.get("sha256"), brought.record.get("size")
                trusted = known.sha256 if known is not None and known.source != "local" else None
                if trusted is None and info is not None and info.regular and info.size == size:
                    # Not known as the mirror's (a run killed before recording it, or a lost
                    # inventory): what we published for it, else its bytes, say what it is.
                    trusted = published.records(subdir).get(filename, {}).get("sha256")
                    if trusted != sha256:
                        trusted = _file_sha256(store, key)
                if (
                    info is not None
                    and trusted != sha256
                    and (known is None or known.source == "local")
                ):
                    # A file placed by hand under this name wins; the index reads it as local.
                    del records[filename]
                    message = (
                        f"{key}: a file placed by hand is published instead of mirror "
                        f"{brought.mirror}'s package of that name"
                    )
                    warnings.append(PlanWarning(key=message, message=message))
                    continue
                if info is not None and info.regular and info.size == size and trusted == sha256:
                    continue
                if info is not None and trusted is not None and trusted != sha256:
                    replaced.add(key)
                resolved = resolution.get(brought.mirror)
                assert resolved is not None
                job = DownloadJob(
                    key=key,
                    source=brought.mirror,
                    size=size if isinstance(size, int) else None,
                    fetch=resolved.upstream.fetcher(
                        subdir, filename, size if isinstance(size, int) else None, str(sha256)
                    ),
                )
                downloads.append(job)
                sizes[key] = size if isinstance(size, int) else 0

        # Files mirrors placed that are no longer wanted: never indexed as local packages;
        # deleted once the published index stopped naming them (with prune: true).
        prune: dict[str, str] = {}
        skip: dict[str, set[str]] = {}
        kept_files: dict[str, InventoryEntry] = {}
        for key, entry in sorted(inventory.items()):
            if entry.source == "local":
                continue
            subdir, filename = _split(key)
            if filename in mirrored.get(subdir, {}):
                continue
            skip.setdefault(subdir, set()).add(filename)
            placed_by = modes.get(entry.source)
            # Its mirror left the configuration, or prunes what it no longer wants.
            if placed_by is None or (entry.source in selecting and placed_by.prune):
                if filename in files(subdir):
                    prune[key] = entry.source
            else:
                kept_files[key] = entry
        # Files waiting for their grace period to end are the tool's, not local packages
        # (unless a mirror brings them back).
        pending = {p.key for p in request.state.state.pending_deletions}
        for key in pending:
            subdir, filename = _split(key)
            if package_suffix(filename) and filename not in mirrored.get(subdir, {}):
                skip.setdefault(subdir, set()).add(filename)
        if lost:
            self._claim_mirror_files(store, resolution, mirrored, files, skip, prune, modes)
        if pinned_local:
            for subdir in channel.served_subdirs:
                for name in files(subdir):
                    if package_suffix(name) and name not in mirrored.get(subdir, {}):
                        skip.setdefault(subdir, set()).add(name)

        indexer = ChannelIndexer(
            store,
            options=channel.index,
            patches=[Path(p) for p in channel.patches],
            subdirs=channel.served_subdirs,
            channel_name=channel.name,
            reporter=request.reporter,
            filters=FilterEngine(channel.filters, f"channels[{request.position}].filters"),
            mirrored=mirrored,
            upstream_removed=resolution.removed,
            skip=skip,
            stamp_ms=request.created_ms,
            force=lost,
            defer_deletions=True,
            pending=pending,
        )
        computation = indexer.compute()
        for result in computation.result.subdirs:
            for skipped in result.skipped:
                text = f"skipping {skipped.format()}"
                warnings.append(PlanWarning(key=text, message=text))

        actions: list[Action] = []
        new_inventory: dict[str, InventoryEntry] = dict(kept_files)
        for result in computation.result.subdirs:
            subdir = result.subdir
            if not result.recomputed:
                # Unchanged: only restores can be due. Its inventory stays, unless the
                # index moved on since the state was saved (a run that failed midway).
                fingerprint = computation.subdirs[subdir].fingerprint
                if request.state.state.fingerprints.get(subdir) == fingerprint:
                    for key, entry in inventory.items():
                        unchanged = key not in new_inventory and key not in prune
                        if key.startswith(f"{subdir}/") and unchanged:
                            new_inventory[key] = entry
                else:
                    new_inventory.update(
                        self._published_inventory(
                            subdir, published, mirrored.get(subdir, {}), modes
                        )
                    )
                for job in downloads:
                    if _split(job.key)[0] == subdir:
                        actions.append(self._restore(job))
                continue
            desired = self._desired(
                result, mirrored.get(subdir, {}), resolution, sizes, modes, published
            )
            actions.extend(
                diff_records(
                    subdir,
                    desired,
                    published.records(subdir),
                    lambda name, s=subdir, r=result: self._absence(  # type: ignore[misc]
                        s, name, r, inventory, resolution, prune, files(s), request.grace
                    ),
                    update_reason=lambda name, old, new, s=subdir, r=result: self._update_reason(  # type: ignore[misc]
                        s, name, old, new, r, published
                    ),
                )
            )
            new_inventory.update(self._inventory(subdir, desired, result, indexer, modes))
        record_actions = {a.location for a in actions}
        for result in computation.result.subdirs:
            if (result.written or result.deleted) and result.subdir not in record_actions:
                actions.append(self._reindex(result.subdir, result.written, result.deleted, store))
        top = computation.result
        if (top.written or top.deleted) and not actions:
            actions.append(self._reindex(None, top.written, top.deleted, store))

        warnings.extend(resolution.warnings)
        plan = ChannelPlan(
            name=channel.name,
            kind=self.name,
            path=str(channel.path),
            create=not store.exists(),
            published={},  # filled by the engine
            upstream=resolution.validators(),
            actions=actions,
            warnings=warnings,
            mirrors=[
                m.model_copy(update={"error": self._error(resolution.get(m.name))})
                for m in request.mirrors
            ],
        )
        return CondaWork(
            plan=plan,
            channel=channel,
            store=store,
            indexer=indexer,
            computation=computation,
            resolution=resolution,
            mirrored=mirrored,
            published=published,
            downloads=downloads,
            prune=prune,
            inventory=dict(sorted(new_inventory.items())),
            replaced=replaced,
            previous=inventory,
        )

    @staticmethod
    def _error(resolved: MirrorResolution | None) -> str | None:
        return resolved.error if resolved is not None else None

    @staticmethod
    def _restore(job: DownloadJob) -> Action:
        subdir, filename = _split(job.key)
        return Action(
            kind="restore",
            location=subdir,
            name=filename,
            source=job.source,
            reason=Reason.RESTORED,
            detail=f"the file is missing: fetched again from mirror {job.source}",
            download=job.size,
        )

    @staticmethod
    def _reindex(
        location: str | None, written: list[str], deleted: list[str], store: Store
    ) -> Action:
        files = sorted(n for n in written if not n.startswith("shards/"))
        files += [f"{n} (delete)" for n in sorted(deleted) if not n.startswith("shards/")]
        new_shards = sum(1 for n in written if n.startswith("shards/"))
        old_shards = sum(1 for n in deleted if n.startswith("shards/"))
        if new_shards:
            files.append(f"shards/ ({new_shards} new)")
        if old_shards:
            files.append(f"shards/ ({old_shards} to delete)")
        prefix = f"{location}/" if location else ""
        missing = any(
            store.stat(prefix + n) is None for n in written if not n.startswith("shards/")
        )
        return Action(
            kind="reindex",
            location=location,
            reason=Reason.INDEX_MISSING if missing else Reason.INDEX_OUTDATED,
            detail="index files missing"
            if missing
            else "index options, patches or filters changed",
            files=files,
        )

    @staticmethod
    def _claim_mirror_files(
        store: Store,
        resolution: Resolution,
        mirrored: Mapping[str, Mapping[str, MirroredRecord]],
        files: Any,
        skip: dict[str, set[str]],
        prune: dict[str, str],
        modes: Mapping[str, Any],
    ) -> None:
        """The inventory was lost: a package file that a mirror's upstream lists with its
        bytes is that mirror's, not a local package, even when no longer wanted."""
        for state in resolution.mirrors:
            if state.selection is None:
                continue
            for (subdir, filename), record in state.selection.records.items():
                if filename in mirrored.get(subdir, {}) or filename not in files(subdir):
                    continue
                info = files(subdir)[filename]
                if info.size != record.get("size"):
                    continue
                key = _key(subdir, filename)
                if _file_sha256(store, key) != record.get("sha256"):
                    continue
                skip.setdefault(subdir, set()).add(filename)
                if state.selects and modes[state.mirror.name].prune:
                    prune[key] = state.mirror.name

    def _desired(
        self,
        result: SubdirResult,
        mirrored: Mapping[str, MirroredRecord],
        resolution: Resolution,
        sizes: Mapping[str, int],
        modes: Mapping[str, Any],
        published: Published,
    ) -> dict[str, Desired]:
        subdir = result.subdir
        assert result.desired is not None
        desired: dict[str, Desired] = {}
        for filename, record in _records(result.desired).items():
            key = _key(subdir, filename)
            entry = mirrored.get(filename)
            download = sizes.get(key)
            if entry is None:
                desired[filename] = Desired(record, "local", Reason.LOCAL_ADDED, "")
                continue
            if entry.mirror == "local":  # pinned local record
                desired[filename] = Desired(record, "local", Reason.LOCAL_ADDED, "")
                continue
            reason, detail = self._why_selected(subdir, filename, entry.mirror, resolution)
            desired[filename] = Desired(record, entry.mirror, reason, detail, download)
        return desired

    @staticmethod
    def _why_selected(
        subdir: str, filename: str, mirror: str, resolution: Resolution
    ) -> tuple[Reason, str]:
        state = resolution.get(mirror)
        if state is None or state.selection is None:
            return Reason.SELECTED, f"kept from mirror {mirror}"
        decision = state.selection.decisions.get((subdir, filename))
        if decision is not None and decision.reason.startswith("dependency of"):
            return Reason.DEPENDENCY, f"mirror {mirror}: {decision.reason}"
        previous = state.previous.get(subdir)
        if previous is not None and not _listed(previous, state, subdir, filename):
            return Reason.NEW_UPSTREAM, f"new upstream in mirror {mirror}"
        if previous is None:
            return Reason.NEW_UPSTREAM, f"from mirror {mirror}"
        why = decision.reason if decision is not None else "selected"
        return Reason.SELECTED, f"mirror {mirror}: {why}"

    def _absence(
        self,
        subdir: str,
        filename: str,
        result: SubdirResult,
        inventory: Mapping[str, InventoryEntry],
        resolution: Resolution,
        prune: Mapping[str, str],
        present: Mapping[str, Any],
        grace: float,
    ) -> Absence:
        key = _key(subdir, filename)
        source = inventory[key].source if key in inventory else "local"
        deleted = ""
        if key in prune:
            deleted = f" (file deleted after {grace:g} s)" if grace else " (file deleted)"
        state = resolution.get(source)
        if source != "local" and state is None:
            return Absence(Reason.MIRROR_REMOVED, f"mirror {source} left the configuration", source)
        if state is not None and state.selection is not None:
            decision = state.selection.decisions.get((subdir, filename))
            if decision is None:
                return Absence(
                    Reason.REMOVED_UPSTREAM,
                    f"no longer upstream in mirror {source}{deleted}",
                    source,
                )
            return Absence(Reason.FILTERED, f"{decision.reason}{deleted}", source)
        if filename in result.excluded:
            return Absence(Reason.FILTERED, result.excluded[filename], "local")
        skipped = next((s for s in result.skipped if s.filename == filename), None)
        if skipped is not None:
            return Absence(Reason.UNREADABLE, skipped.reason, "local")
        if filename not in present:
            return Absence(Reason.LOCAL_REMOVED, "the package file was deleted", "local")
        removed = set((result.desired or {}).get("removed") or ())
        if filename in removed:
            return Absence(Reason.PATCH_REMOVED, "removed by a patch", source)
        return Absence(Reason.FILTERED, "no longer published", source)

    @staticmethod
    def _update_reason(
        subdir: str,
        filename: str,
        old: Mapping[str, Any],
        new: Desired,
        result: SubdirResult,
        published: Published,
    ) -> tuple[Reason, str]:
        reason, detail = default_update_reason(filename, old, new)
        if reason in (Reason.CHANGED_UPSTREAM, Reason.LOCAL_CHANGED):
            before = published.unpatched(subdir).get(filename)
            after = _records(result.from_packages).get(filename)
            if before is not None and before == after:
                return Reason.PATCHED, "record changed by a patch"
        return reason, detail

    @staticmethod
    def _published_inventory(
        subdir: str,
        published: Published,
        mirrored: Mapping[str, MirroredRecord],
        modes: Mapping[str, Any],
    ) -> dict[str, InventoryEntry]:
        """The inventory of a subdir whose published index is current, from that index."""
        entries = {}
        for filename, record in published.records(subdir).items():
            owner = mirrored.get(filename)
            source = owner.mirror if owner is not None else "local"
            mirror = modes.get(source)
            size = record.get("size")
            entries[_key(subdir, filename)] = InventoryEntry(
                source=source,
                sha256=str(record.get("sha256") or ""),
                size=size if type(size) is int else 0,
                passive=mirror is not None and mirror.mode == "passive",
            )
        return entries

    @staticmethod
    def _inventory(
        subdir: str,
        desired: Mapping[str, Desired],
        result: SubdirResult,
        indexer: ChannelIndexer,
        modes: Mapping[str, Any],
    ) -> dict[str, InventoryEntry]:
        entries: dict[str, InventoryEntry] = {}
        cache = indexer.caches.get(subdir)
        for filename, want in desired.items():
            sha256 = want.sha256 or ""
            size = want.record.get("size")
            mirror = modes.get(want.source)
            entries[_key(subdir, filename)] = InventoryEntry(
                source=want.source,
                sha256=sha256,
                size=size if type(size) is int else 0,
                passive=mirror is not None and mirror.mode == "passive",
            )
        # Local files a filter leaves out stay the user's (never deleted), and known.
        if cache is not None:
            for filename in result.excluded:
                entry = cache.entries.get(filename)
                if entry is not None:
                    entries[_key(subdir, filename)] = InventoryEntry(
                        source="local", sha256=entry.sha256, size=entry.stat.size
                    )
        return entries

    # -- execute -----------------------------------------------------------------------

    def execute(self, work: ChannelWork, store: Store, reporter: Reporter) -> Outcome:
        assert isinstance(work, CondaWork)
        outcome = Outcome()
        channel = work.channel
        # The metadata the mirrors selected from is kept first: a run killed after
        # this point re-selects from it and converges to the same index.
        for resolved in work.resolution.mirrors:
            if resolved.refreshed and resolved.error is None and resolved.selection is not None:
                for metadata in resolved.metadata.values():
                    write_snapshot(store, resolved.mirror.name, metadata)
        if work.replaced:
            # Re-uploaded files: unpublish their old records before their bytes change, so
            # no published index ever names bytes that are not there. Files still to be
            # downloaded are left out of that index too: they are not there yet.
            self._publish_without(work, {job.key for job in work.downloads}, work.replaced)
        parallel = max((m.parallel_downloads for m in channel.mirrors), default=4)
        downloaded = run_downloads(
            store, work.downloads, parallel=parallel, reporter=reporter, check_room=store.check_room
        )
        failed = downloaded.failed_keys
        outcome.failures.extend(reason for _, reason in downloaded.failed)
        computation = work.computation
        inventory = dict(work.inventory)
        if failed or work.replaced:
            computation = self._without_failed(work, failed, inventory)
        work.indexer.publish(computation)
        outcome.written = sorted(
            [f"{r.subdir}/{n}" for r in computation.result.subdirs for n in r.written]
            + computation.result.written
        )
        # Pruned files and stale shards: deleted by the engine after the grace period.
        for key, mirror in sorted(work.prune.items()):
            subdir, filename = _split(key)
            if filename in work.mirrored.get(subdir, {}):
                continue
            known = work.previous.get(key)
            sha256 = known.sha256 if known is not None and known.sha256 else None
            outcome.unpublished.append(Unpublished(key, mirror, sha256))
        outcome.unpublished += [Unpublished(k, tag=t) for k, t in work.indexer.unpublished]
        outcome.executed = [
            a
            for a in work.plan.actions
            if a.name is None or _key(a.location or "", a.name) not in failed
        ]
        outcome.failures.extend(f"skipped {s.format()}" for s in computation.result.skipped)
        outcome.inventory = inventory
        outcome.fingerprints = {subdir: w.fingerprint for subdir, w in computation.subdirs.items()}
        for resolved in work.resolution.mirrors:
            name = resolved.mirror.name
            outcome.mirrors[name] = MirrorOutcome(
                bytes=downloaded.bytes.get(name, 0),
                seconds=downloaded.seconds.get(name, 0.0),
                error=resolved.error
                or (
                    f"{sum(1 for j, _ in downloaded.failed if j.source == name)} download(s) failed"
                    if any(j.source == name for j, _ in downloaded.failed)
                    else None
                ),
            )
        return outcome

    def _publish_without(self, work: CondaWork, keys: set[str], replaced: set[str]) -> None:
        mirrored = {s: dict(r) for s, r in work.mirrored.items()}
        skip = {s: set(names) for s, names in work.indexer.skip.items()}
        for key in keys:
            subdir, filename = _split(key)
            mirrored.get(subdir, {}).pop(filename, None)
            if key in replaced:
                # Nor read as a local package meanwhile: its bytes are about to change.
                skip.setdefault(subdir, set()).add(filename)
        saved = work.indexer.skip
        work.indexer.mirrored, work.indexer.skip = mirrored, skip
        work.indexer.reset_digests()
        try:
            work.indexer.publish(work.indexer.compute())
        finally:
            work.indexer.skip = saved

    def _without_failed(
        self, work: CondaWork, failed: set[str], inventory: dict[str, InventoryEntry]
    ) -> Computation:
        """Recompute the index without files that failed to download (a failed re-upload
        keeps its old record: the old bytes are still there)."""
        mirrored = {s: dict(r) for s, r in work.mirrored.items()}
        for key in failed:
            subdir, filename = _split(key)
            entry = mirrored.get(subdir, {}).pop(filename, None)
            inventory.pop(key, None)
            if key in work.replaced and entry is not None:
                old = work.published.unpatched(subdir).get(filename)
                if old is not None and work.store.stat(key) is not None:
                    mirrored[subdir][filename] = MirroredRecord(old, entry.mirror)
        work.mirrored = mirrored
        work.indexer.mirrored = mirrored
        work.indexer.reset_digests()
        return work.indexer.compute()

    # -- explain -----------------------------------------------------------------------

    def explain(self, request: PlanRequest, query: str) -> Iterator[Explanation]:
        matcher = _Query(query)
        work = self.plan(request)
        channel = work.channel
        try:
            for resolved in work.resolution.mirrors:
                if resolved.selection is None:
                    continue
                for (subdir, filename), decision in sorted(resolved.selection.decisions.items()):
                    if not matcher.may_match(filename):
                        continue  # (a record left out is read again to be matched: not all)
                    record = resolved.selection.records.get((subdir, filename))
                    if record is None or not matcher.matches(filename, dict(record), subdir):
                        continue
                    selected, reason = decision.selected, decision.reason
                    owner = work.resolution.owner(subdir, filename)
                    if selected and owner not in (None, resolved.mirror.name):
                        selected, reason = False, f"the same filename comes from mirror {owner}"
                    yield Explanation(
                        channel.name, subdir, filename, resolved.mirror.name, selected, reason
                    )
            for result in work.computation.result.subdirs:
                names = set(result.local) | set(result.excluded)
                names |= {s.filename for s in result.skipped}
                for name in sorted(names):
                    if not matcher.matches(name, _filename_record(name), result.subdir):
                        continue
                    skipped = next((s for s in result.skipped if s.filename == name), None)
                    if skipped is not None:
                        reason, selected = f"unreadable: {skipped.reason}", False
                    elif name in result.excluded:
                        reason, selected = result.excluded[name], False
                    else:
                        reason, selected = "selected", True
                    yield Explanation(channel.name, result.subdir, name, "local", selected, reason)
        finally:
            work.close()


class _Query:
    """A filename, a name glob (``lib*``) or a conda MatchSpec."""

    def __init__(self, text: str) -> None:
        import fnmatch

        self._fnmatch = fnmatch.fnmatchcase
        self.filename = text if package_suffix(text) else None
        self.spec: rattler.MatchSpec | None = None
        self.name_glob: str | None = None
        first = text.split()[0] if text.split() else text
        if self.filename is None and any(c in first for c in "*?["):
            self.name_glob = first
        elif self.filename is None:
            try:
                self.spec = rattler.MatchSpec(text)
            except Exception as exc:
                raise ValueError(
                    f"{text!r} is neither a package filename nor a match spec ({exc})"
                ) from None

    def may_match(self, filename: str) -> bool:
        """False when no usable record listed as ``filename`` can match: a usable record
        has its filename's name (see ``select._problem``)."""
        if self.filename is not None:
            return filename == self.filename
        name = filename_name(filename)
        if self.name_glob is not None:
            return self._fnmatch(name, self.name_glob)
        assert self.spec is not None
        return name == (self.spec.name.normalized if self.spec.name else None)

    def matches(self, filename: str, record: dict[str, Any], subdir: str) -> bool:
        if self.filename is not None:
            return filename == self.filename
        if self.name_glob is not None:
            return self._fnmatch(str(record.get("name", "")), self.name_glob)
        assert self.spec is not None
        if record.get("name") != (self.spec.name.normalized if self.spec.name else None):
            return False
        try:
            package = rattler.PackageRecord(
                name=str(record["name"]),
                version=str(record.get("version", "0")),
                build=rattler.package.BuildString(str(record.get("build", ""))),
                build_number=int(record.get("build_number") or 0),
                subdir=str(record.get("subdir") or subdir),
            )
            return bool(self.spec.matches(package))
        except Exception:
            return False


def _filename_record(filename: str) -> dict[str, Any]:
    """name/version/build from a ``name-version-build`` filename, enough to match specs."""
    stem = filename[: -len(package_suffix(filename) or "")]
    name, _, rest = stem.rpartition("-")
    name, _, version = name.rpartition("-")
    return {"name": name, "version": version, "build": rest}
