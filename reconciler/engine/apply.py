"""Carry a plan out: per channel, under its lock, execute the plan's actions and
record what happened.

``apply`` executes the plan it has just made, in the same process, without
asking any upstream a second time; or a saved plan, after checking that what the
plan was made from — the configuration, what each channel publishes, and what
each upstream answered — has not moved (it is refused as stale, naming what
did). A channel whose files changed while this run waited for its lock is
planned again under the lock, so work done by the other run is neither redone
nor recorded twice. Reports, history and state are built from what was executed.
One failing mirror fails that mirror's run; the rest is applied.

Index files are written on the condition that they are still what the plan saw
(``If-Match`` in a bucket). When another writer got there first
(:class:`~reconciler.store.base.PreconditionFailed`), nothing of theirs is
overwritten: the channel is planned again and executed again, a few times at
most, then its run fails saying so. What the run unpublished is recorded as
pending deletions and deleted once the grace period is over (``engine.deletions``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.config.models import LoadedConfig
from reconciler.engine import deletions
from reconciler.engine.clock import now, timestamp
from reconciler.engine.history import History, RunRecord, RunState, new_run, run_details
from reconciler.engine.kind import KindRegistry, Outcome
from reconciler.engine.plan import Action, ChannelPlan, Plan, Reason
from reconciler.engine.planner import (
    ChannelPlanning,
    Planning,
    PlanOptions,
    channel_positions,
    file_digest,
    git_revision,
    make_plan,
    plan_channel,
    plan_options_of,
)
from reconciler.engine.progress import (
    STEP_INDEXING,
    STEP_PREPARING,
    STEP_RECORDING,
    ProgressRecorder,
    Reporter,
)
from reconciler.engine.report import ApplyReport, ChannelReport, Done, MirrorReport
from reconciler.engine.state import save_state
from reconciler.errors import ReconcileError
from reconciler.store.base import LockTimeout, PreconditionFailed, StorageError

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the process ended before the run finished; a later run converged"
# How many times a channel is planned and executed again when another writer changed
# what this run was about to replace.
MAX_ATTEMPTS = 3


class StalePlanError(ReconcileError):
    """The saved plan no longer describes the configuration, the channels or the upstreams."""


def _stale(problems: list[str]) -> StalePlanError:
    return StalePlanError(
        "the saved plan is stale: " + "; ".join(problems),
        hint="run `reconcile plan` again and review the new plan",
    )


def what_moved(saved: ChannelPlan, fresh: ChannelPlan) -> list[str]:
    """How ``fresh`` (planned now from what ``saved`` used) differs from ``saved``."""
    problems: list[str] = []
    changed = sorted(
        key
        for key in saved.published.keys() | fresh.published.keys()
        if saved.published.get(key) != fresh.published.get(key)
    )
    if changed:
        where = ", ".join("top folder" if k == "." else f"{k}/" for k in changed)
        problems.append(f"channel {saved.name} changed since the plan ({where})")
    before = {(u.mirror, u.location): u.sha256 for u in saved.upstream}
    after = {(u.mirror, u.location): u.sha256 for u in fresh.upstream}
    moved = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if moved:
        shown = ", ".join(f"{m} {loc}" for m, loc in moved[:5])
        problems.append(f"upstream metadata moved (mirror {shown})")
    if not problems and _actions(saved) != _actions(fresh):
        problems.append(f"channel {saved.name} would now get other actions")
    return problems


def _actions(plan: ChannelPlan) -> list[dict[str, object]]:
    return [a.model_dump(mode="json") for a in plan.actions]


@dataclass
class ApplyOptions:
    lock_timeout: float = 0.0
    wait: bool = False
    cache_dir: Path | None = None
    reporter: Reporter | None = None


def apply(
    loaded: LoadedConfig,
    kinds: KindRegistry,
    *,
    saved_plan: Path | None = None,
    channels: Sequence[str] | None = None,
    mirrors: Sequence[str] | None = None,
    lock_timeout: float = 0.0,
    run_now: bool = False,
    wait: bool = False,
    cache_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> tuple[Plan, ApplyReport]:
    """Plan (or check the saved plan) and converge every channel with changes."""
    started = timestamp()
    options = ApplyOptions(lock_timeout, wait, cache_dir, reporter)
    if saved_plan is not None:
        saved = Plan.load(saved_plan)
        digest = file_digest(loaded.path)
        if saved.config_digest != digest:
            raise _stale([f"the configuration {loaded.path} changed"])
        known = {c.name for c in loaded.config.channels}
        gone = [c.name for c in saved.channels if c.name not in known]
        if gone:
            raise _stale([f"channel {', '.join(gone)} is no longer in the configuration"])
        plan, reports = _apply_saved(loaded, kinds, saved, options)
    else:
        planning = make_plan(
            loaded,
            kinds,
            channels=channels,
            mirrors=mirrors,
            run_now=run_now,
            cache_dir=cache_dir,
            reporter=reporter,
        )
        plan, reports = _apply_planning(loaded, kinds, planning, options)
    if any(r.state == "failed" or r.failures for r in reports):
        result = "failed"
    elif not any(r.state not in ("unchanged", "skipped") for r in reports):
        result = "no-changes"
    else:
        result = "completed"
    report = ApplyReport(
        started=started,
        finished=timestamp(),
        config=str(loaded.path),
        config_digest=plan.config_digest,
        revision=plan.revision,
        result=result,
        channels=reports,
    )
    return plan, report


def _apply_planning(
    loaded: LoadedConfig, kinds: KindRegistry, planning: Planning, options: ApplyOptions
) -> tuple[Plan, list[ChannelReport]]:
    reports = []
    plan = planning.plan
    try:
        for index, channel_planning in enumerate(planning.channels):
            report, final = _apply_channel(loaded, kinds, plan, channel_planning, None, options)
            reports.append(report)
            plan.channels[index] = final
    finally:
        planning.close()
    return plan, reports


def _apply_saved(
    loaded: LoadedConfig, kinds: KindRegistry, saved: Plan, options: ApplyOptions
) -> tuple[Plan, list[ChannelReport]]:
    reports = []
    positions = {c.name: i for i, c in enumerate(loaded.config.channels)}
    plan_options = plan_options_of(saved, options.cache_dir, options.reporter)
    for channel_plan in saved.channels:
        position = positions[channel_plan.name]
        planning = plan_channel(loaded, kinds, position, plan_options, saved=channel_plan)
        try:
            problems = what_moved(channel_plan, planning.plan)
            if problems:
                raise _stale(problems)
            report, _ = _apply_channel(loaded, kinds, saved, planning, channel_plan, options)
        finally:
            planning.close()
        reports.append(report)
    return saved, reports


def _apply_channel(
    loaded: LoadedConfig,
    kinds: KindRegistry,
    plan: Plan,
    planning: ChannelPlanning,
    saved: ChannelPlan | None,
    options: ApplyOptions,
) -> tuple[ChannelReport, ChannelPlan]:
    """Converge one channel; failures are recorded, not raised.

    A channel locked by another run is ``skipped`` (recorded with the holder) unless
    ``wait``, when the lock timeout raises.
    """
    channel = planning.channel
    store = planning.store
    report = ChannelReport(name=channel.name, path=str(channel.path), state="completed")
    current = planning.plan
    unreadable = any(w.message.startswith("skipping ") for w in current.warnings)
    if not current.has_changes and not current.errors and not unreadable:
        report.state = "unchanged"
        return report, current
    started = time.monotonic()
    history = History(store)
    try:
        lock = store.lock(
            timeout=options.lock_timeout if options.wait else 0.0, command="reconcile apply"
        )
        holder = lock.__enter__()
    except LockTimeout as exc:
        if options.wait:
            raise
        skipped = new_run(
            channel.name, None, config_digest=plan.config_digest, revision=plan.revision
        )
        history.transition(skipped, "skipped", error=exc.message)
        report.state = "skipped"
        log.warning("channel %s skipped: %s", channel.name, exc.message)
        return report, current
    try:
        if saved is None and planning.kind.published(channel, store) != current.published:
            # Another run changed the channel since it was planned (we waited for it):
            # plan again, under the lock, so its work is neither redone nor recorded twice.
            planning.close()
            fresh = plan_channel(
                loaded,
                kinds,
                planning.position,
                PlanOptions(
                    scope=set(plan.mirrors) if plan.mirrors is not None else None,
                    run_now=plan.run_now,
                    cache_dir=options.cache_dir,
                    reporter=options.reporter,
                ),
            )
            planning.work, planning.state = fresh.work, fresh.state
            current = planning.plan
            if not current.has_changes and not current.errors:
                report.state = "unchanged"
                return report, current
        final = _locked(
            _Run(loaded, kinds, planning, plan, saved, holder.generation),
            history,
            report,
            started,
            options,
        )
        return final, planning.plan
    finally:
        lock.__exit__(None, None, None)


@dataclass
class _Run:
    """What a locked run of one channel works with."""

    loaded: LoadedConfig
    kinds: KindRegistry
    planning: ChannelPlanning
    plan: Plan
    saved: ChannelPlan | None
    lease: int | None  # the lease's generation (a fencing token), None for a file lock


def _execute(run: _Run, options: ApplyOptions, reporter: Reporter) -> Outcome:
    """Execute the channel's work; when another writer changed what it was about to
    replace, plan again and execute again (a few times), never overwriting theirs."""
    planning = run.planning
    name = planning.channel.name
    attempt = 1
    while True:
        try:
            return planning.kind.execute(planning.work, planning.store, reporter)
        except PreconditionFailed as exc:
            if run.saved is not None:
                raise _stale(
                    [f"channel {name} changed while the plan was applied ({exc.message})"]
                ) from None
            if attempt >= MAX_ATTEMPTS:
                raise StorageError(
                    f"another writer kept changing channel {name} while this run published "
                    f"it ({attempt} attempts, the last: {exc.message}); nothing it wrote was "
                    "overwritten",
                    hint="is another reconcile writing this channel without its lease "
                    "(storage.conditional_writes: false, a clock or network stall)? "
                    "run apply again once it is done",
                ) from None
            log.warning(
                "channel %s: %s; planning again (attempt %d of %d)",
                name,
                exc.message,
                attempt + 1,
                MAX_ATTEMPTS,
            )
            attempt += 1
            fresh = plan_channel(
                run.loaded,
                run.kinds,
                planning.position,
                PlanOptions(
                    scope=set(run.plan.mirrors) if run.plan.mirrors is not None else None,
                    run_now=run.plan.run_now,
                    cache_dir=options.cache_dir,
                    reporter=options.reporter,
                ),
            )
            # This run is the unfinished one the planner sees: no reason to converge again.
            fresh.plan.actions = [
                a for a in fresh.plan.actions if a.reason is not Reason.INTERRUPTED
            ]
            planning.close()
            planning.work, planning.state = fresh.work, fresh.state


def _locked(
    locked: _Run,
    history: History,
    report: ChannelReport,
    started: float,
    options: ApplyOptions,
) -> ChannelReport:
    planning, plan = locked.planning, locked.plan
    channel = planning.channel
    store = planning.store
    current = planning.plan
    # The caller holds the channel lock, so unfinished runs belong to dead processes.
    for stale in history.unfinished():
        history.transition(stale, "failed", error=INTERRUPTED)
    if removed := store.clean_temporaries():
        log.info("removed %d temporary file(s) a crashed run left", removed)
    run = history.append(
        new_run(
            channel.name,
            None,
            config_digest=plan.config_digest,
            revision=plan.revision,
            lease=locked.lease,
        )
    )
    report.run_id = run.run_id
    run = history.transition(run, "running")
    mirror_runs: dict[str, RunRecord] = {}
    for mirror in current.mirrors:
        if mirror.refresh or mirror.error:
            record = new_run(
                channel.name,
                mirror.name,
                config_digest=plan.config_digest,
                revision=plan.revision,
                lease=locked.lease,
            )
            mirror_runs[mirror.name] = history.transition(history.append(record), "running")
    report.warnings = [w.message for w in current.new_warnings]
    # Where the run is, for the status views; downloads come first when there are any.
    links = {"mirror_runs": {name: r.run_id for name, r in sorted(mirror_runs.items())}}
    downloads = any(a.download is not None for a in current.actions)
    progress = ProgressRecorder(
        store,
        run.run_id,
        links["mirror_runs"],
        inner=options.reporter,
        phase=STEP_PREPARING if downloads else STEP_INDEXING,
    )
    try:
        outcome = _execute(locked, options, progress)
        current = planning.plan
        progress.phase(STEP_RECORDING)
        state = planning.state.state
        state.files = outcome.inventory
        state.fingerprints = outcome.fingerprints
        state.serial += 1
        state.config_digest = plan.config_digest
        state.revision = plan.revision
        state.updated = timestamp()
        state.warnings = {w.key: w.message for w in current.warnings}
        at = now()
        # What was unpublished is recorded before anything is deleted: a crash in
        # between leaves the deletions to the next apply.
        deletions.record(state, outcome.unpublished, store, channel.grace, at)
        save_state(store, state)
        report.serial = state.serial
        recorded = list(state.pending_deletions)
        deleted = deletions.sweep(planning.kind, channel, store, state, at)
        if state.pending_deletions != recorded:
            save_state(store, state)
        outcome.executed = [a for a in outcome.executed if a.reason is not Reason.GRACE_OVER]
        outcome.executed += deleted
    except (ReconcileError, OSError) as exc:
        message = exc.message if isinstance(exc, ReconcileError) else str(exc)
        if isinstance(exc, ReconcileError) and exc.hint:  # e.g. "free some disk space"
            message += f" (hint: {exc.hint})"
        report.state = "failed"
        report.failures.append(message)
        report.duration_s = round(time.monotonic() - started, 3)
        # Before the history: a run killed between the two is unfinished, and the next
        # apply, which converges it, also removes a temporary file this write left.
        progress.close("failed")
        try:
            history.transition(
                run, "failed", error=message, details=run_details((), [message], links=links)
            )
            for mirror_run in mirror_runs.values():
                details = run_details((), [message], links={"channel_run": run.run_id})
                history.transition(mirror_run, "failed", error=message, details=details)
        except StorageError as unrecorded:  # the same full disk: report the first error
            log.error("%s; the next apply records the run as interrupted", unrecorded.message)
        log.error("channel %s: %s", channel.name, message)
        return report
    finally:
        progress.stop()  # no write after this run's time, whatever ended it
    report.duration_s = round(time.monotonic() - started, 3)
    _fill(report, outcome.executed)
    report.written = outcome.written
    report.failures.extend(outcome.failures)
    report.bytes = outcome.bytes
    mirror_errors = {name: o.error for name, o in outcome.mirrors.items() if o.error}
    for mirror in current.mirrors:
        if mirror.error:
            mirror_errors.setdefault(mirror.name, mirror.error)
    for name, text in sorted(mirror_errors.items()):
        report.failures.append(f"mirror {name}: {text}")
    error: str | None = None
    if report.failures:
        # What worked is published and kept; the run still did not do everything.
        report.state = "failed"
        error = f"{len(report.failures)} failure(s): " + "; ".join(report.failures[:5])
    final: RunState = "failed" if error else "completed"
    progress.close(final)  # before the history, as above
    history.transition(
        run,
        final,
        error=error,
        bytes=report.bytes,
        duration_s=report.duration_s,
        details=run_details(outcome.executed, report.failures, links=links),
        **_counts(report),
    )
    for name, mirror_run in mirror_runs.items():
        mirror_outcome = outcome.mirrors.get(name)
        done = Done()
        _fill(done, [a for a in outcome.executed if a.source == name])
        mirror_error = mirror_errors.get(name)
        mirror_state: RunState = "failed" if mirror_error else "completed"
        history.transition(
            mirror_run,
            mirror_state,
            error=mirror_error,
            bytes=mirror_outcome.bytes if mirror_outcome else 0,
            duration_s=round(mirror_outcome.seconds, 3) if mirror_outcome else 0.0,
            details=run_details(
                [a for a in outcome.executed if a.source == name],
                [mirror_error] if mirror_error else [],
                links={"channel_run": run.run_id},
            ),
            **_counts(done),
        )
    for mirror in current.mirrors:
        if not (mirror.refresh or mirror.name in mirror_errors or mirror.name in mirror_runs):
            continue
        mirror_outcome = outcome.mirrors.get(mirror.name)
        entry = MirrorReport(
            name=mirror.name,
            state="failed" if mirror.name in mirror_errors else "completed",
            refreshed=mirror.refresh,
            bytes=mirror_outcome.bytes if mirror_outcome else 0,
            duration_s=round(mirror_outcome.seconds, 3) if mirror_outcome else 0.0,
            error=mirror_errors.get(mirror.name),
        )
        _fill(entry, [a for a in outcome.executed if a.source == mirror.name])
        report.mirrors.append(entry)
    try:
        store.compact_lines(history.key)
    except StorageError as exc:  # the history stays as it is, in more pieces
        log.warning("history not compacted: %s", exc.message)
    return report


def _fill(done: Done, actions: Sequence[Action]) -> None:
    for action in actions:
        if action.kind == "reindex":
            if action.location and action.location not in done.reindexed:
                done.reindexed.append(action.location)
            continue
        done.bucket(action.kind).append(action.where)


def _counts(done: Done) -> dict[str, int]:
    return {
        "added": len(done.added),
        "updated": len(done.updated),
        "removed": len(done.removed),
        "restored": len(done.restored),
        "reindexed": len(done.reindexed),
    }


__all__ = ["Outcome", "StalePlanError", "apply", "channel_positions", "git_revision"]
