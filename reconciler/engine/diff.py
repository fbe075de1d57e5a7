"""Desired records against published ones: the actions of a plan, for every kind.

A kind says what each location (subdir, project) should publish — each record
with its source, why it is wanted and whether its file must be downloaded — and
why a published record is no longer wanted; :func:`diff_records` turns that into
add / update / remove / restore actions with reason codes and field diffs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from reconciler.engine.plan import Action, Reason

# Fields that say nothing about the package itself: a change in them alone is
# still shown, but as a restamp.
VOLATILE_FIELDS = frozenset({"indexed_timestamp"})


@dataclass(frozen=True)
class Desired:
    """A record a location should publish."""

    record: Mapping[str, Any]
    source: str = "local"  # "local" or the mirror's name
    reason: Reason = Reason.LOCAL_ADDED  # why it is added, if it is new
    detail: str = ""
    download: int | None = None  # bytes to fetch before it can be published; None: none

    @property
    def sha256(self) -> str | None:
        value = self.record.get("sha256")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Absence:
    """Why a published record is not wanted any more."""

    reason: Reason
    detail: str = ""
    source: str = "local"


UpdateReason = Callable[[str, Mapping[str, Any], Desired], tuple[Reason, str]]


def default_update_reason(name: str, old: Mapping[str, Any], new: Desired) -> tuple[Reason, str]:
    """Why a published record changes: other bytes, a restamp, or new metadata."""
    local = new.source == "local"
    if old.get("sha256") != new.sha256:
        if local:
            return Reason.LOCAL_CHANGED, "the file was replaced (sha256 changed)"
        return Reason.REUPLOADED_UPSTREAM, f"mirror {new.source} has other bytes under this name"
    changed = {k for k in old.keys() ^ new.record.keys()} | {
        k for k in old.keys() & new.record.keys() if old[k] != new.record[k]
    }
    if changed <= VOLATILE_FIELDS:
        return Reason.RESTAMPED, "indexed_timestamp reassigned"
    if local:
        return Reason.LOCAL_CHANGED, "record changed"
    return Reason.CHANGED_UPSTREAM, f"record changed upstream in mirror {new.source}"


def diff_records(
    location: str,
    desired: Mapping[str, Desired],
    published: Mapping[str, Mapping[str, Any]],
    absent: Callable[[str], Absence],
    *,
    update_reason: UpdateReason = default_update_reason,
) -> list[Action]:
    """The actions that take ``published`` to ``desired`` in one location, sorted by name."""
    actions: list[Action] = []
    for name in sorted(desired.keys() | published.keys()):
        want = desired.get(name)
        have = published.get(name)
        if want is not None and have is None:
            actions.append(
                Action(
                    kind="add",
                    location=location,
                    name=name,
                    source=want.source,
                    reason=want.reason,
                    detail=want.detail,
                    download=want.download,
                )
            )
        elif want is not None and have is not None:
            if dict(have) == dict(want.record):
                if want.download is not None:  # published, but its file is gone
                    actions.append(
                        Action(
                            kind="restore",
                            location=location,
                            name=name,
                            source=want.source,
                            reason=Reason.RESTORED,
                            detail=f"the file is missing: fetched again from mirror {want.source}",
                            download=want.download,
                        )
                    )
                continue
            reason, detail = update_reason(name, have, want)
            actions.append(
                Action(
                    kind="update",
                    location=location,
                    name=name,
                    source=want.source,
                    reason=reason,
                    detail=detail,
                    diff=field_diff(have, want.record),
                    download=want.download,
                )
            )
        elif have is not None:
            why = absent(name)
            actions.append(
                Action(
                    kind="remove",
                    location=location,
                    name=name,
                    source=why.source,
                    reason=why.reason,
                    detail=why.detail,
                )
            )
    return actions


def _path_text(path: str) -> str:
    """``root['depends'][1]`` → ``depends``."""
    inner = path.removeprefix("root")
    if inner.startswith("['"):
        return inner[2:].split("']", 1)[0]
    return inner or "record"


def _show(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def field_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Readable changes between two records, e.g. ``depends: + "libzlib >=1.3"``."""
    from deepdiff import DeepDiff  # imported only when records change: it is slow to load

    lines: list[str] = []
    # Lists (depends, constrains, track_features...) read best as items in and out.
    list_keys = [
        k for k in old.keys() & new.keys() if isinstance(old[k], list) and isinstance(new[k], list)
    ]
    for key in list_keys:
        before, after = Counter(map(_show, old[key])), Counter(map(_show, new[key]))
        lines.extend(f"{key}: + {item}" for item in (after - before).elements())
        lines.extend(f"{key}: - {item}" for item in (before - after).elements())
    diff = DeepDiff(
        {k: v for k, v in old.items() if k not in list_keys},
        {k: v for k, v in new.items() if k not in list_keys},
        ignore_order=True,
        verbose_level=2,
    )
    for path, value in diff.get("dictionary_item_added", {}).items():
        lines.append(f"{_path_text(path)}: + {_show(value)}")
    for path, value in diff.get("dictionary_item_removed", {}).items():
        lines.append(f"{_path_text(path)}: - {_show(value)}")
    for key in ("values_changed", "type_changes"):
        for path, change in diff.get(key, {}).items():
            lines.append(
                f"{_path_text(path)}: {_show(change['old_value'])} → {_show(change['new_value'])}"
            )
    for path, value in diff.get("iterable_item_added", {}).items():
        lines.append(f"{_path_text(path)}: + {_show(value)}")
    for path, value in diff.get("iterable_item_removed", {}).items():
        lines.append(f"{_path_text(path)}: - {_show(value)}")
    return sorted(lines)
