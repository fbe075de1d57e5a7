"""The filter engine: which records a filter block lets through, and why.

A block applies in this order: ``include`` (a record must match one rule, when
any are given), ``exclude`` (a match removes it unless one of that rule's
``except`` rules also matches), ``date`` (on the record's ``timestamp``, ms or
s; a record without one is kept), then ``latest: N`` (newest N versions per
name in each subdir among what is left, as conda-mirror counts them: a platform
whose builds lag, or noarch, keeps its own newest N). ``dependencies`` is
resolved by the mirror selection, which knows the upstream. Every decision
carries the rule that made it, for plans and ``explain``; when a licence rule
was asked and the record's licence was not read verbatim, the reason says how it
was read ("licence 'GPL v3' read as GPL-3.0-only").
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import rattler
from rattler.package import BuildString

from reconciler.config.models import FilterBlock, Rule
from reconciler.licenses import family_matches, license_matches, license_note


class Candidate(NamedTuple):
    """One record considered by a filter (a tuple: hundreds of thousands are made)."""

    subdir: str
    filename: str
    record: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.record.get("name", ""))

    @property
    def key(self) -> tuple[str, str]:
        return (self.subdir, self.filename)


@dataclass(frozen=True)
class Decision:
    selected: bool
    reason: str  # which rule decided, e.g. "excluded by filters.exclude[0] (license: GPL)"


@functools.lru_cache(maxsize=4096)
def _version_spec(text: str) -> rattler.VersionSpec:
    return rattler.VersionSpec(text)


@functools.lru_cache(maxsize=4096)
def _match_spec(text: str) -> rattler.MatchSpec:
    return rattler.MatchSpec(text)


@functools.lru_cache(maxsize=65536)
def _version(text: str) -> rattler.Version | None:
    try:
        return rattler.Version(text)
    except Exception:
        return None


def _package_record(candidate: Candidate) -> rattler.PackageRecord:
    r = candidate.record
    return rattler.PackageRecord(
        name=candidate.name,
        version=str(r.get("version", "0")),
        build=BuildString(str(r.get("build", ""))),
        build_number=int(r.get("build_number") or 0),
        subdir=str(r.get("subdir") or candidate.subdir),
        depends=list(r.get("depends") or []),
        constrains=list(r.get("constrains") or []),
        license=r.get("license"),
        license_family=r.get("license_family"),
    )


def describe_rule(rule: Rule) -> str:
    """``license: GPL, subdir: win-*`` — the keys a rule sets, for messages."""
    parts = [
        f"{key}: {getattr(rule, key)}"
        for key in ("name", "version", "build", "spec", "license", "license_family", "subdir")
        if getattr(rule, key) is not None
    ]
    return ", ".join(parts)


def _text(value: Any) -> str | None:
    """A record's string field; anything else (a list, a number) from upstream counts as unset."""
    return value if isinstance(value, str) else None


def _glob(text: str, pattern: str) -> bool:
    """``fnmatchcase``, without compiling a pattern that has no wildcard (a list of 400
    package names would compile 400 regular expressions)."""
    if "*" in pattern or "?" in pattern or "[" in pattern:
        return fnmatch.fnmatchcase(text, pattern)
    return text == pattern


def rule_matches(rule: Rule, candidate: Candidate) -> bool:
    """Every key the rule gives must match (AND)."""
    record = candidate.record
    if rule.name is not None and not _glob(candidate.name, rule.name):
        return False
    if rule.subdir is not None and not fnmatch.fnmatchcase(candidate.subdir, rule.subdir):
        return False
    if rule.build is not None and not fnmatch.fnmatchcase(str(record.get("build", "")), rule.build):
        return False
    if rule.version is not None:
        version = _version(str(record.get("version", "")))
        if version is None or not _version_spec(rule.version).matches(version):
            return False
    if rule.license_family is not None and not family_matches(
        rule.license_family, _text(record.get("license_family"))
    ):
        return False
    if rule.license is not None and not license_matches(
        rule.license, _text(record.get("license")), _text(record.get("license_family"))
    ):
        return False
    if rule.spec is not None:
        try:
            if not _match_spec(rule.spec).matches(_package_record(candidate)):
                return False
        except Exception:
            return False  # a record rattler cannot represent matches no spec
    return True


def _timestamp(record: Mapping[str, Any]) -> dt.datetime | None:
    value = record.get("timestamp")
    if not isinstance(value, int | float) or not value > 0:  # NaN is not > 0 either
        return None
    seconds = value / 1000 if value > 10**11 else value  # ms in modern records, s in old
    try:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    except (OverflowError, ValueError, OSError):
        # Beyond year 9999 (an upstream's garbage): later than any window.
        return dt.datetime.max.replace(tzinfo=dt.timezone.utc)


class FilterEngine:
    """Evaluate one filter block; ``where`` names it in reasons (e.g. ``filters``)."""

    def __init__(self, block: FilterBlock, where: str = "filters") -> None:
        self.block = block
        self.where = where
        rules = [*block.include, *block.exclude, *(k for r in block.exclude for k in r.except_)]
        self._asks_licence = any(r.license is not None for r in rules)
        # Include rules naming one package (no glob) are only asked about that name:
        # a list of 200 names costs one lookup per record, not 200 glob matches.
        self._include_by_name: dict[str, list[Rule]] = {}
        self._include_others: list[Rule] = []
        for rule in block.include:
            if rule.name is not None and not any(c in rule.name for c in "*?["):
                self._include_by_name.setdefault(rule.name, []).append(rule)
            else:
                self._include_others.append(rule)
        # Decisions are frozen, so one of each reason serves every record it decides (a
        # big upstream asks hundreds of thousands of times).
        self._selected = Decision(True, "selected")
        self._unincluded = Decision(False, f"matches no {where}.include rule")
        self._excluded = [
            Decision(False, f"excluded by {where}.exclude[{i}] ({describe_rule(rule)})")
            for i, rule in enumerate(block.exclude)
        ]
        self._before = Decision(False, f"built before {where}.date.after")
        self._after = Decision(False, f"built on or after {where}.date.before")
        self._noted: dict[tuple[Decision, str], Decision] = {}

    @property
    def is_empty(self) -> bool:
        b = self.block
        return not (b.include or b.exclude or b.date or b.latest)

    def digest_source(self) -> str:
        """A stable text of the block, for fingerprints."""
        return self.block.model_dump_json(by_alias=True)

    def _rules(self, candidate: Candidate) -> Decision:
        decision = self._decide(candidate)
        if self._asks_licence:
            record = candidate.record
            note = license_note(_text(record.get("license")), _text(record.get("license_family")))
            if note is not None:
                noted = self._noted.get((decision, note))
                if noted is None:
                    noted = Decision(decision.selected, f"{decision.reason}; {note}")
                    self._noted[(decision, note)] = noted
                return noted
        return decision

    def _decide(self, candidate: Candidate) -> Decision:
        block = self.block
        # Plain loops, not any(): this runs for every record of a big upstream.
        if block.include and not self._included(candidate):
            return self._unincluded
        for i, exclude in enumerate(block.exclude):
            if not rule_matches(exclude, candidate):
                continue
            for keep in exclude.except_:
                if rule_matches(keep, candidate):
                    break
            else:
                return self._excluded[i]
        window = block.date
        if window is not None:
            stamp = _timestamp(candidate.record)
            if stamp is not None:
                if window.after is not None and stamp < window.after:
                    return self._before
                if window.before is not None and stamp >= window.before:
                    return self._after
        return self._selected

    def _included(self, candidate: Candidate) -> bool:
        for rule in self._include_by_name.get(candidate.name, ()):
            if rule_matches(rule, candidate):
                return True
        return any(rule_matches(rule, candidate) for rule in self._include_others)

    def exclusion(self, candidate: Candidate) -> str | None:
        """The exclude rule (as a reason) that removes ``candidate``, ignoring the rest."""
        for i, exclude in enumerate(self.block.exclude):
            if rule_matches(exclude, candidate) and not any(
                rule_matches(keep, candidate) for keep in exclude.except_
            ):
                return f"{self.where}.exclude[{i}] ({describe_rule(exclude)})"
        return None

    @property
    def per_record(self) -> bool:
        """True when each decision depends on the record alone (no ``latest`` cut)."""
        return self.block.latest is None

    def evaluate(self, candidates: Iterable[Candidate]) -> dict[tuple[str, str], Decision]:
        """A decision for every candidate, keyed by ``(subdir, filename)``."""
        decisions: dict[tuple[str, str], Decision] = {}
        # By name and subdir: `latest` counts versions in each subdir on its own.
        survivors: dict[tuple[str, str], list[Candidate]] = {}
        for candidate in candidates:
            decision = self._rules(candidate)
            decisions[candidate.key] = decision
            if decision.selected:
                survivors.setdefault((candidate.name, candidate.subdir), []).append(candidate)
        latest = self.block.latest
        if latest is not None:
            older: dict[str, Decision] = {}
            for (_name, subdir), group in survivors.items():
                texts = [str(c.record.get("version", "")) for c in group]
                versions = set(texts)
                if len(versions) <= latest:
                    continue  # as many versions as it keeps, or fewer: all stay
                parsed = {text: _version(text) for text in versions}
                # Versions equal in conda's order (1.0 and 1.0.0) are one version, kept or
                # dropped together; ranking their texts would follow the set's hash order,
                # which changes from one process to the next.
                distinct: list[rattler.Version] = []
                for version in sorted((v for v in parsed.values() if v is not None), reverse=True):
                    if not distinct or version != distinct[-1]:
                        distinct.append(version)
                newest = distinct[:latest]
                # Unparseable versions count as the oldest, ranked by their text.
                room = latest - len(newest)
                unparsed = sorted(text for text, v in parsed.items() if v is None)[: max(room, 0)]
                # Decided once per version text, not per record.
                kept = {
                    text
                    for text, found in parsed.items()
                    if (text in unparsed if found is None else found >= newest[-1])
                }
                if len(kept) == len(versions):
                    continue
                dropped = older.get(subdir)
                if dropped is None:
                    dropped = older[subdir] = Decision(
                        False, f"older than the newest {latest} in {subdir} by {self.where}.latest"
                    )
                for candidate, text in zip(group, texts, strict=True):
                    if text not in kept:
                        decisions[candidate.key] = dropped
        return decisions
