"""A plan as plain data: what apply will do to each channel, with reasons.

The JSON form (``reconcile plan --json`` / ``--out``) is versioned by
``plan_version`` and described by ``schemas/plan.schema.json``, generated from
these models. Mirror actions use the same ``Action`` with ``source`` naming the
mirror, so a plan needs no reshaping when mirrors take part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.errors import ReconcileError

PLAN_VERSION = 1

ActionKind = Literal["add", "update", "remove", "reindex"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Action(_Model):
    kind: ActionKind
    subdir: str | None = Field(None, description="None for channel-level files")
    filename: str | None = Field(None, description="the package; None for reindex")
    source: str = Field("local", description="'local' or the name of the mirror")
    reason: str
    diff: list[str] = Field(
        default_factory=list, description="for updates: field changes, e.g. 'depends: + \"x\"'"
    )
    files: list[str] = Field(
        default_factory=list, description="for reindex: index files to write or delete"
    )

    @property
    def symbol(self) -> str:
        return {"add": "+", "update": "~", "remove": "-", "reindex": "~"}[self.kind]


class MirrorStatus(_Model):
    name: str
    due: bool = Field(description="runs in this apply")
    reason: str = Field(description="why it is due or not")
    scheduled: bool = Field(description="has a schedule (a due run is work to do)")
    last_run: str | None = Field(None, description="start of the last started run (UTC)")
    next_due: str | None = Field(None, description="next fire time of the schedule (UTC)")
    warning: str | None = None


class ChannelPlan(_Model):
    name: str
    path: str
    create: bool = Field(False, description="the channel folder does not exist yet")
    observed: dict[str, str] = Field(
        default_factory=dict,
        description="digest of each subdir's files ('.' for the channel's top) as planned",
    )
    actions: list[Action] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    mirrors: list[MirrorStatus] = Field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)

    @property
    def due_runs(self) -> list[str]:
        """Scheduled mirrors due now: their run is recorded even if nothing changes."""
        return [m.name for m in self.mirrors if m.due and m.scheduled]

    @property
    def has_changes(self) -> bool:
        return self.create or bool(self.actions) or bool(self.due_runs)


class Plan(_Model):
    plan_version: Literal[1] = 1
    created: str = Field(description="UTC time the plan was made (ISO 8601)")
    config: str = Field(description="path of the configuration file")
    config_digest: str = Field(description="sha256 of the configuration file")
    revision: str | None = Field(None, description="git commit of the configuration, if any")
    channels: list[ChannelPlan] = Field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        return sum(c.count(kind) for c in self.channels)

    @property
    def has_changes(self) -> bool:
        return any(c.has_changes for c in self.channels)

    def summary(self) -> str:
        if not self.has_changes:
            return "No changes. Channels match the configuration."
        add = self.count("add")
        remove = self.count("remove")
        # A reindex counts as a change only where no package action explains it.
        change = self.count("update") + sum(
            1
            for c in self.channels
            for a in c.actions
            if a.kind == "reindex"
            and not any(b.subdir == a.subdir and b.kind != "reindex" for b in c.actions)
        )
        change += sum(1 for c in self.channels if c.create and not c.actions)
        due = sum(len(c.due_runs) for c in self.channels)
        if due and not (add or change or remove):
            return f"Plan: 0 to add, 0 to change, 0 to remove; {due} scheduled mirror run(s) due."
        return f"Plan: {add} to add, {change} to change, {remove} to remove."

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReconcileError(f"{path}: cannot read plan ({exc.strerror or exc})") from None
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise ReconcileError(
                f"{path}: not a plan saved by `reconcile plan --out` ({first})"
            ) from None


def schema_text() -> str:
    import json

    schema = Plan.model_json_schema()
    schema["title"] = "conda-reconcile plan"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
