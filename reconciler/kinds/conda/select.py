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

import fnmatch
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import rattler

from reconciler.conda.matching import DependencySpec, RecordView, parse_spec
from reconciler.conda.names import filename_name, filename_problem
from reconciler.conda.records import record_problem
from reconciler.conda.sparse import SparseRepodata, UnreadableRecord
from reconciler.filters import Candidate, Decision, FilterEngine

# (subdir, filename)
Key = tuple[str, str]
# The key under which a document's memo keeps its records' problems (with the subdir).
_CHECKED = "checked records"


@dataclass(frozen=True, order=True)
class SelectionWarning:
    """A warning about the selection; ``key`` stays the same while the situation does."""

    key: str
    message: str

    def __str__(self) -> str:
        return self.message


class UpstreamRecords(Mapping[str, dict[str, Any]]):
    """One upstream subdir's usable records (filename → record), each read when first used.

    A record is parsed and checked (as :func:`safe_records` checks it, then by
    ``check``) the first time it is asked for; one that fails is not there, and the
    reason is kept for a warning. Names come from a scan of the whole document, so a
    name filter picks its records without reading the others.
    """

    def __init__(
        self,
        subdir: str,
        sparse: SparseRepodata,
        source: str,
        check: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.subdir = subdir
        self.sparse = sparse
        self.source = source
        self._check = check
        self._found: dict[str, dict[str, Any] | None] = {}
        self._refused: dict[tuple[int, str], str] = {}  # unsafe: (section, filename) → why
        self._unverifiable: dict[str, str] = {}  # safe but refused by ``check``
        self._groups: dict[str, list[str]] | None = None

    def get(self, filename: str, default: Any = None) -> Any:
        if filename in self._found:
            found = self._found[filename]
        else:
            found = self._found[filename] = self._read(filename)
        return default if found is None else found

    def _read(self, filename: str) -> dict[str, Any] | None:
        chosen: dict[str, Any] | None = None
        # A record's problem depends on it and where it is listed alone: what a prefetch
        # worked out, the selection's reader takes from the document's memo.
        checked: dict[tuple[int, str], str | None] | None = self.sparse.memo.get(
            (_CHECKED, self.subdir)
        )
        # As safe_records reads them: .tar.bz2 section first, the later one wins.
        for index, (section, suffix) in enumerate(_SECTIONS):
            if filename not in self.sparse.names(index):
                continue
            try:
                record = self.sparse.record(index, filename)
            except UnreadableRecord as exc:
                self._refused[(index, filename)] = f"the record is not valid JSON ({exc.why})"
                continue
            key = (index, filename)
            if checked is not None and key in checked:
                problem = checked[key]
            else:
                problem = _problem(self.subdir, section, suffix, filename, record)
                if checked is not None:
                    checked[key] = problem
            if problem is None:
                chosen = record
            else:
                self._refused[(index, filename)] = problem
                if checked is None:  # no other reader will ask (see prefetch): only why
                    self.sparse.forget(filename, index)
        if chosen is not None and self._check is not None:
            problem = self._check(chosen)
            if problem is not None:
                self._unverifiable[filename] = problem
                if checked is None:
                    self.sparse.forget(filename)
                return None
        return chosen

    def prefetch(self, wanted: Callable[[str], bool]) -> None:
        """Read now what a selection with this name gate reads, then let the rest of the
        document go: the next subdir is then read without this one's in memory.

        A gate that lets every name in has the records' bytes kept instead, each read
        when the selection comes to it: the selection lets go of the records it leaves
        out, and a record's bytes take a third of its dict's memory.
        """
        if isinstance(wanted, NameGate) and not wanted.selective:
            self.named(wanted)
            self.sparse.release(keep=wanted)
            return
        self.sparse.memo.setdefault((_CHECKED, self.subdir), {})
        for filenames in self.named(wanted).values():
            for filename in filenames:
                self.get(filename)
        self.sparse.release()

    def forget(self, filename: str) -> None:
        """Let go of ``filename``'s parsed record (it is read again if asked for)."""
        self._found.pop(filename, None)
        self.sparse.forget(filename)

    def __getitem__(self, filename: str) -> dict[str, Any]:
        found = self.get(filename)
        if found is None:
            raise KeyError(filename)
        return found  # type: ignore[no-any-return]

    def __contains__(self, filename: object) -> bool:
        return isinstance(filename, str) and self.get(filename) is not None

    def __iter__(self) -> Iterator[str]:
        """Every usable filename, in document order (reads every record: slow)."""
        seen: set[str] = set()
        for index in range(len(_SECTIONS)):
            for filename in self.sparse.names(index):
                if filename not in seen:
                    seen.add(filename)
                    if self.get(filename) is not None:
                        yield filename

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- by name -------------------------------------------------------------------------

    def named(self, wanted: Callable[[str], bool]) -> dict[str, list[str]]:
        """Filenames listed under each name that ``wanted`` accepts (records not read).

        Names are the filenames' (a record whose own ``name`` differs is refused when it
        is read).
        """
        memo = self.sparse.memo.get(wanted) if isinstance(wanted, NameGate) else None
        if memo is not None:
            return {name: list(files) for name, files in memo.items()}
        found: dict[str, list[str]] = {}
        for index in range(len(_SECTIONS)):
            listing = self.sparse.names(index)
            passing = {n for n in set(listing.names) if wanted(n)}
            if not passing:
                continue
            for filename, name in listing.of_names(passing):
                listed = found.setdefault(name, [])
                # Keys are unique within a section: only one in both can repeat.
                if not index or filename not in self.sparse.names(0) or filename not in listed:
                    listed.append(filename)
        if isinstance(wanted, NameGate):
            self.sparse.memo[wanted] = found
        return found

    def groups(self) -> dict[str, list[str]]:
        """Filenames by the name their record gives (every name)."""
        if self._groups is None:
            self._groups = self.named(lambda _name: True)
        return self._groups

    def names_of(self, filename: str) -> list[str]:
        """The name ``filename`` gives, if the document lists it."""
        return [filename_name(filename)] if self.sparse.listed(filename) else []

    def warnings(self) -> list[str]:
        """Why records read so far were refused, in document order (unsafe ones first)."""
        lines: list[str] = []
        where = f"{self.source}/{self.subdir}"
        if self._refused or self._unverifiable:
            for index in range(len(_SECTIONS)):
                for filename in self.sparse.names(index):
                    problem = self._refused.get((index, filename))
                    if problem is not None:
                        lines.append(f"{where}: refusing {filename!r}: {problem}")
            done: set[str] = set()
            for index in range(len(_SECTIONS)):
                for filename in self.sparse.names(index):
                    problem = self._unverifiable.get(filename)
                    if problem is not None and filename not in done:
                        done.add(filename)
                        lines.append(f"{where}: refusing {filename!r}: {problem}")
        return lines


class _Plain:
    """Records given as a plain mapping (tests, the fuzzers): the same interface."""

    def __init__(self, records: Mapping[str, dict[str, Any]]) -> None:
        self.records = records
        self._groups: dict[str, list[str]] | None = None

    def get(self, filename: str, default: Any = None) -> Any:
        return self.records.get(filename, default)

    def groups(self) -> dict[str, list[str]]:
        if self._groups is None:
            self._groups = {}
            for filename in self.records:
                self._groups.setdefault(filename_name(filename), []).append(filename)
        return self._groups

    def named(self, wanted: Callable[[str], bool]) -> dict[str, list[str]]:
        return {name: files for name, files in self.groups().items() if wanted(name)}

    def names_of(self, filename: str) -> list[str]:
        return [filename_name(filename)] if filename in self.records else []

    def forget(self, filename: str) -> None:
        pass  # (held by the caller's mapping)

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)


_Subdir = UpstreamRecords | _Plain


def _as_subdir(records: Mapping[str, dict[str, Any]]) -> _Subdir:
    return records if isinstance(records, UpstreamRecords) else _Plain(records)


class _Decider:
    """Decisions by (subdir, name): what the filters say of one name's records in one
    subdir depends on those records alone (``latest`` counts within them), so names
    nobody can select are decided only when a decision is asked for."""

    def __init__(
        self,
        subdirs: Mapping[str, _Subdir],
        channel_filters: FilterEngine,
        mirror_filters: FilterEngine,
    ) -> None:
        self.subdirs = subdirs
        self.channel_filters = channel_filters
        self.mirror_filters = mirror_filters
        self.known: dict[Key, Decision] = {}
        self._done: set[tuple[str, str]] = set()
        self._all = False

    def group(self, subdir: str, name: str, filenames: Iterable[str]) -> list[Candidate]:
        """Decide one name's records in one subdir; returns its usable candidates."""
        self._done.add((subdir, name))
        records = self.subdirs[subdir]
        candidates = []
        for filename in filenames:
            record = records.get(filename)
            if record is None:
                continue
            candidate = Candidate(subdir, filename, record)
            if candidate.name == name:  # else listed twice under two names: decided there
                candidates.append(candidate)
        mirror_decisions = self.mirror_filters.evaluate(candidates)
        if self.channel_filters.per_record:
            # The channel's decision on a record depends on that record alone: only what
            # the mirror keeps needs asking.
            kept = [c for c in candidates if mirror_decisions[c.key].selected]
            channel_decisions = self.channel_filters.evaluate(kept)
        else:
            channel_decisions = self.channel_filters.evaluate(candidates)
        for candidate in candidates:
            key = candidate.key
            second = mirror_decisions[key]
            first = channel_decisions.get(key)
            decision = second
            if first is not None and (not first.selected or second.reason == "selected"):
                # Out by the channel's rules; or in by both, and the channel's reason may
                # say more (how a licence was read).
                decision = first
            self.known.setdefault(key, decision)  # a dependency's reason, once given, stays
        return candidates

    def decide(self, key: Key) -> None:
        records = self.subdirs.get(key[0])
        if records is None:
            return
        for name in records.names_of(key[1]):
            if (key[0], name) not in self._done:
                self.group(key[0], name, records.groups().get(name, ()))

    def decide_all(self) -> None:
        if self._all:
            return
        for subdir, records in self.subdirs.items():
            for name, filenames in records.groups().items():
                if (subdir, name) not in self._done:
                    self.group(subdir, name, filenames)
        self._all = True


class _Decisions(MutableMapping[Key, Decision]):
    """Every candidate's decision, made when first asked for (see :class:`_Decider`)."""

    def __init__(self, decider: _Decider) -> None:
        self._decider = decider

    def __getitem__(self, key: Key) -> Decision:
        known = self._decider.known
        if key not in known:
            self._decider.decide(key)
        return known[key]

    def __setitem__(self, key: Key, decision: Decision) -> None:
        self._decider.known[key] = decision

    def __delitem__(self, key: Key) -> None:
        del self._decider.known[key]

    def __iter__(self) -> Iterator[Key]:
        self._decider.decide_all()
        return iter(self._decider.known)

    def __len__(self) -> int:
        self._decider.decide_all()
        return len(self._decider.known)


class _Records(Mapping[Key, Mapping[str, Any]]):
    """Every candidate record by key, read when asked for."""

    def __init__(self, subdirs: Mapping[str, _Subdir]) -> None:
        self._subdirs = subdirs

    def __getitem__(self, key: Key) -> Mapping[str, Any]:
        records = self._subdirs.get(key[0])
        found = None if records is None else records.get(key[1])
        if found is None:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Key]:
        for subdir, records in self._subdirs.items():
            for filename in records:
                if records.get(filename) is not None:
                    yield (subdir, filename)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class Selection:
    selected: dict[Key, dict[str, Any]] = field(default_factory=dict)
    decisions: MutableMapping[Key, Decision] = field(default_factory=dict)
    records: Mapping[Key, Mapping[str, Any]] = field(default_factory=dict)  # every candidate
    warnings: list[SelectionWarning] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


_SECTIONS = (("packages", ".tar.bz2"), ("packages.conda", ".conda"))


def _problem(subdir: str, section: str, suffix: str, filename: str, record: Any) -> str | None:
    """Why one listed record cannot be used, or None."""
    if not isinstance(record, dict):
        kind = "null" if record is None else type(record).__name__
        return f"the record is {kind}, not a JSON object"
    problem = filename_problem(str(filename))
    if problem is None and not str(filename).endswith(suffix):
        problem = f"listed under {section!r} with the wrong suffix"
    if problem is None:
        problem = record_problem(record)
    if problem is None and record["name"] != filename_name(str(filename)):
        # Records are found by their filename's name (as a sparse reader finds them); one
        # that says it is another package is an upstream error, or a spoof.
        problem = f"the record's name {record['name']!r} is not its filename's"
    declared = record.get("subdir")
    if problem is None and declared is not None and declared != subdir:
        problem = f"record says subdir {declared!r} but is listed in {subdir}"
    return problem


def safe_records(
    subdir: str, repodata: Mapping[str, Any], source: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The usable records of an upstream subdir, and why the others were refused."""
    records: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    for section, suffix in _SECTIONS:
        for filename, record in (repodata.get(section) or {}).items():
            problem = _problem(subdir, section, suffix, filename, record)
            if problem is not None:
                refused.append(f"{source}/{subdir}: refusing {filename!r}: {problem}")
                continue
            records[str(filename)] = record
    return records, refused


@dataclass(frozen=True)
class NameGate:
    """Whether a record of a name can pass every block's ``include`` (no other rule adds
    a record): the names worth reading. Equal gates pick the same names."""

    # Per block that names what it includes: its literal names and its patterns.
    blocks: tuple[tuple[frozenset[str], tuple[str, ...]], ...]

    @property
    def selective(self) -> bool:
        """Whether it names what it lets in (else it lets every name in)."""
        return bool(self.blocks)

    def __call__(self, name: str) -> bool:
        for literal, globs in self.blocks:
            if name not in literal and not any(fnmatch.fnmatchcase(name, g) for g in globs):
                return False
        return True


def name_gate(*blocks: FilterEngine) -> NameGate:
    gates = []
    for engine in blocks:
        include = engine.block.include
        if not include or any(rule.name is None for rule in include):
            continue
        names = [r.name for r in include if r.name is not None]
        gates.append(
            (
                frozenset(n for n in names if not _is_glob(n)),
                tuple(sorted({n for n in names if _is_glob(n)})),
            )
        )
    return NameGate(tuple(gates))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


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
    subdirs = {subdir: _as_subdir(records) for subdir, records in upstream.items()}
    decider = _Decider(subdirs, channel_filters, mirror_filters)
    result = Selection(decisions=_Decisions(decider), records=_Records(subdirs))
    # Only names that can pass both blocks' include rules are read and decided now;
    # every other record is out, and its reason is worked out if someone asks.
    wanted = name_gate(channel_filters, mirror_filters)
    # A mirror of every name leaves most records out (``latest``, licences): holding
    # them all as dicts took gigabytes at a million records. Each one left out goes, its
    # decision kept; it is read again if someone asks. A name gate reads few records,
    # and the closure reads candidates again and again: there they stay.
    forget = not (dependencies or wanted.selective)
    for subdir, records in subdirs.items():
        for name, filenames in records.named(wanted).items():
            for candidate in decider.group(subdir, name, filenames):
                if decider.known[candidate.key].selected:
                    result.selected[candidate.key] = dict(candidate.record)
                elif forget:
                    records.forget(candidate.filename)
    if dependencies:
        served = upstream if platforms is None else platforms
        closure = _Closure(
            subdirs,
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
        upstream: Mapping[str, _Subdir],
        filters: tuple[FilterEngine, FilterEngine],
        platforms: list[str],
    ) -> None:
        self.upstream = upstream
        self.filters = filters
        self.platforms = platforms or [_NO_PLATFORM]
        self._names: dict[str, dict[str, list[str]]] = {}
        self._candidates_of: dict[tuple[str, str], list[tuple[Key, RecordView]]] = {}
        self._excluded: dict[Key, str | None] = {}
        self._matches: dict[tuple[str, str], tuple[Key, ...]] = {}
        self.keys: list[Key] = []
        self.state_platforms: list[str] = []
        self._states: dict[tuple[Key, str], int] = {}
        self._queue: deque[int] = deque()
        self.edges: list[list[_Edge]] = []  # per state; an edge is shared by the states
        self._edges_of: dict[tuple[str, str], _Edge | None] = {}  # by (text, platform)

    # -- lookups, each computed once -------------------------------------------------

    def _by_name(self, subdir: str) -> dict[str, list[str]]:
        """Filenames of ``subdir`` by lower-cased name; a .tar.bz2 with a .conda twin is left
        out (clients take the .conda; both hold the same package)."""
        index = self._names.get(subdir)
        if index is None:
            index = {}
            records = self.upstream.get(subdir)
            for name, filenames in (records.groups() if records is not None else {}).items():
                index.setdefault(name.lower(), []).extend(filenames)
            self._names[subdir] = index
        return index

    def _usable(self, subdir: str, filename: str) -> dict[str, Any] | None:
        """The record, unless it is unusable or a .tar.bz2 with a .conda twin."""
        records = self.upstream[subdir]
        record: dict[str, Any] | None = records.get(filename)
        if record is None or not isinstance(record.get("name"), str):
            return None
        if filename.endswith(".tar.bz2") and records.get(f"{filename[:-8]}.conda") is not None:
            return None
        return record

    def _record(self, key: Key) -> dict[str, Any]:
        record: dict[str, Any] = self.upstream[key[0]].get(key[1])
        return record

    def _candidates(self, subdir: str, name: str) -> list[tuple[Key, RecordView]]:
        """The usable records of ``name`` in ``subdir`` in key order, each as matching
        sees it (made once, for every spec that asks for the name)."""
        found = self._candidates_of.get((subdir, name))
        if found is None:
            found = []
            for filename in sorted(set(self._by_name(subdir).get(name, ()))):
                record = self._usable(subdir, filename)
                if record is None or record["name"].lower() != name:
                    continue
                found.append(((subdir, filename), RecordView(record, subdir)))
            self._candidates_of[(subdir, name)] = found
        return found

    def _match(self, spec: DependencySpec, subdir: str) -> tuple[Key, ...]:
        """The records of ``subdir`` that satisfy ``spec``, in key order."""
        cache_key = (spec.text, subdir)
        found = self._matches.get(cache_key)
        if found is None:
            candidates = self._candidates(subdir, spec.name)
            if spec.version_only:
                # Then the verdict depends on the version alone: the builds of one
                # version (dozens, for a package built per Python) share it.
                verdicts: dict[str, bool] = {}
                hits: list[Key] = []
                for key, view in candidates:
                    version = str(view.record.get("version", ""))  # as the view reads it
                    verdict = verdicts.get(version)
                    if verdict is None:
                        verdict = verdicts[version] = spec.matches(view)
                    if verdict:
                        hits.append(key)
                found = tuple(hits)
            else:
                found = tuple(key for key, view in candidates if spec.matches(view))
            self._matches[cache_key] = found
        return found

    def _exclusion(self, key: Key) -> str | None:
        """The exclude rule (channel's first, then the mirror's) that removes ``key``."""
        if key in self._excluded:
            return self._excluded[key]
        candidate = Candidate(key[0], key[1], self._record(key))
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
            depends = self._record(key).get("depends")
            edges: list[_Edge] = []
            # Upstream metadata: a depends that is not a list names nothing we can follow.
            for text in depends if isinstance(depends, list) else ():
                if not isinstance(text, str):
                    continue
                # Records share most of their dependencies: each is worked out once per
                # platform. The states it finds are made the first time, in the order
                # they would be made by each record in turn.
                known = (text, platform)
                if known in self._edges_of:
                    edge = self._edges_of[known]
                else:
                    edge = self._edges_of[known] = self._edge(text, platform)
                if edge is not None:
                    edges.append(edge)
            assert len(self.edges) == state  # states are explored in the order they are made
            self.edges.append(edges)

    def _edge(self, text: str, platform: str) -> _Edge | None:
        """The dependency ``text`` of a record on ``platform``: its candidates, split by
        whether an exclude rule removes them (None: nothing here can satisfy it)."""
        spec = parse_spec(text)
        if spec is None:
            return None  # unreadable: nothing can satisfy it, for a solver either
        lookup = ("noarch",) if platform == "noarch" else (platform, "noarch")
        hits = [hit for subdir in lookup for hit in self._match(spec, subdir)]
        if not hits:
            # Not in this upstream's subdirs: a virtual package (__glibc), or something
            # another channel provides. Nothing to add or to check.
            return None
        supports: list[int] = []
        blocked: list[Key] = []
        for hit in hits:
            if self._exclusion(hit) is None:
                supports.append(self._state(hit, platform))
            else:
                blocked.append(hit)
        return _Edge(spec, supports, blocked)

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
                        result.selected[key] = dict(self._record(key))
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
            return (_newest_key(self._record(key)), key[1].endswith(".conda"), key)

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
