"""The one status model behind ``reconcile status``, ``/api/status`` and the status page.

Built from each channel's store: what it publishes, its state (outstanding
warnings) and its history, with next-due times from the same schedule code and
the same clock as plan and apply, so the command line and the page can never
disagree. ``schemas/status.schema.json`` is generated from these models.
"""

from __future__ import annotations

import json
from typing import Literal

import orjson
from pydantic import BaseModel, Field

from reconciler.config.models import AnyChannelModel, LoadedConfig
from reconciler.engine import layout
from reconciler.engine.clock import format_time, now, parse_time
from reconciler.engine.history import History, RunRecord, last_of
from reconciler.engine.kind import KindRegistry
from reconciler.engine.schedule import due
from reconciler.engine.state import read_state
from reconciler.errors import ReconcileError
from reconciler.store import channel_store
from reconciler.store.base import Store
from reconciler.transport.http import redact

STATUS_VERSION = 1
RECENT_FAILURES = 20  # failed passive fetches kept for the status page

MirrorState = Literal["never", "pending", "running", "completed", "failed", "skipped"]


class RunSummary(BaseModel):
    run_id: str
    target: str
    mirror: str | None
    state: str
    started: str
    finished: str | None = None
    added: int = 0
    updated: int = 0
    removed: int = 0
    restored: int = 0
    reindexed: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    error: str | None = None
    revision: str | None = None

    @classmethod
    def of(cls, run: RunRecord) -> RunSummary:
        return cls(
            run_id=run.run_id,
            target=run.target,
            mirror=run.mirror,
            state=run.state,
            started=run.started,
            finished=run.finished,
            added=run.added,
            updated=run.updated,
            removed=run.removed,
            restored=run.restored,
            reindexed=run.reindexed,
            bytes=run.bytes,
            duration_s=run.duration_s,
            error=run.error,
            revision=run.revision,
        )


class PassiveStats(BaseModel):
    hits: int = 0  # served from disk, fetched earlier
    fetches: int = 0  # fetched from upstream on request
    bytes: int = 0
    failures: int = 0
    recent_failures: list[dict[str, str]] = Field(
        default_factory=list,
        description="the last failed fetches (file, time, error), newest first",
    )


class MirrorStatus(BaseModel):
    channel: str
    name: str
    mode: str
    source: str = Field(description="redacted")
    locations: list[str] = Field(description="subdirs (conda) or projects (PyPI) it mirrors")
    schedule: str | None
    state: MirrorState = Field(description="of its current or last run")
    last_run: RunSummary | None = None
    last_success: str | None = Field(None, description="when its last completed run finished")
    due_now: bool = Field(description="the next apply refreshes it")
    next_due: str | None = Field(None, description="the schedule's next fire time (UTC)")


class ChannelStatus(BaseModel):
    name: str
    kind: str
    path: str
    packages: dict[str, int | None] = Field(description="per location; None: not indexed")
    last_run: RunSummary | None = None
    drift: bool | None = Field(None, description="a plan shows changes (None: not computed)")
    warnings: list[str] = Field(default_factory=list, description="still outstanding")
    mirrors: list[MirrorStatus] = Field(default_factory=list)
    passive: PassiveStats = Field(default_factory=PassiveStats)
    history: list[RunSummary] = Field(default_factory=list, description="newest first")
    pending_deletions: int = Field(
        0, description="unpublished files waiting for their grace period to end"
    )
    next_deletion: str | None = Field(None, description="when the first of them is due (UTC)")
    locked_by: str | None = Field(
        None, description="the run holding the channel's lock or lease now, if any"
    )


class Status(BaseModel):
    status_version: Literal[1] = 1
    generated: str
    channels: list[ChannelStatus] = Field(default_factory=list)


def read_passive_stats(store: Store) -> PassiveStats:
    try:
        data = orjson.loads(store.read(layout.PASSIVE_STATS) or b"{}")
        if not isinstance(data, dict):
            return PassiveStats()
        failures = [
            {str(k): str(v) for k, v in item.items()}
            for item in data.get("recent_failures") or ()
            if isinstance(item, dict)
        ][:RECENT_FAILURES]
        counts = {
            k: v for k, v in data.items() if k in PassiveStats.model_fields and type(v) is int
        }
        return PassiveStats(**counts, recent_failures=failures)
    except (ReconcileError, ValueError):
        return PassiveStats()


def _locations(channel: AnyChannelModel, mirror: object) -> list[str]:
    subdirs = getattr(mirror, "subdirs", None)
    if hasattr(channel, "mirror_subdirs"):
        return list(channel.mirror_subdirs(mirror))  # type: ignore[arg-type]
    projects = getattr(mirror, "projects", None)
    return list(projects or subdirs or [])


def channel_status(
    channel: AnyChannelModel, kinds: KindRegistry, *, history_limit: int = 20
) -> ChannelStatus:
    store = channel_store(channel)
    at = now()
    runs = History(store).runs()
    mirrors = []
    for mirror in channel.mirrors:
        last = last_of(runs, mirror.name)
        started = last_of(runs, mirror.name, started_only=True)
        success = last_of(runs, mirror.name, state="completed")
        status = due(mirror.schedule, parse_time(started.started) if started else None, at)
        mirrors.append(
            MirrorStatus(
                channel=channel.name,
                name=mirror.name,
                mode=mirror.mode,
                source=redact(mirror.source),
                locations=_locations(channel, mirror),
                schedule=mirror.schedule,
                state=last.state if last else "never",
                last_run=RunSummary.of(last) if last else None,
                last_success=success.finished if success else None,
                due_now=status.due,
                next_due=format_time(status.next_due) if status.next_due else None,
            )
        )
    last_channel = last_of(runs, None)
    state = read_state(store, channel.name)
    try:
        holder = store.lock_holder()
    except ReconcileError:
        holder = None
    pending = state.pending_deletions
    return ChannelStatus(
        name=channel.name,
        kind=channel.kind,
        path=str(channel.path),
        packages=kinds.kind_of(channel).counts(channel, store),
        last_run=RunSummary.of(last_channel) if last_channel else None,
        warnings=sorted(state.warnings.values()),
        mirrors=mirrors,
        passive=read_passive_stats(store),
        history=[RunSummary.of(r) for r in reversed(runs[-history_limit:])],
        pending_deletions=len(pending),
        next_deletion=min(p.after for p in pending) if pending else None,
        locked_by=holder.describe() if holder is not None else None,
    )


def collect_status(loaded: LoadedConfig, kinds: KindRegistry, *, history_limit: int = 20) -> Status:
    return Status(
        generated=format_time(now()),
        channels=[
            channel_status(channel, kinds, history_limit=history_limit)
            for channel in loaded.config.channels
        ],
    )


def schema_text() -> str:
    schema = Status.model_json_schema()
    schema["title"] = "conda-reconcile status"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
