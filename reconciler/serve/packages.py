"""The packages a channel publishes, for the channel page: search by name, a page at a time.

Read from what clients read, through the channel's store: each subdir's published
``repodata.json`` (conda), or the project pages of ``simple/`` (PyPI). A parsed
listing is kept per channel location and reused while the file it came from is
unchanged (its size and tag: one ``stat`` per location and request), so a big
channel is parsed once per publish, in a worker thread, and a request only filters
and slices the sorted rows. Versions are ordered as conda (py-rattler) or pip
(``packaging``) order them, newest first within a name.
"""

from __future__ import annotations

import fnmatch
import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import orjson
import rattler
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field

from reconciler.config.models import AnyChannelModel, Channel
from reconciler.engine.layout import STATE
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import parse_filename
from reconciler.kinds.pypi.simple_index import SIMPLE
from reconciler.store import channel_store
from reconciler.store.base import Store

PER_PAGE = 200
QUERY_LIMIT = 100  # characters of a search kept
ALL = ""  # the location selector's "every location"
CACHED_LOCATIONS = 32  # parsed listings kept (each holds one subdir, or a PyPI channel)


class PackageRow(BaseModel):
    location: str = Field(description="subdir (conda) or project (PyPI)")
    name: str
    version: str
    build: str = Field("", description="conda build string; 'wheel' or 'sdist' for PyPI")
    filename: str
    size: int | None = None
    note: str = Field("", description="conda: the licence; PyPI: the upload time, yanked")


class PackagesPage(BaseModel):
    """One page of a channel's packages, as the channel page lists them."""

    locations: list[str] = Field(description="what the location selector offers")
    location: str = Field(description="the location shown ('': every location)")
    query: str = Field(description="name search: a substring, or a glob with * ? [")
    page: int
    pages: int
    per_page: int = PER_PAGE
    matched: int = Field(description="packages matching the search")
    total: int = Field(description="packages in the location(s) searched")
    rows: list[PackageRow] = Field(default_factory=list)


class _Row(NamedTuple):  # a tuple: a big channel has hundreds of thousands
    location: str
    name: str
    version: str
    build: str
    filename: str
    size: int | None
    note: str
    lowered: str  # the name in lower case, for searching

    def model(self) -> PackageRow:
        return PackageRow(
            location=self.location,
            name=self.name,
            version=self.version,
            build=self.build,
            filename=self.filename,
            size=self.size,
            note=self.note,
        )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _newest_first(rows: list[_Row], version_key: Callable[[str], Any]) -> list[_Row]:
    """Rows by name, then version (newest first), then filename.

    Each distinct version is parsed and ranked once; the rows sort on the ranks.
    """
    # Versions equal in the kind's order (1.0, 1.0.0) are ranked by text: deterministic.
    distinct = {row.version for row in rows}
    ordered = sorted(distinct, key=lambda v: (version_key(v), v), reverse=True)
    rank = {version: i for i, version in enumerate(ordered)}
    rows.sort(key=lambda r: (r.name, rank[r.version], r.filename))
    return rows


def _conda_version(text: str) -> tuple[int, Any]:
    try:
        return (1, rattler.Version(text))
    except Exception:  # an upstream's garbage sorts first, by text
        return (0, text)


def _pypi_version(text: str) -> tuple[int, Any]:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def conda_rows(subdir: str, data: bytes) -> list[_Row]:
    """The rows of one published ``repodata.json`` (untrusted: odd entries are skipped)."""
    repodata = orjson.loads(data)
    rows: list[_Row] = []
    if not isinstance(repodata, dict):
        return rows
    for section in ("packages", "packages.conda"):
        records = repodata.get(section)
        if not isinstance(records, dict):
            continue
        add = rows.append
        for filename, record in records.items():  # JSON keys: always text
            if type(record) is not dict:
                continue
            get = record.get
            name, version, build, size, note = (
                get("name"), get("version"), get("build"), get("size"), get("license")
            )  # fmt: skip
            name = name if type(name) is str else ""
            add(
                _Row(
                    subdir,
                    name,
                    version if type(version) is str else "",
                    build if type(build) is str else "",
                    filename,
                    size if type(size) is int else None,
                    note if type(note) is str else "",
                    name.lower(),
                )
            )
    return _newest_first(rows, _conda_version)


def pypi_rows(store: Store) -> list[_Row]:
    """The rows of every project page our ``simple/`` publishes."""
    rows: list[_Row] = []
    for project in store.list_dirs(SIMPLE):
        try:
            page = orjson.loads(store.read(f"{SIMPLE}/{project}/index.json") or b"null")
        except (ReconcileError, ValueError):
            continue
        files = page.get("files") if isinstance(page, dict) else None
        for entry in files if isinstance(files, list) else ():
            if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
                continue
            filename = entry["filename"]
            try:
                dist = parse_filename(filename)
                version, kind = str(dist.version), str(dist.kind)
            except ValueError:
                version, kind = "", ""
            notes = [_text(entry.get("upload-time"))]
            yanked = entry.get("yanked")
            if yanked:
                notes.append(f"yanked: {yanked}" if isinstance(yanked, str) else "yanked")
            size = entry.get("size")
            rows.append(
                _Row(
                    location=project,
                    name=project,
                    version=version,
                    build=kind,
                    filename=filename,
                    size=size if type(size) is int else None,
                    note=", ".join(n for n in notes if n),
                    lowered=project.lower(),
                )
            )
    return _newest_first(rows, _pypi_version)


class PackageListings:
    """Parsed listings, each kept while the file it was read from has not changed."""

    def __init__(self, size: int = CACHED_LOCATIONS) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._cache: OrderedDict[Hashable, tuple[Hashable, list[_Row]]] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}

    def _cached(self, key: Hashable, stamp: Hashable) -> list[_Row] | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None and found[0] == stamp:
                self._cache.move_to_end(key)
                return found[1]
            return None

    def _get(self, key: Hashable, stamp: Hashable, load: Callable[[], list[_Row]]) -> list[_Row]:
        rows = self._cached(key, stamp)
        if rows is not None:
            return rows
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        # One parse per location at a time: concurrent requests for a big index wait for
        # the first one's parse instead of each holding a copy of it in memory.
        with loading:
            rows = self._cached(key, stamp)
            if rows is not None:
                return rows
            rows = load()
            with self._lock:
                self._cache[key] = (stamp, rows)
                self._cache.move_to_end(key)
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return rows

    def locations(self, channel: AnyChannelModel, store: Store) -> list[str]:
        if isinstance(channel, Channel):
            return list(channel.served_subdirs)
        return list(store.list_dirs(SIMPLE))

    def rows(self, channel: AnyChannelModel, store: Store, location: str) -> list[_Row]:
        """The rows of ``location`` ('' for every location), sorted."""
        root = str(channel.path)
        if not isinstance(channel, Channel):
            # One listing per PyPI channel: it changes when an apply rewrites its pages,
            # which also rewrites the state (a stat of two files, not of every page).
            stamp = tuple(
                info.fingerprint if info is not None else None
                for info in (store.stat(f"{SIMPLE}/index.json"), store.stat(STATE))
            )
            rows = self._get((root, SIMPLE), stamp, lambda: pypi_rows(store))
            return [r for r in rows if r.location == location] if location else rows
        parts: list[list[_Row]] = []
        stamps: list[Hashable] = []
        for subdir in [location] if location else channel.served_subdirs:
            key = f"{subdir}/repodata.json"
            info = store.stat(key)
            if info is None:
                continue

            def load(subdir: str = subdir, key: str = key) -> list[_Row]:
                try:
                    return conda_rows(subdir, store.read(key) or b"null")
                except (ReconcileError, ValueError):
                    return []

            parts.append(self._get((root, subdir), info.fingerprint, load))
            stamps.append((subdir, info.fingerprint))
        if len(parts) == 1:
            return parts[0]
        # Every subdir: one list by name (each name's subdirs in order), kept as well.
        return self._get(
            (root, ALL), tuple(stamps), lambda: list(heapq.merge(*parts, key=lambda r: r.name))
        )


def counts(listings: PackageListings) -> Callable[[AnyChannelModel, Store], dict[str, int | None]]:
    """Packages per location as the kind counts them, from the parsed listings."""

    def count(channel: AnyChannelModel, store: Store) -> dict[str, int | None]:
        if not isinstance(channel, Channel):
            if store.stat(f"{SIMPLE}/index.json") is None:
                return {SIMPLE: None}
            return {SIMPLE: len(listings.rows(channel, store, ALL))}
        return {
            subdir: None
            if store.stat(f"{subdir}/repodata.json") is None
            else len(listings.rows(channel, store, subdir))
            for subdir in channel.served_subdirs
        }

    return count


def matches(query: str) -> Callable[[str], bool]:
    """A predicate on lower-case names: a glob when ``query`` has ``*?[``, else a substring."""
    wanted = query.strip().lower()
    if any(c in wanted for c in "*?["):
        return lambda name: fnmatch.fnmatchcase(name, wanted)
    return lambda name: wanted in name


def packages_page(
    listings: PackageListings,
    channel: AnyChannelModel,
    *,
    location: str = ALL,
    query: str = "",
    page: int = 1,
    per_page: int = PER_PAGE,
) -> PackagesPage:
    """The page ``page`` of the packages in ``location`` whose names match ``query``."""
    store = channel_store(channel)
    locations = listings.locations(channel, store)
    if location not in locations:
        location = ALL
    query = query.strip()[:QUERY_LIMIT]
    rows = listings.rows(channel, store, location)
    chosen = rows
    if query:
        test = matches(query)
        chosen = [r for r in rows if test(r.lowered)]
    pages = max(1, -(-len(chosen) // per_page))
    page = min(max(1, page), pages)
    start = (page - 1) * per_page
    return PackagesPage(
        locations=locations,
        location=location,
        query=query,
        page=page,
        pages=pages,
        per_page=per_page,
        matched=len(chosen),
        total=len(rows),
        rows=[r.model() for r in chosen[start : start + per_page]],
    )
