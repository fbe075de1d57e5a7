"""Incremental indexer of one channel folder.

Per subdir: scan package files → read only new or changed ones (stat cache,
in parallel) → records → patched repodata and the files derived from it.
Outputs are written atomically and only when their bytes change; when nothing
that feeds a subdir's outputs changed and the outputs are untouched on disk,
the derived files are not even recomputed (that keeps a no-op re-index fast).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from reconciler import __version__
from reconciler.conda.archive import read_package
from reconciler.conda.channeldata import merge_summaries, summarize_subdir
from reconciler.conda.current_repodata import build_current_repodata
from reconciler.conda.index_html import render_channel_html, render_subdir_html
from reconciler.conda.metadata import PackageMetadata
from reconciler.conda.names import filename_problem, is_valid_subdir, package_suffix, strip_suffix
from reconciler.conda.patches import PatchSource, apply_patch_sources, load_patch_source
from reconciler.conda.records import make_record
from reconciler.conda.repodata import (
    build_repodata,
    compress_bz2,
    compress_zst,
    serialize_json,
)
from reconciler.conda.run_exports import build_run_exports
from reconciler.conda.shards import build_shards
from reconciler.config.models import IndexOptions
from reconciler.engine.progress import NullReporter, Reporter
from reconciler.engine.schedule import now
from reconciler.errors import PackageError, ReconcileError
from reconciler.faults import checkpoint
from reconciler.filters import Candidate, FilterEngine
from reconciler.kinds.conda.records import MirroredRecord
from reconciler.kinds.conda.stat_cache import CacheEntry, FileStat, StatCache
from reconciler.store.local import (
    TEMP_PREFIX,
    remove_if_exists,
    temp_writer_alive,
    write_if_changed,
)

log = logging.getLogger(__name__)

STATE_DIR = ".reconciler"
CACHE_DIR = f"{STATE_DIR}/cache"

# Below this many files, a process pool costs more than it saves.
PARALLEL_THRESHOLD = 64


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
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Filled when the outputs were recomputed (always in a dry run that found changes):
    recomputed: bool = False
    desired: dict[str, Any] | None = None  # the patched repodata it publishes
    excluded: dict[str, str] = field(default_factory=dict)  # filename -> filter reason
    # Digests of the folder as scanned: package files only, and every visible file.
    scan_digest: str = ""
    observed: str = ""


@dataclass
class IndexResult:
    channel: Path
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
    files: dict[str, tuple[int, int]]  # name -> (size, mtime_ns) as last written
    # For skipping a subdir before its cache is even loaded: the package files'
    # scan digest and the options they were indexed with, and what that produced.
    scan: str = ""
    options: str = ""
    packages: int = 0
    excluded: dict[str, str] = field(default_factory=dict)
    skipped: int = 0  # bad packages are re-read (and reported) on every run


def _read_one(path: str) -> tuple[str, dict[str, Any] | None, str | None]:
    """Worker: read one package; returns (path, metadata dict, error reason)."""
    try:
        return path, read_package(Path(path)).to_dict(), None
    except PackageError as exc:
        return path, None, exc.reason
    except Exception as exc:  # never let one file kill the pool
        return path, None, f"unreadable package ({type(exc).__name__}: {exc})"


def _read_many(
    paths: Sequence[str], workers: int | None, reporter: Reporter
) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    if not paths:
        return []
    reporter.start("reading packages", len(paths))
    results: list[tuple[str, dict[str, Any] | None, str | None]] = []
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < PARALLEL_THRESHOLD:
        for path in paths:
            results.append(_read_one(path))
            reporter.advance(1)
    else:
        chunk = max(8, min(256, len(paths) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for item in pool.map(_read_one, paths, chunksize=chunk):
                results.append(item)
                reporter.advance(1)
    reporter.finish()
    return results


def _identity_problem(meta: PackageMetadata, subdir: str) -> str | None:
    """Why the package's metadata disagrees with its filename or folder."""
    index = meta.index
    stem = strip_suffix(meta.filename)
    expected = f"{index.get('name')}-{index.get('version')}-{index.get('build')}"
    if stem != expected:
        return f"index.json says {expected}, but the filename says {stem}"
    declared = index.get("subdir")
    if declared is None:
        # Old packages lack `subdir`; noarch ones say so with `noarch`.
        declared = "noarch" if index.get("noarch") or index.get("arch") is None else None
    if declared is not None and declared != subdir:
        return f"index.json subdir is {declared!r} but the file is in {subdir}/"
    return None


def _now_ms() -> int:
    # The tool's clock (RECONCILE_NOW in rehearsals and tests), like history's.
    return int(now().timestamp() * 1000)


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


class ChannelIndexer:
    """Index one channel folder; see :func:`index_channel`."""

    def __init__(
        self,
        channel_dir: Path,
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
        pruned: Mapping[str, set[str]] | None = None,
    ) -> None:
        self.root = channel_dir
        self.options = options or IndexOptions()
        self.patch_paths = list(patches)
        self.requested_subdirs = list(subdirs) if subdirs is not None else None
        self.channel_name = channel_name or channel_dir.resolve().name
        self.strict = strict
        self.workers = workers
        self.reporter = reporter or NullReporter()
        self.filters = filters if filters is not None and not filters.is_empty else None
        # Records mirrors bring in (subdir -> filename -> record): published as
        # upstream wrote them, never read from the files.
        self.mirrored = mirrored or {}
        self.upstream_removed = upstream_removed or {}
        # Files a mirror placed and now prunes: gone from the index before they go from disk.
        self.pruned = pruned or {}
        self._mirrored_digests: dict[str, str] = {}
        # A dry run computes everything and publishes nothing. It still keeps the
        # indexer's own cache (facts about files, under .reconciler/) when the
        # channel exists, so the apply that follows reads nothing twice and assigns
        # the same indexed_timestamp the plan showed.
        self.dry_run = dry_run

    @property
    def _may_cache(self) -> bool:
        return not self.dry_run or self.root.is_dir()

    # -- discovery -------------------------------------------------------------------

    def subdirs(self) -> list[str]:
        """Requested subdirs plus every valid subdir folder present, plus noarch."""
        found = {"noarch"}
        if self.requested_subdirs:
            bad = [s for s in self.requested_subdirs if not is_valid_subdir(s)]
            if bad:
                raise IndexError_(f"invalid subdir name(s): {', '.join(bad)}")
            found.update(self.requested_subdirs)
        try:
            for entry in os.scandir(self.root):
                if entry.is_dir() and is_valid_subdir(entry.name):
                    found.add(entry.name)
        except FileNotFoundError:
            pass
        return sorted(found)

    def _scan(self, subdir: str, result: SubdirResult) -> dict[str, FileStat]:
        """Package files of a subdir with their stat; leftovers of a crashed run go.

        Also sets the scan digests on ``result``: one over the package files (to
        skip an unchanged subdir cheaply) and one over every visible file (what a
        plan saw, to refuse it later if the folder changed).
        """
        folder = self.root / subdir
        files: dict[str, FileStat] = {}
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            result.scan_digest = result.observed = "absent"
            return files
        packages = hashlib.sha256()
        visible = hashlib.sha256()
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                if (
                    entry.is_file(follow_symlinks=False)
                    and not self.dry_run
                    and not temp_writer_alive(entry.name)  # not a server's download
                ):
                    remove_if_exists(Path(entry.path))
                continue
            if entry.name.startswith(".") or not entry.is_file():
                continue
            st = entry.stat()
            line = f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            visible.update(line)
            if package_suffix(entry.name) is None:
                continue
            packages.update(line)
            problem = filename_problem(entry.name)
            if problem:
                result.skipped.append(SkippedPackage(subdir, entry.name, problem))
                continue
            files[entry.name] = FileStat(st.st_mtime_ns, st.st_size)
        result.scan_digest = packages.hexdigest()
        result.observed = visible.hexdigest()
        return files

    # -- main ------------------------------------------------------------------------

    def run(self) -> IndexResult:
        if self.root.exists() and not self.root.is_dir():
            raise IndexError_(f"{self.root} is not a folder")
        if not self.dry_run:
            self.root.mkdir(parents=True, exist_ok=True)
        sources = [load_patch_source(path) for path in self.patch_paths]
        options_key = _options_key(self.options, [s.digest() for s in sources], self.filters)

        subdirs = self.subdirs()
        results = {s: SubdirResult(s) for s in subdirs}
        caches: dict[str, StatCache] = {}
        stats: dict[str, dict[str, FileStat]] = {}
        baselines: dict[str, dict[str, tuple[str, int]]] = {}
        unchanged: dict[str, str] = {}  # subdir -> fingerprint, for subdirs skipped outright
        options_digest = hashlib.sha256(options_key).hexdigest()
        to_read: list[str] = []
        for subdir in subdirs:
            if not self.dry_run:
                (self.root / subdir).mkdir(exist_ok=True)
            result = results[subdir]
            files = self._scan(subdir, result)
            owned = self.mirrored.get(subdir, {})
            pruned = self.pruned.get(subdir, set())
            files = {
                name: stat
                for name, stat in files.items()
                if name not in owned and name not in pruned
            }
            previous = _load_outputs(self.root / CACHE_DIR / f"{subdir}.outputs.json")
            if (
                previous is not None
                and previous.scan == result.scan_digest
                and previous.options == self._subdir_options(subdir, options_digest)
                and previous.skipped == 0
                and not result.skipped
                and _untouched(self.root / subdir, previous)
            ):
                # Same package files, same options, outputs as written: nothing to do,
                # not even loading the cache.
                unchanged[subdir] = previous.fingerprint
                result.packages = previous.packages
                result.excluded = dict(previous.excluded)
                continue
            cache = self._cache(subdir, caches)
            baselines[subdir] = self._baseline(subdir, cache)
            stats[subdir] = files
            for name, stat in files.items():
                if cache.lookup(name, stat) is None:
                    to_read.append(str(self.root / subdir / name))

        read = {p: (meta, err) for p, meta, err in _read_many(to_read, self.workers, self.reporter)}

        for subdir in stats:
            self._update_cache(
                subdir, caches[subdir], stats[subdir], read, baselines[subdir], results[subdir]
            )

        if self.strict and any(r.skipped for r in results.values()):
            skipped = [s.format() for r in results.values() for s in r.skipped]
            raise IndexError_(
                f"{len(skipped)} package(s) could not be indexed:\n  " + "\n  ".join(skipped),
                hint="fix or remove them, or run without --strict to skip them",
            )

        fingerprints = []
        for subdir in subdirs:
            if subdir in unchanged:
                fingerprints.append(unchanged[subdir])
                continue
            fingerprints.append(
                self._write_subdir(subdir, caches[subdir], sources, options_key, results[subdir])
            )
            if self._may_cache:
                caches[subdir].save()

        index_result = IndexResult(self.root, [results[s] for s in subdirs], dry_run=self.dry_run)
        channel_key = hashlib.sha256(
            options_key
            + "".join(f"{s}={f};" for s, f in zip(subdirs, fingerprints, strict=True)).encode()
        ).hexdigest()
        excluded = {r.subdir: r.excluded for r in index_result.subdirs}
        self._write_channel_files(
            subdirs, caches, fingerprints, excluded, channel_key, index_result
        )
        return index_result

    def _mirrored_digest(self, subdir: str) -> str:
        if subdir not in self._mirrored_digests:
            records = {
                name: [entry.mirror, entry.record]
                for name, entry in self.mirrored.get(subdir, {}).items()
            }
            removed = sorted(self.upstream_removed.get(subdir, ()))
            pruned = sorted(self.pruned.get(subdir, ()))
            self._mirrored_digests[subdir] = hashlib.sha256(
                orjson.dumps([records, removed, pruned], option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        return self._mirrored_digests[subdir]

    def _subdir_options(self, subdir: str, options_digest: str) -> str:
        """The options digest, plus what the mirrors bring into this subdir."""
        brought = (self.mirrored, self.upstream_removed, self.pruned)
        if not any(part.get(subdir) for part in brought):
            return options_digest
        return hashlib.sha256(
            f"{options_digest}\0{self._mirrored_digest(subdir)}".encode()
        ).hexdigest()

    def _cache(self, subdir: str, caches: dict[str, StatCache]) -> StatCache:
        if subdir not in caches:
            caches[subdir] = StatCache.load(self.root / CACHE_DIR / f"{subdir}.msgpack")
        return caches[subdir]

    def _baseline(self, subdir: str, cache: StatCache) -> dict[str, tuple[str, int]]:
        """filename → (sha256, indexed_timestamp) as last indexed.

        From the stat cache, or, when the cache is gone, from the published
        ``repodata_from_packages.json`` so timestamps and change counts survive.
        """
        if cache.entries:
            return {name: (e.sha256, e.indexed_timestamp) for name, e in cache.entries.items()}
        path = self.root / subdir / "repodata_from_packages.json"
        try:
            data = orjson.loads(path.read_bytes())
            baseline = {}
            for key in ("packages", "packages.conda"):
                for name, record in (data.get(key) or {}).items():
                    baseline[name] = (
                        str(record.get("sha256", "")),
                        int(record.get("indexed_timestamp") or 0),
                    )
            return baseline
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _update_cache(
        self,
        subdir: str,
        cache: StatCache,
        files: Mapping[str, FileStat],
        read: Mapping[str, tuple[dict[str, Any] | None, str | None]],
        baseline: Mapping[str, tuple[str, int]],
        result: SubdirResult,
    ) -> None:
        """Bring the cache up to date with the files on disk; counts go into ``result``."""
        now = _now_ms()
        good: set[str] = set()
        for name, stat in sorted(files.items()):
            entry = cache.lookup(name, stat)
            if entry is None:
                meta_dict, error = read.get(str(self.root / subdir / name), (None, "not read"))
                if meta_dict is None:
                    result.skipped.append(SkippedPackage(subdir, name, error or "unreadable"))
                    continue
                meta = PackageMetadata.from_dict(meta_dict)
                problem = _identity_problem(meta, subdir)
                if problem:
                    result.skipped.append(SkippedPackage(subdir, name, problem))
                    continue
                old_sha, old_stamp = baseline.get(name, ("", 0))
                stamp = old_stamp if old_sha == meta.sha256 and old_stamp else now
                entry = CacheEntry(stat, meta, stamp)
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
        for skipped in result.skipped:
            log.warning("skipping %s", skipped.format())

    # -- outputs ---------------------------------------------------------------------

    def _write_subdir(
        self,
        subdir: str,
        cache: StatCache,
        sources: Sequence[PatchSource],
        options_key: bytes,
        result: SubdirResult,
    ) -> str:
        """Write the subdir's index files; returns the fingerprint of their inputs."""
        folder = self.root / subdir
        # Same files (by digest and CEP-47 stamp), same options and patches: same
        # outputs. Cheap to compute, so a no-op never decodes the cached metadata.
        digest = hashlib.sha256(options_key + b"\0" + subdir.encode())
        for name, entry in sorted(cache.entries.items()):
            digest.update(f"\0{name}\0{entry.sha256}\0{entry.indexed_timestamp}".encode())
        options_digest = self._subdir_options(subdir, hashlib.sha256(options_key).hexdigest())
        digest.update(options_digest.encode())
        fingerprint = digest.hexdigest()
        state_path = self.root / CACHE_DIR / f"{subdir}.outputs.json"
        previous = _load_outputs(state_path)
        if previous and previous.fingerprint == fingerprint and _untouched(folder, previous):
            result.packages = previous.packages
            result.excluded = dict(previous.excluded)
            if self._may_cache:
                # Files may have been touched but not changed: remember the new scan.
                _save_outputs(
                    state_path,
                    _Outputs(
                        fingerprint,
                        previous.files,
                        result.scan_digest,
                        options_digest,
                        previous.packages,
                        previous.excluded,
                        len(result.skipped),
                    ),
                )
            return fingerprint

        records = {name: self._record(entry) for name, entry in sorted(cache.entries.items())}
        if self.filters is not None:
            decisions = self.filters.evaluate(
                Candidate(subdir, name, record) for name, record in records.items()
            )
            for (_, name), decision in decisions.items():
                if not decision.selected:
                    result.excluded[name] = decision.reason
                    del records[name]
            result.packages = len(records)
        for name, mirrored in self.mirrored.get(subdir, {}).items():
            records[name] = mirrored.record
        result.packages = len(records)
        from_packages = build_repodata(subdir, records)
        from_packages["removed"] = sorted(self.upstream_removed.get(subdir, ()))
        from_packages_bytes = serialize_json(from_packages)

        opts = self.options
        outputs: dict[str, bytes | None] = {}  # None: the file must not exist
        patched = apply_patch_sources(from_packages, subdir, sources)
        repodata_bytes = serialize_json(patched)

        outputs["repodata_from_packages.json"] = (
            from_packages_bytes if opts.repodata_from_packages else None
        )
        outputs["run_exports.json"] = (
            serialize_json(
                build_run_exports(
                    subdir,
                    {
                        n: cache.entries[n].metadata.run_exports if n in cache.entries else {}
                        for n in records
                    },
                )
            )
            if opts.run_exports
            else None
        )
        outputs["current_repodata.json"] = (
            serialize_json(build_current_repodata(subdir, patched, opts.current_index_versions))
            if opts.current_repodata
            else None
        )
        shard_files: dict[str, bytes] = {}
        if opts.shards:
            sharded = build_shards(patched)
            shard_files = sharded.shards
            outputs["repodata_shards.msgpack.zst"] = sharded.index_bytes
        else:
            outputs["repodata_shards.msgpack.zst"] = None
        outputs["repodata.json.zst"] = compress_zst(repodata_bytes) if opts.zst else None
        outputs["repodata.json.bz2"] = compress_bz2(repodata_bytes) if opts.bz2 else None
        outputs["index.html"] = (
            render_subdir_html(self.channel_name, subdir, patched, None).encode()
            if opts.html
            else None
        )
        # repodata.json last: a client reading it finds every file it names, and the
        # compressed twins already agree with it.
        outputs["repodata.json"] = repodata_bytes

        result.recomputed = True
        result.desired = patched
        shard_dir = folder / "shards"
        if self.dry_run:
            self._compare_outputs(folder, outputs, shard_dir, shard_files, result)
            return fingerprint
        # Shards first, so the shard index never names a missing shard.
        for shard_name, shard in sorted(shard_files.items()):
            if write_if_changed(shard_dir / f"{shard_name}.msgpack.zst", shard):
                result.written.append(f"shards/{shard_name}.msgpack.zst")
        for name, data in outputs.items():
            path = folder / name
            if name == "repodata.json":  # the twins, shards and pages are in place
                checkpoint("index.before_repodata")
            if data is None:
                if remove_if_exists(path):
                    result.deleted.append(name)
            elif write_if_changed(path, data):
                result.written.append(name)
        self._collect_shards(shard_dir, set(shard_files), result)

        files = {}
        for name, data in outputs.items():
            if data is not None:
                st = (folder / name).stat()
                files[name] = (st.st_size, st.st_mtime_ns)
        _save_outputs(
            state_path,
            _Outputs(
                fingerprint,
                files,
                result.scan_digest,
                options_digest,
                result.packages,
                dict(result.excluded),
                len(result.skipped),
            ),
        )
        return fingerprint

    def _compare_outputs(
        self,
        folder: Path,
        outputs: Mapping[str, bytes | None],
        shard_dir: Path,
        shard_files: Mapping[str, bytes],
        result: SubdirResult,
    ) -> None:
        """Dry run: note which files a real run would write or delete."""
        for shard_name in sorted(shard_files):
            if not (shard_dir / f"{shard_name}.msgpack.zst").exists():
                result.written.append(f"shards/{shard_name}.msgpack.zst")
        for name, data in outputs.items():
            path = folder / name
            if data is None:
                if path.exists():
                    result.deleted.append(name)
            elif not _same_bytes(path, data):
                result.written.append(name)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(shard_dir):
                digest = entry.name.removesuffix(".msgpack.zst")
                if entry.name.endswith(".msgpack.zst") and digest not in shard_files:
                    result.deleted.append(f"shards/{entry.name}")

    def _collect_shards(self, shard_dir: Path, keep: set[str], result: SubdirResult) -> None:
        """Delete shard files the current shard index no longer names."""
        try:
            entries = list(os.scandir(shard_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            digest = entry.name.removesuffix(".msgpack.zst")
            if entry.name.endswith(".msgpack.zst") and digest not in keep:
                remove_if_exists(Path(entry.path))
                result.deleted.append(f"shards/{entry.name}")
        if not keep:
            with contextlib.suppress(OSError):  # not empty: something else lives there
                shard_dir.rmdir()

    @staticmethod
    def _record(entry: CacheEntry) -> dict[str, Any]:
        meta = entry.metadata
        record = make_record(meta.index, meta.md5, meta.sha256, meta.size)
        record["indexed_timestamp"] = entry.indexed_timestamp
        return record

    def _channeldata_summary(
        self,
        subdir: str,
        caches: dict[str, StatCache],
        key: str,
        excluded_names: set[str] | None = None,
    ) -> dict[str, Any]:
        """The subdir's part of channeldata, recomputed only when the subdir changed."""
        path = self.root / CACHE_DIR / f"{subdir}.channeldata.json"
        try:
            saved = orjson.loads(path.read_bytes())
            if saved.get("fingerprint") == key:
                return dict(saved["summary"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass
        excluded = excluded_names or set()
        cache = self._cache(subdir, caches)
        packages = {name: e.metadata for name, e in cache.entries.items() if name not in excluded}
        for name, entry in self.mirrored.get(subdir, {}).items():
            packages[name] = metadata_from_record(name, entry.record)
        summary = summarize_subdir(packages)
        if self._may_cache:
            write_if_changed(path, orjson.dumps({"fingerprint": key, "summary": summary}))
        return summary

    def _write_channel_files(
        self,
        subdirs: list[str],
        caches: dict[str, StatCache],
        subdir_keys: Sequence[str],
        excluded: Mapping[str, Mapping[str, str]],
        fingerprint: str,
        result: IndexResult,
    ) -> None:
        state_path = self.root / CACHE_DIR / "channel.outputs.json"
        previous = _load_outputs(state_path)
        if previous and previous.fingerprint == fingerprint and _untouched(self.root, previous):
            return
        channeldata: dict[str, Any] | None = None
        if self.options.channeldata or self.options.html:
            channeldata = merge_summaries(
                {
                    subdir: self._channeldata_summary(
                        subdir, caches, key, set(excluded.get(subdir, {}))
                    )
                    for subdir, key in zip(subdirs, subdir_keys, strict=True)
                }
            )
        targets: dict[str, bytes | None] = {
            "channeldata.json": serialize_json(channeldata)
            if self.options.channeldata and channeldata is not None
            else None,
            "index.html": render_channel_html(self.channel_name, channeldata, subdirs).encode()
            if self.options.html
            else None,
        }
        if self.dry_run:
            for name, data in targets.items():
                path = self.root / name
                if data is None:
                    if path.exists():
                        result.deleted.append(name)
                elif not _same_bytes(path, data):
                    result.written.append(name)
            return
        for name, data in targets.items():
            path = self.root / name
            if data is None:
                if remove_if_exists(path):
                    result.deleted.append(name)
            elif write_if_changed(path, data):
                result.written.append(name)
        files = {}
        for name, data in targets.items():
            if data is not None:
                st = (self.root / name).stat()
                files[name] = (st.st_size, st.st_mtime_ns)
        _save_outputs(state_path, _Outputs(fingerprint, files))


def metadata_from_record(filename: str, record: Mapping[str, Any]) -> PackageMetadata:
    """What channeldata can know of a mirrored package: its repodata record."""
    about = {k: record[k] for k in ("license", "summary", "home") if record.get(k)}
    return PackageMetadata(
        filename=filename,
        index=dict(record),
        about=about,
        md5=str(record.get("md5", "")),
        sha256=str(record.get("sha256", "")),
        size=int(record.get("size") or 0),
    )


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _load_outputs(path: Path) -> _Outputs | None:
    try:
        data = orjson.loads(path.read_bytes())
        return _Outputs(
            str(data["fingerprint"]),
            {str(k): (int(v[0]), int(v[1])) for k, v in data["files"].items()},
            str(data.get("scan", "")),
            str(data.get("options", "")),
            int(data.get("packages", 0)),
            {str(k): str(v) for k, v in (data.get("excluded") or {}).items()},
            int(data.get("skipped", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _save_outputs(path: Path, outputs: _Outputs) -> None:
    data = {
        "fingerprint": outputs.fingerprint,
        "files": outputs.files,
        "scan": outputs.scan,
        "options": outputs.options,
        "packages": outputs.packages,
        "excluded": outputs.excluded,
        "skipped": outputs.skipped,
    }
    write_if_changed(path, orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def _untouched(folder: Path, outputs: _Outputs) -> bool:
    """True when every output is still on disk exactly as last written."""
    for name, (size, mtime_ns) in outputs.files.items():
        try:
            st = (folder / name).stat()
        except FileNotFoundError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return False
    return True


def index_channel(
    channel_dir: Path,
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
    pruned: Mapping[str, set[str]] | None = None,
) -> IndexResult:
    """Index ``channel_dir`` incrementally and return what changed (or would, in a dry run)."""
    return ChannelIndexer(
        channel_dir,
        options=options,
        patches=patches,
        subdirs=subdirs,
        channel_name=channel_name,
        strict=strict,
        workers=workers,
        reporter=reporter,
        filters=filters,
        dry_run=dry_run,
        mirrored=mirrored,
        upstream_removed=upstream_removed,
        pruned=pruned,
    ).run()
