"""Repodata read sparsely: every record's name at once, a record itself only when asked.

A big upstream (conda-forge's linux-64 holds over half a million records) is mostly
left out by a mirror's name filter. Parsing every record into a dict costs seconds and
hundreds of megabytes; here the document is scanned once in C (msgspec) for each
record's raw JSON bytes, left unparsed, and each record's name is read from its
filename (``<name>-<version>-<build>.conda``), as rattler's sparse reader does. A record
becomes a dict (by orjson, as :func:`load_repodata` makes it) on first use, and one whose
``name`` is not its filename's is refused then (see ``select._problem``).

What is accepted is what :func:`load_repodata` accepts: anything msgspec does not
take as well-formed repodata is handed to ``load_repodata``, which raises the same
error as before (or, for a shape msgspec is stricter about, reads it in full).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Container, Iterator, Mapping
from typing import Any

import msgspec
import orjson

from reconciler.collector import collector_paused
from reconciler.conda.names import filename_name
from reconciler.conda.repodata import load_repodata
from reconciler.conda.window_scan import Scanned
from reconciler.errors import ReconcileError

SECTIONS = ("packages", "packages.conda")


class UnreadableRecord(ReconcileError):
    """One record that is not valid JSON (``why`` says where); the others are fine."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class _Document(msgspec.Struct):
    info: dict[str, Any] = msgspec.field(default_factory=dict)
    packages: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    packages_conda: dict[str, msgspec.Raw] = msgspec.field(
        default_factory=dict, name="packages.conda"
    )
    removed: list[str] = msgspec.field(default_factory=list)


_DOCUMENT = msgspec.json.Decoder(_Document)


class Listing(Mapping[str, str]):
    """One section's filenames in document order, each with the name it gives
    (:func:`filename_name`), as two parallel lists: a million-entry mapping costs a
    quarter of a second more to build. Lookups use ``member`` (any container of the
    filenames) while it is there, then bisection when the filenames are sorted (as
    writers list them) and few are asked for, else a set made when first needed."""

    def __init__(
        self,
        files: list[str],
        member: Container[str] | None = None,
        *,
        names: list[str] | None = None,
        ordered: bool = False,
    ) -> None:
        """``names``: the name each filename gives, if worked out already; ``ordered``:
        the filenames are known to be sorted."""
        self.files = files
        self.names = [f.rsplit("-", 2)[0] for f in files] if names is None else names
        self._member = member
        self._sorted: bool | None = True if ordered else None
        # Bisections left before a set is cheaper: a selection that reads a name or two
        # in a million keeps bisecting, one that reads every record soon makes the set.
        self._bisections = len(files) // 4

    def __contains__(self, filename: object) -> bool:
        if self._member is None:
            if self._bisections > 0 and self.is_sorted and isinstance(filename, str):
                self._bisections -= 1
                return self._position(filename) is not None
            self._member = set(self.files)
        return filename in self._member

    def _position(self, filename: str) -> int | None:
        """Where ``filename`` is in the (sorted) list, if it is."""
        at = bisect.bisect_left(self.files, filename)
        return at if at < len(self.files) and self.files[at] == filename else None

    @property
    def is_sorted(self) -> bool:
        if self._sorted is None:
            self._sorted = self.files == sorted(self.files)
        return self._sorted

    def __getitem__(self, filename: str) -> str:
        if filename not in self:
            raise KeyError(filename)
        return filename_name(filename)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def forget_member(self) -> None:
        """Stop using ``member`` (it is about to be dropped)."""
        if self._member is not None and not isinstance(self._member, set):
            self._member = None

    def of_names(self, names: Collection[str]) -> Iterator[tuple[str, str]]:
        """(filename, name) of every filename whose name is in ``names``, in document order.

        Writers list filenames sorted (conda-index and rattler-index do): then a name's
        filenames lie between ``<name>-`` and ``<name>.`` and a few names are found by
        bisection, not by looking at every filename.
        """
        if not self.is_sorted or len(names) * 64 > len(self.files):
            return ((f, n) for f, n in zip(self.files, self.names, strict=True) if n in names)
        found: list[int] = []
        for name in names:
            # A filename without a dash gives itself as its name.
            alone = self._position(name)
            if alone is not None and self.names[alone] == name:
                found.append(alone)
            start = bisect.bisect_left(self.files, name + "-")
            end = bisect.bisect_left(self.files, name + ".", start)
            found.extend(i for i in range(start, end) if self.names[i] == name)
        found.sort()
        return ((self.files[i], self.names[i]) for i in found)


class SparseRepodata:
    """One repodata document: names and filenames up front, records parsed on demand.

    ``load`` gives the document's bytes again (decompressing a kept body) once
    :meth:`release` dropped them; a record asked for after that costs one more scan.
    """

    def __init__(
        self, data: bytes | bytearray, source: str, load: Callable[[], bytes | bytearray]
    ) -> None:
        self.source = source
        self._load = load
        self._full: dict[str, Any] | None = None
        self._raw: list[dict[str, Any]] | None = None
        # Read through a window: only the records of wanted names, as bytes (see from_scan).
        self._kept: list[dict[str, bytes]] | None = None
        self._parsed: dict[tuple[int, str], Any] = {}
        # What readers worked out from the names or a record (nothing else), by question.
        self.memo: dict[Any, Any] = {}
        # Millions of new objects, no cycles among them: no collection passes.
        with collector_paused():
            try:
                document = _DOCUMENT.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                # Not repodata as msgspec reads it: load_repodata says why, in its own
                # words, or reads what msgspec was stricter about.
                self._read_full(load_repodata(data, source))
                return
            self.info: dict[str, Any] = document.info
            self.removed: list[str] = document.removed
            # msgspec's own mappings: copying a million entries into plain dicts costs a
            # second
            self._raw = [document.packages, document.packages_conda]
            self._names = [Listing(list(section), section) for section in self._raw]

    @classmethod
    def from_scan(
        cls, scanned: Scanned, source: str, load: Callable[[], bytes | bytearray]
    ) -> SparseRepodata:
        """A document :func:`window_scan.scan` read: every name, the wanted records; any
        other record asked for costs one more (whole) scan, as after :meth:`release`."""
        sparse = cls(b"{}", source, load)
        sparse.info = scanned.info
        sparse.removed = scanned.removed
        sparse._raw = None
        sparse._kept = [section.kept for section in scanned.sections]
        sparse._names = [
            Listing(section.files, names=section.names, ordered=section.ordered)
            for section in scanned.sections
        ]
        return sparse

    def _read_full(self, repodata: dict[str, Any]) -> None:
        self._full = repodata
        self.info = repodata.get("info") or {}
        self.removed = repodata["removed"]
        self._names = [Listing(list(repodata[s]), repodata[s]) for s in SECTIONS]
        for index, section in enumerate(SECTIONS):
            for filename, record in repodata[section].items():
                self._parsed[(index, filename)] = record

    # -- what is listed ------------------------------------------------------------------

    def names(self, section: int) -> Listing:
        """Filename → the name its filename gives, for one section (0: packages)."""
        return self._names[section]

    def __len__(self) -> int:
        return sum(len(names) for names in self._names)

    def listed(self, filename: str) -> bool:
        """Whether either section lists ``filename``."""
        return any(filename in names for names in self._names)

    # -- records -------------------------------------------------------------------------

    def record(self, section: int, filename: str) -> Any:
        """The record listed under ``filename`` in ``section`` (0: packages, 1: .conda):
        a dict, unless the document holds something else there (its reader refuses it)."""
        key = (section, filename)
        if key in self._parsed:
            return self._parsed[key]
        kept = self._kept[section] if self._kept is not None else {}
        if filename in kept:
            raw = kept[filename]
        else:
            sections = self._raw_sections()
            if sections is None:  # the document was read in full: the record is there
                assert self._full is not None
                found = self._parsed[key] = self._full[SECTIONS[section]][filename]
                return found
            raw = sections[section][filename]
        try:
            found = orjson.loads(memoryview(raw))
        except orjson.JSONDecodeError as exc:
            # msgspec's scan does not look inside a record (invalid UTF-8, 1e999 pass it):
            # the record is refused, not the document.
            raise UnreadableRecord(
                f"{self.source}: the record of {filename!r} is not valid JSON ({exc})", str(exc)
            ) from None
        self._parsed[key] = found
        return found

    def _raw_sections(self) -> list[dict[str, Any]] | None:
        """The unparsed records, from the document read again if they were dropped; None
        when msgspec could not read it whole (nesting deeper than it goes, which pieces
        of it did not reach) and it was read in full instead."""
        if self._raw is None and self._full is None:
            again = SparseRepodata(self._load(), self.source, self._load)
            if again._raw is None:
                self._full = again._full
                return None
            self._raw = again._raw
        return self._raw

    def release(self, keep: Callable[[str], bool] | None = None) -> None:
        """Drop the unparsed records (and the document they point into); keep the rest.

        With ``keep``, the records of the names it accepts stay as their bytes (those a
        window scan kept, or copies out of the document): a record's bytes are the
        smallest form it has, a third of its dict's size. Any other record asked for
        costs one more scan of the document.
        """
        if self._full is not None:
            return
        kept = None if keep is None else [self._bytes_of(i, keep) for i in range(len(SECTIONS))]
        for listing in self._names:
            listing.forget_member()
        self._raw = None
        self._kept = kept

    def _bytes_of(self, section: int, keep: Callable[[str], bool]) -> dict[str, bytes]:
        if self._raw is not None:
            raw, listing = self._raw[section], self._names[section]
            passing = {name for name in set(listing.names) if keep(name)}
            # Copies: a msgspec view would keep the whole document alive.
            return {filename: bytes(raw[filename]) for filename, _ in listing.of_names(passing)}
        if self._kept is not None:  # a window scan kept these names' records already
            return self._kept[section]
        return {}

    def forget(self, filename: str, section: int | None = None) -> None:
        """Let go of ``filename``'s parsed records (of one ``section``, else both): a
        selection leaves out most of a mirror of every name. Asked for again, they are
        parsed again, from their kept bytes or from the document read again."""
        if self._full is None:  # (else the whole document holds them anyway)
            for each in range(len(SECTIONS)) if section is None else (section,):
                self._parsed.pop((each, filename), None)

    def full(self) -> dict[str, Any]:
        """The whole document as :func:`load_repodata` reads it."""
        if self._full is None:
            self._full = load_repodata(self._load(), self.source)
        return self._full


EMPTY = SparseRepodata(b"{}", "(none)", lambda: b"{}")
