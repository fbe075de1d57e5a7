"""``current_repodata.json``: the newest of everything plus what it needs.

conda reads it first for a fast solve and falls back to ``repodata.json`` when
the solve fails. The selection follows conda-index:

1. every build of the newest version of each name (conda version order, never
   string order), and of the newest version matching each pin of
   ``current_index_versions``;
2. for a name whose kept records all carry features, the newest earlier
   version without features as well;
3. for each dependency that no kept record satisfies, every build of the
   newest version that does. conda-index does this once; we repeat it until
   nothing is missing, so the file is self-consistent.

When both formats of one package are kept, only the ``.conda`` is listed.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rattler

from reconciler.conda.repodata import REPODATA_VERSION


@dataclass(frozen=True)
class _Candidate:
    filename: str
    section: str  # "packages" or "packages.conda"
    name: str
    version_text: str
    version: rattler.Version
    build: str
    build_number: int
    timestamp: int
    has_features: bool

    def key(self) -> tuple[rattler.Version, int, int]:
        return (self.version, self.build_number, self.timestamp)


@dataclass(frozen=True)
class Dependency:
    name: str
    version: rattler.VersionSpec | None
    build: str | None

    def matches(self, candidate: _Candidate) -> bool:
        if candidate.name != self.name:
            return False
        if self.version is not None and not self.version.matches(candidate.version):
            return False
        return self.build is None or fnmatch.fnmatchcase(candidate.build, self.build)

    def matches_record(self, record: Mapping[str, Any]) -> bool:
        """The same test on a repodata record."""
        if record.get("name") != self.name:
            return False
        if self.version is not None:
            version = _parse_version(str(record.get("version", "")))
            if version is None or not self.version.matches(version):
                return False
        return self.build is None or fnmatch.fnmatchcase(str(record.get("build", "")), self.build)


@functools.lru_cache(maxsize=65536)
def parse_dependency(spec: str) -> Dependency | None:
    """A dependency string as name + version spec + build glob (None if unparseable)."""
    try:
        match = rattler.MatchSpec(spec)
    except Exception:  # an unparseable dependency cannot be satisfied; ignore it
        return None
    name = match.name.normalized if match.name is not None else None
    if not name:
        return None
    version = rattler.VersionSpec(match.version) if match.version else None
    return Dependency(name, version, match.build)


@functools.lru_cache(maxsize=65536)
def _parse_version(text: str) -> rattler.Version | None:
    try:
        return rattler.Version(text)
    except Exception:
        return None


def _pin_spec(pin: str) -> rattler.VersionSpec | None:
    """A pin such as ``3.11`` means that version series (``3.11.*``); operators pass through."""
    text = pin.strip()
    if not any(op in text for op in "<>=!~*,|"):
        text = f"{text}.*"
    try:
        return rattler.VersionSpec(text)
    except Exception:
        return None


def _candidates(repodata: Mapping[str, Any]) -> dict[str, list[_Candidate]]:
    """Records grouped by name, newest first."""
    groups: dict[str, list[_Candidate]] = {}
    for section in ("packages", "packages.conda"):
        for filename, record in (repodata.get(section) or {}).items():
            name = record.get("name")
            version_text = record.get("version")
            if not isinstance(name, str) or not isinstance(version_text, str):
                continue
            version = _parse_version(version_text)
            if version is None:
                continue
            groups.setdefault(name, []).append(
                _Candidate(
                    filename=filename,
                    section=section,
                    name=name,
                    version_text=version_text,
                    version=version,
                    build=str(record.get("build", "")),
                    build_number=int(record.get("build_number") or 0),
                    timestamp=int(record.get("timestamp") or 0),
                    has_features=bool(record.get("features") or record.get("track_features")),
                )
            )
    for group in groups.values():
        group.sort(key=_Candidate.key, reverse=True)
    return groups


def _same_version(group: list[_Candidate], version: rattler.Version) -> list[_Candidate]:
    return [c for c in group if c.version == version]


def build_current_repodata(
    subdir: str,
    repodata: Mapping[str, Any],
    pins: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The current_repodata.json for one subdir's (patched) ``repodata``."""
    groups = _candidates(repodata)
    pins = pins or {}
    kept: dict[str, set[_Candidate]] = {}
    for name, group in groups.items():
        chosen = set(_same_version(group, group[0].version))
        for pin in pins.get(name, ()):
            spec = _pin_spec(pin)
            match = next((c for c in group if spec is not None and spec.matches(c.version)), None)
            if match is not None:
                chosen.update(_same_version(group, match.version))
        if all(c.has_features for c in chosen):
            newest = max(c.version for c in chosen)
            plain = next((c for c in group if c.version <= newest and not c.has_features), None)
            if plain is not None:
                chosen.add(plain)
        kept[name] = chosen

    records = {
        c.filename: repodata[c.section][c.filename] for group in kept.values() for c in group
    }
    pending = list(records)
    while pending:
        additions: list[str] = []
        for filename in pending:
            record = records[filename]
            for spec in record.get("depends") or ():
                dependency = parse_dependency(spec) if isinstance(spec, str) else None
                if dependency is None or dependency.name not in groups:
                    continue  # unparseable, or provided by another subdir (noarch)
                if any(dependency.matches(c) for c in kept.get(dependency.name, ())):
                    continue
                match = next((c for c in groups[dependency.name] if dependency.matches(c)), None)
                if match is None:
                    continue
                for candidate in _same_version(groups[dependency.name], match.version):
                    if candidate not in kept.setdefault(dependency.name, set()):
                        kept[dependency.name].add(candidate)
                        records[candidate.filename] = repodata[candidate.section][
                            candidate.filename
                        ]
                        additions.append(candidate.filename)
        pending = additions

    packages: dict[str, Any] = {}
    conda: dict[str, Any] = {}
    for filename in sorted(records):
        if filename.endswith(".conda"):
            conda[filename] = records[filename]
    for filename in sorted(records):
        twin = filename[: -len(".tar.bz2")] + ".conda"
        if filename.endswith(".tar.bz2") and twin not in conda:
            packages[filename] = records[filename]
    return {
        "info": dict(repodata.get("info") or {"subdir": subdir}),
        "packages": packages,
        "packages.conda": conda,
        "removed": list(repodata.get("removed") or []),
        "repodata_version": REPODATA_VERSION,
    }
