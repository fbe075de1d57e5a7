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

import gc
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from reconciler.conda.repodata import load_repodata
from reconciler.errors import ReconcileError

SECTIONS = ("packages", "packages.conda")


class _Document(msgspec.Struct):
    info: dict[str, Any] = msgspec.field(default_factory=dict)
    packages: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    packages_conda: dict[str, msgspec.Raw] = msgspec.field(
        default_factory=dict, name="packages.conda"
    )
    removed: list[str] = msgspec.field(default_factory=list)


_DOCUMENT = msgspec.json.Decoder(_Document)


def _names_of(filenames: dict[str, Any]) -> dict[str, str]:
    """Filename → the name it gives (:func:`filename_name`, inlined: a million calls),
    sharing the filename strings of ``filenames``."""
    return dict(zip(filenames, [f.rsplit("-", 2)[0] for f in filenames], strict=True))


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
        self._parsed: dict[tuple[int, str], Any] = {}
        # What readers worked out from the names (they depend on nothing else), by question.
        self.memo: dict[Any, Any] = {}
        gc_was = gc.isenabled()
        gc.disable()  # millions of new objects, no cycles among them: no collection passes
        try:
            try:
                document = _DOCUMENT.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                # Not repodata as msgspec reads it: load_repodata says why, in its own
                # words, or reads what msgspec was stricter about.
                self._read_full(load_repodata(data, source))
                return
            self.info: dict[str, Any] = document.info
            self.removed: list[str] = document.removed
            # msgspec's own mappings: copying a million entries into plain dicts costs a
            # second
            self._raw = [document.packages, document.packages_conda]
            self._names: list[dict[str, str]] = [_names_of(section) for section in self._raw]
        finally:
            if gc_was:
                gc.enable()

    def _read_full(self, repodata: dict[str, Any]) -> None:
        self._full = repodata
        self.info = repodata.get("info") or {}
        self.removed = repodata["removed"]
        self._names = [_names_of(repodata[s]) for s in SECTIONS]
        for index, section in enumerate(SECTIONS):
            for filename, record in repodata[section].items():
                self._parsed[(index, filename)] = record

    # -- what is listed ------------------------------------------------------------------

    def names(self, section: int) -> dict[str, str]:
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
        raw = self._raw_sections()[section][filename]
        try:
            found = orjson.loads(memoryview(raw))
        except orjson.JSONDecodeError as exc:
            raise ReconcileError(f"{self.source}: not valid JSON repodata ({exc})") from None
        self._parsed[key] = found
        return found

    def _raw_sections(self) -> list[dict[str, Any]]:
        if self._raw is None:
            again = SparseRepodata(self._load(), self.source, self._load)
            assert again._raw is not None  # the same bytes parsed the same way before
            self._raw = again._raw
        return self._raw

    def release(self) -> None:
        """Drop the unparsed records (and the document they point into); keep the rest."""
        if self._full is None:
            self._raw = None

    def full(self) -> dict[str, Any]:
        """The whole document as :func:`load_repodata` reads it."""
        if self._full is None:
            self._full = load_repodata(self._load(), self.source)
        return self._full


EMPTY = SparseRepodata(b"{}", "(none)", lambda: b"{}")
