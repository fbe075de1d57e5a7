"""Writing the simple repository: PEP 503 HTML and PEP 691 JSON pages.

Layout of a PyPI channel (served as is by ``reconcile serve``)::

    simple/index.html, simple/index.json                 every project
    simple/<project>/index.html, .../index.json          its files
    packages/<project>/<filename>[.metadata]             the files (PEP 658 metadata)

Links are relative (``../../packages/...``), so the folder works under any URL
prefix. Output is deterministic: sorted, stable escaping, no timestamps beyond
the upstream's upload times.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from packaging.version import InvalidVersion, Version

from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import parse_filename
from reconciler.store.base import Store

API_VERSION = "1.1"
SIMPLE = "simple"
PACKAGES = "packages"


@dataclass(frozen=True)
class PublishedFile:
    """A file as our pages list it."""

    project: str
    filename: str
    sha256: str
    size: int | None = None
    requires_python: str | None = None
    yanked: bool | str = False
    metadata_sha256: str | None = None
    upload_time: dt.datetime | None = None

    @classmethod
    def from_entry(cls, project: str, entry: Mapping[str, Any]) -> PublishedFile:
        """Back from a JSON entry of our own pages (for files kept as published)."""
        metadata = entry.get("core-metadata")
        hashes = entry.get("hashes") or {}
        upload = entry.get("upload-time")
        return cls(
            project=project,
            filename=str(entry["filename"]),
            sha256=str(hashes.get("sha256", "")),
            size=entry.get("size"),
            requires_python=entry.get("requires-python"),
            yanked=entry.get("yanked", False),
            metadata_sha256=metadata.get("sha256") if isinstance(metadata, dict) else None,
            upload_time=dt.datetime.fromisoformat(upload.replace("Z", "+00:00"))
            if isinstance(upload, str)
            else None,
        )

    @property
    def relative_path(self) -> str:
        return f"{PACKAGES}/{self.project}/{self.filename}"

    def json_entry(self) -> dict[str, Any]:
        """The PEP 691 file entry (also what a plan compares)."""
        entry: dict[str, Any] = {
            "filename": self.filename,
            "url": f"../../{self.relative_path}",
            "hashes": {"sha256": self.sha256},
        }
        if self.requires_python:
            entry["requires-python"] = self.requires_python
        entry["yanked"] = self.yanked
        metadata: bool | dict[str, str] = (
            {"sha256": self.metadata_sha256} if self.metadata_sha256 else False
        )
        entry["core-metadata"] = metadata
        entry["dist-info-metadata"] = metadata  # the PEP 658 name older clients read
        if self.size is not None:
            entry["size"] = self.size
        if self.upload_time is not None:
            when = self.upload_time.astimezone(dt.timezone.utc).replace(tzinfo=None)
            entry["upload-time"] = when.isoformat(timespec="microseconds") + "Z"
        return entry


def _version_key(text: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def _versions(files: Iterable[PublishedFile]) -> list[str]:
    found = set()
    for item in files:
        try:
            found.add(str(parse_filename(item.filename).version))
        except ValueError:
            continue
    return sorted(found, key=_version_key)


def _api_version(files: Sequence[PublishedFile]) -> str:
    """1.1 (PEP 700) requires every file's size; HTML-only upstreams of passive mirrors
    give none, and their pages stay at 1.0."""
    return API_VERSION if all(f.size is not None for f in files) else "1.0"


def project_json(project: str, files: Sequence[PublishedFile]) -> bytes:
    ordered = sorted(files, key=lambda f: f.filename)
    version = _api_version(ordered)
    page: dict[str, Any] = {"meta": {"api-version": version}, "name": project}
    if version == API_VERSION:
        page["versions"] = _versions(ordered)
    page["files"] = [f.json_entry() for f in ordered]
    return orjson.dumps(page, option=orjson.OPT_INDENT_2) + b"\n"


def _attribute(name: str, value: str) -> str:
    return f' {name}="{html.escape(value, quote=True)}"'


def project_html(project: str, files: Sequence[PublishedFile]) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{_api_version(files)}">',
        f"    <title>Links for {html.escape(project)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {html.escape(project)}</h1>",
    ]
    for item in sorted(files, key=lambda f: f.filename):
        attrs = _attribute("href", f"../../{item.relative_path}#sha256={item.sha256}")
        if item.requires_python:
            attrs += _attribute("data-requires-python", item.requires_python)
        if item.yanked is not False:
            attrs += _attribute("data-yanked", "" if item.yanked is True else str(item.yanked))
        if item.metadata_sha256:
            value = f"sha256={item.metadata_sha256}"
            attrs += _attribute("data-core-metadata", value)
            attrs += _attribute("data-dist-info-metadata", value)
        lines.append(f"    <a{attrs}>{html.escape(item.filename)}</a><br />")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode()


def root_json(projects: Iterable[str]) -> bytes:
    page = {
        "meta": {"api-version": API_VERSION},
        "projects": [{"name": name} for name in sorted(projects)],
    }
    return orjson.dumps(page, option=orjson.OPT_INDENT_2) + b"\n"


def root_html(projects: Iterable[str]) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        "    <title>Simple index</title>",
        "  </head>",
        "  <body>",
    ]
    for name in sorted(projects):
        escaped = html.escape(name, quote=True)
        lines.append(f'    <a href="{escaped}/">{escaped}</a><br />')
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode()


def render_pages(files: Iterable[PublishedFile]) -> dict[str, bytes]:
    """Every page of the repository, by path relative to the channel folder."""
    by_project: dict[str, list[PublishedFile]] = {}
    for item in files:
        by_project.setdefault(item.project, []).append(item)
    pages: dict[str, bytes] = {}
    for project, items in by_project.items():
        pages[f"{SIMPLE}/{project}/index.json"] = project_json(project, items)
        pages[f"{SIMPLE}/{project}/index.html"] = project_html(project, items)
    pages[f"{SIMPLE}/index.json"] = root_json(by_project)
    pages[f"{SIMPLE}/index.html"] = root_html(by_project)
    return pages


def published_entries(store: Store) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The file entries our own JSON pages list now, by (project, filename)."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for project in store.list_dirs(SIMPLE):
        try:
            data = orjson.loads(store.read(f"{SIMPLE}/{project}/index.json") or b"null")
        except (ReconcileError, orjson.JSONDecodeError):
            continue  # an unreadable page is rewritten; its files show as new
        for entry in data.get("files") or () if isinstance(data, dict) else ():
            if isinstance(entry, dict) and isinstance(entry.get("filename"), str):
                found[(project, entry["filename"])] = entry
    return found


def published_pages(store: Store) -> list[str]:
    """Keys of the pages in the channel."""
    names = [
        info.key
        for project in store.list_dirs(SIMPLE)
        for info in store.list_files(f"{SIMPLE}/{project}")
        if info.name in ("index.html", "index.json")
    ]
    names += [
        info.key for info in store.list_files(SIMPLE) if info.name in ("index.html", "index.json")
    ]
    return sorted(names)
