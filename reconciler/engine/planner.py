"""Desired state (channels.yaml) against what is published: the plan, for every kind.

For each channel the engine reads what it publishes, its state and history,
works out which mirrors refresh their upstream metadata now (schedules,
``--run-now``, ``--mirror``), and asks the channel's kind for its plan. What is
generic is added here: a run that never finished, an inventory that was lost,
and which warnings are new. Planning writes nothing anywhere in a channel.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reconciler.collector import collector_paused
from reconciler.config.models import AnyChannelModel, LoadedConfig
from reconciler.engine import deletions
from reconciler.engine.clock import format_time, now, parse_time
from reconciler.engine.history import History, RunRecord, last_of
from reconciler.engine.kind import ChannelWork, Kind, KindRegistry, PlanRequest
from reconciler.engine.plan import Action, ChannelPlan, MirrorPlan, Plan, PlanWarning, Reason
from reconciler.engine.progress import Reporter
from reconciler.engine.schedule import due, overlap_warning
from reconciler.engine.state import LoadedState, load_state
from reconciler.errors import ReconcileError
from reconciler.store import channel_store
from reconciler.store.base import Store

CACHE_ENV = "RECONCILE_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where plan and apply keep their HTTP cache: never inside a channel.

    ``RECONCILE_CACHE_DIR``, else ``$XDG_CACHE_HOME/conda-reconcile``, else
    ``~/.cache/conda-reconcile``.
    """
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "conda-reconcile"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_dir(folder: Path) -> Path | None:
    for candidate in [folder, *folder.parents]:
        dot_git = candidate / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text.removeprefix("gitdir:").strip())
                return target if target.is_absolute() else (candidate / target).resolve()
    return None


def git_revision(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s git work tree, if it is one.

    Read from ``.git`` directly: no git binary needed, and no fork of a big process.
    """
    try:
        git_dir = _git_dir(folder.resolve())
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head if len(head) == 40 else None
        ref = head.removeprefix("ref:").strip()
        common = git_dir
        commondir = git_dir / "commondir"
        if commondir.is_file():  # worktrees keep refs in the main repository
            common = (git_dir / commondir.read_text(encoding="utf-8").strip()).resolve()
        for base in (git_dir, common):
            loose = base / ref
            if loose.is_file():
                value = loose.read_text(encoding="utf-8").strip()
                return value if len(value) == 40 else None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and len(parts[0]) == 40:
                    return parts[0]
    except OSError:
        return None
    return None


def mirror_schedules(
    channel: AnyChannelModel,
    runs: list[RunRecord],
    *,
    run_now: bool,
    scope: set[str] | None,
    at: datetime | None = None,
) -> list[MirrorPlan]:
    """Whether each mirror refreshes its upstream metadata now, and why.

    A mirror refreshes when its schedule is due (or it has none), or with ``run_now``;
    with ``scope`` (``--mirror``) only the mirrors named.
    """
    at = at or now()
    plans = []
    for mirror in channel.mirrors:
        last = last_of(runs, mirror.name, started_only=True)
        last_started = parse_time(last.started) if last else None
        status = due(mirror.schedule, last_started, at)
        named = scope is None or mirror.name in scope
        forced = run_now and named
        refresh = named and (status.due or forced)
        duration = None
        if last and last.finished and last_started:
            finished = parse_time(last.finished)
            duration = finished - last_started if finished else None
        if not named:
            reason = "not named by --mirror: left as published"
        elif forced and not status.due:
            reason = "run now (--run-now)"
        else:
            reason = status.reason
        plans.append(
            MirrorPlan(
                name=mirror.name,
                refresh=refresh,
                reason=reason,
                scheduled=bool(mirror.schedule) and refresh,
                last_run=last.started if last else None,
                next_due=format_time(status.next_due) if status.next_due else None,
                warning=overlap_warning(mirror.schedule, duration, at),
            )
        )
    return plans


@dataclass
class ChannelPlanning:
    """One channel's plan with everything needed to carry it out."""

    channel: AnyChannelModel
    position: int
    store: Store
    kind: Kind
    work: ChannelWork
    state: LoadedState

    @property
    def plan(self) -> ChannelPlan:
        return self.work.plan

    def close(self) -> None:
        self.work.close()


@dataclass
class Planning:
    plan: Plan
    channels: list[ChannelPlanning] = field(default_factory=list)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


@dataclass(frozen=True)
class PlanOptions:
    """What a plan is asked for (the command line's flags)."""

    scope: set[str] | None = None  # --mirror
    run_now: bool = False
    cache_dir: Path | None = None
    created: datetime | None = None  # the plan's time (a saved plan's when applying it)
    reporter: Reporter | None = None


def has_index(digests: Mapping[str, str]) -> bool:
    return any(value != "absent" for key, value in digests.items() if key != ".")


def prepare_request(
    loaded: LoadedConfig,
    kinds: KindRegistry,
    position: int,
    options: PlanOptions,
    saved: ChannelPlan | None = None,
) -> tuple[Kind, PlanRequest, list[RunRecord], dict[str, str]]:
    """What a kind needs to plan the channel at ``position``: its request, the channel's
    runs and the digests of what it publishes."""
    channel = loaded.config.channels[position]
    store = channel_store(channel)
    kind = kinds.kind_of(channel)
    published = kind.published(channel, store)
    runs = History(store).runs()
    # A channel apply managed before (it has a history) that publishes an index but has
    # no state lost its inventory; one indexed by other means is adopted quietly.
    state = load_state(store, channel.name, published=has_index(published) and bool(runs))
    created = options.created or now()
    schedules = mirror_schedules(channel, runs, run_now=options.run_now, scope=options.scope)
    expected = None
    if saved is not None:
        refresh = {m.name: m.refresh for m in saved.mirrors}
        schedules = [
            m.model_copy(update={"refresh": refresh.get(m.name, False)}) for m in schedules
        ]
        expected = {(u.mirror, u.location): u.sha256 for u in saved.upstream}
    request = PlanRequest(
        loaded=loaded,
        channel=channel,
        position=position,
        store=store,
        state=state,
        mirrors=schedules,
        scope=options.scope,
        cache_dir=options.cache_dir,
        created_ms=int(created.timestamp() * 1000),
        expected=expected,
        reporter=options.reporter,
        grace=channel.grace,
    )
    return kind, request, runs, published


def plan_channel(
    loaded: LoadedConfig,
    kinds: KindRegistry,
    position: int,
    options: PlanOptions,
    saved: ChannelPlan | None = None,
) -> ChannelPlanning:
    """The plan of the channel at ``position`` in the configuration.

    ``saved``: the channel's part of a saved plan being applied; its mirrors refresh as
    it said, and select from exactly the upstream metadata it selected from.
    """
    kind, request, runs, published = prepare_request(loaded, kinds, position, options, saved)
    channel, store, state = request.channel, request.store, request.state
    work = kind.plan(request)
    plan = work.plan
    plan.published = published
    plan.kind = kind.name
    if any(r.state not in ("completed", "failed", "skipped") for r in runs):
        plan.actions.append(
            Action(
                kind="reindex",
                reason=Reason.INTERRUPTED,
                detail="the last run did not finish (killed, or still running): converge again",
            )
        )
    plan.actions.extend(
        deletions.planned(kind, channel, store, state.state, options.created or now())
    )
    if state.lost is not None:
        message = f"{state.lost}: the inventory is rebuilt from the published index"
        plan.actions.append(Action(kind="reindex", reason=Reason.STATE_REBUILT, detail=message))
        plan.warnings.append(PlanWarning(key="state-lost", message=message))
    for mirror in plan.mirrors:
        if mirror.warning:
            text = f"mirror {mirror.name}: {mirror.warning}"
            plan.warnings.append(PlanWarning(key=f"overlap:{mirror.name}", message=text))
    plan.warnings = flag_new(plan.warnings, state.state.warnings)
    return ChannelPlanning(channel, position, store, kind, work, state)


def flag_new(warnings: Sequence[PlanWarning], seen: Mapping[str, str]) -> list[PlanWarning]:
    """The first warning of each key, flagged new unless an earlier apply saw its key.
    The warnings given are left as they are; one is copied only where its flag changes
    (an upstream with 100,000 refused records has as many warnings, and a pydantic copy
    costs more than making one)."""
    unique: dict[str, PlanWarning] = {}
    for warning in warnings:
        unique.setdefault(warning.key, warning)
    return [
        w if w.new == (w.key not in seen) else w.model_copy(update={"new": w.key not in seen})
        for w in unique.values()
    ]


def mirror_selection(loaded: LoadedConfig, mirrors: Sequence[str] | None) -> set[str] | None:
    """``--mirror`` names, checked against the configuration (None: every mirror)."""
    if not mirrors:
        return None
    known = {m.name for c in loaded.config.channels for m in c.mirrors}
    unknown = sorted(set(mirrors) - known)
    if unknown:
        raise ReconcileError(
            f"no mirror named {', '.join(unknown)} in {loaded.path}",
            hint="mirrors: " + (", ".join(sorted(known)) or "none"),
        )
    return set(mirrors)


def channel_positions(loaded: LoadedConfig, channels: Sequence[str] | None) -> list[int]:
    """Positions of the channels named (all when none are), checked."""
    config = loaded.config
    wanted = set(channels or [])
    unknown = wanted - {c.name for c in config.channels}
    if unknown:
        raise ReconcileError(
            f"no channel named {', '.join(sorted(unknown))} in {loaded.path}",
            hint="channels: " + ", ".join(c.name for c in config.channels),
        )
    return [i for i, c in enumerate(config.channels) if not wanted or c.name in wanted]


def make_plan(
    loaded: LoadedConfig,
    kinds: KindRegistry,
    *,
    channels: Sequence[str] | None = None,
    mirrors: Sequence[str] | None = None,
    run_now: bool = False,
    cache_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> Planning:
    """Plan every channel of the configuration, or only those named.

    ``mirrors`` (``--mirror``): only those mirrors refresh and only their records may
    change. ``run_now``: mirrors refresh regardless of their schedule.
    """
    created = now().replace(microsecond=0)
    options = PlanOptions(
        scope=mirror_selection(loaded, mirrors),
        run_now=run_now,
        cache_dir=cache_dir,
        created=created,
        reporter=reporter,
    )
    planning = Planning(
        Plan(
            created=format_time(created),
            config=str(loaded.path),
            config_digest=file_digest(loaded.path),
            revision=git_revision(loaded.path.parent),
            mirrors=sorted(options.scope) if options.scope is not None else None,
            run_now=run_now,
        )
    )
    try:
        with collector_paused():
            for position in channel_positions(loaded, channels):
                channel_planning = plan_channel(loaded, kinds, position, options)
                planning.channels.append(channel_planning)
                planning.plan.channels.append(channel_planning.plan)
    except BaseException:
        planning.close()
        raise
    return planning


def plan_options_of(saved: Plan, cache_dir: Path | None, reporter: Reporter | None) -> PlanOptions:
    """The options a saved plan was made with."""
    created = parse_time(saved.created)
    return PlanOptions(
        scope=set(saved.mirrors) if saved.mirrors is not None else None,
        run_now=saved.run_now,
        cache_dir=cache_dir,
        created=created,
        reporter=reporter,
    )
