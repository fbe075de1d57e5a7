"""A plan as plain data: what apply will do to each channel, why, and what it was made from.

The JSON form (``reconcile plan --json`` / ``--out``) is versioned by
``plan_version`` and described by ``schemas/plan.schema.json``, generated from
these models. Every action carries a reason code (:class:`Reason`) and a detail
text; text and JSON views render from the same data. A plan also records its
validators: the configuration's digest, a digest of each published location and
what each upstream answered, so a saved plan that no longer describes the world
is refused, naming what moved.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.errors import ReconcileError

PLAN_VERSION = 2

ActionKind = Literal["add", "update", "remove", "restore", "reindex"]
ACTION_KINDS: tuple[ActionKind, ...] = ("add", "update", "remove", "restore", "reindex")


class Reason(str, enum.Enum):
    """Why an action is in the plan."""

    NEW_UPSTREAM = "new-upstream"  # a mirror's upstream added it (or the mirror is new)
    SELECTED = "selected"  # the filters now select it (the configuration changed)
    DEPENDENCY = "dependency"  # needed by a selected package (dependencies: true)
    CHANGED_UPSTREAM = "changed-upstream"  # its record changed upstream (same file)
    REUPLOADED_UPSTREAM = "reuploaded-upstream"  # the upstream has other bytes under the name
    REMOVED_UPSTREAM = "removed-upstream"  # the upstream no longer lists it
    FILTERED = "filtered"  # a filter now leaves it out
    MIRROR_REMOVED = "mirror-removed"  # its mirror left the configuration
    RESTORED = "restored"  # its file disappeared from the channel: fetched again
    LOCAL_ADDED = "local-added"  # a package file placed in the channel by hand
    LOCAL_CHANGED = "local-changed"  # ... replaced by hand (other bytes)
    LOCAL_REMOVED = "local-removed"  # ... deleted by hand
    UNREADABLE = "unreadable"  # a local package that cannot be read
    PATCHED = "patched"  # a patch changes its record
    PATCH_REMOVED = "patch-removed"  # a patch removes it
    RESTAMPED = "restamped"  # only its indexed_timestamp changes
    INDEX_MISSING = "index-missing"  # index files are missing
    INDEX_OUTDATED = "index-outdated"  # index files differ from what the records give
    INTERRUPTED = "interrupted"  # the last run did not finish: converge again
    STATE_REBUILT = "state-rebuilt"  # the inventory was lost and is rebuilt
    GRACE_OVER = "grace-over"  # unpublished earlier; its grace period is over: deleted now


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Action(_Model):
    kind: ActionKind
    location: str | None = Field(
        None, description="the subdir (conda) or project (PyPI); None for the channel's top"
    )
    name: str | None = Field(None, description="the package file; None for reindex")
    source: str = Field("local", description="'local' or the name of the mirror")
    reason: Reason
    detail: str = Field("", description="the reason in words: which rule, which package")
    diff: list[str] = Field(
        default_factory=list, description="for updates: field changes, e.g. 'depends: + \"x\"'"
    )
    files: list[str] = Field(
        default_factory=list, description="for reindex: index files to write or delete"
    )
    download: int | None = Field(
        None, description="bytes to download for this action (None: nothing to download)"
    )

    @property
    def symbol(self) -> str:
        return {"add": "+", "update": "~", "remove": "-", "restore": "+", "reindex": "~"}[self.kind]

    @property
    def where(self) -> str:
        """``location/name`` as reports list it."""
        return "/".join(p for p in (self.location, self.name) if p)

    @property
    def text(self) -> str:
        """What the plan shows after the file: the reason code, then the detail."""
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value


class UpstreamValidator(_Model):
    """What one upstream answered for one location when the plan was made."""

    mirror: str
    location: str = Field(description="subdir (conda) or project (PyPI)")
    url: str = Field(description="redacted")
    sha256: str = Field(description="digest of the metadata the plan selected from")
    etag: str | None = None
    last_modified: str | None = None


class PlanWarning(_Model):
    key: str = Field(description="stable identity: the same situation has the same key")
    message: str
    new: bool = Field(True, description="not seen by an earlier apply")


class MirrorPlan(_Model):
    name: str
    refresh: bool = Field(description="fetches its upstream metadata in this apply")
    reason: str = Field(description="why it refreshes or not")
    scheduled: bool = Field(description="has a schedule and refreshes (its run is recorded)")
    last_run: str | None = Field(None, description="start of the last started run (UTC)")
    next_due: str | None = Field(None, description="next fire time of the schedule (UTC)")
    warning: str | None = None
    error: str | None = Field(
        None, description="its upstream could not be read: its packages stay as published"
    )


class ChannelPlan(_Model):
    name: str
    kind: str = "conda"
    path: str
    create: bool = Field(False, description="the channel does not exist yet")
    published: dict[str, str] = Field(
        default_factory=dict,
        description="digest of what each location publishes ('.' for the channel's top)",
    )
    upstream: list[UpstreamValidator] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    warnings: list[PlanWarning] = Field(default_factory=list)
    mirrors: list[MirrorPlan] = Field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)

    @property
    def recorded_runs(self) -> list[str]:
        """Scheduled mirrors that refresh now: their run is recorded even if nothing changes."""
        return [m.name for m in self.mirrors if m.refresh and m.scheduled]

    @property
    def errors(self) -> list[str]:
        return [f"mirror {m.name}: {m.error}" for m in self.mirrors if m.error]

    @property
    def has_changes(self) -> bool:
        return self.create or bool(self.actions) or bool(self.recorded_runs)

    @property
    def new_warnings(self) -> list[PlanWarning]:
        return [w for w in self.warnings if w.new]


class Plan(_Model):
    plan_version: Literal[2] = 2
    created: str = Field(description="UTC time the plan was made (ISO 8601)")
    config: str = Field(description="path of the configuration file")
    config_digest: str = Field(description="sha256 of the configuration file")
    revision: str | None = Field(None, description="git commit of the configuration, if any")
    mirrors: list[str] | None = Field(
        None, description="--mirror: only these mirrors refresh; the others are left as they are"
    )
    run_now: bool = Field(False, description="--run-now: mirrors refresh regardless of schedule")
    channels: list[ChannelPlan] = Field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        return sum(c.count(kind) for c in self.channels)

    @property
    def has_changes(self) -> bool:
        return any(c.has_changes for c in self.channels)

    @property
    def errors(self) -> list[str]:
        return [f"channel {c.name}: {e}" for c in self.channels for e in c.errors]

    def summary(self) -> str:
        if not self.has_changes:
            return "No changes. Channels match the configuration."
        counts = {kind: self.count(kind) for kind in ACTION_KINDS}
        if not any(counts.values()):
            due = sum(len(c.recorded_runs) for c in self.channels)
            if due:
                return f"Plan: nothing to change; {due} scheduled mirror run(s) due."
            return "Plan: create the channel folder(s); nothing else to change."
        return "Plan: " + totals_text(counts, future=True) + "."

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReconcileError(f"{path}: cannot read plan ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ReconcileError(f"{path}: not a plan saved by `reconcile plan --out`") from None
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise ReconcileError(
                f"{path}: not a plan saved by `reconcile plan --out` ({first})",
                hint="plans are tied to the version that made them: run `reconcile plan` again",
            ) from None


_WORDS = {
    "add": ("to add", "added"),
    "update": ("to change", "changed"),
    "remove": ("to remove", "removed"),
    "restore": ("to restore", "restored"),
    "reindex": ("to re-index", "re-indexed"),
}


def totals_text(counts: dict[ActionKind, int], *, future: bool) -> str:
    """``3 to add, 1 to change, 0 to remove`` (restore and re-index when there are any).

    Plan and apply report their totals with this one function, in the same categories.
    """
    parts = []
    for kind in ACTION_KINDS:
        value = counts.get(kind, 0)
        if kind in ("restore", "reindex") and not value:
            continue
        words = _WORDS[kind][0 if future else 1]
        parts.append(f"{value} {words}")
    return ", ".join(parts)


def schema_text() -> str:
    import json

    schema = Plan.model_json_schema()
    schema["title"] = "conda-reconcile plan"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
