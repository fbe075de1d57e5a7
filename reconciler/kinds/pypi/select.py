"""Which files of a project's page a PyPI mirror keeps, with the reason for each.

Each file passes the requirement (name and versions), then the mirror's filters
and the channel's, in a fixed order so the first failing test is the reason:
pre-release, yanked, kind, wheel tags, upload date. ``latest`` then keeps the
newest N of the versions still in, per project. Unset settings default to
``prerelease: false`` and ``yanked: false`` at mirror level and to no constraint
at channel level, so the channel can only narrow what its mirrors take.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.version import Version

from reconciler.config.models import PypiFilters, TagRule
from reconciler.kinds.pypi.names import Distribution, normalize, parse_filename
from reconciler.kinds.pypi.pages import DistFile


@dataclass(frozen=True)
class Verdict:
    file: DistFile
    dist: Distribution | None
    selected: bool
    reason: str


@dataclass(frozen=True)
class Level:
    """One filter block and where it comes from (for reasons)."""

    filters: PypiFilters
    where: str  # e.g. "mirror pypi-core" or "channel py"
    mirror_level: bool


def _tag_matches(rule: TagRule, tag: Tag) -> bool:
    return all(
        pattern is None or fnmatch.fnmatchcase(value, pattern)
        for pattern, value in (
            (rule.python, tag.interpreter),
            (rule.abi, tag.abi),
            (rule.platform, tag.platform),
        )
    )


def _describe_tag_rule(rule: TagRule) -> str:
    parts = [
        f"{k}={v}"
        for k, v in (("python", rule.python), ("abi", rule.abi), ("platform", rule.platform))
        if v is not None
    ]
    return "{" + ", ".join(parts) + "}"


def _check(level: Level, dist: Distribution, item: DistFile, pre_named: bool) -> str | None:
    """Why ``level`` leaves the file out, or None."""
    f = level.filters
    prerelease = f.prerelease if f.prerelease is not None else (not level.mirror_level)
    if dist.version.is_prerelease and not prerelease and not pre_named:
        return f"pre-release {dist.version} ({level.where}: prerelease: false)"
    yanked = f.yanked if f.yanked is not None else (not level.mirror_level)
    if item.yanked is not False and not yanked:
        why = f": {item.yanked}" if isinstance(item.yanked, str) else ""
        return f"yanked{why} ({level.where}: yanked: false)"
    if f.kinds is not None and dist.kind not in f.kinds:
        return f"{dist.kind} ({level.where}: kinds: {', '.join(f.kinds)})"
    if dist.kind == "wheel" and f.wheel_tags is not None:
        rules = f.wheel_tags
        if rules.include and not any(
            _tag_matches(rule, tag) for rule in rules.include for tag in dist.tags
        ):
            return f"wheel tags match no include rule ({level.where}: wheel_tags.include)"
        for index, rule in enumerate(rules.exclude):
            if any(_tag_matches(rule, tag) for tag in dist.tags):
                return (
                    f"wheel tag excluded ({level.where}: wheel_tags.exclude[{index}] "
                    f"{_describe_tag_rule(rule)})"
                )
    if f.date is not None:
        when = item.upload_time
        if when is None:
            return f"upstream gives no upload time ({level.where}: date)"
        uploaded = f"uploaded {when.isoformat()}"
        if f.date.after is not None and when < f.date.after:
            return f"{uploaded}, before date.after {f.date.after.isoformat()} ({level.where})"
        if f.date.before is not None and when >= f.date.before:
            return f"{uploaded}, not before date.before {f.date.before.isoformat()} ({level.where})"
    return None


def select_files(
    requirement: Requirement, files: Sequence[DistFile], levels: Sequence[Level]
) -> list[Verdict]:
    """A verdict for every file of the page, in page order."""
    project = normalize(requirement.name)
    specifier = requirement.specifier
    # Like pip: a requirement that names a pre-release (">=2.0rc1") allows them.
    pre_named = bool(specifier.prereleases)
    verdicts: list[Verdict] = []
    for item in files:
        try:
            dist = parse_filename(item.filename)
        except ValueError as exc:
            verdicts.append(Verdict(item, None, False, f"unreadable filename: {exc}"))
            continue
        if dist.project != project:
            verdicts.append(Verdict(item, dist, False, f"belongs to project {dist.project}"))
            continue
        if specifier and not specifier.contains(dist.version, prereleases=True):
            reason = f"version {dist.version} not in {project}{specifier}"
            verdicts.append(Verdict(item, dist, False, reason))
            continue
        refusal = next(
            (r for level in levels if (r := _check(level, dist, item, pre_named)) is not None),
            None,
        )
        if refusal is not None:
            verdicts.append(Verdict(item, dist, False, refusal))
        else:
            verdicts.append(Verdict(item, dist, True, f"requested as {requirement}"))
    return _latest(verdicts, levels)


def _latest(verdicts: list[Verdict], levels: Sequence[Level]) -> list[Verdict]:
    limits = [(level.filters.latest, level.where) for level in levels if level.filters.latest]
    if not limits:
        return verdicts
    limit, where = min(limits)
    versions: set[Version] = {v.dist.version for v in verdicts if v.selected and v.dist}
    kept = set(sorted(versions, reverse=True)[:limit])
    out = []
    for verdict in verdicts:
        if verdict.selected and verdict.dist and verdict.dist.version not in kept:
            reason = f"older than the newest {limit} versions ({where}: latest: {limit})"
            verdict = Verdict(verdict.file, verdict.dist, False, reason)
        out.append(verdict)
    return out
