"""What an apply did: JSON (``--report``), Markdown, and the GitHub step summary.

The JSON form is versioned by ``report_version`` and described by
``schemas/report.schema.json``, generated from these models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from reconciler.store.local import write_atomic

REPORT_VERSION = 1
# GitHub refuses step summaries over 1 MiB; stay well inside it.
STEP_SUMMARY_LIMIT = 900 * 1024
LIST_LIMIT = 50


class ChannelReport(BaseModel):
    name: str
    path: str
    mirror: str | None = Field(None, description="None: the channel's own packages and index")
    state: Literal["completed", "failed", "skipped", "unchanged"]
    added: list[str] = Field(default_factory=list, description="'<subdir>/<filename>'")
    updated: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    written: list[str] = Field(default_factory=list, description="index files written")
    failures: list[str] = Field(default_factory=list, description="what failed, and why")
    bytes: int = 0
    duration_s: float = 0.0
    serial: int | None = None
    run_id: str | None = None


class ApplyReport(BaseModel):
    report_version: Literal[1] = 1
    started: str
    finished: str
    config: str
    config_digest: str
    revision: str | None = None
    result: Literal["completed", "failed", "no-changes"]
    channels: list[ChannelReport] = Field(default_factory=list)

    def counts(self) -> tuple[int, int, int]:
        return (
            sum(len(c.added) for c in self.channels),
            sum(len(c.updated) for c in self.channels),
            sum(len(c.removed) for c in self.channels),
        )

    def summary(self) -> str:
        if self.result == "no-changes":
            return "Apply complete: no changes."
        added, updated, removed = self.counts()
        failed = sum(len(c.failures) for c in self.channels)
        head = "Apply failed" if self.result == "failed" else "Apply complete"
        tail = f", {failed} failure(s)" if failed else ""
        return f"{head}: {added} added, {updated} changed, {removed} removed{tail}."

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
        "| channel | state | added | changed | removed | duration |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in report.channels:
        name = f"{c.name}/{c.mirror}" if c.mirror else c.name
        lines.append(
            f"| {name} | {c.state} | {len(c.added)} | {len(c.updated)} | {len(c.removed)} "
            f"| {c.duration_s:.1f} s |"
        )
    for c in report.channels:
        if not (c.added or c.updated or c.removed or c.failures):
            continue
        lines += ["", f"### {c.name}" + (f"/{c.mirror}" if c.mirror else "")]
        for title, items in (
            ("Failures", c.failures),
            ("Added", c.added),
            ("Changed", c.updated),
            ("Removed", c.removed),
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
