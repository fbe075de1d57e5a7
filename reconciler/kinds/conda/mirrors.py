"""A channel's mirrors, resolved: the upstream records each one brings in.

Each mirror selects from its upstream's repodata: fetched now when it refreshes
(its schedule says so, or ``--run-now``), else the copy its last apply used,
kept with the channel — so a configuration change takes effect at the next
apply without the network, schedule or not. Unsafe records are refused, the
channel's and the mirror's filters applied, and mirrors merged (the same
filename and sha256 is one package; a different sha256 is a conflict). A mirror
whose upstream cannot be read fails alone: its packages stay as published.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.conda.sparse import EMPTY, SparseRepodata
from reconciler.config.models import Channel, Mirror
from reconciler.engine.plan import PlanWarning, UpstreamValidator
from reconciler.errors import ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda import selection_cache
from reconciler.kinds.conda.records import MirroredRecord
from reconciler.kinds.conda.select import (
    NameGate,
    Selection,
    UpstreamRecords,
    name_gate,
    select,
)
from reconciler.kinds.conda.selection_cache import selection_key
from reconciler.kinds.conda.upstream import CondaUpstream, Metadata, Parsed, read_snapshot
from reconciler.store.base import Store
from reconciler.transport import stopping
from reconciler.transport.http import NotFound

log = logging.getLogger(__name__)


class StaleUpstream(ReconcileError):
    """A saved plan's upstream metadata is not what the upstream serves now."""


@dataclass
class MirrorResolution:
    mirror: Mirror
    position: int
    upstream: CondaUpstream
    refreshed: bool  # its metadata was fetched in this run
    in_scope: bool  # its records may change in this run (--mirror names others)
    error: str | None = None  # its upstream could not be read: records stay as published
    metadata: dict[str, Metadata] = field(default_factory=dict)  # what it selected from
    previous: dict[str, Metadata] = field(default_factory=dict)  # what its last apply used
    selection: Selection | None = None

    @property
    def selects(self) -> bool:
        """Its selection decides its records in this run."""
        return self.in_scope and self.error is None and self.selection is not None


@dataclass
class Resolution:
    mirrors: list[MirrorResolution] = field(default_factory=list)
    records: dict[str, dict[str, MirroredRecord]] = field(default_factory=dict)  # subdir → fn
    removed: dict[str, set[str]] = field(default_factory=dict)  # upstream `removed`, carried
    warnings: list[PlanWarning] = field(default_factory=list)

    def owner(self, subdir: str, filename: str) -> str | None:
        entry = self.records.get(subdir, {}).get(filename)
        return entry.mirror if entry else None

    def get(self, name: str) -> MirrorResolution | None:
        return next((m for m in self.mirrors if m.mirror.name == name), None)

    def validators(self) -> list[UpstreamValidator]:
        return [
            UpstreamValidator(
                mirror=m.mirror.name,
                location=subdir,
                url=meta.validators.url,
                sha256=meta.sha256,
                etag=meta.validators.etag,
                last_modified=meta.validators.last_modified,
            )
            for m in self.mirrors
            for subdir, meta in sorted(m.metadata.items())
        ]

    def close(self) -> None:
        for state in self.mirrors:
            state.upstream.close()


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def unverifiable(record: Mapping[str, object], max_size: int) -> str | None:
    """Why a mirrored file could not be checked byte for byte (or is absurd), or None.

    A record without its size and sha256 would be downloaded unbounded and published
    unverified; one claiming more than ``max_size`` would block every download.
    """
    sha256, size = record.get("sha256"), record.get("size")
    if sha256 is None:
        return "no sha256 to verify the file against"
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        return f"its sha256 {sha256!r} is not a sha256 digest"
    if size is None:
        return "no size to bound the download by"
    if type(size) is not int or size < 0:
        return f"'size' is {type(size).__name__}, not an integer"
    if size > max_size:
        return f"it claims {size} bytes, more than the mirror's max_file_size ({max_size})"
    return None


def _warn(warnings: list[PlanWarning], message: str, key: str | None = None) -> None:
    warnings.append(PlanWarning(key=key or message, message=message))


def resolve_mirrors(
    channel: Channel,
    position: int,
    store: Store,
    *,
    config_dir: Path | None,
    cache_dir: Path | None,
    refresh: Iterable[str],
    scope: set[str] | None,
    expected: Mapping[tuple[str, str], str] | None = None,
) -> Resolution:
    """Resolve the channel's mirrors against their upstreams (or their kept metadata).

    ``refresh``: mirrors that fetch their upstream now. ``scope``: mirrors whose records
    may change (None: all). ``expected``: (mirror, subdir) → sha256 a saved plan selected
    from; that metadata is used (from the channel or the cache, else fetched and checked).
    """
    resolved = Resolution()
    refreshing = set(refresh)
    channel_filters = FilterEngine(channel.filters, f"channels[{position}].filters")
    served = set(channel.served_subdirs)
    conflicts: list[str] = []
    for j, mirror in enumerate(channel.mirrors):
        in_scope = scope is None or mirror.name in scope
        state = MirrorResolution(
            mirror,
            j,
            CondaUpstream(mirror, config_dir, cache_dir),
            refreshed=in_scope and mirror.name in refreshing,
            in_scope=in_scope,
        )
        resolved.mirrors.append(state)
        if not in_scope:
            continue
        mirror_filters = FilterEngine(mirror.filters, f"channels[{position}].mirrors[{j}].filters")
        # Without the closure, which may need any name, a subdir just read gives up what
        # the filters cannot select before the next one is read (memory, on a big upstream).
        wanted = None if mirror.filters.dependencies else name_gate(channel_filters, mirror_filters)
        try:
            upstream = _upstream_metadata(channel, state, store, served, resolved, expected, wanted)
        except ReconcileError as exc:
            state.error = exc.message
            log.error("channel %s, mirror %s: %s", channel.name, mirror.name, exc.message)
            continue
        if upstream is None:
            continue

        def fresh(
            upstream: dict[str, _Source] = upstream,
            mirror: Mirror = mirror,
            mirror_filters: FilterEngine = mirror_filters,
        ) -> selection_cache.Chosen:
            return _choose(upstream, channel_filters, mirror_filters, mirror)

        # Unchanged upstream metadata and configuration: the previous selection holds.
        key = selection_key(
            channel,
            mirror,
            {s: f"{m.sha256} {source}" if m else "absent" for s, (m, source) in upstream.items()},
        )
        try:
            chosen = selection_cache.load(cache_dir, key, fresh) or fresh()
        except ReconcileError as exc:  # this mirror fails; the others go on
            state.error = exc.message
            log.error("channel %s, mirror %s: %s", channel.name, mirror.name, exc.message)
            continue
        # Written on every plan, found or not: a run writes the same files whatever the
        # cache held (the crash harness counts every write).
        selection_cache.save(cache_dir, key, chosen)
        state.selection = chosen.selection
        for line in chosen.refusals:
            _warn(resolved.warnings, line)
        for subdir, removed in chosen.removed.items():
            resolved.removed.setdefault(subdir, set()).update(removed)
        for warning in state.selection.warnings:
            key = getattr(warning, "key", str(warning))
            _warn(
                resolved.warnings,
                f"mirror {mirror.name}: {warning}",
                f"mirror {mirror.name}: {key}",
            )
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
                    _warn(resolved.warnings, f"{message}; keeping {existing.mirror}'s")
                else:
                    conflicts.append(message)
                continue
            resolved.records[subdir][filename] = MirroredRecord(record, mirror.name)
    if conflicts:
        resolved.close()
        raise ReconcileError(
            f"channel {channel.name}: {len(conflicts)} conflict(s) between mirrors:\n  "
            + "\n  ".join(conflicts),
            hint="set on_conflict: first on the channel to keep the mirror listed first",
        )
    return resolved


# A subdir's metadata (None: the upstream has no such subdir) and where it is shown from.
_Source = tuple[Metadata | None, str]


def _records(subdir: str, sparse: SparseRepodata, source: str, mirror: Mirror) -> UpstreamRecords:
    # Records are checked as they are read (unsafe ones, then unverifiable ones are
    # refused): only those of names the filters can select, unless more are asked for.
    return UpstreamRecords(
        subdir,
        sparse,
        source,
        lambda record: unverifiable(record, mirror.max_file_size),
    )


def _choose(
    upstream: Mapping[str, _Source],
    channel_filters: FilterEngine,
    mirror_filters: FilterEngine,
    mirror: Mirror,
) -> selection_cache.Chosen:
    """Select from the upstream's metadata (subdir → metadata, source)."""
    records: dict[str, UpstreamRecords] = {}
    removed: dict[str, set[str]] = {}
    for subdir, (metadata, source) in upstream.items():
        if metadata is None:
            records[subdir] = UpstreamRecords(subdir, EMPTY, "")
            continue
        records[subdir] = _records(subdir, metadata.sparse, source, mirror)
        removed[subdir] = {r for r in metadata.sparse.removed if isinstance(r, str)}
    selection = select(
        records, channel_filters, mirror_filters, dependencies=mirror.filters.dependencies
    )
    refusals = [line for each in records.values() for line in each.warnings()]
    for each in records.values():
        # What was not read stays in the kept body: read again only if asked for.
        each.sparse.release()
    return selection_cache.Chosen(selection, refusals, removed)


# Subdirs fetched at once: their downloads overlap. When the name gate keeps few records of
# each, they are read at once too (one's decompression, which lets go of the GIL, runs
# beside another's scan); otherwise each document is read whole, so one at a time (memory).
SUBDIR_FETCHES = 4


@dataclass
class _Found:
    """One subdir's metadata as fetched or kept, before it is taken in subdir order."""

    previous: Metadata | None  # what the last apply used
    metadata: Metadata | None  # fetched, the cached copy a saved plan names, or None
    missing: NotFound | None = None  # the upstream has no such subdir


def _find_metadata(
    state: MirrorResolution,
    store: Store,
    subdir: str,
    want: str | None,
    wanted: NameGate | None,
    one_at_a_time: threading.Lock | None = None,
) -> _Found:
    """One subdir's metadata: touches nothing shared, so subdirs may be found at once.
    ``wanted``: the names the filters can select; read through it when it is selective.
    ``one_at_a_time``: held while a fetched document is read and, with a gate, until what
    the selection reads of it was read and the rest let go."""
    reading = wanted if wanted is not None and wanted.selective else None

    def prefetch(parsed: Parsed) -> None:
        if wanted is not None and parsed.ready:
            # Read now what the selection will read, and let the rest of the document go.
            source = state.upstream.shown(subdir, parsed.name).rpartition("/")[0]
            _records(subdir, parsed.get(), source, state.mirror).prefetch(wanted)

    def read_alone(read: Callable[[], Parsed]) -> Parsed:
        assert one_at_a_time is not None
        with one_at_a_time:
            stopping.check()  # (waiting its turn, another subdir may have failed)
            parsed = read()
            prefetch(parsed)
            return parsed

    previous = read_snapshot(store, state.mirror.name, subdir)
    metadata: Metadata | None = None
    if want is not None:
        # A saved plan: select from exactly what it selected from, without asking.
        if previous is not None and previous.sha256 == want:
            metadata = previous
        else:
            metadata = state.upstream.cached(subdir, want)
    if metadata is None and state.refreshed:
        try:
            metadata = state.upstream.fetch(
                subdir, previous, reading, read_alone if one_at_a_time is not None else None
            )
        except NotFound as exc:
            return _Found(previous, None, exc)
    used = metadata if metadata is not None else previous
    if used is not None:
        used.parsed.expect(reading)
        if one_at_a_time is None:  # (else a document read was prefetched as it was read)
            prefetch(used.parsed)
    return _Found(previous, metadata)


def _found_in_order(
    state: MirrorResolution,
    store: Store,
    subdirs: list[str],
    expected: Mapping[tuple[str, str], str] | None,
    wanted: NameGate | None,
) -> Generator[tuple[str, _Found], None, None]:
    """Each subdir's :class:`_Found`, in subdir order; an error is raised where that
    subdir comes, as if they had been found one after the other."""
    mirror = state.mirror
    # Fetched at once, a document read whole is read alone: one in memory at a time.
    selective = wanted is not None and wanted.selective
    one_at_a_time = threading.Lock() if len(subdirs) > 1 and not selective else None
    # Each subdir's is set once its result is no longer wanted: an earlier subdir failed
    # (its error is the one told), or the caller stopped. Its transfers then stop between
    # attempts and pieces of a body; the earlier subdirs go on, as their errors come first.
    unwanted = [threading.Event() for _ in subdirs]

    def find(index: int, subdir: str) -> _Found:
        want = expected.get((mirror.name, subdir)) if expected is not None else None
        with stopping.stop_on(unwanted[index]):
            return _find_metadata(state, store, subdir, want, wanted, one_at_a_time)

    def stop_after(index: int) -> Callable[[Future[_Found]], None]:
        def done(future: Future[_Found]) -> None:
            if not future.cancelled() and future.exception() is not None:
                for later in unwanted[index + 1 :]:
                    later.set()

        return done

    if len(subdirs) < 2:
        for index, subdir in enumerate(subdirs):
            yield subdir, find(index, subdir)
        return
    with ThreadPoolExecutor(
        min(SUBDIR_FETCHES, len(subdirs)), thread_name_prefix="reconcile-subdir"
    ) as pool:
        futures = [pool.submit(find, index, subdir) for index, subdir in enumerate(subdirs)]
        for index, future in enumerate(futures):
            future.add_done_callback(stop_after(index))
        try:
            for subdir, future in zip(subdirs, futures, strict=True):
                yield subdir, future.result()
        finally:
            for event in unwanted:
                event.set()
            for future in futures:
                future.cancel()  # those not started yet; the pool waits for the others


def _upstream_metadata(
    channel: Channel,
    state: MirrorResolution,
    store: Store,
    served: set[str],
    resolved: Resolution,
    expected: Mapping[tuple[str, str], str] | None,
    wanted: NameGate | None = None,
) -> dict[str, _Source] | None:
    """subdir → the metadata the mirror selects from (None: nothing to select from)."""
    mirror = state.mirror
    records: dict[str, _Source] = {}
    subdirs = [s for s in channel.mirror_subdirs(mirror) if s in served]
    with closing(_found_in_order(state, store, subdirs, expected, wanted)) as in_order:
        for subdir, found in in_order:
            if not _take(state, subdir, found, expected, resolved, records):
                return None
    return records


def _take(
    state: MirrorResolution,
    subdir: str,
    found: _Found,
    expected: Mapping[tuple[str, str], str] | None,
    resolved: Resolution,
    records: dict[str, _Source],
) -> bool:
    """Take one subdir's metadata into ``records`` (False: the mirror has nothing to
    select from yet)."""
    mirror = state.mirror
    previous = found.previous
    if previous is not None:
        state.previous[subdir] = previous
    if found.missing is not None:
        if subdir == "noarch":
            raise ReconcileError(
                f"{found.missing.message} (every conda channel has noarch/repodata.json; "
                "check the source)"
            )
        _warn(
            resolved.warnings,
            f"mirror {mirror.name}: upstream has no {subdir} ({found.missing.message}); "
            "mirroring it as empty",
        )
        records[subdir] = (None, "")
        return True
    metadata = found.metadata if found.metadata is not None else previous
    if metadata is None:
        if expected is not None and expected.get((mirror.name, subdir)) is not None:
            raise StaleUpstream(
                f"mirror {mirror.name}: the {subdir} metadata the plan used is gone"
            )
        if state.refreshed:
            raise AssertionError("a refreshed mirror always has metadata")
        _warn(
            resolved.warnings,
            f"mirror {mirror.name}: no upstream metadata kept for {subdir} yet; its "
            "packages stay as published until it runs (`reconcile apply --run-now`)",
        )
        state.selection = None
        return False
    state.metadata[subdir] = metadata
    source = state.upstream.shown(subdir, metadata.name).rpartition("/")[0]
    records[subdir] = (metadata, source)
    return True
