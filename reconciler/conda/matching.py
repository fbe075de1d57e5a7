"""Dependency specs against repodata records, decided by py-rattler as its solver does.

A ``depends`` entry is parsed once by ``rattler.MatchSpec`` (lenient, as rattler
reads repodata) and compared with a record through rattler alone: versions in
conda's order, build strings as exact text, globs or ``^…$`` regexes run by
rattler's linear-time regex engine — an upstream's ``dep * ^(a+)+$`` cannot make
matching backtrack — build numbers, hashes and the other bracket keys.

Most specs give a name and a version only; those are checked with the
``VersionSpec`` of the parsed spec on the record's parsed version, the same test
without building a ``PackageRecord``. Every other spec is checked by
``MatchSpec.matches`` on the record as a ``PackageRecord``, built once per record.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import rattler
from rattler.package import BuildString


@functools.lru_cache(maxsize=65536)
def parse_version(text: str) -> rattler.Version | None:
    try:
        return rattler.Version(text)
    except Exception:
        return None


def _int(value: Any) -> int:
    """An upstream integer field; what is not one (a list, "x", NaN) counts as 0."""
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _digest(value: Any, length: int) -> bytes | None:
    if not isinstance(value, str) or len(value) != length:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def package_record(record: Mapping[str, Any], subdir: str) -> rattler.PackageRecord | None:
    """``record`` as rattler sees it (None when rattler cannot represent it)."""
    size = record.get("size")
    try:
        return rattler.PackageRecord(
            name=str(record.get("name", "")),
            version=str(record.get("version", "")),
            build=BuildString(str(record.get("build", ""))),
            build_number=_int(record.get("build_number")),
            subdir=str(record.get("subdir") or subdir),
            md5=_digest(record.get("md5"), 32),
            sha256=_digest(record.get("sha256"), 64),
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            license=_text(record.get("license")),
            license_family=_text(record.get("license_family")),
        )
    except Exception:
        return None


class RecordView:
    """One record with what matching needs parsed on first use, then kept."""

    __slots__ = ("_package", "_version", "name", "record", "subdir")

    _UNSET: Any = object()

    def __init__(self, record: Mapping[str, Any], subdir: str) -> None:
        self.record = record
        self.subdir = subdir
        self.name = str(record.get("name", "")).lower()
        self._version: Any = RecordView._UNSET
        self._package: Any = RecordView._UNSET

    @property
    def version(self) -> rattler.Version | None:
        if self._version is RecordView._UNSET:
            self._version = parse_version(str(self.record.get("version", "")))
        return self._version  # type: ignore[no-any-return]

    @property
    def package(self) -> rattler.PackageRecord | None:
        if self._package is RecordView._UNSET:
            self._package = package_record(self.record, self.subdir)
        return self._package  # type: ignore[no-any-return]


class DependencySpec:
    """One parsed ``depends`` entry."""

    __slots__ = ("conditional", "match_spec", "name", "text", "version_only", "version_spec")

    def __init__(self, text: str, match_spec: rattler.MatchSpec, name: str) -> None:
        self.text = text
        self.match_spec = match_spec
        self.name = name
        # A condition ("[when=...]") is for the solver to weigh; nothing here forces it.
        self.conditional = getattr(match_spec, "condition", None) is not None
        version = match_spec.version
        canonical = match_spec.to_canonical_string()
        self.version_only = canonical in (name, f'{name}[version="{version}"]')
        self.version_spec: rattler.VersionSpec | None = None
        if self.version_only and version is not None and str(version) != "*":
            try:
                self.version_spec = rattler.VersionSpec(str(version))
            except Exception:
                self.version_only = False  # let rattler's own matcher decide

    def __repr__(self) -> str:
        return f"DependencySpec({self.text!r})"

    def matches(self, view: RecordView) -> bool:
        """Whether the record satisfies this spec, by rattler's rules."""
        if view.name != self.name:
            return False
        if self.version_only:
            version = view.version
            if version is None:
                return False
            return self.version_spec is None or bool(self.version_spec.matches(version))
        package = view.package
        return package is not None and bool(self.match_spec.matches(package))

    def matches_record(self, record: Mapping[str, Any], subdir: str = "noarch") -> bool:
        return self.matches(RecordView(record, subdir))


@functools.lru_cache(maxsize=65536)
def parse_spec(text: str) -> DependencySpec | None:
    """A ``depends`` entry, or None when rattler cannot read it (nothing can satisfy it)."""
    try:
        match_spec = rattler.MatchSpec(text)
    except Exception:
        return None
    matcher = match_spec.name
    try:
        name = matcher.normalized if matcher is not None else None
    except Exception:
        return None
    if not name or not isinstance(name, str):
        return None
    return DependencySpec(text, match_spec, name)
