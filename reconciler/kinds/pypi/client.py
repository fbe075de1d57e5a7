"""An upstream simple index: project pages (cached, conditional) and verified files.

Sources are ``http(s)://`` simple index URLs, or a folder (plain path or
``file://``) holding a static simple index (``<project>/index.html`` or
``index.json``). File URLs come from untrusted pages: a file is fetched only
from the source's own host or a host the mirror allows, and for a folder source
only from inside that folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import orjson

from reconciler.config.models import PypiMirror
from reconciler.engine import layout
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import METADATA_SUFFIX, normalize
from reconciler.kinds.pypi.pages import ACCEPT, DistFile, ProjectPage, parse_project_page
from reconciler.store.base import Store
from reconciler.transport.http import (
    Kept,
    NotFound,
    Upstream,
    UpstreamError,
    Validators,
    body_validators,
    redact,
)

# A project page bigger than this is refused (the largest on PyPI are a few MB).
MAX_PAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchedPage:
    """A project page as a mirror read it, with what identifies it."""

    project: str
    page: ProjectPage
    body: bytes
    validators: Validators
    not_modified: bool

    @property
    def sha256(self) -> str:
        return self.validators.sha256


def _host(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


class SimpleIndexClient:
    def __init__(
        self, mirror: PypiMirror, config_dir: Path | None, cache_dir: Path | None = None
    ) -> None:
        self.mirror = mirror
        folder = None
        if cache_dir is not None:
            folder = cache_dir / "pypi" / hashlib.sha256(mirror.source.encode()).hexdigest()[:20]
        self.upstream = Upstream(
            mirror.source,
            folder,
            timeout=mirror.timeout,
            retries=mirror.retries,
            config_dir=config_dir,
            allowed_hosts=mirror.file_hosts,
        )
        self.hosts = {_host(mirror.source), *(h.lower() for h in mirror.file_hosts)}

    @property
    def local_root(self) -> Path | None:
        return self.upstream.local_root

    def page_url(self, project: str) -> str:
        name = normalize(project)
        if self.local_root is not None:
            return self.local_root.resolve().as_uri() + f"/{name}/"
        return self.upstream.source + f"/{name}/"

    def project_page(self, project: str, offered: FetchedPage | None = None) -> FetchedPage:
        """The project's page now, conditionally on ``offered`` (or the cached copy).

        :class:`NotFound` when the upstream has no such project.
        """
        name = normalize(project)
        url = self.page_url(name)
        if self.local_root is not None:
            return self._local_page(name, url, offered)
        shown = redact(url)
        kept = Kept(offered.body, offered.validators) if offered is not None else None

        def parse(body: bytes) -> ProjectPage:
            # Sniffed, not by content type: a page is kept only once it parsed.
            return parse_project_page(body, "", url, name)

        page, fetched = self.upstream.get_cached(
            url, shown, f"{name}.page", MAX_PAGE_BYTES, parse, accept=ACCEPT, offered=kept
        )
        unchanged = fetched.not_modified or (
            offered is not None and offered.sha256 == fetched.validators.sha256
        )
        return FetchedPage(name, page, fetched.body, fetched.validators, unchanged)

    def _local_page(self, name: str, url: str, offered: FetchedPage | None) -> FetchedPage:
        assert self.local_root is not None
        folder = self.local_root / name
        for filename, kind in (("index.json", "application/json"), ("index.html", "text/html")):
            path = folder / filename
            try:
                body = self.upstream.read_local(path, str(path), MAX_PAGE_BYTES)
            except NotFound:
                continue
            page = parse_project_page(body, kind, url, name)
            validators = body_validators(body, {"content-type": kind}, str(path))
            unchanged = offered is not None and offered.sha256 == validators.sha256
            return FetchedPage(name, page, body, validators, unchanged)
        raise NotFound(f"{folder}: no index.json or index.html for project {name}")

    def cached_page(self, project: str, sha256: str) -> FetchedPage | None:
        """The copy in the cache directory if it has exactly that digest (no network)."""
        name = normalize(project)
        kept = self.upstream.kept(f"{name}.page")
        if kept is None or kept.validators.sha256 != sha256:
            return None
        page = parse_project_page(
            kept.body, kept.validators.content_type, self.page_url(name), name
        )
        return FetchedPage(name, page, kept.body, kept.validators, True)

    def location(self, url: str) -> str:
        """Where to fetch ``url`` from; :class:`UpstreamError` if it is not allowed."""
        parsed = urlparse(url)
        if self.local_root is not None:
            if parsed.scheme != "file":
                raise UpstreamError(f"{redact(url)}: a folder source may only link to its files")
            path = Path(unquote(parsed.path)).resolve()
            if not path.is_relative_to(self.local_root.resolve()):
                raise UpstreamError(f"{url}: outside the source folder {self.local_root}")
            return str(path)
        if parsed.scheme not in ("http", "https"):
            raise UpstreamError(f"{redact(url)}: only http(s) file URLs are followed")
        if urlparse(self.upstream.source).scheme == "https" and parsed.scheme == "http":
            raise UpstreamError(f"{redact(url)}: an https index may not link to plain http")
        if _host(url) not in self.hosts:
            raise UpstreamError(
                f"{redact(url)}: host {_host(url)} is not the source's and not in allowed_hosts",
                hint=f"add it to allowed_hosts of mirror {self.mirror.name} if you trust it",
            )
        return url

    def fetcher(self, item: DistFile) -> Callable[[IO[bytes]], int]:
        """What the download executor calls to stream the file into an open file, verified.

        Where the file may come from is checked when it is fetched: a refused URL fails
        that file (recorded with the run), not the whole plan.
        """

        def fetch(out: IO[bytes]) -> int:
            return self.upstream.download_url(
                self.location(item.url), redact(item.url), out, item.size, item.sha256
            )

        return fetch

    def metadata_fetcher(self, item: DistFile) -> Callable[[IO[bytes]], int]:
        """The same for the file's PEP 658 metadata (``<url>.metadata``)."""
        url = item.url + METADATA_SUFFIX

        def fetch(out: IO[bytes]) -> int:
            return self.upstream.download_url(
                self.location(url), redact(url), out, None, item.metadata_sha256
            )

        return fetch

    def close(self) -> None:
        self.upstream.close()


# -- snapshots: the pages a mirror's last apply used, kept with the channel ---------------


def _snapshot_keys(mirror: str, project: str) -> tuple[str, str]:
    prefix = layout.snapshot_prefix(mirror, project)
    return f"{prefix}/page", f"{prefix}/page.validators.json"


def read_page_snapshot(
    store: Store, client: SimpleIndexClient, mirror: str, project: str
) -> FetchedPage | None:
    """The page the mirror's last apply used (None: none kept, or damaged)."""
    body_key, meta_key = _snapshot_keys(mirror, project)
    try:
        body = store.read(body_key, limit=MAX_PAGE_BYTES)
        meta = store.read(meta_key)
    except ReconcileError:
        return None
    if body is None or meta is None:
        return None
    try:
        validators = Validators.from_json(orjson.loads(meta))
    except ValueError:
        return None
    if validators is None or hashlib.sha256(body).hexdigest() != validators.sha256:
        return None
    try:
        page = parse_project_page(
            body, validators.content_type, client.page_url(project), normalize(project)
        )
    except ReconcileError:
        return None
    return FetchedPage(normalize(project), page, body, validators, True)


def write_page_snapshot(store: Store, mirror: str, fetched: FetchedPage) -> None:
    body_key, meta_key = _snapshot_keys(mirror, fetched.project)
    store.write_if_changed(body_key, fetched.body)
    store.write_if_changed(meta_key, orjson.dumps(fetched.validators.to_json()))
