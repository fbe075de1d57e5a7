"""The one status model behind ``reconcile status``, ``/api/status`` and the status pages.

Built from each channel's store: what it publishes, its state (outstanding
warnings), its history and the progress of a run holding its lock, with next-due
times from the same schedule code and the same clock as plan and apply, so the
command line and the pages can never disagree. The effective filters are named by
their keys in ``channels.yaml`` (``channels[0].filters.exclude[0]``), as plans and
``explain`` name the rules. ``schemas/status.schema.json`` is generated from these
models; the mirror and run views (:func:`mirror_view`, :func:`run_view`) reuse them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from reconciler.config.models import (
    AnyChannelModel,
    DateWindow,
    ExcludeRule,
    FilterBlock,
    LoadedConfig,
    PypiFilters,
    Rule,
    TagRule,
)
from reconciler.engine import layout
from reconciler.engine.clock import format_time, now, parse_time
from reconciler.engine.history import FINAL_STATES, History, RunRecord, last_of
from reconciler.engine.kind import KindRegistry
from reconciler.engine.progress import PROGRESS_LIMIT
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
    interrupted: bool = Field(
        False,
        description="unfinished, and no process holds the channel's lock: its process died "
        "(the next apply records it as failed)",
    )

    @classmethod
    def of(cls, run: RunRecord, *, locked: bool = True) -> RunSummary:
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
            interrupted=run.state not in FINAL_STATES and not locked,
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


class FilterRule(BaseModel):
    key: str = Field(
        description="where the rule is in channels.yaml: channels[0].filters.exclude[0]"
    )
    rule: str = Field(description="what it says, e.g. 'license: GPL, except name: libgcc*'")


class RunProgress(BaseModel):
    """Where a run holding the channel's lock is (``.reconciler/progress.json``)."""

    run_id: str = Field(description="the channel's run")
    mirrors: dict[str, str] = Field(
        default_factory=dict, description="the mirrors it refreshes, with their run ids"
    )
    step: str = Field(
        description="preparing, downloading, indexing and pruning, recording, or a step a kind "
        "reported by its label"
    )
    label: str = ""
    done: int | None = Field(None, description="files downloaded (downloading), or units done")
    total: int | None = None
    unit: str | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    started: str
    updated: str = Field(description="when the run last wrote its progress")


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
    filters: list[FilterRule] = Field(
        default_factory=list, description="its own filter block (the channel's applies too)"
    )
    progress: RunProgress | None = Field(None, description="while a run refreshes it")


class ChannelStatus(BaseModel):
    name: str
    kind: str
    access: Literal["public", "private"] = "public"
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
    filters: list[FilterRule] = Field(
        default_factory=list, description="the channel's filter block: every mirror and local"
    )
    progress: RunProgress | None = Field(None, description="while a run holds its lock")


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


# -- filters, named by their keys ----------------------------------------------------------

_RULE_KEYS = ("name", "version", "build", "spec", "license", "license_family", "subdir")


def describe_rule(rule: Rule | TagRule) -> str:
    """``license: GPL, subdir: win-*``: the keys a rule sets (as plans name rules)."""
    keys = _RULE_KEYS if isinstance(rule, Rule) else ("python", "abi", "platform")
    return ", ".join(f"{k}: {getattr(rule, k)}" for k in keys if getattr(rule, k) is not None)


def _exclude_text(rule: ExcludeRule) -> str:
    text = describe_rule(rule)
    if rule.except_:
        kept = [describe_rule(r) for r in rule.except_]
        shown = [f"({k})" if ", " in k and len(kept) > 1 else k for k in kept]
        text += ", except " + " or ".join(shown)
    return text


def _when(value: dt.datetime) -> str:
    if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
        return value.date().isoformat()
    return format_time(value)


def _window(window: DateWindow) -> str:
    parts = []
    if window.after is not None:
        parts.append(f"after {_when(window.after)}")
    if window.before is not None:
        parts.append(f"before {_when(window.before)}")
    return ", ".join(parts)


def filter_rules(block: FilterBlock | PypiFilters, where: str) -> list[FilterRule]:
    """The rules of one filter block, each named by its key (``where``: the block's key)."""
    rules: list[FilterRule] = []

    def add(key: str, text: str) -> None:
        rules.append(FilterRule(key=f"{where}.{key}", rule=text))

    if isinstance(block, FilterBlock):
        for i, include in enumerate(block.include):
            add(f"include[{i}]", describe_rule(include))
        for i, exclude in enumerate(block.exclude):
            add(f"exclude[{i}]", _exclude_text(exclude))
    else:
        for key in ("prerelease", "yanked"):
            value = getattr(block, key)
            if value is not None:
                add(key, "true" if value else "false")
        if block.kinds is not None:
            add("kinds", ", ".join(block.kinds))
        if block.wheel_tags is not None:
            for i, tags in enumerate(block.wheel_tags.include):
                add(f"wheel_tags.include[{i}]", describe_rule(tags))
            for i, tags in enumerate(block.wheel_tags.exclude):
                add(f"wheel_tags.exclude[{i}]", describe_rule(tags))
    if block.date is not None:
        add("date", _window(block.date))
    if block.latest is not None:
        add("latest", str(block.latest))
    if isinstance(block, FilterBlock) and block.dependencies:
        add("dependencies", "true")
    return rules


def channel_filters(channel: AnyChannelModel, position: int) -> list[FilterRule]:
    return filter_rules(channel.filters, f"channels[{position}].filters")


def mirror_filters(channel: AnyChannelModel, position: int, index: int) -> list[FilterRule]:
    mirror = channel.mirrors[index]
    return filter_rules(mirror.filters, f"channels[{position}].mirrors[{index}].filters")


# -- the progress of a running apply -------------------------------------------------------


def read_progress(store: Store, runs: Sequence[RunRecord]) -> tuple[RunProgress | None, bool]:
    """The progress of the run holding the channel's lock, and whether any run does.

    Only when a run is unfinished is the lock looked at; a progress file is shown only
    while its run is ``running`` in the history and a process holds the lock: the file
    of a run that finished, or whose process died, is not.
    """
    if all(r.state in FINAL_STATES for r in runs):
        return None, False
    try:
        locked = store.lock_holder() is not None
    except (ReconcileError, OSError):
        locked = False
    if not locked:
        return None, False
    try:
        data = orjson.loads(store.read(layout.PROGRESS, limit=PROGRESS_LIMIT) or b"null")
    except (ReconcileError, ValueError):
        return None, True
    if not isinstance(data, dict) or data.get("finished") or data.get("state") != "running":
        return None, True
    try:
        progress = RunProgress.model_validate(data)
    except ValidationError:
        return None, True
    current = {r.run_id: r.state for r in runs}
    if current.get(progress.run_id) != "running":
        return None, True
    return progress, True


def _locations(channel: AnyChannelModel, mirror: object) -> list[str]:
    subdirs = getattr(mirror, "subdirs", None)
    if hasattr(channel, "mirror_subdirs"):
        return list(channel.mirror_subdirs(mirror))  # type: ignore[arg-type]
    projects = getattr(mirror, "projects", None)
    return list(projects or subdirs or [])


def _mirror_status(
    channel: AnyChannelModel,
    position: int,
    index: int,
    runs: list[RunRecord],
    progress: RunProgress | None,
    locked: bool,
) -> MirrorStatus:
    mirror = channel.mirrors[index]
    at = now()
    last = last_of(runs, mirror.name)
    started = last_of(runs, mirror.name, started_only=True)
    success = last_of(runs, mirror.name, state="completed")
    status = due(mirror.schedule, parse_time(started.started) if started else None, at)
    mine = progress is not None and mirror.name in progress.mirrors
    return MirrorStatus(
        channel=channel.name,
        name=mirror.name,
        mode=mirror.mode,
        source=redact(mirror.source),
        locations=_locations(channel, mirror),
        schedule=mirror.schedule,
        state=last.state if last else "never",
        last_run=RunSummary.of(last, locked=locked) if last else None,
        last_success=success.finished if success else None,
        due_now=status.due,
        next_due=format_time(status.next_due) if status.next_due else None,
        filters=mirror_filters(channel, position, index),
        progress=progress if mine else None,
    )


def channel_status(
    channel: AnyChannelModel,
    kinds: KindRegistry,
    *,
    position: int = 0,
    history_limit: int = 20,
    packages: Callable[[AnyChannelModel, Store], dict[str, int | None]] | None = None,
) -> ChannelStatus:
    """The status of ``channel``, the one at ``position`` in the configuration.

    ``packages`` counts what each location publishes, when the caller has a cheaper way
    than the kind's (the server keeps the published indexes parsed).
    """
    store = channel_store(channel)
    runs = History(store).runs()
    progress, locked = read_progress(store, runs)
    mirrors = [
        _mirror_status(channel, position, i, runs, progress, locked)
        for i in range(len(channel.mirrors))
    ]
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
        access=channel.access,
        path=str(channel.path),
        packages=(packages or kinds.kind_of(channel).counts)(channel, store),
        last_run=RunSummary.of(last_channel, locked=locked) if last_channel else None,
        warnings=sorted(state.warnings.values()),
        mirrors=mirrors,
        passive=read_passive_stats(store),
        history=[RunSummary.of(r, locked=locked) for r in reversed(runs[-history_limit:])],
        filters=channel_filters(channel, position),
        progress=progress,
        pending_deletions=len(pending),
        next_deletion=min(p.after for p in pending) if pending else None,
        locked_by=holder.describe() if holder is not None else None,
    )


def collect_status(loaded: LoadedConfig, kinds: KindRegistry, *, history_limit: int = 20) -> Status:
    return Status(
        generated=format_time(now()),
        channels=[
            channel_status(channel, kinds, position=position, history_limit=history_limit)
            for position, channel in enumerate(loaded.config.channels)
        ],
    )


# -- the mirror and run views ---------------------------------------------------------------


def mirror_statuses(loaded: LoadedConfig, channels: Collection[str]) -> list[MirrorStatus]:
    """Every mirror of the named channels, in the configuration's order (package counts,
    the costly part of a channel's status, are not read)."""
    found: list[MirrorStatus] = []
    for position, channel in enumerate(loaded.config.channels):
        if channel.name not in channels or not channel.mirrors:
            continue
        store = channel_store(channel)
        runs = History(store).runs()
        progress, locked = read_progress(store, runs)
        found.extend(
            _mirror_status(channel, position, i, runs, progress, locked)
            for i in range(len(channel.mirrors))
        )
    return found


class LocationCounts(BaseModel):
    added: int = 0
    updated: int = 0
    removed: int = 0
    restored: int = 0
    reindexed: int = Field(0, description="1 when its index files were rewritten")


class ExampleAction(BaseModel):
    where: str = Field(description="location/filename")
    source: str = Field(description="'local' or the mirror")
    reason: str = Field(description="the reason code: new-upstream, filtered, ...")
    detail: str = ""


class RunDetails(BaseModel):
    """What a finished run recorded beyond its counts (``RunRecord.details``)."""

    locations: dict[str, LocationCounts] = Field(
        default_factory=dict, description="per subdir or project ('.': the channel's top)"
    )
    reasons: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per category (added, removed, ...): reason code → count"
    )
    examples: dict[str, list[ExampleAction]] = Field(
        default_factory=dict, description="per category: the first few actions"
    )
    failures: list[str] = Field(default_factory=list, description="the first failures")
    failures_total: int = 0
    mirror_runs: dict[str, str] = Field(
        default_factory=dict, description="a channel's run: the runs of the mirrors it refreshed"
    )
    channel_run: str | None = Field(None, description="a mirror's run: the channel's run")


def run_details_of(run: RunRecord) -> RunDetails | None:
    """The details a run recorded (None: none, or not in a form this version reads)."""
    if not run.details:
        return None
    try:
        return RunDetails.model_validate(run.details)
    except ValidationError:
        return None


class MirrorView(BaseModel):
    """One mirror: its status, the filters that apply to it and its last runs."""

    status_version: Literal[1] = 1
    generated: str
    mirror: MirrorStatus
    channel_filters: list[FilterRule] = Field(
        default_factory=list, description="the channel's block, which applies to it too"
    )
    runs: list[RunSummary] = Field(default_factory=list, description="newest first")


class RunView(BaseModel):
    """One run: its counts, its details and, while it runs, its progress."""

    status_version: Literal[1] = 1
    generated: str
    channel: str
    run: RunSummary
    details: RunDetails | None = Field(None, description="None: recorded without details")
    progress: RunProgress | None = None
    related: list[RunSummary] = Field(
        default_factory=list,
        description="a channel's run: its mirrors' runs; a mirror's run: the channel's run",
    )


def _position(loaded: LoadedConfig, name: str) -> int | None:
    for position, channel in enumerate(loaded.config.channels):
        if channel.name == name:
            return position
    return None


def mirror_view(
    loaded: LoadedConfig, channel_name: str, mirror_name: str, *, limit: int = 20
) -> MirrorView | None:
    """The view of one mirror (None: no such channel or mirror)."""
    position = _position(loaded, channel_name)
    if position is None:
        return None
    channel = loaded.config.channels[position]
    names: list[str] = [m.name for m in channel.mirrors]
    index = names.index(mirror_name) if mirror_name in names else None
    if index is None:
        return None
    store = channel_store(channel)
    runs = History(store).runs()
    progress, locked = read_progress(store, runs)
    mine = [r for r in runs if r.mirror == mirror_name]
    return MirrorView(
        generated=format_time(now()),
        mirror=_mirror_status(channel, position, index, runs, progress, locked),
        channel_filters=channel_filters(channel, position),
        runs=[RunSummary.of(r, locked=locked) for r in reversed(mine[-limit:])],
    )


def run_view(loaded: LoadedConfig, channel_name: str, run_id: str) -> RunView | None:
    """The view of one run of a channel (None: no such channel or run)."""
    position = _position(loaded, channel_name)
    if position is None:
        return None
    store = channel_store(loaded.config.channels[position])
    runs = History(store).runs()
    by_id = {r.run_id: r for r in runs}
    run = by_id.get(run_id)
    if run is None:
        return None
    progress, locked = read_progress(store, runs)
    details = run_details_of(run)
    related: list[Any] = []
    if details is not None:
        ids = [details.channel_run] if details.channel_run else details.mirror_runs.values()
        related = [by_id[i] for i in ids if i in by_id]
    if progress is not None and run_id != progress.run_id:
        progress = progress if run_id in progress.mirrors.values() else None
    return RunView(
        generated=format_time(now()),
        channel=channel_name,
        run=RunSummary.of(run, locked=locked),
        details=details,
        progress=progress,
        related=[RunSummary.of(r, locked=locked) for r in related],
    )


def schema_text() -> str:
    schema = Status.model_json_schema()
    schema["title"] = "conda-reconcile status"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
