"""Which upstream records a mirror brings into its channel, and why.

A record enters when it passes the channel's filter block and the mirror's.
Untrusted records (unsafe filenames, a ``subdir`` that disagrees with the folder)
are refused before anything else looks at them.

With ``dependencies: true`` the selection is closed the way a solver needs it:
for every selected record and every platform the mirror serves, whatever the
upstream (restricted to the mirror's subdirs and the exclude rules) can install
with that record, the mirror can install too. A platform record's dependencies
are looked up in its own subdir and noarch; a noarch record's in noarch and each
platform subdir the mirror serves, one platform at a time (also when it entered as the
dependency of one platform's record: clients of every platform can ask for it).

The closure takes, transitively, every candidate that matches a dependency,
except those that an exclude rule removes and those that can never be installed
(a candidate whose own dependency has only excluded or uninstallable candidates).
That is a superset of every environment a solver can build around the selected
records from the restricted upstream — which newest candidate conflicts with
another record does not matter, as every candidate that can take part is there
— and it is found in time linear in the dependency edges, with each distinct
spec matched once per subdir by rattler. A per-root solve would find one
environment only.

A selected record that cannot be installed on a platform because an exclude
rule removes what it needs gets a warning naming the record, the dependency and
the rule (through any intermediate package that needs it); the warning has a
stable ``key``, so that it can be shown once rather than on every run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import rattler

from reconciler.conda.matching import DependencySpec, RecordView, parse_spec
from reconciler.conda.names import filename_problem
from reconciler.conda.records import record_problem
from reconciler.filters import Candidate, Decision, FilterEngine

# (subdir, filename)
Key = tuple[str, str]


@dataclass(frozen=True, order=True)
class SelectionWarning:
    """A warning about the selection; ``key`` stays the same while the situation does."""

    key: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Selection:
    selected: dict[Key, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[Key, Decision] = field(default_factory=dict)
    records: dict[Key, Mapping[str, Any]] = field(default_factory=dict)  # every candidate
    warnings: list[SelectionWarning] = field(default_factory=list)
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
    platforms: Iterable[str] | None = None,
) -> Selection:
    """Select from ``upstream`` (subdir → filename → record).

    ``platforms`` are the platform subdirs the mirror serves, where the
    dependencies of noarch records are looked up; by default, every subdir of
    ``upstream`` but noarch (which is what the mirror fetched).
    """
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
        decision = second
        if first is not None and (not first.selected or second.reason == "selected"):
            # Out by the channel's rules; or in by both, and the channel's reason may say
            # more (how a licence was read).
            decision = first
        result.decisions[key] = decision
        if decision.selected:
            result.selected[key] = dict(candidate.record)
    if dependencies:
        served = upstream if platforms is None else platforms
        closure = _Closure(
            upstream,
            (channel_filters, mirror_filters),
            sorted({s for s in served if s != "noarch"}),
        )
        closure.close(result)
    return result


# -- the dependency closure ---------------------------------------------------------------

# A noarch record's dependencies, when the mirror serves no platform subdir, are
# looked up in noarch alone: this stands for "no platform".
_NO_PLATFORM = "noarch"
# How many packages deep a warning follows what cannot be installed.
_BLAME_DEPTH = 4


class _Edge:
    """One dependency of one state: the states that satisfy it, and the excluded ones."""

    __slots__ = ("blocked", "spec", "supports")

    def __init__(self, spec: DependencySpec, supports: list[int], blocked: list[Key]) -> None:
        self.spec = spec
        self.supports = supports
        self.blocked = blocked


class _Closure:
    """The dependency closure of a selection over one upstream.

    A state is a record considered for one platform: a platform record for its
    own subdir, a noarch record once for each platform it is reached on. States
    are numbered in the order they are found (breadth first from the selected
    records, in key order), which makes every choice below independent of the
    order the upstream lists its records in.
    """

    def __init__(
        self,
        upstream: Mapping[str, Mapping[str, dict[str, Any]]],
        filters: tuple[FilterEngine, FilterEngine],
        platforms: list[str],
    ) -> None:
        self.upstream = upstream
        self.filters = filters
        self.platforms = platforms or [_NO_PLATFORM]
        self._names: dict[str, dict[str, list[str]]] = {}
        self._views: dict[Key, RecordView] = {}
        self._excluded: dict[Key, str | None] = {}
        self._matches: dict[tuple[str, str], tuple[Key, ...]] = {}
        self.keys: list[Key] = []
        self.state_platforms: list[str] = []
        self._states: dict[tuple[Key, str], int] = {}
        self._queue: deque[int] = deque()
        self.edges: list[list[_Edge]] = []

    # -- lookups, each computed once -------------------------------------------------

    def _by_name(self, subdir: str) -> dict[str, list[str]]:
        """Filenames of ``subdir`` by lower-cased name; a .tar.bz2 with a .conda twin is left
        out (clients take the .conda; both hold the same package)."""
        index = self._names.get(subdir)
        if index is None:
            index = {}
            records = self.upstream.get(subdir) or {}
            for filename, record in records.items():
                name = record.get("name")
                if not isinstance(name, str):
                    continue
                if filename.endswith(".tar.bz2") and f"{filename[:-8]}.conda" in records:
                    continue
                index.setdefault(name.lower(), []).append(filename)
            self._names[subdir] = index
        return index

    def _match(self, spec: DependencySpec, subdir: str) -> tuple[Key, ...]:
        """The records of ``subdir`` that satisfy ``spec``, in key order."""
        cache_key = (spec.text, subdir)
        found = self._matches.get(cache_key)
        if found is None:
            records = self.upstream.get(subdir) or {}
            hits: list[Key] = []
            for filename in self._by_name(subdir).get(spec.name, ()):
                key = (subdir, filename)
                view = self._views.get(key)
                if view is None:
                    view = self._views[key] = RecordView(records[filename], subdir)
                if spec.matches(view):
                    hits.append(key)
            found = self._matches[cache_key] = tuple(sorted(hits))
        return found

    def _exclusion(self, key: Key) -> str | None:
        """The exclude rule (channel's first, then the mirror's) that removes ``key``."""
        if key in self._excluded:
            return self._excluded[key]
        candidate = Candidate(key[0], key[1], self.upstream[key[0]][key[1]])
        channel, mirror = self.filters
        rule = channel.exclusion(candidate) or mirror.exclusion(candidate)
        self._excluded[key] = rule
        return rule

    def _state(self, key: Key, platform: str) -> int:
        found = self._states.get((key, platform))
        if found is None:
            # A noarch record is installable on every platform: whichever platform it
            # is reached on, it is looked at on all of them.
            for each in dict.fromkeys([*self._platforms_of(key), platform]):
                if (key, each) not in self._states:
                    self._states[(key, each)] = len(self.keys)
                    self.keys.append(key)
                    self.state_platforms.append(each)
                    self._queue.append(self._states[(key, each)])
            found = self._states[(key, platform)]
        return found

    def _all_states(self, key: Key) -> list[int]:
        """The states of one record: one per platform for noarch, else one."""
        return [self._states[(key, platform)] for platform in self._platforms_of(key)]

    def _platforms_of(self, key: Key) -> list[str]:
        return self.platforms if key[0] == "noarch" else [key[0]]

    # -- the three passes ------------------------------------------------------------

    def _explore(self) -> None:
        """Every state reachable through candidates no exclude rule removes."""
        while self._queue:
            state = self._queue.popleft()
            key, platform = self.keys[state], self.state_platforms[state]
            lookup = ("noarch",) if platform == "noarch" else (platform, "noarch")
            depends = self.upstream[key[0]][key[1]].get("depends")
            edges: list[_Edge] = []
            # Upstream metadata: a depends that is not a list names nothing we can follow.
            for text in depends if isinstance(depends, list) else ():
                spec = parse_spec(text) if isinstance(text, str) else None
                if spec is None:
                    continue  # unreadable: nothing can satisfy it, for a solver either
                hits = [hit for subdir in lookup for hit in self._match(spec, subdir)]
                if not hits:
                    # Not in this upstream's subdirs: a virtual package (__glibc), or
                    # something another channel provides. Nothing to add or to check.
                    continue
                supports: list[int] = []
                blocked: list[Key] = []
                for hit in hits:
                    if self._exclusion(hit) is None:
                        supports.append(self._state(hit, platform))
                    else:
                        blocked.append(hit)
                edges.append(_Edge(spec, supports, blocked))
            assert len(self.edges) == state  # states are explored in the order they are made
            self.edges.append(edges)

    def _uninstallable(self) -> tuple[list[bool], list[int]]:
        """Which states no environment can hold, and the dependency that rules each out.

        A state is dead when one of its (unconditional) dependencies has no live
        candidate. Found by counting live candidates per dependency and
        propagating deaths (linear in the edges); the dependency recorded for a
        dead state had only candidates that died before it, so following those
        records always ends at an excluded package.
        """
        count = len(self.keys)
        dead = [False] * count
        killer = [-1] * count
        live: list[int] = []  # per edge: its candidates still alive
        owner: list[tuple[int, int]] = []  # per edge: (state, index among its edges)
        needed_by: list[list[int]] = [[] for _ in range(count)]  # state → edges it supports
        stack: list[int] = []
        for state, edges in enumerate(self.edges):
            for index, edge in enumerate(edges):
                if edge.spec.conditional:
                    continue  # the solver may leave a conditional dependency out
                edge_id = len(live)
                live.append(len(edge.supports))
                owner.append((state, index))
                for support in edge.supports:
                    needed_by[support].append(edge_id)
                if not edge.supports and not dead[state]:
                    dead[state], killer[state] = True, index
                    stack.append(state)
        while stack:
            gone = stack.pop()
            for edge_id in needed_by[gone]:
                live[edge_id] -= 1
                state, index = owner[edge_id]
                if live[edge_id] == 0 and not dead[state]:
                    dead[state], killer[state] = True, index
                    stack.append(state)
        return dead, killer

    def close(self, result: Selection) -> None:
        for key in sorted(result.selected):
            self._state(key, self._platforms_of(key)[0])
        roots = [state for key in sorted(result.selected) for state in self._all_states(key)]
        self._explore()
        dead, killer = self._uninstallable()

        # What the selected records need, through candidates that can be installed. A
        # noarch record that enters is then closed on every platform, as clients on each
        # platform can ask for it.
        seen = set(roots)
        queue = deque(roots)
        while queue:
            state = queue.popleft()
            parent = self.keys[state]
            for edge in self.edges[state]:
                for support in edge.supports:
                    if dead[support] or support in seen:
                        continue
                    key = self.keys[support]
                    for each in self._all_states(key):
                        if not dead[each] and each not in seen:
                            seen.add(each)
                            queue.append(each)
                    if key not in result.selected:
                        result.selected[key] = dict(self.upstream[key[0]][key[1]])
                        result.decisions[key] = Decision(
                            True, f"dependency of {parent[0]}/{parent[1]} ({edge.spec.text})"
                        )

        # Selected records an exclude rule makes uninstallable, by record, need and rule.
        platforms_of: dict[tuple[Key, str, str, str], list[str]] = {}
        for state in roots:
            if dead[state]:
                key = self.keys[state]
                edge = self.edges[state][killer[state]]
                because, rule = self._blame(key[0], edge, killer, _BLAME_DEPTH)
                found = platforms_of.setdefault((key, edge.spec.text, because, rule), [])
                found.append(self.state_platforms[state])
        warnings = []
        for (key, spec, because, rule), platforms in platforms_of.items():
            where = ""
            if key[0] == "noarch" and platforms != [_NO_PLATFORM]:
                where = f" on {', '.join(platforms)}"
            warnings.append(
                SelectionWarning(
                    "|".join(("excluded-dependency", f"{key[0]}/{key[1]}", spec, *platforms, rule)),
                    f"{key[0]}/{key[1]} needs {spec!r}{where}, but {because}",
                )
            )
        result.warnings.extend(sorted(warnings))

    def _newest_blocked(self, edge: _Edge) -> Key:
        def order(key: Key) -> tuple[Any, ...]:
            return (_newest_key(self.upstream[key[0]][key[1]]), key[1].endswith(".conda"), key)

        return max(edge.blocked, key=order)

    def _blame(self, subdir: str, edge: _Edge, killer: list[int], depth: int) -> tuple[str, str]:
        """Why no candidate of ``edge`` can be installed, and the exclude rule at the end.

        ``edge`` is the dependency that ruled its record out: its candidates are
        excluded, or died before that record did, so the chain ends at an exclusion.
        """

        def shown(key: Key) -> str:
            return key[1] if key[0] == subdir else f"{key[0]}/{key[1]}"

        if edge.blocked:
            newest = self._newest_blocked(edge)
            rule = self._exclusion(newest) or ""
            return f"{shown(newest)} is excluded by {rule}", rule
        support = edge.supports[0]
        key = self.keys[support]
        inner = self.edges[support][killer[support]]
        if depth > 1:
            because, rule = self._blame(key[0], inner, killer, depth - 1)
        else:
            because, rule = "…", self._rule_at_end(support, killer)
        return (
            f"no candidate of it can be installed ({shown(key)} needs {inner.spec.text!r}, "
            f"but {because})",
            rule,
        )

    def _rule_at_end(self, state: int, killer: list[int]) -> str:
        """The exclude rule at the end of a dead state's chain."""
        while True:
            edge = self.edges[state][killer[state]]
            if edge.blocked:
                return self._exclusion(self._newest_blocked(edge)) or ""
            state = edge.supports[0]
