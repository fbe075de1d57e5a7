"""URLs of a PyPI channel: ``simple/`` pages by content negotiation, ``packages/`` files.

PEP 691: a client says which form it wants with ``Accept`` (pip asks for JSON
first); ``?format=`` overrides it, as on PyPI. Project URLs that are not in
normalised form, or lack their trailing slash, redirect to the canonical URL so
relative links in the pages resolve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from reconciler.kinds.pypi.names import METADATA_SUFFIX, is_safe_filename, normalize
from reconciler.kinds.pypi.pages import HTML_TYPE, JSON_TYPE
from reconciler.kinds.pypi.simple_index import PACKAGES, SIMPLE

# PEP 508 names (any case, any separators); anything else is not a project here.
_PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")

_FORMS = {JSON_TYPE: "index.json", HTML_TYPE: "index.html", "text/html": "index.html"}


@dataclass(frozen=True)
class Redirect:
    location: str  # relative to the channel's URL


@dataclass(frozen=True)
class Page:
    path: Path
    content_type: str


@dataclass(frozen=True)
class PackageFile:
    path: Path
    project: str
    filename: str


@dataclass(frozen=True)
class NotServed:
    status: int = 404


Route = Redirect | Page | PackageFile | NotServed


def negotiate(accept: str | None, query: str = "") -> str | None:
    """The content type to answer with, or None (406) when none is acceptable."""
    wanted = parse_qs(query).get("format")
    if wanted:
        kind = wanted[-1].replace(" ", "+")  # an unencoded "+" arrives as a space
        return kind if kind in _FORMS else None
    if not accept or not accept.strip():
        return "text/html"
    best: tuple[float, int, str] | None = None
    for order, part in enumerate(accept.split(",")):
        kind, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if kind in ("*/*", "text/*"):
            kind = HTML_TYPE if kind == "*/*" else "text/html"
        if kind not in _FORMS or quality <= 0:
            continue
        candidate = (quality, -order, kind)
        if best is None or candidate > best:
            best = candidate
    return best[2] if best else None


def route(root: Path, rest: list[str], accept: str | None, query: str) -> Route:
    """What the path segments after the channel name (``rest``) refer to."""
    if not rest or rest == [""]:
        return Redirect(f"{SIMPLE}/")
    head, *inner = rest
    if head == SIMPLE:
        if not inner:
            return Redirect(f"{SIMPLE}/")
        if inner == [""]:
            return _page(root / SIMPLE, accept, query)
        name = inner[0]
        if not _PROJECT_NAME.fullmatch(name):
            return NotServed()  # never copied into a Location header
        canonical = normalize(name)
        if inner[1:] != [""] or canonical != name:
            if len(inner) > 2 or (len(inner) == 2 and inner[1] != ""):
                return NotServed()
            return Redirect(f"{SIMPLE}/{canonical}/")
        return _page(root / SIMPLE / canonical, accept, query)
    if head == PACKAGES and len(inner) == 2:
        project, filename = inner
        plain = filename.removesuffix(METADATA_SUFFIX)
        if project != normalize(project) or not is_safe_filename(plain):
            return NotServed()
        return PackageFile(root / PACKAGES / project / filename, project, filename)
    return NotServed()


def _page(folder: Path, accept: str | None, query: str) -> Route:
    kind = negotiate(accept, query)
    if kind is None:
        return NotServed(406)
    return Page(folder / _FORMS[kind], kind if kind != "text/html" else "text/html; charset=utf-8")
