"""Carry a plan out: per channel, under its lock, converge and record what happened.

Apply is idempotent: it re-derives everything from the configuration and the
disk, so a second apply finds nothing to do and writes nothing. A saved plan is
applied only if the configuration and every channel's files are still what the
plan saw; otherwise it is refused as stale, saying what changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from reconciler.config.models import Channel, LoadedConfig, PypiChannel
from reconciler.engine.downloads import download_all
from reconciler.engine.history import History, RunState, new_run
from reconciler.engine.lock import LockTimeout, channel_lock
from reconciler.engine.plan import ChannelPlan, Plan
from reconciler.engine.planner import make_plan, mirror_selection, resolve_channel_mirrors
from reconciler.engine.progress import default_reporter
from reconciler.engine.published import channel_folders
from reconciler.engine.report import ApplyReport, ChannelReport
from reconciler.engine.state import ChannelState, InventoryEntry
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.indexer import IndexResult, index_channel
from reconciler.kinds.conda.mirrors import ResolvedMirrors
from reconciler.kinds.conda.stat_cache import StatCache
from reconciler.kinds.pypi.apply import converge_pypi
from reconciler.store.local import StorageError, clean_temp_files, remove_if_exists

log = logging.getLogger(__name__)


INTERRUPTED = "interrupted: the process ended before the run finished; a later run converged"


class StalePlanError(ReconcileError):
    """The saved plan no longer describes the configuration or the channels."""


def check_not_stale(saved: Plan, fresh: Plan) -> None:
    """Refuse ``saved`` when what it was made from has changed since."""
    problems: list[str] = []
    if saved.config_digest != fresh.config_digest:
        problems.append(f"the configuration {fresh.config} changed")
    fresh_channels = {c.name: c for c in fresh.channels}
    for channel in saved.channels:
        now = fresh_channels.get(channel.name)
        if now is None:
            problems.append(f"channel {channel.name} is no longer in the configuration")
            continue
        changed = sorted(
            key
            for key in channel.observed.keys() | now.observed.keys()
            if channel.observed.get(key) != now.observed.get(key)
        )
        if changed:
            where = ", ".join("top folder" if k == "." else f"{k}/" for k in changed)
            problems.append(f"channel {channel.name} changed on disk ({where})")
    if problems:
        raise StalePlanError(
            "the saved plan is stale: " + "; ".join(problems),
            hint="run `reconcile plan` again and review the new plan",
        )


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _update_state(
    channel: Channel, result: IndexResult, plan: Plan, mirrors: ResolvedMirrors | None
) -> ChannelState:
    path = Path(channel.path)
    state = ChannelState.load(path, channel.name)
    files: dict[str, InventoryEntry] = {}
    for subdir_result in result.subdirs:
        cache = StatCache.load(path / ".reconciler" / "cache" / f"{subdir_result.subdir}.msgpack")
        for name, entry in cache.entries.items():
            if name in subdir_result.excluded:
                continue
            key = f"{subdir_result.subdir}/{name}"
            previous = state.files.get(key)
            source = previous.source if previous is not None else "local"
            files[key] = InventoryEntry(source=source, sha256=entry.sha256, size=entry.stat.size)
    if mirrors is not None:
        modes = {m.mirror.name: m.mirror.mode for m in mirrors.mirrors}
        for subdir, records in mirrors.records.items():
            for name, mirrored in records.items():
                files[f"{subdir}/{name}"] = InventoryEntry(
                    source=mirrored.mirror,
                    sha256=str(mirrored.record.get("sha256", "")),
                    size=int(mirrored.record.get("size") or 0),
                    passive=modes.get(mirrored.mirror) == "passive",
                )
    state.files = dict(sorted(files.items()))
    state.serial += 1
    state.config_digest = plan.config_digest
    state.revision = plan.revision
    state.updated = _utc_now()
    state.save(path)
    return state


def _download(path: Path, mirrors: ResolvedMirrors, report: ChannelReport) -> None:
    """Fetch what active mirrors need; a failed file is left out of this publish."""
    upstreams = {m.mirror.name: m.upstream for m in mirrors.mirrors}
    parallel = {m.mirror.name: m.mirror.parallel_downloads for m in mirrors.mirrors}
    downloaded = download_all(
        path, mirrors.downloads, upstreams, parallel=parallel, reporter=default_reporter()
    )
    report.bytes += downloaded.bytes
    for item, reason in downloaded.failed:
        report.failures.append(reason)
        mirrors.records.get(item.subdir, {}).pop(item.filename, None)


def _prune(path: Path, mirrors: ResolvedMirrors, report: ChannelReport) -> None:
    """Delete files mirrors no longer want, now that no published index names them."""
    for _mirror, subdir, filename in mirrors.prune:
        if mirrors.owner(subdir, filename) is not None:
            continue
        target = path / subdir / filename
        if remove_if_exists(target):
            log.info("pruned %s/%s", subdir, filename)


def apply_channel(
    channel: Channel | PypiChannel,
    index: int,
    planned: ChannelPlan,
    plan: Plan,
    lock_timeout: float,
    config_dir: Path | None = None,
    only_mirrors: set[str] | None = None,
    wait: bool = True,
) -> ChannelReport:
    """Converge one channel; failures are recorded, not raised.

    A channel locked by another run is ``skipped`` (recorded with the holder)
    unless ``wait``, when the lock timeout raises.
    """
    path = Path(channel.path)
    report = ChannelReport(name=channel.name, path=str(path), state="completed")
    unreadable = any(w.startswith("skipping ") for w in planned.warnings)
    if not planned.has_changes and not unreadable:
        report.state = "unchanged"
        return report
    # A package that cannot be read fails every run until it is fixed or removed.
    started = time.monotonic()
    path.mkdir(parents=True, exist_ok=True)
    history = History(path)
    try:
        lock = channel_lock(path, timeout=lock_timeout, command="reconcile apply")
        lock.__enter__()
    except LockTimeout as exc:
        if wait:
            raise
        # Another run holds the channel: this one is skipped, not failed.
        skipped = new_run(
            channel.name, None, config_digest=plan.config_digest, revision=plan.revision
        )
        history.transition(skipped, "skipped", error=exc.message)
        report.state = "skipped"
        report.failures = []
        log.warning("channel %s skipped: %s", channel.name, exc.message)
        return report
    try:
        return _apply_locked(
            channel, index, planned, plan, config_dir, only_mirrors, history, report, started
        )
    finally:
        lock.__exit__(None, None, None)


def _converge_conda(
    channel: Channel,
    index: int,
    planned: ChannelPlan,
    plan: Plan,
    config_dir: Path | None,
    only_mirrors: set[str] | None,
    not_due: set[str],
    report: ChannelReport,
) -> int:
    """Download, index and prune a conda channel; returns the new state serial."""
    path = Path(channel.path)
    mirrors = resolve_channel_mirrors(channel, index, config_dir, only_mirrors, not_due)
    if mirrors is not None:
        # Files go in place before any published index names them.
        _download(path, mirrors, report)
    result = index_channel(
        path,
        options=channel.index,
        patches=channel.patches,
        subdirs=channel.served_subdirs,
        channel_name=channel.name,
        filters=FilterEngine(channel.filters, f"channels[{index}].filters"),
        mirrored=mirrors.records if mirrors else None,
        upstream_removed=mirrors.removed if mirrors else None,
        pruned=mirrors.pruned if mirrors else None,
    )
    checkpoint("apply.before_prune")
    if mirrors is not None:
        # ...and are deleted only once the published index stopped naming them.
        _prune(path, mirrors, report)
        checkpoint("apply.after_prune")
    for action in planned.actions:
        where = f"{action.subdir}/{action.filename}"
        if action.kind == "add":
            report.added.append(where)
        elif action.kind == "update":
            report.updated.append(where)
        elif action.kind == "remove":
            report.removed.append(where)
    report.written = sorted(
        [f"{r.subdir}/{n}" for r in result.subdirs for n in r.written] + result.written
    )
    report.failures.extend(f"skipped {s.format()}" for s in result.skipped)
    state = _update_state(channel, result, plan, mirrors)
    return state.serial


def _apply_locked(
    channel: Channel | PypiChannel,
    index: int,
    planned: ChannelPlan,
    plan: Plan,
    config_dir: Path | None,
    only_mirrors: set[str] | None,
    history: History,
    report: ChannelReport,
    started: float,
) -> ChannelReport:
    not_due = {m.name for m in planned.mirrors if not m.due}
    # The caller holds the channel lock, so unfinished runs belong to dead processes.
    for stale in history.unfinished():
        history.transition(stale, "failed", error=INTERRUPTED)
    for folder in channel_folders(channel):
        if removed := clean_temp_files(folder):
            log.info("removed %d temporary file(s) a crashed run left in %s", removed, folder)
    run = history.append(
        new_run(channel.name, None, config_digest=plan.config_digest, revision=plan.revision)
    )
    report.run_id = run.run_id
    run = history.transition(run, "running")
    mirror_runs = {
        m.name: history.transition(
            history.append(
                new_run(
                    channel.name,
                    m.name,
                    config_digest=plan.config_digest,
                    revision=plan.revision,
                )
            ),
            "running",
        )
        for m in channel.mirrors
        if (only_mirrors is None or m.name in only_mirrors) and m.name not in not_due
    }
    try:
        if isinstance(channel, PypiChannel):
            report.serial = converge_pypi(
                channel, planned, plan, config_dir, only_mirrors, not_due, report
            )
        else:
            report.serial = _converge_conda(
                channel, index, planned, plan, config_dir, only_mirrors, not_due, report
            )
    except (ReconcileError, OSError) as exc:
        message = exc.message if isinstance(exc, ReconcileError) else str(exc)
        if isinstance(exc, ReconcileError) and exc.hint:  # e.g. "free some disk space"
            message += f" (hint: {exc.hint})"
        report.state = "failed"
        report.failures.append(message)
        report.duration_s = round(time.monotonic() - started, 3)
        try:
            history.transition(run, "failed", error=message)
            for mirror_run in mirror_runs.values():
                history.transition(mirror_run, "failed", error=message)
        except StorageError as unrecorded:  # the same full disk: report the first error
            log.error("%s; the next apply records the run as interrupted", unrecorded.message)
        log.error("channel %s: %s", channel.name, message)
        return report
    report.duration_s = round(time.monotonic() - started, 3)
    error = None
    if report.failures:
        # What worked is published and kept; the run still did not do everything.
        report.state = "failed"
        error = f"{len(report.failures)} failure(s): " + "; ".join(report.failures[:5])
    final: RunState = "failed" if error else "completed"

    def counts(source: str | None) -> dict[str, int]:
        chosen = [a for a in planned.actions if source is None or a.source == source]
        return {
            "added": sum(1 for a in chosen if a.kind == "add"),
            "updated": sum(1 for a in chosen if a.kind == "update"),
            "removed": sum(1 for a in chosen if a.kind == "remove"),
        }

    history.transition(run, final, error=error, bytes=report.bytes, **counts(None))
    for name, mirror_run in mirror_runs.items():
        history.transition(mirror_run, final, error=error, **counts(name))
    return report


def apply(
    loaded: LoadedConfig,
    *,
    saved_plan: Path | None = None,
    channels: Sequence[str] | None = None,
    mirrors: Sequence[str] | None = None,
    lock_timeout: float = 0.0,
    run_now: bool = False,
    wait: bool = True,
) -> tuple[Plan, ApplyReport]:
    """Plan (or check the saved plan), then converge every channel with changes."""
    started = _utc_now()
    names = list(channels or [])
    saved: Plan | None = None
    if saved_plan is not None:
        saved = Plan.load(saved_plan)
        names = names or [c.name for c in saved.channels]
    fresh = make_plan(loaded, names or None, mirrors, run_now)
    if saved is not None:
        check_not_stale(saved, fresh)
    config = loaded.config
    reports: list[ChannelReport] = []
    planned = {c.name: c for c in fresh.channels}
    for i, channel in enumerate(config.channels):
        if channel.name in planned:
            reports.append(
                apply_channel(
                    channel,
                    i,
                    planned[channel.name],
                    fresh,
                    lock_timeout,
                    loaded.base_dir,
                    mirror_selection(loaded, mirrors),
                    wait,
                )
            )
    if any(r.state == "failed" or r.failures for r in reports):
        result = "failed"
    elif not fresh.has_changes:
        result = "no-changes"
    else:
        result = "completed"
    report = ApplyReport(
        started=started,
        finished=_utc_now(),
        config=str(loaded.path),
        config_digest=fresh.config_digest,
        revision=fresh.revision,
        result=result,
        channels=reports,
    )
    return fresh, report
