"""Independent validators for simple-repository pages (PEP 503 HTML, PEP 691/700 JSON).

They are written from the PEPs, not from the code under test, and raise
:class:`PageError` (an ``AssertionError``) naming the first rule a page breaks.
Given the folder the files live in, they also check every published hash.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass, field
from html.entities import html5 as html5_entities
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

_HEX64 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_API_VERSION = re.compile(r"1\.\d+")
# A character reference as HTML5 reads it inside an attribute: named, decimal or hex.
_CHAR_REF = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_RAW_ATTRIBUTE = re.compile(
    r"""\s([^\s"'>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'=<>`]+))?""", re.DOTALL
)
_METADATA_ATTRIBUTES = ("data-core-metadata", "data-dist-info-metadata")
_METADATA_KEYS = ("core-metadata", "dist-info-metadata")
_DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")


class PageError(AssertionError):
    """A simple-repository page breaks a rule of PEP 503, 658, 691, 700 or 714."""


def normalize(name: str) -> str:
    """PEP 503 normalized name: lowercase, runs of ``-``, ``_`` and ``.`` become ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PageError(message)


@dataclass(frozen=True)
class Anchor:
    """One link of an HTML page, with its attribute values unescaped."""

    text: str
    href: str
    attributes: dict[str, str | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The href without its fragment."""
        return urllib.parse.urldefrag(self.href).url

    @property
    def sha256(self) -> str | None:
        """The hex digest in a ``#sha256=`` fragment, if any."""
        fragment = urllib.parse.urldefrag(self.href).fragment
        name, _, value = fragment.partition("=")
        return value if name == "sha256" else None

    @property
    def requires_python(self) -> str | None:
        """The ``data-requires-python`` value (unescaped)."""
        return self.attributes.get("data-requires-python")

    @property
    def yanked(self) -> str | None:
        """The yank reason, ``""`` if yanked without one, None if not yanked."""
        if "data-yanked" not in self.attributes:
            return None
        return self.attributes["data-yanked"] or ""

    @property
    def core_metadata(self) -> str | None:
        """``data-core-metadata``, falling back to ``data-dist-info-metadata`` (PEP 714)."""
        for key in _METADATA_ATTRIBUTES:
            if key in self.attributes:
                return self.attributes[key] or ""
        return None


class _Collector(HTMLParser):
    """Collect anchors with their raw start tags, the doctype and repository meta."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype: str | None = None
        self.saw_element_before_doctype = False
        self.anchors: list[Anchor] = []
        self.raw_tags: list[str] = []
        self.repository_version: str | None = None
        self._open: tuple[str, dict[str, str | None], str] | None = None
        self._text: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.doctype is None:
            self.saw_element_before_doctype = True
        values = dict(attrs)
        if tag == "meta" and values.get("name") == "pypi:repository-version":
            self.repository_version = values.get("content")
        if tag == "a":
            _require(self._open is None, "nested <a> elements")
            _require(len(values) == len(attrs), f"repeated attribute in {attrs}")
            self._open = (values.get("href") or "", values, self.get_starttag_text() or "")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            href, values, raw = self._open
            self.anchors.append(Anchor("".join(self._text).strip(), href, values))
            self.raw_tags.append(raw)
            self._open = None


def _check_raw_attributes(raw_tag: str) -> None:
    """Attribute values in the source must be quoted and correctly escaped: ``&`` only
    as a character reference, ``<``/``>`` as ``&lt;``/``&gt;`` (PEP 503 requires that
    for data-requires-python; it is also what a correct escaper does for the rest)."""
    inner = raw_tag[len("<a") : -1].rstrip("/")
    for match in _RAW_ATTRIBUTE.finditer(inner):
        name, quoted = match.group(1), match.group(2)
        if quoted is None:
            continue
        _require(quoted[0] in "\"'", f"unquoted value of {name} in {raw_tag}")
        value = quoted[1:-1]
        _require("<" not in value and ">" not in value, f"unescaped < or > in {name}: {raw_tag}")
        stray = _CHAR_REF.sub("", value)
        _require("&" not in stray, f"unescaped & in {name}: {raw_tag}")
        for reference in _CHAR_REF.findall(value):
            _require(
                reference.startswith("#") or f"{reference};" in html5_entities,
                f"unknown character reference &{reference}; in {name}: {raw_tag}",
            )


def _parse_document(text: str) -> _Collector:
    collector = _Collector()
    collector.feed(text)
    collector.close()
    _require(
        collector.doctype is not None and collector.doctype.strip().lower() == "doctype html",
        "not an HTML5 document: missing <!DOCTYPE html>",
    )
    _require(not collector.saw_element_before_doctype, "<!DOCTYPE html> is not first")
    version = collector.repository_version
    if version is not None:
        _require(
            bool(_API_VERSION.fullmatch(version)), f"pypi:repository-version {version!r} is not 1.x"
        )
    for raw in collector.raw_tags:
        _check_raw_attributes(raw)
    return collector


def _locate(files_dir: Path, filename: str) -> Path:
    direct = files_dir / filename
    if direct.is_file():
        return direct
    found = [path for path in files_dir.rglob(filename) if path.is_file()]
    _require(len(found) == 1, f"{filename}: expected one file under {files_dir}, found {found}")
    return found[0]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _last_segment(url: str) -> str:
    path = urllib.parse.urlsplit(urllib.parse.urldefrag(url).url).path
    return urllib.parse.unquote(path.rsplit("/", 1)[-1])


def _project_of(filename: str) -> str | None:
    if filename.endswith(".whl"):
        return normalize(filename.split("-")[0])
    for suffix in _DIST_SUFFIXES:
        if filename.endswith(suffix) and "-" in filename:
            return normalize(filename[: -len(suffix)].rsplit("-", 1)[0])
    return None


def _version_of(filename: str) -> str | None:
    if filename.endswith(".whl") and filename.count("-") >= 4:
        return filename.split("-")[1]
    for suffix in _DIST_SUFFIXES:
        if filename.endswith(suffix) and "-" in filename:
            return filename[: -len(suffix)].rsplit("-", 1)[1]
    return None


def _check_specifier(value: str, filename: str) -> None:
    try:
        SpecifierSet(value)
    except InvalidSpecifier as error:
        raise PageError(f"{filename}: requires-python {value!r} is not a specifier") from error


def check_html_project_page(
    text: str,
    files_dir: Path | None = None,
    *,
    project: str | None = None,
    allow_metadata_true: bool = False,
) -> list[Anchor]:
    """Validate a PEP 503 project page and return its anchors.

    Each anchor's text is its filename and the last path segment of its href; the
    href carries ``#sha256=<64 hex>``; data-requires-python is a specifier;
    data-core-metadata / data-dist-info-metadata are ``sha256=<hex>`` (and agree).
    With ``files_dir``, hashes match the files and their ``.metadata`` files; with
    ``project``, every filename belongs to it.
    """
    collector = _parse_document(text)
    seen: set[str] = set()
    for anchor in collector.anchors:
        name = anchor.text
        _require(bool(name), f"anchor without text: {anchor.href}")
        _require(name not in seen, f"{name} listed twice")
        seen.add(name)
        _require(
            _last_segment(anchor.href) == name,
            f"{name}: href {anchor.href!r} does not end with the filename",
        )
        digest = anchor.sha256
        _require(
            digest is not None and bool(_HEX64.fullmatch(digest)),
            f"{name}: href needs a #sha256=<64 lowercase hex> fragment, got {anchor.href!r}",
        )
        if project is not None:
            _require(_project_of(name) == normalize(project), f"{name} is not a file of {project}")
        if anchor.requires_python is not None:
            _check_specifier(anchor.requires_python, name)
        metadata_values = {
            key: anchor.attributes[key] or ""
            for key in _METADATA_ATTRIBUTES
            if key in anchor.attributes
        }
        _require(
            len(set(metadata_values.values())) <= 1,
            f"{name}: data-core-metadata and data-dist-info-metadata disagree",
        )
        metadata_hash: str | None = None
        for key, value in metadata_values.items():
            if value == "true" and allow_metadata_true:
                continue
            hash_name, _, hex_value = value.partition("=")
            _require(
                hash_name == "sha256" and bool(_HEX64.fullmatch(hex_value)),
                f"{name}: {key}={value!r} is not sha256=<64 lowercase hex>",
            )
            metadata_hash = hex_value
        if files_dir is not None:
            path = _locate(files_dir, name)
            _require(_file_sha256(path) == digest, f"{name}: published sha256 is not the file's")
            if metadata_hash is not None:
                sidecar = path.with_name(name + ".metadata")
                _require(sidecar.is_file(), f"{name}: metadata offered but {sidecar} is missing")
                _require(
                    _file_sha256(sidecar) == metadata_hash,
                    f"{name}: published metadata sha256 is not that of {sidecar.name}",
                )
    return collector.anchors


def check_html_root(text: str) -> list[str]:
    """Validate a PEP 503 root page; return the normalized project names, in page
    order. Each href must be the normalized name followed by ``/``."""
    collector = _parse_document(text)
    names: list[str] = []
    for anchor in collector.anchors:
        _require(bool(anchor.text), f"anchor without text: {anchor.href}")
        segment = urllib.parse.urlsplit(anchor.href).path.rstrip("/").rsplit("/", 1)[-1]
        canonical = normalize(anchor.text)
        _require(anchor.href.endswith("/"), f"{anchor.href!r} lacks the trailing slash")
        _require(
            segment == canonical,
            f"{anchor.text}: href {anchor.href!r} is not the normalized name {canonical!r}",
        )
        _require(canonical not in names, f"{canonical} listed twice")
        names.append(canonical)
    return names


def _check_meta(data: dict[str, Any]) -> str:
    meta = data.get("meta")
    _require(isinstance(meta, dict), "meta is missing or not an object")
    assert isinstance(meta, dict)
    version = meta.get("api-version")
    _require(
        isinstance(version, str) and bool(_API_VERSION.fullmatch(version)),
        f"meta.api-version {version!r} is not a 1.x string",
    )
    assert isinstance(version, str)
    return version


def _check_hashes(value: Any, where: str) -> dict[str, str]:
    _require(isinstance(value, dict), f"{where}: hashes must be an object")
    assert isinstance(value, dict)
    for name, digest in value.items():
        _require(isinstance(name, str) and name == name.lower(), f"{where}: bad hash name {name!r}")
        _require(isinstance(digest, str), f"{where}: hash {name} is not a string")
    if "sha256" in value:
        _require(
            bool(_HEX64.fullmatch(value["sha256"])),
            f"{where}: sha256 {value['sha256']!r} is not 64 lowercase hex",
        )
    return value


def check_json_project_page(
    data: dict[str, Any], files_dir: Path | None = None, *, project: str | None = None
) -> list[dict[str, Any]]:
    """Validate a PEP 691 (v1.0) / PEP 700 (v1.1) project page; return its files.

    Checks the normalized ``name``, each file's filename, url (ending with the
    filename), ``hashes.sha256``, ``requires-python``, ``yanked`` (bool or a
    non-empty reason), ``core-metadata``/``dist-info-metadata`` (bool or hashes,
    agreeing), and for 1.1 ``size``, ``versions`` and ``upload-time``. With
    ``files_dir`` the hashes and sizes must match the files and ``.metadata`` files.
    """
    api_version = _check_meta(data)
    name = data.get("name")
    _require(isinstance(name, str) and bool(name), "name is missing")
    assert isinstance(name, str)
    _require(name == normalize(name), f"name {name!r} is not normalized")
    if project is not None:
        _require(name == normalize(project), f"page is for {name}, not {project}")
    files = data.get("files")
    _require(isinstance(files, list), "files is missing or not a list")
    assert isinstance(files, list)
    minor = int(api_version.split(".")[1])
    versions = data.get("versions")
    if minor >= 1:
        _require(
            isinstance(versions, list) and all(isinstance(v, str) for v in versions),
            "api 1.1 needs a versions list of strings",
        )
    seen: set[str] = set()
    for item in files:
        _require(isinstance(item, dict), f"file entry {item!r} is not an object")
        filename = item.get("filename")
        _require(isinstance(filename, str) and bool(filename), f"file without filename: {item}")
        assert isinstance(filename, str)
        _require("/" not in filename, f"{filename}: filename holds a /")
        _require(filename not in seen, f"{filename} listed twice")
        seen.add(filename)
        if _project_of(filename) is not None:
            _require(_project_of(filename) == name, f"{filename} is not a file of {name}")
        url = item.get("url")
        _require(isinstance(url, str) and bool(url), f"{filename}: url is missing")
        assert isinstance(url, str)
        _require(_last_segment(url) == filename, f"{filename}: url {url!r} is another file")
        hashes = _check_hashes(item.get("hashes"), filename)
        _require("sha256" in hashes, f"{filename}: no sha256 hash")
        requires_python = item.get("requires-python")
        _require(
            requires_python is None or isinstance(requires_python, str),
            f"{filename}: requires-python must be a string",
        )
        if isinstance(requires_python, str):
            _check_specifier(requires_python, filename)
        yanked = item.get("yanked", False)
        _require(
            isinstance(yanked, bool) or (isinstance(yanked, str) and bool(yanked)),
            f"{filename}: yanked must be a bool or a non-empty reason, got {yanked!r}",
        )
        metadata = {key: item[key] for key in _METADATA_KEYS if key in item}
        _require(
            len({repr(value) for value in metadata.values()}) <= 1,
            f"{filename}: core-metadata and dist-info-metadata disagree",
        )
        metadata_hashes: dict[str, str] | None = None
        for key, value in metadata.items():
            if not isinstance(value, bool):
                metadata_hashes = _check_hashes(value, f"{filename} {key}")
        if minor >= 1:
            size = item.get("size")
            _require(
                isinstance(size, int) and not isinstance(size, bool) and size >= 0,
                f"{filename}: api 1.1 needs an integer size, got {size!r}",
            )
            version = _version_of(filename)
            if version is not None and isinstance(versions, list):
                _require(version in versions, f"{filename}: version {version} not in versions")
        if "upload-time" in item:
            upload_time = item["upload-time"]
            _require(
                isinstance(upload_time, str) and bool(_UPLOAD_TIME.fullmatch(upload_time)),
                f"{filename}: upload-time {upload_time!r} is not yyyy-mm-ddThh:mm:ss[.ffffff]Z",
            )
        if files_dir is not None:
            path = _locate(files_dir, filename)
            _require(
                _file_sha256(path) == hashes["sha256"], f"{filename}: sha256 is not the file's"
            )
            if "size" in item:
                _require(item["size"] == path.stat().st_size, f"{filename}: size is not the file's")
            if metadata_hashes and "sha256" in metadata_hashes:
                sidecar = path.with_name(filename + ".metadata")
                _require(
                    sidecar.is_file(), f"{filename}: metadata offered but {sidecar} is missing"
                )
                _require(
                    _file_sha256(sidecar) == metadata_hashes["sha256"],
                    f"{filename}: metadata sha256 is not that of {sidecar.name}",
                )
    return files


def check_json_root(data: dict[str, Any]) -> list[str]:
    """Validate a PEP 691 root page; return the normalized project names in order."""
    _check_meta(data)
    projects = data.get("projects")
    _require(isinstance(projects, list), "projects is missing or not a list")
    assert isinstance(projects, list)
    names: list[str] = []
    for entry in projects:
        _require(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"],
            f"project entry {entry!r} has no name",
        )
        canonical = normalize(entry["name"])
        _require(canonical not in names, f"{canonical} listed twice")
        names.append(canonical)
    return names
