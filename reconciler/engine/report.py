"""What an apply did: JSON (``--report``), Markdown, and the GitHub step summary.

Built from what was executed, not from what was planned: a download that failed
is a failure, not an addition. The JSON form is versioned by ``report_version``
and described by ``schemas/report.schema.json``, generated from these models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from reconciler.engine.plan import ACTION_KINDS, ActionKind, totals_text
from reconciler.store.local import write_atomic

REPORT_VERSION = 2
# GitHub refuses step summaries over 1 MiB; stay well inside it.
STEP_SUMMARY_LIMIT = 900 * 1024
LIST_LIMIT = 50

RunResult = Literal["completed", "failed", "skipped", "unchanged"]


class Done(BaseModel):
    """What one category of actions did, by ``location/name``."""

    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    restored: list[str] = Field(default_factory=list)
    reindexed: list[str] = Field(
        default_factory=list, description="locations whose index files were rewritten"
    )

    def bucket(self, kind: ActionKind) -> list[str]:
        return {
            "add": self.added,
            "update": self.updated,
            "remove": self.removed,
            "restore": self.restored,
            "reindex": self.reindexed,
        }[kind]

    def counts(self) -> dict[ActionKind, int]:
        return {kind: len(self.bucket(kind)) for kind in ACTION_KINDS}


class MirrorReport(Done):
    name: str
    state: RunResult
    refreshed: bool = Field(description="its upstream metadata was fetched in this run")
    bytes: int = 0
    duration_s: float = 0.0
    error: str | None = None


class ChannelReport(Done):
    name: str
    path: str
    state: RunResult
    written: list[str] = Field(default_factory=list, description="index files written")
    failures: list[str] = Field(default_factory=list, description="what failed, and why")
    warnings: list[str] = Field(default_factory=list, description="new warnings of this run")
    mirrors: list[MirrorReport] = Field(default_factory=list)
    bytes: int = 0
    duration_s: float = 0.0
    serial: int | None = None
    run_id: str | None = None


class ApplyReport(BaseModel):
    report_version: Literal[2] = 2
    started: str
    finished: str
    config: str
    config_digest: str
    revision: str | None = None
    result: Literal["completed", "failed", "no-changes"]
    channels: list[ChannelReport] = Field(default_factory=list)

    def counts(self) -> dict[ActionKind, int]:
        totals: dict[ActionKind, int] = dict.fromkeys(ACTION_KINDS, 0)
        for channel in self.channels:
            for kind, value in channel.counts().items():
                totals[kind] += value
        return totals

    def summary(self) -> str:
        failed = sum(len(c.failures) for c in self.channels)
        if self.result == "no-changes":
            return "Apply complete: no changes."
        head = "Apply failed" if self.result == "failed" else "Apply complete"
        tail = f", {failed} failure(s)" if failed else ""
        return f"{head}: {totals_text(self.counts(), future=False)}{tail}."

    def write_json(self, path: Path) -> None:
        write_atomic(path, (self.model_dump_json(indent=2) + "\n").encode())


def _bullets(items: list[str], limit: int) -> list[str]:
    lines = [f"- `{item}`" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"- … and {len(items) - limit} more")
    return lines


def render_markdown(report: ApplyReport, limit: int = LIST_LIMIT) -> str:
    lines = [f"## conda-reconcile apply: {report.result}", "", report.summary(), ""]
    meta = f"Config `{report.config}` (sha256 `{report.config_digest[:12]}`)"
    if report.revision:
        meta += f" at commit `{report.revision[:12]}`"
    lines += [meta, ""]
    lines += [
        "| channel | state | added | changed | removed | restored | duration |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in report.channels:
        lines.append(
            f"| {c.name} | {c.state} | {len(c.added)} | {len(c.updated)} | {len(c.removed)} "
            f"| {len(c.restored)} | {c.duration_s:.1f} s |"
        )
        for m in c.mirrors:
            lines.append(
                f"| {c.name}/{m.name} | {m.state} | {len(m.added)} | {len(m.updated)} "
                f"| {len(m.removed)} | {len(m.restored)} | {m.duration_s:.1f} s |"
            )
    for c in report.channels:
        if not (c.added or c.updated or c.removed or c.restored or c.failures or c.warnings):
            continue
        lines += ["", f"### {c.name}"]
        for title, items in (
            ("Failures", c.failures),
            ("Warnings", c.warnings),
            ("Added", c.added),
            ("Changed", c.updated),
            ("Removed", c.removed),
            ("Restored", c.restored),
        ):
            if items:
                lines += ["", f"**{title}**", *_bullets(items, limit)]
    return "\n".join(lines) + "\n"


def append_step_summary(report: ApplyReport) -> bool:
    """Append the Markdown to ``$GITHUB_STEP_SUMMARY`` when set; True if written."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    text = render_markdown(report)
    limit = LIST_LIMIT
    while len(text.encode()) > STEP_SUMMARY_LIMIT and limit > 1:
        limit //= 2
        text = render_markdown(report, limit)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(text)
    return True


def schema_text() -> str:
    schema = ApplyReport.model_json_schema()
    schema["title"] = "conda-reconcile apply report"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
