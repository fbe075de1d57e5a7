"""Which upstream records a mirror brings into its channel, and why.

A record enters when it passes the channel's filter block and the mirror's.
With ``dependencies: true`` the dependency closure of what was selected is added
from the same upstream (newest match first); a needed dependency that an
exclude rule removes is reported as a warning naming both packages and the rule.
Untrusted records (unsafe filenames, a ``subdir`` that disagrees with the folder)
are refused before anything else looks at them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import rattler

from reconciler.conda.current_repodata import parse_dependency
from reconciler.conda.names import filename_problem
from reconciler.conda.records import record_problem
from reconciler.filters import Candidate, Decision, FilterEngine

# (subdir, filename)
Key = tuple[str, str]


@dataclass
class Selection:
    selected: dict[Key, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[Key, Decision] = field(default_factory=dict)
    records: dict[Key, Mapping[str, Any]] = field(default_factory=dict)  # every candidate
    warnings: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def safe_records(
    subdir: str, repodata: Mapping[str, Any], source: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The usable records of an upstream subdir, and why the others were refused."""
    records: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    for section, suffix in (("packages", ".tar.bz2"), ("packages.conda", ".conda")):
        for filename, record in (repodata.get(section) or {}).items():
            problem = filename_problem(str(filename))
            if problem is None and not str(filename).endswith(suffix):
                problem = f"listed under {section!r} with the wrong suffix"
            if problem is None:
                problem = record_problem(record)
            declared = record.get("subdir")
            if problem is None and declared is not None and declared != subdir:
                problem = f"record says subdir {declared!r} but is listed in {subdir}"
            if problem is not None:
                refused.append(f"{source}/{subdir}: refusing {filename!r}: {problem}")
                continue
            records[str(filename)] = record
    return records, refused


def _number(value: Any) -> int:
    """An upstream integer field; what is not one (a list, "x", NaN) counts as 0."""
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _newest_key(record: Mapping[str, Any]) -> tuple[Any, int, int]:
    try:
        version: Any = rattler.Version(str(record.get("version", "")))
    except Exception:
        version = rattler.Version("0")
    return (version, _number(record.get("build_number")), _number(record.get("timestamp")))


def select(
    upstream: Mapping[str, Mapping[str, dict[str, Any]]],
    channel_filters: FilterEngine,
    mirror_filters: FilterEngine,
    *,
    dependencies: bool = False,
) -> Selection:
    """Select from ``upstream`` (subdir → filename → record)."""
    result = Selection()
    candidates = [
        Candidate(subdir, filename, record)
        for subdir, records in upstream.items()
        for filename, record in records.items()
    ]
    mirror_decisions = mirror_filters.evaluate(candidates)
    if channel_filters.per_record:
        # Without a `latest` cut the channel's decision on a record depends on that
        # record alone: only what the mirror keeps needs asking (a big upstream
        # filtered by name is mostly left out here).
        kept = [c for c in candidates if mirror_decisions[(c.subdir, c.filename)].selected]
        channel_decisions = channel_filters.evaluate(kept)
    else:
        channel_decisions = channel_filters.evaluate(candidates)
    for candidate in candidates:
        key = (candidate.subdir, candidate.filename)
        result.records[key] = candidate.record
        second = mirror_decisions[key]
        first = channel_decisions.get(key)
        decision = first if first is not None and not first.selected else second
        result.decisions[key] = decision
        if decision.selected:
            result.selected[key] = dict(candidate.record)
    if dependencies:
        _add_dependencies(upstream, channel_filters, mirror_filters, result)
    return result


def _add_dependencies(
    upstream: Mapping[str, Mapping[str, dict[str, Any]]],
    channel_filters: FilterEngine,
    mirror_filters: FilterEngine,
    result: Selection,
) -> None:
    by_name: dict[str, list[tuple[Key, dict[str, Any]]]] = {}
    for subdir, records in upstream.items():
        for filename, record in records.items():
            by_name.setdefault(str(record["name"]), []).append(((subdir, filename), record))
    for group in by_name.values():
        # Newest first; among equals .conda first (as conda prefers it), then by key: the
        # choice must not follow the order the upstream happens to list records in.
        group.sort(key=lambda item: item[0])
        group.sort(
            key=lambda item: (_newest_key(item[1]), item[0][1].endswith(".conda")), reverse=True
        )

    # In key order too: a dependency one package already pulled in satisfies the next.
    pending = sorted(result.selected.items())
    warned: set[tuple[str, str]] = set()
    while pending:
        added: list[tuple[Key, dict[str, Any]]] = []
        for (subdir, filename), record in pending:
            depends = record.get("depends")
            # Upstream metadata: a depends that is not a list names nothing we can follow.
            for spec in depends if isinstance(depends, list) else ():
                dependency = parse_dependency(spec) if isinstance(spec, str) else None
                if dependency is None or dependency.name not in by_name:
                    continue
                usable = [
                    (key, rec)
                    for key, rec in by_name[dependency.name]
                    if key[0] in (subdir, "noarch") and dependency.matches_record(rec)
                ]
                if any(key in result.selected for key, _ in usable):
                    continue
                chosen = None
                blocked_by = None
                for key, rec in usable:
                    candidate = Candidate(key[0], key[1], rec)
                    rule = channel_filters.exclusion(candidate) or mirror_filters.exclusion(
                        candidate
                    )
                    if rule is None:
                        chosen = (key, rec)
                        break
                    blocked_by = blocked_by or (key[1], rule)
                if chosen is not None:
                    key, rec = chosen
                    result.selected[key] = dict(rec)
                    result.decisions[key] = Decision(True, f"dependency of {filename} ({spec})")
                    added.append((key, rec))
                elif blocked_by is not None and (filename, spec) not in warned:
                    warned.add((filename, spec))
                    result.warnings.append(
                        f"{subdir}/{filename} needs {spec!r}, but {blocked_by[0]} is excluded "
                        f"by {blocked_by[1]}"
                    )
        pending = sorted(added)
