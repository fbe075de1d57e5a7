"""``current_repodata.json``: the newest of everything plus what it needs.

conda reads it first for a fast solve and falls back to ``repodata.json`` when
the solve fails. The selection follows conda-index's ``build_current_repodata``:

1. every build of the newest version of each name (conda version order via
   py-rattler, never string order; a version equal in conda's order, such as
   ``1.10.0`` for ``1.10``, counts as the same version; conda-index's
   ``name=version`` query is a prefix match that also takes ``1.10a1``), and of the newest
   version matching each pin of ``current_index_versions`` (``3.11`` means the
   ``3.11.*`` series, as conda-index's ``python=3.11`` does);
2. for a name whose kept records carry features, the newest record without
   features that is no newer than them. conda-index does this last; as every
   name's newest version is kept from the start, doing it first picks the same;
3. for each dependency that no kept record satisfies, every build of the
   newest version that does. conda-index does this once, for the records of
   step 1; we repeat it until nothing is missing, so the file is self-consistent.

A ``.tar.bz2`` whose ``.conda`` twin exists is left out before selecting, as
conda itself does when it reads repodata. Records whose version cannot be parsed
are never selected. Unlike conda-index, ``legacy_bz2_md5`` is not added to the
``.conda`` records: they are shared with repodata.json and must stay as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import rattler

from reconciler.conda.matching import DependencySpec, RecordView, parse_spec
from reconciler.conda.repodata import REPODATA_VERSION

_SECTIONS = ("packages", "packages.conda")


# A ``depends`` entry, parsed and matched by rattler (see reconciler.conda.matching).
Dependency = DependencySpec
parse_dependency = parse_spec


@functools.lru_cache(maxsize=65536)
def _parse_version(text: str) -> rattler.Version | None:
    try:
        return rattler.Version(text)
    except Exception:
        return None


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _pin_spec(pin: str) -> rattler.VersionSpec | None:
    """A pin such as ``3.11`` means that version series (``3.11.*``); operators pass through."""
    text = str(pin).strip()
    if not any(op in text for op in "<>=!~*,|"):
        text = f"{text}.*"
    try:
        return rattler.VersionSpec(text)
    except Exception:
        return None


class _Candidate:
    """One selectable record, with what ordering and matching need parsed once."""

    __slots__ = ("filename", "has_features", "key", "record", "version", "view")

    def __init__(
        self, filename: str, record: Mapping[str, Any], version: rattler.Version, subdir: str
    ):
        self.filename = filename
        self.record = record
        self.version = version
        self.view = RecordView(record, subdir)
        self.has_features = bool(record.get("features") or record.get("track_features"))
        # conda's order within one name: version, build number, timestamp; the build
        # string last only so that equal keys still sort the same way every time.
        build = str(record.get("build", ""))
        number = _as_int(record.get("build_number"))
        self.key = (version, number, _as_int(record.get("timestamp")), build)

    def satisfies(self, dependency: DependencySpec) -> bool:
        return dependency.matches(self.view)


def _conda_twin(filename: str) -> str | None:
    return filename[: -len(".tar.bz2")] + ".conda" if filename.endswith(".tar.bz2") else None


def _groups(repodata: Mapping[str, Any], subdir: str) -> dict[str, list[_Candidate]]:
    """Selectable records by lower-cased name, newest first."""
    conda: Mapping[str, Any] = repodata.get("packages.conda") or {}
    groups: dict[str, list[_Candidate]] = {}
    for section in _SECTIONS:
        for filename, record in (repodata.get(section) or {}).items():
            if section == "packages" and _conda_twin(filename) in conda:
                continue  # the .conda twin stands for both
            name = record.get("name")
            version_text = record.get("version")
            if not isinstance(name, str) or not isinstance(version_text, str):
                continue
            version = _parse_version(version_text)
            if version is None:
                continue
            groups.setdefault(name.lower(), []).append(
                _Candidate(filename, record, version, subdir)
            )
    for group in groups.values():
        group.sort(key=lambda c: c.key, reverse=True)
    return groups


class _Selection:
    """The kept records, grown until every dependency in this subdir is satisfied."""

    def __init__(self, groups: dict[str, list[_Candidate]]) -> None:
        self.groups = groups
        self.kept: dict[str, list[_Candidate]] = {}
        self._kept_files: set[str] = set()
        self._pending: list[_Candidate] = []
        # Specs whose outcome is final: satisfied ones stay satisfied (the selection
        # only grows), and those nothing here satisfies never will be.
        self._settled: set[str] = set()

    def keep_version(self, name: str, version: rattler.Version) -> None:
        """Keep every build of ``version`` of ``name``."""
        for candidate in self.groups[name]:
            if candidate.version == version:
                self.keep(name, candidate)

    def keep(self, name: str, candidate: _Candidate) -> None:
        if candidate.filename not in self._kept_files:
            self._kept_files.add(candidate.filename)
            self.kept.setdefault(name, []).append(candidate)
            self._pending.append(candidate)

    def close(self) -> None:
        """Add what the kept records need, until nothing is missing."""
        # Which version fills a gap can depend on which dependency is seen first, so
        # rounds go in filename order: the result never depends on dict order.
        while self._pending:
            batch = sorted(self._pending, key=lambda c: c.filename)
            self._pending = []
            for candidate in batch:
                self._close_one(candidate)

    def _close_one(self, candidate: _Candidate) -> None:
        for spec in candidate.record.get("depends") or ():
            if not isinstance(spec, str) or spec in self._settled:
                continue
            self._settled.add(spec)
            dependency = parse_dependency(spec)
            if dependency is None or dependency.name not in self.groups:
                continue  # unparseable, or provided by another subdir (noarch)
            name = dependency.name
            if any(c.satisfies(dependency) for c in self.kept.get(name, ())):
                continue
            newest = next((c for c in self.groups[name] if c.satisfies(dependency)), None)
            if newest is not None:  # else unsatisfiable here: the solver will say so
                self.keep_version(name, newest.version)

    def add_plain_builds(self) -> None:
        """For names whose kept records carry features, keep a plain record too."""
        for name, kept in list(self.kept.items()):
            if not any(c.has_features for c in kept):
                continue
            newest = max(c.version for c in kept)
            plain = next(
                (c for c in self.groups[name] if c.version <= newest and not c.has_features),
                None,
            )
            if plain is not None:
                self.keep(name, plain)

    def records(self) -> list[_Candidate]:
        return [c for kept in self.kept.values() for c in kept]


def build_current_repodata(
    subdir: str,
    repodata: Mapping[str, Any],
    pins: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The current_repodata.json for one subdir's (patched) ``repodata``.

    ``pins`` maps a name to extra version series to keep (conda-index's
    ``current_index_versions``, e.g. ``{"python": ["3.10", "3.11"]}``). Records
    are shared with ``repodata``, not copied.
    """
    groups = _groups(repodata, subdir)
    selection = _Selection(groups)
    for name, group in groups.items():
        selection.keep_version(name, group[0].version)
    for pin_name, versions in (pins or {}).items():
        name = pin_name.lower()
        group = groups.get(name, [])
        for pin in [versions] if isinstance(versions, str) else versions:
            spec = _pin_spec(pin)
            match = next((c for c in group if spec and spec.matches(c.version)), None)
            if match is not None:  # conda-index fails here; a pin ahead of the channel is fine
                selection.keep_version(name, match.version)
    selection.add_plain_builds()
    selection.close()

    chosen = sorted(selection.records(), key=lambda c: c.filename)
    result = {key: value for key, value in repodata.items() if key not in _SECTIONS}
    result["info"] = dict(repodata.get("info") or {"subdir": subdir})
    result["packages"] = {c.filename: c.record for c in chosen if c.filename.endswith(".tar.bz2")}
    result["packages.conda"] = {
        c.filename: c.record for c in chosen if c.filename.endswith(".conda")
    }
    result["removed"] = list(repodata.get("removed") or [])
    result.setdefault("repodata_version", REPODATA_VERSION)
    return result
