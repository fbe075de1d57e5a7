"""Reading an upstream project page: PEP 691 JSON or PEP 503 HTML, into file entries.

Pages are untrusted: every entry is checked (a safe filename, a sha256 to verify
the download against) and entries that fail are reported, not followed. URLs are
resolved against the page's own URL, as pip does.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

import orjson

from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import is_safe_filename

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
# What we ask an upstream for: JSON first (it carries sizes and upload times).
ACCEPT = f"{JSON_TYPE}, {HTML_TYPE};q=0.2, text/html;q=0.01"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PageError(ReconcileError):
    """An upstream page that cannot be read at all."""


@dataclass(frozen=True)
class DistFile:
    """One file an upstream page offers, as the page describes it."""

    filename: str
    url: str  # absolute, fragment removed
    sha256: str
    requires_python: str | None = None
    yanked: bool | str = False  # a non-empty string is the reason
    metadata_sha256: str | None = None  # PEP 658/714 core metadata, when offered with a hash
    size: int | None = None
    upload_time: dt.datetime | None = None


@dataclass
class ProjectPage:
    name: str
    files: list[DistFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # entries left out, with why


def parse_project_page(body: bytes, content_type: str, url: str, name: str) -> ProjectPage:
    """Parse a page by its content type (JSON when it says so or looks like it)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == JSON_TYPE or (kind.endswith("json") or body.lstrip()[:1] == b"{"):
        return parse_json_page(body, url, name)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PageError(f"{url}: project page is not UTF-8 text") from None
    return parse_html_page(text, url, name)


def _metadata_hash(value: Any) -> str | None:
    if isinstance(value, dict):
        digest = value.get("sha256")
        return digest.lower() if isinstance(digest, str) and _SHA256.match(digest.lower()) else None
    return None


def _upload_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _entry(
    page: ProjectPage,
    page_url: str,
    filename: Any,
    href: Any,
    sha256: Any,
    **extra: Any,
) -> None:
    if not isinstance(filename, str) or not is_safe_filename(filename):
        page.problems.append(f"unsafe or unknown file name {filename!r}")
        return
    if not isinstance(href, str) or not href:
        page.problems.append(f"{filename}: no URL")
        return
    digest = sha256.lower() if isinstance(sha256, str) else None
    if digest is None or not _SHA256.match(digest):
        page.problems.append(f"{filename}: no sha256 to verify it against")
        return
    url = urldefrag(urljoin(page_url, href))[0]
    page.files.append(DistFile(filename=filename, url=url, sha256=digest, **extra))


def parse_json_page(body: bytes, url: str, name: str) -> ProjectPage:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PageError(f"{url}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise PageError(f"{url}: not a PEP 691 project page (no 'files' list)")
    version = str((data.get("meta") or {}).get("api-version", "1.0"))
    if not version.startswith("1."):
        raise PageError(f"{url}: unsupported simple API version {version}")
    page = ProjectPage(name)
    for item in data["files"]:
        if not isinstance(item, dict):
            page.problems.append(f"file entry is not an object: {item!r:.60}")
            continue
        hashes = item.get("hashes")
        yanked = item.get("yanked", False)
        requires = item.get("requires-python")
        size = item.get("size")
        metadata = item.get("core-metadata", item.get("dist-info-metadata"))
        _entry(
            page,
            url,
            item.get("filename"),
            item.get("url"),
            hashes.get("sha256") if isinstance(hashes, dict) else None,
            requires_python=requires if isinstance(requires, str) and requires else None,
            yanked=yanked if isinstance(yanked, str) and yanked else yanked is True,
            metadata_sha256=_metadata_hash(metadata),
            size=size if isinstance(size, int) and size >= 0 else None,
            upload_time=_upload_time(item.get("upload-time")),
        )
    return page


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "a":
            self._current, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text).strip()))
            self._current = None


def _fragment_sha256(href: str) -> str | None:
    fragment = urldefrag(href)[1]
    algo, _, value = fragment.partition("=")
    return value if algo == "sha256" else None


def parse_html_page(text: str, url: str, name: str) -> ProjectPage:
    parser = _Anchors()
    parser.feed(text)
    parser.close()
    base = urljoin(url, parser.base) if parser.base else url
    page = ProjectPage(name)
    for attrs, label in parser.anchors:
        href = attrs.get("href") or ""
        path = urldefrag(href)[0]
        filename = path.rsplit("/", 1)[-1] or label
        meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        metadata = None
        if meta and meta.startswith("sha256="):
            metadata = meta.removeprefix("sha256=").lower()
            metadata = metadata if _SHA256.match(metadata) else None
        yanked = attrs.get("data-yanked")
        _entry(
            page,
            base,
            filename,
            href,
            _fragment_sha256(href),
            requires_python=attrs.get("data-requires-python") or None,
            yanked=(yanked or True) if yanked is not None else False,
            metadata_sha256=metadata,
        )
    return page
