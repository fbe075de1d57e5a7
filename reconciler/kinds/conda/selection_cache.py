"""What a mirror selected from given upstream metadata, kept in the user's cache folder.

Selecting from a big upstream means reading its whole repodata; when neither the
upstream (the sha256 of each subdir's body) nor anything in the configuration that
decides the selection changed, the next plan takes the previous result instead.
The entry holds the selected records with their reasons, the warnings and the
upstream's ``removed`` lists; any other decision (why a record is left out) is
worked out by selecting afresh, only when someone asks for it.

Nothing here is trusted more than a cache deserves: an entry that does not read as
one is ignored, and the key covers the tool's version.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from reconciler import __version__
from reconciler.config.models import Channel, Mirror
from reconciler.errors import ReconcileError
from reconciler.filters import Decision
from reconciler.kinds.conda.select import Key, Selection, SelectionWarning
from reconciler.store.local import write_atomic

log = logging.getLogger(__name__)

# Raise when the entry's shape or the meaning of a selection changes.
_FORMAT = 1


@dataclass
class Chosen:
    """One mirror's selection, the refusals met on the way and the upstream's removals."""

    selection: Selection
    refusals: list[str]
    removed: dict[str, set[str]]


def selection_key(channel: Channel, mirror: Mirror, sources: Mapping[str, str]) -> str:
    """A digest of everything the selection depends on.

    ``sources``: subdir → the sha256 of the body selected from and where it is shown
    from (warnings name it); an absent upstream subdir is given as such.
    """
    digest = hashlib.sha256()
    for part in (
        f"conda-reconcile {__version__} selection {_FORMAT}",
        channel.filters.model_dump_json(by_alias=True),
        mirror.model_dump_json(by_alias=True),
        orjson.dumps(sorted(sources.items())).decode(),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "conda" / "selections" / f"{key}.json"


def load(cache_dir: Path | None, key: str, fresh: Callable[[], Chosen]) -> Chosen | None:
    """The kept selection for ``key``, or None. Decisions it does not hold come from
    ``fresh()`` (a selection made anew), called at most once and only if needed."""
    if cache_dir is None:
        return None
    try:
        entry = orjson.loads(_path(cache_dir, key).read_bytes())
        selected: dict[Key, dict[str, Any]] = {}
        known: dict[Key, Decision] = {}
        for subdir, filename, record, reason in entry["selected"]:
            if not (isinstance(record, dict) and isinstance(reason, str)):
                raise ValueError("not a record")
            selected[(str(subdir), str(filename))] = record
            known[(str(subdir), str(filename))] = Decision(True, reason)
        warnings = [SelectionWarning(str(k), str(m)) for k, m in entry["warnings"]]
        refusals = [str(line) for line in entry["refusals"]]
        removed = {str(s): {str(f) for f in names} for s, names in entry["removed"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    later = _Later(fresh)
    selection = Selection(
        selected=selected,
        decisions=_Decisions(known, later),
        records=_Records(selected, later),
        warnings=warnings,
    )
    return Chosen(selection, refusals, removed)


def save(cache_dir: Path | None, key: str, chosen: Chosen) -> None:
    if cache_dir is None:
        return
    selection = chosen.selection
    entry = {
        "selected": [
            [subdir, filename, record, selection.decisions[(subdir, filename)].reason]
            for (subdir, filename), record in sorted(selection.selected.items())
        ],
        "warnings": [[w.key, w.message] for w in selection.warnings],
        "refusals": chosen.refusals,
        "removed": {subdir: sorted(names) for subdir, names in chosen.removed.items()},
    }
    try:
        write_atomic(_path(cache_dir, key), orjson.dumps(entry))
    except (ReconcileError, OSError, TypeError) as exc:  # a cache only saves work
        log.warning("not caching a selection: %s", exc)


class _Later:
    """A fresh selection, made the first time something the entry lacks is asked for."""

    def __init__(self, fresh: Callable[[], Chosen]) -> None:
        self._fresh = fresh
        self._selection: Selection | None = None

    def get(self) -> Selection:
        if self._selection is None:
            self._selection = self._fresh().selection
        return self._selection


class _Decisions(MutableMapping[Key, Decision]):
    def __init__(self, known: dict[Key, Decision], later: _Later) -> None:
        self._known = known
        self._later = later

    def __getitem__(self, key: Key) -> Decision:
        if key in self._known:
            return self._known[key]
        return self._later.get().decisions[key]

    def __setitem__(self, key: Key, decision: Decision) -> None:
        self._known[key] = decision
        self._later.get().decisions[key] = decision

    def __delitem__(self, key: Key) -> None:
        self._known.pop(key, None)
        del self._later.get().decisions[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._later.get().decisions)

    def __len__(self) -> int:
        return len(self._later.get().decisions)


class _Records(Mapping[Key, Mapping[str, Any]]):
    def __init__(self, selected: dict[Key, dict[str, Any]], later: _Later) -> None:
        self._selected = selected
        self._later = later

    def __getitem__(self, key: Key) -> Mapping[str, Any]:
        if key in self._selected:
            return self._selected[key]
        return self._later.get().records[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._later.get().records)

    def __len__(self) -> int:
        return len(self._later.get().records)
