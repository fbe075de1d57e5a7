"""An upstream simple index: project pages (cached, conditional) and verified files.

Sources are ``http(s)://`` simple index URLs, or a folder (plain path or
``file://``) holding a static simple index (``<project>/index.html`` or
``index.json``). File URLs come from untrusted pages: a file is fetched only
from the source's own host or a host the mirror allows, and for a folder source
only from inside that folder.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from reconciler.config.models import PypiChannel, PypiMirror
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import normalize
from reconciler.kinds.pypi.pages import ACCEPT, DistFile, ProjectPage, parse_project_page
from reconciler.transport.http import NotFound, Upstream, UpstreamError, redact

UPSTREAM_STATE = ".reconciler/upstream"
# A project page bigger than this is refused (the largest on PyPI are a few MB).
MAX_PAGE_BYTES = 64 * 1024 * 1024


def _host(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


class SimpleIndexClient:
    def __init__(self, channel: PypiChannel, mirror: PypiMirror, config_dir: Path | None) -> None:
        self.mirror = mirror
        self.upstream = Upstream(
            mirror.source,
            Path(channel.path) / UPSTREAM_STATE / mirror.name,
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

    def _cache(self, project: str) -> tuple[Path, Path]:
        base = self.upstream.state_dir / "pages"
        return base / f"{normalize(project)}.page", base / f"{normalize(project)}.headers.json"

    def project_page(self, project: str) -> tuple[ProjectPage, bool]:
        """The project's page and whether it was unchanged (304). :class:`NotFound` if none."""
        name = normalize(project)
        url = self.page_url(name)
        if self.local_root is not None:
            return self._local_page(name, url), False
        body_path, headers_path = self._cache(name)
        shown = redact(url)

        def parse(body: bytes) -> ProjectPage:
            # Sniffed, not by content type: a page is kept only once it parsed.
            return parse_project_page(body, "", url, name)

        page, fetched = self.upstream.get_cached(
            url, shown, body_path, headers_path, MAX_PAGE_BYTES, parse, accept=ACCEPT
        )
        return page, fetched.not_modified

    def _local_page(self, name: str, url: str) -> ProjectPage:
        assert self.local_root is not None
        folder = self.local_root / name
        for filename, kind in (("index.json", "application/json"), ("index.html", "text/html")):
            path = folder / filename
            if path.is_file():
                return parse_project_page(path.read_bytes(), kind, url, name)
        raise NotFound(f"{folder}: no index.json or index.html for project {name}")

    def cached_page(self, project: str) -> ProjectPage | None:
        """The page kept from the last fetch, without asking (None: none kept)."""
        name = normalize(project)
        if self.local_root is not None:
            try:
                return self._local_page(name, self.page_url(name))
            except ReconcileError:
                return None
        body_path, _ = self._cache(name)
        if not body_path.is_file():
            return None
        return parse_project_page(body_path.read_bytes(), "", self.page_url(name), name)

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

    def download(self, item: DistFile, target: Path) -> int:
        return self.upstream.download_url(
            self.location(item.url), redact(item.url), target, item.size, item.sha256
        )

    def download_metadata(self, item: DistFile, target: Path) -> int:
        url = item.url + ".metadata"
        return self.upstream.download_url(
            self.location(url), redact(url), target, None, item.metadata_sha256
        )

    def close(self) -> None:
        self.upstream.close()
