"""Incremental indexer of one conda channel, through its store.

Per subdir: list package files → read only new or changed ones (stat cache, in
parallel) → records, plus the records mirrors bring in → patched repodata and
the files derived from it. :meth:`ChannelIndexer.compute` works all of that out
without writing anything (that is what ``plan`` runs); :meth:`ChannelIndexer.publish`
writes the outputs atomically, in an order that keeps clients safe, and only
where their bytes change, and saves the caches. Each index file is replaced on
the condition that it still is what ``compute`` saw (``If-Match`` in a bucket):
when another writer changed it meanwhile, publishing stops with
:class:`~reconciler.store.base.PreconditionFailed` instead of overwriting it.
When nothing that feeds a subdir's outputs changed and the outputs are
untouched, the derived files are not even recomputed: that keeps a no-op plan of
a big channel fast.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from reconciler import __version__
from reconciler.collector import collector_paused
from reconciler.conda.channeldata import merge_summaries, summarize_subdir, update_channeldata
from reconciler.conda.current_repodata import build_current_repodata
from reconciler.conda.index_html import render_channel_html, render_subdir_html
from reconciler.conda.metadata import PackageMetadata
from reconciler.conda.names import PACKAGE_SUFFIXES, filename_problem, is_valid_subdir
from reconciler.conda.patches import PatchSource, apply_patch_sources, load_patch_source
from reconciler.conda.read_worker import ReadResult, read_in_workers, read_one
from reconciler.conda.records import make_record
from reconciler.conda.repodata import build_repodata, compress_bz2, compress_zst, serialize_json
from reconciler.conda.run_exports import build_run_exports
from reconciler.conda.shards import build_shards, read_shard_index
from reconciler.config.models import IndexOptions
from reconciler.engine import layout
from reconciler.engine.clock import now_ms
from reconciler.engine.progress import NullReporter, Reporter
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.filters import Candidate, FilterEngine
from reconciler.kinds.conda.records import MirroredRecord
from reconciler.kinds.conda.stat_cache import CacheEntry, FileStat, StatCache
from reconciler.store.base import ObjectInfo, Store
from reconciler.store.local import LocalStore, remove_dead_temporaries

log = logging.getLogger(__name__)

# Below this many files, a process pool costs more than it saves.
PARALLEL_THRESHOLD = 64
# Packages in a bucket are read from local copies, downloaded this many at a time in
# parallel, then removed.
DOWNLOAD_BATCH = 512
# The scan digest of a subdir with no package files.
_NO_PACKAGES = hashlib.sha256().hexdigest()
DOWNLOAD_THREADS = 16
# In the system's temporary folder, each name with its process's pid (a killed run's
# folders are removed by the next run): computed outputs waiting to be published, and
# package files of a bucket being read.
SPOOL_PREFIX = "reconcile-spool-"
READ_PREFIX = "reconcile-read-"
# Spools named before they carried a pid (no pid: gone once an hour old).
OLD_SPOOL_PREFIX = "reconcile-index-"

# The order a subdir's files are published in (the packages are in place already):
# shards first (so the shard index never names a missing shard), the twins and the
# page, then repodata.json, the shard index, then current_repodata and run_exports.
SUBDIR_OUTPUTS = (
    "repodata_from_packages.json",
    "repodata.json.zst",
    "repodata.json.bz2",
    "index.html",
    "repodata.json",
    "repodata_shards.msgpack.zst",
    "current_repodata.json",
    "run_exports.json",
)
CHANNEL_OUTPUTS = ("channeldata.json", "index.html")


class IndexError_(ReconcileError):
    """Indexing refused to go on (``--strict`` with a bad package, a bad folder)."""


@dataclass(frozen=True)
class SkippedPackage:
    subdir: str
    filename: str
    reason: str

    def format(self) -> str:
        return f"{self.subdir}/{self.filename}: {self.reason}"


@dataclass
class SubdirResult:
    subdir: str
    packages: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[SkippedPackage] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # written, or would be (compute only)
    deleted: list[str] = field(default_factory=list)
    # Filled when the outputs were recomputed:
    recomputed: bool = False
    desired: dict[str, Any] | None = None  # the patched repodata it publishes
    from_packages: dict[str, Any] | None = None  # ... before patches
    excluded: dict[str, str] = field(default_factory=dict)  # filename -> filter reason
    local: set[str] = field(default_factory=set)  # package files read from the folder
    # Digests of the folder as scanned: package files only, and every visible file.
    scan_digest: str = ""
    observed: str = ""
    has_shards: bool = False  # the subdir has a shards/ folder


@dataclass
class IndexResult:
    channel: Path | str
    subdirs: list[SubdirResult] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # channel-level files
    deleted: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changes_outputs(self) -> bool:
        """True when some published file was (or, in a dry run, would be) written or deleted."""
        return bool(
            self.written or self.deleted or any(r.written or r.deleted for r in self.subdirs)
        )

    @property
    def skipped(self) -> list[SkippedPackage]:
        return [s for result in self.subdirs for s in result.skipped]

    def subdir(self, name: str) -> SubdirResult | None:
        return next((r for r in self.subdirs if r.subdir == name), None)

    def summary(self) -> str:
        packages = sum(r.packages for r in self.subdirs)
        added = sum(len(r.added) for r in self.subdirs)
        updated = sum(len(r.updated) for r in self.subdirs)
        removed = sum(len(r.removed) for r in self.subdirs)
        return (
            f"indexed {packages} packages in {len(self.subdirs)} subdirs: "
            f"+{added} ~{updated} -{removed}, {len(self.skipped)} skipped"
        )


@dataclass(frozen=True)
class _Outputs:
    """What one subdir's derived files depend on, to skip recomputing them."""

    fingerprint: str
    files: dict[str, tuple[int, str]]  # name -> (size, tag) as last written
    # For skipping a subdir before its cache is even loaded: the package files'
    # scan digest and the options they were indexed with, and what that produced.
    scan: str = ""
    options: str = ""
    packages: int = 0
    excluded: dict[str, str] = field(default_factory=dict)
    skipped: int = 0  # bad packages are re-read (and reported) on every run


@dataclass
class _SubdirWork:
    """One subdir between compute and publish."""

    result: SubdirResult
    fingerprint: str
    options_digest: str
    outputs: Mapping[str, bytes | None] | None = None  # None: unchanged, nothing to write
    shards: dict[str, bytes] = field(default_factory=dict)
    cache: StatCache | None = None
    seen: dict[str, str | None] = field(default_factory=dict)  # name → tag when computed
    stale: list[ObjectInfo] = field(default_factory=list)  # shards no index names
    same: set[str] = field(default_factory=set)  # outputs published as computed already
    summary: dict[str, Any] | None = None  # its channeldata part, when recomputed


class _Parked(Mapping[str, bytes | None]):
    """A subdir's computed outputs parked in files outside the channel until they are
    published, so that a big channel's outputs are never all in memory at once."""

    def __init__(self, outputs: Mapping[str, bytes | None], folder: Path) -> None:
        self._paths: dict[str, Path | None] = {}
        for name, data in outputs.items():
            if data is None:
                self._paths[name] = None
                continue
            path = folder / f"{len(os.listdir(folder))}-{name}"
            with path.open("xb") as out:
                out.write(data)
            self._paths[name] = path

    def __getitem__(self, name: str) -> bytes | None:
        path = self._paths[name]
        return None if path is None else path.read_bytes()

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


@dataclass
class Computation:
    """Everything :meth:`ChannelIndexer.publish` writes, worked out by ``compute``."""

    result: IndexResult
    subdirs: dict[str, _SubdirWork]
    channel_outputs: dict[str, bytes | None] | None
    channel_fingerprint: str
    channel_summaries: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    channel_seen: dict[str, str | None] = field(default_factory=dict)
    channel_same: set[str] = field(default_factory=set)

    @property
    def needs_publish(self) -> bool:
        """False when publishing would write nothing at all (not even a cache)."""
        return (
            self.result.changes_outputs
            or self.channel_outputs is not None
            or bool(self.channel_summaries)
            or any(w.outputs is not None or w.cache is not None for w in self.subdirs.values())
            or any(w.stale for w in self.subdirs.values())
        )


def _read_many(paths: Sequence[str], workers: int | None, reporter: Reporter) -> list[ReadResult]:
    if not paths:
        return []
    reporter.start("reading packages", len(paths))
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < PARALLEL_THRESHOLD:
        results = []
        for path in paths:
            results.append(read_one(path))
            reporter.advance(1)
    else:
        results = read_in_workers(paths, workers, reporter.advance)
    reporter.finish()
    return results


def _options_key(
    options: IndexOptions, patch_digests: Sequence[str], filters: FilterEngine | None
) -> bytes:
    return orjson.dumps(
        {
            "version": __version__,
            "options": options.model_dump(),
            "patches": list(patch_digests),
            "filters": filters.digest_source() if filters else None,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ChannelIndexer:
    """Index one conda channel; see the module docstring and :func:`index_channel`."""

    def __init__(
        self,
        store: Store,
        *,
        options: IndexOptions | None = None,
        patches: Iterable[Path] = (),
        subdirs: Iterable[str] | None = None,
        channel_name: str | None = None,
        strict: bool = False,
        workers: int | None = None,
        reporter: Reporter | None = None,
        filters: FilterEngine | None = None,
        mirrored: Mapping[str, Mapping[str, MirroredRecord]] | None = None,
        upstream_removed: Mapping[str, set[str]] | None = None,
        skip: Mapping[str, set[str]] | None = None,
        stamp_ms: int | None = None,
        force: bool = False,
        defer_deletions: bool = False,
        pending: Iterable[str] = (),
        keep_records: bool = True,
    ) -> None:
        self.store = store
        # Keep each recomputed subdir's records on its result (``desired``,
        # ``from_packages``) for the plan; ``reconcile index`` needs only the files.
        self.keep_records = keep_records
        # Stale shards: deleted right after publishing (``reconcile index``), or left for
        # the caller to delete after a grace period (``unpublished``: key, tag).
        self.defer_deletions = defer_deletions
        self.pending = set(pending)  # keys already waiting for their deletion
        self.unpublished: list[tuple[str, str]] = []
        # key → tag after this indexer's own writes (None: deleted), so a second publish
        # in one run expects what the first one left.
        self._written: dict[str, str | None] = {}
        # What the scan of each subdir listed (name → size and tag): what compute judges
        # the published outputs by, without a request per file.
        self._listed: dict[str, dict[str, ObjectInfo]] = {}
        # Recompute every subdir even when its inputs look unchanged (a lost inventory
        # is rebuilt from what the records say).
        self.force = force
        self.options = options or IndexOptions()
        self.patch_paths = list(patches)
        self.requested_subdirs = list(subdirs) if subdirs is not None else None
        self.channel_name = channel_name or Path(store.location).name
        self.strict = strict
        self.workers = workers
        self.reporter = reporter or NullReporter()
        self.filters = filters if filters is not None and not filters.is_empty else None
        # Records mirrors bring in (subdir -> filename -> record): published as
        # upstream wrote them, never read from the files.
        self.mirrored = mirrored or {}
        self.upstream_removed = upstream_removed or {}
        # Package files that are not local packages (mirrors' files, files to prune).
        self.skip = skip or {}
        # CEP-47: when a package first indexed now is stamped (the plan's time).
        self.stamp_ms = stamp_ms if stamp_ms is not None else now_ms()
        self._mirrored_digests: dict[str, str] = {}
        self.caches: dict[str, StatCache] = {}
        self._spool_folder: tempfile.TemporaryDirectory[str] | None = None
        self._options_key = b""

    def _spool(self) -> Path:
        """A temporary folder for outputs waiting to be published; removed with the
        indexer (or at exit)."""
        if self._spool_folder is None:
            self._spool_folder = tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-")
        return Path(self._spool_folder.name)

    def _park(self, outputs: Mapping[str, bytes | None]) -> Mapping[str, bytes | None]:
        """``outputs`` parked in the spool folder, or kept in memory when that fails (a
        full disk, a file size limit, no usable temporary folder): parking only saves
        memory, it never stops a run."""
        try:
            return _Parked(outputs, self._spool())
        except OSError as exc:
            log.debug("keeping computed outputs in memory: %s", exc)
            return outputs

    def reset_digests(self) -> None:
        """Forget digests of the mirrored records (after ``mirrored`` changed)."""
        self._mirrored_digests.clear()

    # -- discovery -------------------------------------------------------------------

    def subdirs(self) -> list[str]:
        """Requested subdirs plus every valid subdir folder present, plus noarch."""
        found = {"noarch"}
        if self.requested_subdirs:
            bad = [s for s in self.requested_subdirs if not is_valid_subdir(s)]
            if bad:
                raise IndexError_(f"invalid subdir name(s): {', '.join(bad)}")
            found.update(self.requested_subdirs)
        found.update(d for d in self.store.list_dirs() if is_valid_subdir(d))
        return sorted(found)

    def _scan(self, subdir: str, result: SubdirResult) -> dict[str, FileStat]:
        """Package files of a subdir with their fingerprints.

        Also sets the scan digests on ``result``: one over the package files (to
        skip an unchanged subdir cheaply) and one over every visible file (what a
        plan saw, to refuse it later if the folder changed).
        """
        files: dict[str, FileStat] = {}
        entries, folders = self.store.listing(subdir)
        listed: dict[str, ObjectInfo] = {}
        self._listed[subdir] = listed
        result.has_shards = "shards" in folders
        if not entries and not folders:
            result.scan_digest = result.observed = "absent"
            return files
        # One digest update per subdir, not per file: the lines are joined first. This
        # loop runs for every file of every subdir on each re-index: kept lean.
        package_lines: list[str] = []
        visible_lines: list[str] = []
        for info in entries:
            name = info.key.rpartition("/")[2]
            listed[name] = info
            if name[:1] == ".":
                continue
            line = f"{name}\0{info.size}\0{info.tag}\n"
            visible_lines.append(line)
            if not name.endswith(PACKAGE_SUFFIXES):
                continue
            package_lines.append(line)
            if not info.regular:
                result.skipped.append(
                    SkippedPackage(subdir, name, "not a regular file (a symlink, FIFO or device)")
                )
                continue
            problem = filename_problem(name)
            if problem:
                result.skipped.append(SkippedPackage(subdir, name, problem))
                continue
            files[name] = FileStat(info.tag, info.size)
        result.scan_digest = hashlib.sha256("".join(package_lines).encode()).hexdigest()
        result.observed = hashlib.sha256("".join(visible_lines).encode()).hexdigest()
        return files

    # -- compute -----------------------------------------------------------------------

    def compute(self) -> Computation:
        """Everything the index would publish, without writing anything."""
        # What a killed run left in the temporary folder (a big channel's outputs).
        remove_dead_temporaries(SPOOL_PREFIX, READ_PREFIX, OLD_SPOOL_PREFIX)
        with collector_paused():
            return self._compute()

    def _compute(self) -> Computation:
        if self.store.exists() and not self.store.list_dirs() and self._root_is_file():
            raise IndexError_(f"{self.store.location} is not a folder")
        sources = [load_patch_source(path) for path in self.patch_paths]
        options_key = _options_key(self.options, [s.digest() for s in sources], self.filters)
        self._options_key = options_key
        options_digest = hashlib.sha256(options_key).hexdigest()

        subdirs = self.subdirs()
        works: dict[str, _SubdirWork] = {}
        stats: dict[str, dict[str, FileStat]] = {}
        baselines: dict[str, dict[str, tuple[str, int]]] = {}
        to_read: list[tuple[str, str]] = []  # (subdir, name) of packages to read
        for subdir in subdirs:
            result = SubdirResult(subdir)
            files = self._scan(subdir, result)
            skip = self.skip.get(subdir, set()) | set(self.mirrored.get(subdir, {}))
            files = {name: stat for name, stat in files.items() if name not in skip}
            result.local = set(files)
            subdir_options = self._subdir_options(subdir, options_digest)
            previous = _load_outputs(self.store, subdir)
            work = _SubdirWork(result, "", subdir_options)
            works[subdir] = work
            if (
                not self.force
                and previous is not None
                and previous.scan == result.scan_digest
                and previous.options == subdir_options
                and previous.skipped == 0
                and not result.skipped
                and self._untouched(subdir, previous)
            ):
                # Same package files, same options, outputs as published: nothing to
                # do, not even loading the cache.
                work.fingerprint = previous.fingerprint
                result.packages = previous.packages
                result.excluded = dict(previous.excluded)
                continue
            cache = self._cache(subdir)
            work.cache = cache
            baselines[subdir] = self._baseline(subdir, cache)
            stats[subdir] = files
            for name, stat in files.items():
                if cache.lookup(name, stat) is None:
                    to_read.append((subdir, name))

        read = self._read_packages(to_read)
        for subdir in stats:
            work = works[subdir]
            assert work.cache is not None
            self._update_cache(
                subdir, work.cache, stats[subdir], read, baselines[subdir], work.result
            )
        del read  # the cache holds what is needed of it

        if self.strict and any(w.result.skipped for w in works.values()):
            skipped = [s.format() for w in works.values() for s in w.result.skipped]
            raise IndexError_(
                f"{len(skipped)} package(s) could not be indexed:\n  " + "\n  ".join(skipped),
                hint="fix or remove them, or run without --strict to skip them",
            )

        last = max((s for s in subdirs if works[s].cache is not None), default=None)
        for subdir in subdirs:
            work = works[subdir]
            if work.cache is not None:
                self._compute_subdir(subdir, work, sources, options_key)
                if work.outputs is not None and subdir != last:
                    work.outputs = self._park(work.outputs)
            if work.result.has_shards:
                self._find_stale_shards(subdir, work)

        index_result = IndexResult(self.store.location, [works[s].result for s in subdirs])
        channel_key = hashlib.sha256(
            options_key + "".join(f"{s}={works[s].fingerprint};" for s in subdirs).encode()
        ).hexdigest()
        computation = Computation(index_result, works, None, channel_key)
        self._compute_channel_files(subdirs, computation)
        return computation

    def _root_is_file(self) -> bool:
        path = Path(self.store.location)
        return path.exists() and not path.is_dir()

    def _read_packages(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[bytes | None, str, str | None]]:
        """Read the packages ``wanted`` (subdir, name): from the disk where they are, else
        (a bucket) downloaded in parallel in batches to a temporary folder, read, and the
        copies removed batch by batch."""
        read: dict[tuple[str, str], tuple[bytes | None, str, str | None]] = {}
        local = [(s, n, self.store.local_path(f"{s}/{n}")) for s, n in wanted]
        if all(path is not None for _, _, path in local):
            results = _read_many([str(p) for _, _, p in local], self.workers, self.reporter)
            for (subdir, name, _), (_, blob, sha256, error) in zip(local, results, strict=True):
                read[(subdir, name)] = (blob, sha256, error)
            return read
        for start in range(0, len(wanted), DOWNLOAD_BATCH):
            batch = wanted[start : start + DOWNLOAD_BATCH]
            folder = Path(tempfile.mkdtemp(prefix=f"{READ_PREFIX}{os.getpid()}-"))
            try:
                with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
                    copies = list(pool.map(functools.partial(self._download, folder), batch))
                fetched = [(item, path) for item, (path, _) in zip(batch, copies, strict=True)]
                fetched = [(item, path) for item, path in fetched if path is not None]
                results = _read_many(
                    [str(path) for _, path in fetched], self.workers, self.reporter
                )
                for (item, _), (_, blob, sha256, error) in zip(fetched, results, strict=True):
                    read[item] = (blob, sha256, error)
                for item, (path, error) in zip(batch, copies, strict=True):
                    if path is None:
                        read[item] = (None, "", error)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return read

    def _download(self, folder: Path, item: tuple[str, str]) -> tuple[Path | None, str | None]:
        """A temporary local copy of a package in a bucket, or why there is none."""
        subdir, name = item
        target = folder / subdir / name  # the reader checks the name against the archive
        try:
            target.parent.mkdir(exist_ok=True)
            with self.store.open(f"{subdir}/{name}") as source, target.open("wb") as out:
                while chunk := source.read(1024 * 1024):
                    out.write(chunk)
        except (OSError, ReconcileError) as exc:
            reason = exc.message if isinstance(exc, ReconcileError) else str(exc)
            return None, f"cannot read it from the store: {reason}"
        return target, None

    def _mirrored_digest(self, subdir: str) -> str:
        if subdir not in self._mirrored_digests:
            records = {
                name: [entry.mirror, entry.record]
                for name, entry in self.mirrored.get(subdir, {}).items()
            }
            removed = sorted(self.upstream_removed.get(subdir, ()))
            skip = sorted(self.skip.get(subdir, ()))
            self._mirrored_digests[subdir] = hashlib.sha256(
                orjson.dumps([records, removed, skip], option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        return self._mirrored_digests[subdir]

    def _subdir_options(self, subdir: str, options_digest: str) -> str:
        """The options digest, plus what the mirrors bring into this subdir."""
        brought = (self.mirrored, self.upstream_removed, self.skip)
        if not any(part.get(subdir) for part in brought):
            return options_digest
        return _digest(options_digest, self._mirrored_digest(subdir))

    def _cache(self, subdir: str) -> StatCache:
        if subdir not in self.caches:
            self.caches[subdir] = StatCache.load(self.store, layout.cache_key(f"{subdir}.msgpack"))
        return self.caches[subdir]

    def _baseline(self, subdir: str, cache: StatCache) -> dict[str, tuple[str, int]]:
        """filename → (sha256, indexed_timestamp) as last indexed.

        From the stat cache, or, when the cache is gone, from the published
        ``repodata_from_packages.json`` (else ``repodata.json``) so timestamps and
        change counts survive.
        """
        if cache.entries:
            return {name: (e.sha256, e.indexed_timestamp) for name, e in cache.entries.items()}
        for name in ("repodata_from_packages.json", "repodata.json"):
            try:
                data = orjson.loads(self.store.read(f"{subdir}/{name}") or b"null")
                baseline = {}
                for key in ("packages", "packages.conda"):
                    for filename, record in (data.get(key) or {}).items():
                        stamp = record.get("indexed_timestamp")
                        baseline[filename] = (
                            str(record.get("sha256", "")),
                            stamp if type(stamp) is int else 0,
                        )
                return baseline
            except (ReconcileError, ValueError, AttributeError, TypeError):
                continue
        return {}

    def _update_cache(
        self,
        subdir: str,
        cache: StatCache,
        files: Mapping[str, FileStat],
        read: Mapping[tuple[str, str], tuple[bytes | None, str, str | None]],
        baseline: Mapping[str, tuple[str, int]],
        result: SubdirResult,
    ) -> None:
        """Bring the cache up to date with the files; counts go into ``result``."""
        good: set[str] = set()
        for name, stat in sorted(files.items()):
            entry = cache.lookup(name, stat)
            if entry is None:
                blob, sha256, error = read.get((subdir, name), (None, "", "not read"))
                if blob is None:
                    result.skipped.append(SkippedPackage(subdir, name, error or "unreadable"))
                    continue
                old_sha, old_stamp = baseline.get(name, ("", 0))
                stamp = old_stamp if old_sha == sha256 and old_stamp else self.stamp_ms
                entry = CacheEntry(stat, None, stamp, sha256=sha256, blob=blob)
                cache.put(name, entry)
            good.add(name)
            previous = baseline.get(name)
            if previous is None:
                result.added.append(name)
            elif previous[0] != entry.sha256:
                result.updated.append(name)
        result.removed = sorted(set(baseline) - good)
        cache.retain(good)
        result.packages = len(good)
        result.local = good
        for skipped in result.skipped:
            log.warning("skipping %s", skipped.format())

    def _compute_subdir(
        self,
        subdir: str,
        work: _SubdirWork,
        sources: Sequence[PatchSource],
        options_key: bytes,
    ) -> None:
        """Work out a subdir's index files, unless their inputs are as last published."""
        cache = work.cache
        assert cache is not None
        result = work.result
        # Same files (by digest and CEP-47 stamp), same options and patches: same
        # outputs. Cheap to compute, so a no-op never decodes the cached metadata.
        digest = hashlib.sha256(options_key + b"\0" + subdir.encode())
        for name, entry in sorted(cache.entries.items()):
            digest.update(f"\0{name}\0{entry.sha256}\0{entry.indexed_timestamp}".encode())
        digest.update(work.options_digest.encode())
        work.fingerprint = digest.hexdigest()
        previous = _load_outputs(self.store, subdir)
        if (
            not self.force
            and previous
            and previous.fingerprint == work.fingerprint
            and self._untouched(subdir, previous)
        ):
            result.packages = previous.packages
            result.excluded = dict(previous.excluded)
            return

        # Each package's metadata decoded once, for the records, run_exports and the
        # channeldata summary, and let go with this subdir.
        metas = {name: entry.decode() for name, entry in sorted(cache.entries.items())}
        records = {
            name: self._record(metas[name], entry.indexed_timestamp)
            for name, entry in sorted(cache.entries.items())
        }
        if self.filters is not None:
            decisions = self.filters.evaluate(
                Candidate(subdir, name, record) for name, record in records.items()
            )
            for (_, name), decision in decisions.items():
                if not decision.selected:
                    result.excluded[name] = decision.reason
                    del records[name]
        for name, mirrored in self.mirrored.get(subdir, {}).items():
            records[name] = mirrored.record
        result.packages = len(records)
        from_packages = build_repodata(subdir, records)
        from_packages["removed"] = sorted(self.upstream_removed.get(subdir, ()))
        from_packages_bytes = serialize_json(from_packages)

        opts = self.options
        patched = apply_patch_sources(from_packages, subdir, sources)
        repodata_bytes = serialize_json(patched)
        # zstd and bzip2 let go of the GIL: the twins compress on another core while the
        # other outputs are built here.
        with ThreadPoolExecutor(max_workers=2) as pool:
            zst = pool.submit(compress_zst, repodata_bytes) if opts.zst else None
            bz2 = pool.submit(compress_bz2, repodata_bytes) if opts.bz2 else None
            if opts.shards:
                sharded = build_shards(patched)
                work.shards = sharded.shards
            html = (
                render_subdir_html(self.channel_name, subdir, patched, None).encode()
                if opts.html
                else None
            )
            current = (
                serialize_json(build_current_repodata(subdir, patched, opts.current_index_versions))
                if opts.current_repodata
                else None
            )
            run_exports = (
                serialize_json(
                    build_run_exports(
                        subdir,
                        {n: metas[n].run_exports if n in metas else {} for n in records},
                    )
                )
                if opts.run_exports
                else None
            )
            if opts.channeldata or opts.html:
                work.summary = self._summarize(subdir, metas, result.excluded)
            del metas
            outputs: dict[str, bytes | None] = {  # None: the file must not exist
                "repodata_from_packages.json": (
                    from_packages_bytes if opts.repodata_from_packages else None
                ),
                "repodata.json.zst": zst.result() if zst is not None else None,
                "repodata.json.bz2": bz2.result() if bz2 is not None else None,
                "repodata_shards.msgpack.zst": sharded.index_bytes if opts.shards else None,
                "index.html": html,
                "repodata.json": repodata_bytes,
                "current_repodata.json": current,
                "run_exports.json": run_exports,
            }
        work.outputs = outputs
        result.recomputed = True
        if self.keep_records:
            result.desired = patched
            result.from_packages = from_packages
        self._compare_outputs(subdir, work)

    def _compare_outputs(self, subdir: str, work: _SubdirWork) -> None:
        """Note which files publishing would write or delete."""
        assert work.outputs is not None
        result = work.result
        present = {info.name for info in self.store.list_files(f"{subdir}/shards")}
        for shard_name in sorted(work.shards):
            if f"{shard_name}.msgpack.zst" not in present:
                result.written.append(f"shards/{shard_name}.msgpack.zst")
        for name, data in work.outputs.items():
            same, work.seen[name] = self._observe(subdir, name, data)
            if data is None:
                if work.seen[name] is not None:
                    result.deleted.append(name)
            elif not same:
                result.written.append(name)
            else:
                work.same.add(name)

    def _find_stale_shards(self, subdir: str, work: _SubdirWork) -> None:
        """Shards that the subdir's shard index (the new one, else the published one) does
        not name: found whether or not the subdir's outputs change, so shards a killed run
        unpublished without recording it are never left behind."""
        if work.outputs is not None:
            named = set(work.shards)
        else:
            try:
                data = self.store.read(f"{subdir}/repodata_shards.msgpack.zst")
                index = read_shard_index(data) if data is not None else {}
                named = {str(d) for d in index.get("shards", {}).values()}
            except (ReconcileError, ValueError, TypeError, KeyError, AttributeError):
                return  # unreadable: it is rewritten on the next publish, then judged
        for info in self.store.list_files(f"{subdir}/shards"):
            digest = info.name.removesuffix(".msgpack.zst")
            if info.name.endswith(".msgpack.zst") and digest not in named:
                work.stale.append(info)
                if info.key not in self.pending:
                    work.result.deleted.append(f"shards/{info.name}")

    @staticmethod
    def _record(meta: PackageMetadata, indexed_timestamp: int) -> dict[str, Any]:
        record = make_record(meta.index, meta.md5, meta.sha256, meta.size)
        record["indexed_timestamp"] = indexed_timestamp
        return record

    def _info(self, subdir: str, name: str) -> ObjectInfo | None:
        """A published file as the scan listed it (else as it is now)."""
        listed = self._listed.get(subdir)
        if listed is not None:
            return listed.get(name)
        return self.store.stat(f"{subdir}/{name}" if subdir else name)

    def _observe(self, subdir: str, name: str, data: bytes | None) -> tuple[bool, str | None]:
        """(whether the published ``name`` holds ``data``, its tag: None when absent)."""
        info = self._info(subdir, name)
        if info is None:
            return data is None, None
        if data is None:
            return False, info.tag
        return self.store.same_bytes(info, data), info.tag

    def _untouched(self, subdir: str, outputs: _Outputs) -> bool:
        """True when every output is still published exactly as last written."""
        for name, (size, tag) in outputs.files.items():
            info = self._info(subdir, name)
            if info is None or (info.size, info.tag) != (size, tag):
                return False
        return True

    # -- channel-wide files ------------------------------------------------------------

    def _saved_summary(self, subdir: str) -> tuple[str, dict[str, Any]] | None:
        """The subdir's part of channeldata as last saved: (its fingerprint, summary)."""
        try:
            saved = orjson.loads(
                self.store.read(layout.cache_key(f"{subdir}.channeldata.json")) or b"null"
            )
            return str(saved["fingerprint"]), dict(saved["summary"])
        except (ReconcileError, ValueError, AttributeError, KeyError, TypeError):
            return None

    def _channeldata_summary(
        self, subdir: str, work: _SubdirWork, saved: tuple[str, dict[str, Any]] | None
    ) -> tuple[dict[str, Any], bool]:
        """The subdir's part of channeldata (and whether it was computed afresh)."""
        if saved is not None and saved[0] == work.fingerprint:
            return saved[1], False
        if work.summary is not None:
            return work.summary, True
        cache = work.cache or self._cache(subdir)
        metas = {name: entry.decode() for name, entry in sorted(cache.entries.items())}
        return self._summarize(subdir, metas, work.result.excluded), True

    def _published_channeldata(
        self,
        subdirs: Sequence[str],
        previous: _Outputs | None,
        saved: Mapping[str, tuple[str, dict[str, Any]] | None],
    ) -> dict[str, Any] | None:
        """The published channeldata.json, when it is known to be exactly what the saved
        summaries merge to (so that it can be updated from their changes alone)."""
        if previous is None or "channeldata.json" not in previous.files:
            return None
        fingerprints = []
        for subdir in subdirs:
            summary = saved[subdir]
            if summary is None:
                return None
            fingerprints.append(summary[0])
        key = hashlib.sha256(
            self._options_key
            + "".join(f"{s}={f};" for s, f in zip(subdirs, fingerprints, strict=True)).encode()
        ).hexdigest()
        if key != previous.fingerprint or not self._untouched("", previous):
            return None
        try:
            data = orjson.loads(self.store.read("channeldata.json") or b"null")
        except (ReconcileError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("packages"), dict) else None

    def _summarize(
        self, subdir: str, metas: Mapping[str, PackageMetadata], excluded: Mapping[str, str]
    ) -> dict[str, Any]:
        """The subdir's part of channeldata: its packages the filters keep, and the
        mirrored ones. In filename order, so that ties between builds resolve the same way
        whichever run cached them."""
        packages = {name: meta for name, meta in metas.items() if name not in excluded}
        for name, entry in self.mirrored.get(subdir, {}).items():
            packages[name] = metadata_from_record(name, entry.record)
        return summarize_subdir(packages)

    def _compute_channel_files(self, subdirs: list[str], computation: Computation) -> None:
        previous = _load_outputs(self.store, "channel")
        result = computation.result
        if (
            previous
            and previous.fingerprint == computation.channel_fingerprint
            and self._untouched("", previous)
        ):
            return
        channeldata: dict[str, Any] | None = None
        if self.options.channeldata or self.options.html:
            summaries = {}
            saved = {subdir: self._saved_summary(subdir) for subdir in subdirs}
            changed: set[str] = set()  # names whose part of some subdir changed
            for subdir in subdirs:
                work = computation.subdirs[subdir]
                summary, fresh = self._channeldata_summary(subdir, work, saved[subdir])
                summaries[subdir] = summary
                if fresh:
                    computation.channel_summaries[subdir] = (work.fingerprint, summary)
                    before = saved[subdir]
                    old = before[1] if before is not None else {}
                    changed.update(
                        n for n in old.keys() | summary.keys() if old.get(n) != summary.get(n)
                    )
            published = self._published_channeldata(subdirs, previous, saved)
            if published is not None:
                # Only the names some subdir's change touched are merged again.
                channeldata = update_channeldata(published, summaries, changed)
            else:
                channeldata = merge_summaries(summaries)
        targets: dict[str, bytes | None] = {
            "channeldata.json": serialize_json(channeldata)
            if self.options.channeldata and channeldata is not None
            else None,
            "index.html": render_channel_html(self.channel_name, channeldata, subdirs).encode()
            if self.options.html
            else None,
        }
        computation.channel_outputs = targets
        for name, data in targets.items():
            same, computation.channel_seen[name] = self._observe("", name, data)
            if data is None:
                if computation.channel_seen[name] is not None:
                    result.deleted.append(name)
            elif not same:
                result.written.append(name)
            else:
                computation.channel_same.add(name)

    # -- publish -----------------------------------------------------------------------

    def publish(self, computation: Computation) -> IndexResult:
        """Write what ``compute`` worked out, in the order that keeps clients safe."""
        with collector_paused():
            return self._publish(computation)

    def _publish(self, computation: Computation) -> IndexResult:
        result = computation.result
        for subdir in sorted(computation.subdirs):
            work = computation.subdirs[subdir]
            work.result.written.clear()
            work.result.deleted.clear()
            if work.outputs is not None:
                self._publish_subdir(subdir, work)
            elif work.cache is not None:
                work.cache.save()
                self._refresh_outputs(subdir, work)
            self._unpublish_shards(subdir, work)
        result.written.clear()
        result.deleted.clear()
        for subdir, (key, summary) in computation.channel_summaries.items():
            self.store.write_if_changed(
                layout.cache_key(f"{subdir}.channeldata.json"),
                orjson.dumps({"fingerprint": key, "summary": summary}),
            )
        if computation.channel_outputs is not None:
            files = {}
            for name in CHANNEL_OUTPUTS:
                data = computation.channel_outputs.get(name)
                seen = computation.channel_seen.get(name)
                if data is None:
                    if self._unpublish_index(name, seen):
                        result.deleted.append(name)
                    continue
                changed, tag = self._publish_index(
                    name, data, seen, name in computation.channel_same
                )
                if changed:
                    result.written.append(name)
                files[name] = (len(data), tag)
            _save_outputs(self.store, "channel", _Outputs(computation.channel_fingerprint, files))
        return result

    def _refresh_outputs(self, subdir: str, work: _SubdirWork) -> None:
        """The outputs did not change but the files did (a package that could not be read
        was removed, say): record the new scan, so that the next run skips the subdir."""
        previous = _load_outputs(self.store, subdir)
        result = work.result
        if previous is None or previous.fingerprint != work.fingerprint:
            return
        scan = result.scan_digest if result.scan_digest != "absent" else _NO_PACKAGES
        _save_outputs(
            self.store,
            subdir,
            _Outputs(
                previous.fingerprint,
                previous.files,
                scan,
                work.options_digest,
                result.packages,
                dict(result.excluded),
                len(result.skipped),
            ),
        )

    def _unpublish_shards(self, subdir: str, work: _SubdirWork) -> None:
        """Shards the index no longer names: deleted now (``reconcile index``), or handed
        over for deletion after the grace period (a client may hold the old shard index)."""
        for info in work.stale:
            if self.defer_deletions:
                if info.key not in self.pending:
                    self.unpublished.append((info.key, info.tag))
            elif self.store.delete(info.key, if_match=info.tag):
                work.result.deleted.append(f"shards/{info.name}")
        if work.stale and not self.defer_deletions:
            self.store.remove_empty_folder(f"{subdir}/shards")

    def _expected(self, key: str, seen: str | None) -> str | None:
        """The tag ``key`` should have now: what compute saw, or what we wrote since."""
        return self._written.get(key, seen)

    def _publish_index(
        self, key: str, data: bytes, seen: str | None, same: bool = False
    ) -> tuple[bool, str]:
        """Write an index file unless it holds ``data``, on the condition that it is still
        what compute saw; (written, its tag). ``same``: compute found it holding ``data``
        (under the lock, unchanged since unless this indexer wrote it)."""
        if same and seen is not None and key not in self._written:
            self._written[key] = seen
            return False, seen
        info = self.store.stat(key)
        if info is not None and self.store.same_bytes(info, data):
            self._written[key] = info.tag
            return False, info.tag
        expected = self._expected(key, seen)
        if expected is None:
            written = self.store.write(key, data, if_absent=True)
        else:
            written = self.store.write(key, data, if_match=expected)
        self._written[key] = written.tag
        return True, written.tag

    def _unpublish_index(self, key: str, seen: str | None) -> bool:
        """Delete an index file that must not exist, if it is still what compute saw."""
        expected = self._expected(key, seen)
        if expected is None:
            return False
        deleted = self.store.delete(key, if_match=expected)
        self._written[key] = None
        return deleted

    def _publish_subdir(self, subdir: str, work: _SubdirWork) -> None:
        assert work.outputs is not None
        result = work.result
        for shard_name, shard in sorted(work.shards.items()):
            # Named by their digest: any writer writes the same bytes under a name.
            if self.store.write_if_changed(f"{subdir}/shards/{shard_name}.msgpack.zst", shard):
                result.written.append(f"shards/{shard_name}.msgpack.zst")
        files = {}
        for name in SUBDIR_OUTPUTS:
            data = work.outputs[name]
            key = f"{subdir}/{name}"
            if name == "repodata.json":  # the twins, shards and pages are in place
                checkpoint("index.before_repodata")
            if data is None:
                if self._unpublish_index(key, work.seen.get(name)):
                    result.deleted.append(name)
                continue
            changed, tag = self._publish_index(key, data, work.seen.get(name), name in work.same)
            if changed:
                result.written.append(name)
            files[name] = (len(data), tag)

        # The facts about the files before the record that the outputs are current: a run
        # that fails in between recomputes the outputs from the files, never from a stale
        # cache.
        if work.cache is not None:
            work.cache.save()
        _save_outputs(
            self.store,
            subdir,
            _Outputs(
                work.fingerprint,
                files,
                # A subdir created by this publish holds no package files: what its next
                # scan finds, so that the next run skips it.
                result.scan_digest if result.scan_digest != "absent" else _NO_PACKAGES,
                work.options_digest,
                result.packages,
                dict(result.excluded),
                len(result.skipped),
            ),
        )

    def run(self) -> IndexResult:
        """Compute and publish (``reconcile index``)."""
        return self.publish(self.compute())


def metadata_from_record(filename: str, record: Mapping[str, Any]) -> PackageMetadata:
    """What channeldata can know of a mirrored package: its repodata record."""
    about = {k: record[k] for k in ("license", "summary", "home") if record.get(k)}
    size = record.get("size")
    return PackageMetadata(
        filename=filename,
        index=dict(record),
        about=about,
        md5=str(record.get("md5", "")),
        sha256=str(record.get("sha256", "")),
        size=size if type(size) is int else 0,
    )


def _outputs_key(subdir: str) -> str:
    return layout.cache_key(f"{subdir}.outputs.json")


def _load_outputs(store: Store, subdir: str) -> _Outputs | None:
    try:
        data = orjson.loads(store.read(_outputs_key(subdir)) or b"null")
        return _Outputs(
            str(data["fingerprint"]),
            {str(k): (int(v[0]), str(v[1])) for k, v in data["files"].items()},
            str(data.get("scan", "")),
            str(data.get("options", "")),
            int(data.get("packages", 0)),
            {str(k): str(v) for k, v in (data.get("excluded") or {}).items()},
            int(data.get("skipped", 0)),
        )
    except (ReconcileError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _save_outputs(store: Store, subdir: str, outputs: _Outputs) -> None:
    data = {
        "fingerprint": outputs.fingerprint,
        "files": outputs.files,
        "scan": outputs.scan,
        "options": outputs.options,
        "packages": outputs.packages,
        "excluded": outputs.excluded,
        "skipped": outputs.skipped,
    }
    store.write_if_changed(_outputs_key(subdir), orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def index_channel(
    channel_dir: Path | None,
    *,
    options: IndexOptions | None = None,
    patches: Iterable[Path] = (),
    subdirs: Iterable[str] | None = None,
    channel_name: str | None = None,
    strict: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
    filters: FilterEngine | None = None,
    dry_run: bool = False,
    mirrored: Mapping[str, Mapping[str, MirroredRecord]] | None = None,
    upstream_removed: Mapping[str, set[str]] | None = None,
    store: Store | None = None,
    lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> IndexResult:
    """Index ``channel_dir`` (or ``store``: a bucket) incrementally and return what changed
    (or would, in a dry run).

    A dry run writes nothing at all, not even caches. ``lock``: the channel's lock, taken
    to publish (the outputs are worked out before, and written on the condition that
    they did not change meanwhile); not taken when there is nothing to write.
    """
    if channel_dir is not None:
        if channel_dir.exists() and not channel_dir.is_dir():
            raise IndexError_(f"{channel_dir} is not a folder")
        store = store or LocalStore(channel_dir)
        channel_name = channel_name or channel_dir.resolve().name
    if store is None:
        raise ValueError("index_channel needs a folder or a store")
    indexer = ChannelIndexer(
        store,
        keep_records=False,
        options=options,
        patches=patches,
        subdirs=subdirs,
        channel_name=channel_name,
        strict=strict,
        workers=workers,
        reporter=reporter,
        filters=filters,
        mirrored=mirrored,
        upstream_removed=upstream_removed,
    )
    computation = indexer.compute()
    if dry_run:
        computation.result.dry_run = True
        return computation.result
    if lock is not None and not computation.needs_publish:
        return computation.result
    with lock() if lock is not None else contextlib.nullcontext():
        indexer.store.clean_temporaries()  # leftovers of a crashed run
        return indexer.publish(computation)
