"""An upstream PEP 503/691 simple repository on 127.0.0.1, for mirroring tests.

Its pages are written here, independently of the code under test, so that tests do
not trust the product to describe its own input. Everything a test may want to
change (files, yanks, requires-python, upload times, the style of links, HTML only)
lives on the yielded :class:`SimpleIndex` and is read again on every request.
"""

from __future__ import annotations

import hashlib
import html
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from packaging.version import InvalidVersion, Version

from tests.pypi.builder import core_metadata, normalize

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")

LinkStyle = Literal["relative", "root", "absolute"]


def project_of(filename: str) -> str:
    """Normalized project name of a wheel or sdist filename."""
    if filename.endswith(".whl"):
        return normalize(filename.split("-")[0])
    for suffix in DIST_SUFFIXES:
        if filename.endswith(suffix):
            return normalize(filename[: -len(suffix)].rsplit("-", 1)[0])
    raise ValueError(f"not a distribution filename: {filename}")


def version_of(filename: str) -> str:
    """Version part of a wheel or sdist filename, as written in it."""
    if filename.endswith(".whl"):
        return filename.split("-")[1]
    for suffix in DIST_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].rsplit("-", 1)[1]
    raise ValueError(f"not a distribution filename: {filename}")


def format_upload_time(value: datetime | str) -> str:
    """PEP 700 ``upload-time``: ISO 8601 in UTC with a ``Z``; strings pass unchanged
    so a test can serve a malformed one."""
    if isinstance(value, str):
        return value
    moment = value.astimezone(timezone.utc) if value.tzinfo else value
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


@dataclass
class UpstreamFile:
    """One file as the upstream offers it. ``path`` may be relative to ``files_dir``;
    ``sha256`` set to another value makes the pages lie about the file's hash;
    ``metadata`` offers PEP 658 metadata when there is some (a wheel, or a
    ``<file>.metadata`` beside the file)."""

    path: Path
    yanked: bool | str = False
    requires_python: str | None = None
    upload_time: datetime | str | None = None
    metadata: bool = True
    sha256: str | None = None

    @property
    def filename(self) -> str:
        """Basename, as listed on the page."""
        return self.path.name


@dataclass(frozen=True)
class SeenRequest:
    """One request a server answered, for assertions on what a client asked."""

    method: str
    path: str
    accept: str | None
    if_none_match: str | None
    status: int


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _Site(Protocol):
    requests: list[SeenRequest]

    def respond(self, method: str, target: str, headers: Message) -> _Response: ...


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metadata_bytes(path: Path) -> bytes | None:
    """PEP 658 metadata of a file: a sidecar ``.metadata`` if present, else the
    METADATA inside a wheel, else none."""
    sidecar = path.with_name(path.name + ".metadata")
    if sidecar.is_file():
        return sidecar.read_bytes()
    if path.name.endswith(".whl"):
        return core_metadata(path)
    return None


def _file_response(path: Path | None, data: bytes | None = None) -> _Response:
    if path is None or (data is None and not path.is_file()):
        return _Response(404, b"not found\n", {"Content-Type": "text/plain"})
    body = data if data is not None else path.read_bytes()
    return _Response(200, body, {"Content-Type": "application/octet-stream"})


def _sort_key(version: str) -> tuple[int, Version | str]:
    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


def negotiate(accept: str | None) -> str | None:
    """PEP 691 content negotiation: the served type for an ``Accept`` header, or None
    (406) when nothing offered is acceptable. No header, or only wildcards, gives
    ``text/html``; at equal quality an explicitly named type beats a wildcard, and
    JSON beats HTML."""
    if not accept or not accept.strip():
        return TEXT_HTML
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            ranges.append((media.lower(), quality))
    best: tuple[float, int, int, str] | None = None
    for preference, offer in enumerate((JSON_V1, HTML_V1, TEXT_HTML)):
        for specificity, pattern in ((2, offer), (1, offer.split("/")[0] + "/*"), (0, "*/*")):
            qualities = [q for media, q in ranges if media == pattern]
            if qualities:
                quality = max(qualities)
                # A wildcard match prefers plain HTML, as a legacy client expects.
                rank = -preference if specificity == 2 else preference
                candidate = (quality, specificity, rank, offer)
                if quality > 0 and (best is None or candidate[:3] > best[:3]):
                    best = candidate
                break
    return best[3] if best else None


@dataclass
class SimpleIndex:
    """A running upstream simple repository. Every field is read per request, so a
    test changes the served set (``projects``, or ``add``/``remove``/``rescan``),
    yanks, requires-python, upload times and the page style between client runs."""

    base_url: str
    files_dir: Path
    projects: dict[str, list[UpstreamFile]]
    html_only: bool = False
    files_base_url: str | None = None
    links: LinkStyle = "relative"
    metadata_keys: tuple[str, ...] = ("core-metadata", "dist-info-metadata")
    api_version: str = "1.1"
    etags: bool = True
    faults: dict[str, int] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The index URL to give pip or a mirror: ``http://127.0.0.1:PORT/simple/``."""
        return f"{self.base_url}/simple/"

    def project_url(self, name: str) -> str:
        """The canonical page URL of a project."""
        return f"{self.url}{normalize(name)}/"

    def file_url(self, filename: str) -> str:
        """The URL a page gives for a file, resolved to an absolute one."""
        return urllib.parse.urljoin(self.project_url(project_of(filename)), self._href(filename))

    def paths(self, prefix: str = "/") -> list[str]:
        """Request paths seen so far (query strings included), optionally filtered."""
        return [seen.path for seen in self.requests if seen.path.startswith(prefix)]

    def file(self, filename: str) -> UpstreamFile:
        """The listed entry for a filename, to change its attributes in place."""
        for entries in self.projects.values():
            for entry in entries:
                if entry.filename == filename:
                    return entry
        raise KeyError(filename)

    def add(self, path: Path, **attributes: Any) -> UpstreamFile:
        """List one more file (attributes as for :class:`UpstreamFile`)."""
        entry = UpstreamFile(path, **attributes)
        self.projects.setdefault(project_of(entry.filename), []).append(entry)
        return entry

    def remove(self, filename: str) -> None:
        """Stop listing (and serving) a file; a project left empty disappears."""
        for name, entries in list(self.projects.items()):
            entries[:] = [entry for entry in entries if entry.filename != filename]
            if not entries:
                del self.projects[name]

    def rescan(self) -> None:
        """List every distribution now in ``files_dir``, keeping the attributes of
        files already listed and dropping files that are gone."""
        known = {entry.filename: entry for entries in self.projects.values() for entry in entries}
        self.projects = scan_files(self.files_dir, known)

    # -- serving ---------------------------------------------------------------------

    def _entries(self, project: str) -> tuple[str, list[UpstreamFile]] | None:
        for name, entries in self.projects.items():
            if normalize(name) == project and entries:
                return name, sorted(entries, key=lambda entry: entry.filename)
        return None

    def _path(self, entry: UpstreamFile) -> Path:
        return entry.path if entry.path.is_absolute() else self.files_dir / entry.path

    def _href(self, filename: str) -> str:
        quoted = urllib.parse.quote(filename)
        if self.files_base_url:
            return f"{self.files_base_url.rstrip('/')}/{quoted}"
        if self.links == "absolute":
            return f"{self.base_url}/files/{quoted}"
        if self.links == "root":
            return f"/files/{quoted}"
        return f"../../files/{quoted}"

    def _hash(self, entry: UpstreamFile) -> str:
        return entry.sha256 or _sha256(self._path(entry).read_bytes())

    def _metadata_hash(self, entry: UpstreamFile) -> str | None:
        if not entry.metadata:
            return None
        data = _metadata_bytes(self._path(entry))
        return _sha256(data) if data is not None else None

    def respond(self, method: str, target: str, headers: Message) -> _Response:
        """Route one request."""
        split = urllib.parse.urlsplit(target)
        path, query = split.path, urllib.parse.parse_qs(split.query)
        if path in self.faults:
            return _Response(self.faults[path], b"injected fault\n", {"Content-Type": "text/plain"})
        parts = path.split("/")
        if path == "/simple":
            return _redirect("/simple/", split.query)
        if path == "/simple/":
            return self._page(None, headers, query)
        if len(parts) in (3, 4) and parts[1] == "simple" and parts[2] and parts[3:] in ([], [""]):
            canonical = normalize(parts[2])
            if parts[2] != canonical or len(parts) == 3:
                return _redirect(f"/simple/{canonical}/", split.query)
            return self._page(canonical, headers, query)
        if len(parts) == 3 and parts[1] == "files":
            return self._file(urllib.parse.unquote(parts[2]))
        return _Response(404, b"not found\n", {"Content-Type": "text/plain"})

    def _file(self, filename: str) -> _Response:
        base = filename.removesuffix(".metadata")
        try:
            entry = self.file(base)
        except KeyError:
            return _file_response(None)
        if base == filename:
            return _file_response(self._path(entry))
        data = _metadata_bytes(self._path(entry)) if entry.metadata else None
        return _file_response(self._path(entry) if data is not None else None, data)

    def _page(
        self, project: str | None, headers: Message, query: dict[str, list[str]]
    ) -> _Response:
        requested = query.get("format", [None])[-1] or headers.get("Accept")
        kind = TEXT_HTML if self.html_only else negotiate(requested)
        if kind is None:
            return _Response(406, b"not acceptable\n", {"Content-Type": "text/plain"})
        if project is None:
            body = self._root_json() if kind == JSON_V1 else self._root_html()
        else:
            found = self._entries(project)
            if found is None:
                return _Response(404, b"not found\n", {"Content-Type": "text/plain"})
            entries = found[1]
            body = self._json(project, entries) if kind == JSON_V1 else self._html(project, entries)
        content_type = kind if kind != TEXT_HTML else "text/html; charset=utf-8"
        response_headers = {"Content-Type": content_type, "Vary": "Accept"}
        if self.etags:
            etag = f'"{_sha256(body)[:24]}"'
            response_headers["ETag"] = etag
            wanted = headers.get("If-None-Match") or ""
            tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
            if etag in tags or "*" in tags:
                return _Response(304, b"", response_headers)
        return _Response(200, body, response_headers)

    def _root_json(self) -> bytes:
        names = sorted(name for name, entries in self.projects.items() if entries)
        page = {
            "meta": {"api-version": self.api_version},
            "projects": [{"name": name} for name in names],
        }
        return json.dumps(page, indent=1).encode()

    def _root_html(self) -> bytes:
        names = sorted(name for name, entries in self.projects.items() if entries)
        anchors = [
            f'    <a href="{html.escape(normalize(name))}/">{html.escape(name)}</a><br />'
            for name in names
        ]
        return _html_document("Simple index", anchors, self.api_version)

    def _json(self, project: str, entries: list[UpstreamFile]) -> bytes:
        files: list[dict[str, Any]] = []
        for entry in entries:
            item: dict[str, Any] = {
                "filename": entry.filename,
                "url": self._href(entry.filename),
                "hashes": {"sha256": self._hash(entry)},
                "requires-python": entry.requires_python,
                "yanked": entry.yanked,
            }
            if self.api_version != "1.0":
                item["size"] = self._path(entry).stat().st_size
            if entry.upload_time is not None:
                item["upload-time"] = format_upload_time(entry.upload_time)
            metadata_hash = self._metadata_hash(entry)
            for key in self.metadata_keys:
                item[key] = {"sha256": metadata_hash} if metadata_hash else False
            files.append(item)
        page: dict[str, Any] = {
            "meta": {"api-version": self.api_version},
            "name": project,
            "files": files,
        }
        if self.api_version != "1.0":
            versions = {version_of(entry.filename) for entry in entries}
            page["versions"] = sorted(versions, key=_sort_key)
        return json.dumps(page, indent=1).encode()

    def _html(self, project: str, entries: list[UpstreamFile]) -> bytes:
        anchors = []
        for entry in entries:
            href = f"{self._href(entry.filename)}#sha256={self._hash(entry)}"
            attributes = [f'href="{html.escape(href)}"']
            if entry.requires_python:
                attributes.append(f'data-requires-python="{html.escape(entry.requires_python)}"')
            if entry.yanked is not False:
                reason = entry.yanked if isinstance(entry.yanked, str) else ""
                attributes.append(f'data-yanked="{html.escape(reason)}"')
            metadata_hash = self._metadata_hash(entry)
            if metadata_hash:
                for key in self.metadata_keys:
                    attributes.append(f'data-{key}="sha256={metadata_hash}"')
            text = html.escape(entry.filename)
            anchors.append(f"    <a {' '.join(attributes)}>{text}</a><br />")
        return _html_document(f"Links for {project}", anchors, self.api_version)


def _html_document(title: str, anchors: list[str], api_version: str) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{api_version}">',
        f"    <title>{html.escape(title)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>{html.escape(title)}</h1>",
        *anchors,
        "  </body>",
        "</html>",
        "",
    ]
    return "\n".join(lines).encode()


def _redirect(location: str, query: str) -> _Response:
    target = f"{location}?{query}" if query else location
    return _Response(301, b"", {"Location": target})


def scan_files(
    files_dir: Path, known: Mapping[str, UpstreamFile] | None = None
) -> dict[str, list[UpstreamFile]]:
    """Group the distributions in ``files_dir`` by normalized project, reusing the
    entries in ``known`` (by filename) so their attributes survive a rescan."""
    projects: dict[str, list[UpstreamFile]] = {}
    for path in sorted(files_dir.iterdir()):
        if path.is_file() and path.name.endswith(DIST_SUFFIXES):
            entry = (known or {}).get(path.name) or UpstreamFile(path)
            projects.setdefault(project_of(path.name), []).append(entry)
    return projects


@dataclass
class FileServer:
    """A plain file host (like files.pythonhosted.org): ``GET <url>/<filename>`` and
    ``<filename>.metadata`` from ``files_dir``."""

    base_url: str
    files_dir: Path
    requests: list[SeenRequest] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base to pass as ``files_base_url``."""
        return f"{self.base_url}/packages"

    def paths(self) -> list[str]:
        """Request paths seen so far."""
        return [seen.path for seen in self.requests]

    def respond(self, method: str, target: str, headers: Message) -> _Response:
        """Serve a file, or its PEP 658 metadata."""
        parts = urllib.parse.urlsplit(target).path.split("/")
        if len(parts) != 3 or parts[1] != "packages" or not parts[2]:
            return _file_response(None)
        filename = urllib.parse.unquote(parts[2])
        path = self.files_dir / filename
        if filename.endswith(".metadata") and not path.is_file():
            source = self.files_dir / filename.removesuffix(".metadata")
            data = _metadata_bytes(source) if source.is_file() else None
            return _file_response(source if data is not None else None, data)
        return _file_response(path)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are recorded on the site instead."""

    def _handle(self) -> None:
        site = self.server.site
        response = site.respond(self.command, self.path, self.headers)
        site.requests.append(
            SeenRequest(
                self.command,
                self.path,
                self.headers.get("Accept"),
                self.headers.get("If-None-Match"),
                response.status,
            )
        )
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.status != 304:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.status != 304:
            self.wfile.write(response.body)

    do_GET = _handle
    do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: _Site


SiteT = TypeVar("SiteT", bound=_Site)


@contextmanager
def _running(make_site: Callable[[str], SiteT]) -> Iterator[SiteT]:
    server = _Server(("127.0.0.1", 0), _Handler)
    site = make_site(f"http://127.0.0.1:{server.server_address[1]}")
    server.site = site
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def serve_simple_index(
    files_dir: Path,
    *,
    projects_meta: Mapping[str, Iterable[UpstreamFile]] | Iterable[UpstreamFile] | None = None,
    html_only: bool = False,
    files_base_url: str | None = None,
    links: LinkStyle = "relative",
    metadata_keys: tuple[str, ...] = ("core-metadata", "dist-info-metadata"),
    api_version: str = "1.1",
) -> Iterator[SimpleIndex]:
    """Serve a simple repository on 127.0.0.1 (random port) in a background thread.

    The served set is ``projects_meta`` (project name to files, or just files, grouped
    by the project in their filenames), or else every distribution in ``files_dir``
    with default attributes. ``html_only`` ignores ``Accept`` like an old index;
    ``files_base_url`` puts absolute file URLs on another host (see
    :func:`serve_files`); ``links`` chooses relative, root-relative or absolute
    file URLs on this server.
    """
    if projects_meta is None:
        projects = scan_files(files_dir)
    elif isinstance(projects_meta, Mapping):
        projects = {name: list(entries) for name, entries in projects_meta.items()}
    else:
        projects = {}
        for entry in projects_meta:
            projects.setdefault(project_of(entry.filename), []).append(entry)

    def make(base_url: str) -> SimpleIndex:
        return SimpleIndex(
            base_url,
            files_dir,
            projects,
            html_only=html_only,
            files_base_url=files_base_url,
            links=links,
            metadata_keys=metadata_keys,
            api_version=api_version,
        )

    with _running(make) as index:
        yield index


@contextmanager
def serve_files(files_dir: Path) -> Iterator[FileServer]:
    """Serve ``files_dir`` as a plain file host on its own port; pass its ``url`` as
    ``files_base_url`` to put a simple index's files on another host."""

    def make(base_url: str) -> FileServer:
        return FileServer(base_url, files_dir)

    with _running(make) as server:
        yield server
