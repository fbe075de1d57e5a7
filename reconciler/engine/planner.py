"""Desired state (channels.yaml) against observed state (disk): the plan.

For each channel the indexer runs as a dry run with the channel's options,
patches and filters: it reads what is new on disk and computes every output
without writing. The patched repodata it would publish is compared record by
record with the published ``repodata.json`` (adds, updates with a field diff,
removes with the reason), and output files whose bytes would change become a
``reindex`` action. A channel whose outputs are already exactly right costs only
a scan and the fingerprint check.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from deepdiff import DeepDiff

from reconciler.config.models import Channel, LoadedConfig, PypiChannel
from reconciler.engine.history import History
from reconciler.engine.plan import Action, ChannelPlan, MirrorStatus, Plan
from reconciler.engine.schedule import due, overlap_warning, parse_time
from reconciler.engine.schedule import now as clock
from reconciler.engine.state import ChannelState
from reconciler.errors import ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.indexer import IndexResult, SubdirResult, index_channel
from reconciler.kinds.conda.mirrors import ResolvedMirrors, resolve_mirrors

# Fields that say nothing about the package itself: a change in them alone is
# still shown, but never as the reason.
_VOLATILE = frozenset({"indexed_timestamp"})


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


def observed_digests(channel_dir: Path, subdirs: Sequence[str]) -> dict[str, str]:
    """A digest per subdir (and '.' for the top) of every file's name, size and mtime."""
    digests: dict[str, str] = {}
    for key, folder in [(".", channel_dir)] + [(s, channel_dir / s) for s in subdirs]:
        h = hashlib.sha256()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            digests[key] = "absent"
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue  # state, caches and temp files are not what clients see
            st = entry.stat()
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        digests[key] = h.hexdigest()
    return digests


def _path_text(path: str) -> str:
    """``root['depends'][1]`` → ``depends``."""
    inner = path.removeprefix("root")
    if inner.startswith("['"):
        return inner[2:].split("']", 1)[0]
    return inner or "record"


def field_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Readable changes between two records, e.g. ``depends: + "libzlib >=1.3"``."""
    lines: list[str] = []

    def show(value: Any) -> str:
        return orjson.dumps(value).decode()

    # Lists (depends, constrains, track_features...) read best as items in and out.
    list_keys = [
        k for k in old.keys() & new.keys() if isinstance(old[k], list) and isinstance(new[k], list)
    ]
    for key in list_keys:
        before, after = Counter(map(show, old[key])), Counter(map(show, new[key]))
        lines.extend(f"{key}: + {item}" for item in (after - before).elements())
        lines.extend(f"{key}: - {item}" for item in (before - after).elements())
    diff = DeepDiff(
        {k: v for k, v in old.items() if k not in list_keys},
        {k: v for k, v in new.items() if k not in list_keys},
        ignore_order=True,
        verbose_level=2,
    )

    for path, value in diff.get("dictionary_item_added", {}).items():
        lines.append(f"{_path_text(path)}: + {show(value)}")
    for path, value in diff.get("dictionary_item_removed", {}).items():
        lines.append(f"{_path_text(path)}: - {show(value)}")
    for path, change in diff.get("values_changed", {}).items():
        lines.append(
            f"{_path_text(path)}: {show(change['old_value'])} → {show(change['new_value'])}"
        )
    for path, change in diff.get("type_changes", {}).items():
        lines.append(
            f"{_path_text(path)}: {show(change['old_value'])} → {show(change['new_value'])}"
        )
    for path, value in diff.get("iterable_item_added", {}).items():
        lines.append(f"{_path_text(path)}: + {show(value)}")
    for path, value in diff.get("iterable_item_removed", {}).items():
        lines.append(f"{_path_text(path)}: - {show(value)}")
    return sorted(lines)


def _records(repodata: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not repodata:
        return {}
    return {**(repodata.get("packages") or {}), **(repodata.get("packages.conda") or {})}


def _published(folder: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads((folder / "repodata.json").read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _file_list(written: Sequence[str], deleted: Sequence[str]) -> list[str]:
    """Index files to write and delete; shards are summarised by count."""
    files = sorted(n for n in written if not n.startswith("shards/"))
    files += [f"{n} (delete)" for n in sorted(deleted) if not n.startswith("shards/")]
    new_shards = sum(1 for n in written if n.startswith("shards/"))
    old_shards = sum(1 for n in deleted if n.startswith("shards/"))
    if new_shards:
        files.append(f"shards/ ({new_shards} new)")
    if old_shards:
        files.append(f"shards/ ({old_shards} to delete)")
    return files


def _subdir_actions(
    channel_dir: Path,
    result: SubdirResult,
    patched: bool,
    mirrors: ResolvedMirrors | None = None,
) -> list[Action]:
    subdir = result.subdir
    pruned = {(s, f): m for m, s, f in mirrors.prune} if mirrors is not None else {}
    fetch = {(d.subdir, d.filename) for d in mirrors.downloads} if mirrors is not None else set()

    def owner(subdir: str, filename: str) -> str | None:
        return mirrors.owner(subdir, filename) if mirrors is not None else None

    actions: list[Action] = []
    if result.recomputed and result.desired is not None:
        folder = channel_dir / subdir
        published_repodata = _published(folder)
        published = _records(published_repodata)
        desired = _records(result.desired)
        removed_by_patch = set(result.desired.get("removed") or ())
        for filename in sorted(desired.keys() - published.keys()):
            mirror = owner(subdir, filename)
            if mirror is None:
                reason = "new local package"
            elif (subdir, filename) in fetch:
                reason = f"new from mirror {mirror} (download)"
            else:
                reason = f"new from mirror {mirror}"
            actions.append(
                Action(
                    kind="add",
                    subdir=subdir,
                    filename=filename,
                    source=mirror or "local",
                    reason=reason,
                )
            )
        for filename in sorted(desired.keys() & published.keys()):
            old, new = published[filename], desired[filename]
            if old == new:
                continue
            mirror = owner(subdir, filename)
            if mirror is not None and old.get("sha256") != new.get("sha256"):
                reason = f"file changed upstream in mirror {mirror} (download)"
            elif mirror is not None:
                reason = f"record changed upstream in mirror {mirror}"
            elif old.get("sha256") != new.get("sha256"):
                reason = "package file replaced (sha256 changed)"
            elif {k for k in old.keys() ^ new.keys()} | {
                k for k in old.keys() & new.keys() if old[k] != new[k]
            } <= _VOLATILE:
                reason = "indexed_timestamp reassigned"
            else:
                reason = "record changed by a patch" if patched else "record changed"
            actions.append(
                Action(
                    kind="update",
                    subdir=subdir,
                    filename=filename,
                    source=mirror or "local",
                    reason=reason,
                    diff=field_diff(old, new),
                )
            )
        for filename in sorted(published.keys() - desired.keys()):
            if (subdir, filename) in pruned:
                reason = f"no longer wanted by mirror {pruned[(subdir, filename)]}; file deleted"
            elif filename in result.excluded:
                reason = f"filter now excludes it: {result.excluded[filename]}"
            elif filename in removed_by_patch:
                reason = "removed by a patch"
            elif not (folder / filename).exists():
                reason = "package file deleted"
            else:
                reason = "no longer published"
            source = pruned.get((subdir, filename)) or owner(subdir, filename) or "local"
            actions.append(
                Action(
                    kind="remove", subdir=subdir, filename=filename, source=source, reason=reason
                )
            )
    files = _file_list(result.written, result.deleted)
    if files:
        missing = [n for n in result.written if not (channel_dir / subdir / n).exists()]
        reason = "index files missing" if missing else "index files out of date"
        if not actions and not missing:
            reason = "index options, patches or filters changed"
        actions.append(Action(kind="reindex", subdir=subdir, reason=reason, files=files))
    return actions


@dataclass
class ChannelPlanning:
    """A channel's plan with what it was computed from, for apply to carry out."""

    plan: ChannelPlan
    index: IndexResult
    mirrors: ResolvedMirrors | None


def resolve_channel_mirrors(
    channel: Channel,
    index: int,
    config_dir: Path | None,
    only: set[str] | None = None,
    not_due: set[str] | None = None,
) -> ResolvedMirrors | None:
    if not channel.mirrors:
        return None
    inventory = ChannelState.load(Path(channel.path), channel.name).files
    return resolve_mirrors(
        channel, index, inventory, config_dir=config_dir, only=only, not_due=not_due
    )


def mirror_schedules(
    channel: Channel | PypiChannel, run_now: bool | set[str] = False, at: datetime | None = None
) -> list[MirrorStatus]:
    """Whether each mirror of the channel is due, from its schedule and its history."""
    at = at or clock()
    history = History(Path(channel.path))
    statuses = []
    for mirror in channel.mirrors:
        last = history.last_run(mirror.name, started_only=True)
        last_started = parse_time(last.started) if last else None
        status = due(mirror.schedule, last_started, at)
        forced = run_now is True or (isinstance(run_now, set) and mirror.name in run_now)
        duration = None
        if last and last.finished and last_started:
            finished = parse_time(last.finished)
            duration = finished - last_started if finished else None
        statuses.append(
            MirrorStatus(
                name=mirror.name,
                due=status.due or forced,
                reason="run now (--run-now)" if forced and not status.due else status.reason,
                scheduled=bool(mirror.schedule) and (status.due or forced),
                last_run=last.started if last else None,
                next_due=status.next_due.isoformat() if status.next_due else None,
                warning=overlap_warning(mirror.schedule, duration, at),
            )
        )
    return statuses


def plan_channel(
    channel: Channel,
    index: int,
    config_dir: Path | None = None,
    mirrors: set[str] | None = None,
    run_now: bool | set[str] = False,
) -> ChannelPlanning:
    """The plan for one channel of the configuration (``index`` is its position)."""
    path = Path(channel.path)
    create = not path.exists()
    top = observed_digests(path, [])
    statuses = [
        s for s in mirror_schedules(channel, run_now) if mirrors is None or s.name in mirrors
    ]
    not_due = {s.name for s in statuses if not s.due}
    resolved = resolve_channel_mirrors(channel, index, config_dir, mirrors, not_due)
    result = index_channel(
        path,
        options=channel.index,
        patches=channel.patches,
        subdirs=channel.served_subdirs,
        channel_name=channel.name,
        filters=FilterEngine(channel.filters, f"channels[{index}].filters"),
        dry_run=True,
        mirrored=resolved.records if resolved else None,
        upstream_removed=resolved.removed if resolved else None,
        pruned=resolved.pruned if resolved else None,
    )
    actions: list[Action] = []
    for subdir_result in result.subdirs:
        actions.extend(_subdir_actions(path, subdir_result, bool(channel.patches), resolved))
    if resolved is not None:
        listed = {(a.subdir, a.filename) for a in actions}
        # Files an active mirror must fetch although their records are already
        # published (the mirror became active, or a file went missing).
        for item in resolved.downloads:
            if (item.subdir, item.filename) not in listed:
                actions.append(
                    Action(
                        kind="add",
                        subdir=item.subdir,
                        filename=item.filename,
                        source=item.mirror,
                        reason=f"file missing: download from mirror {item.mirror}",
                    )
                )
        # Pruned files that are no longer published still have to go from disk.
        for mirror, subdir, filename in resolved.prune:
            if (subdir, filename) not in listed and (path / subdir / filename).exists():
                actions.append(
                    Action(
                        kind="remove",
                        subdir=subdir,
                        filename=filename,
                        source=mirror,
                        reason=f"no longer wanted by mirror {mirror}; file deleted",
                    )
                )
    channel_files = sorted(result.written) + [f"{n} (delete)" for n in sorted(result.deleted)]
    if channel_files:
        actions.append(
            Action(
                kind="reindex",
                subdir=None,
                reason="channel index files out of date",
                files=channel_files,
            )
        )
    interrupted = interrupted_action(path)
    if interrupted is not None:
        actions.append(interrupted)
    observed = top | {r.subdir: r.observed for r in result.subdirs}
    warnings = [f"skipping {s.format()}" for s in result.skipped]
    if resolved is not None:
        warnings.extend(resolved.warnings)
    plan = ChannelPlan(
        name=channel.name,
        path=str(path),
        create=create,
        observed=observed,
        actions=actions,
        warnings=warnings + [f"mirror {s.name}: {s.warning}" for s in statuses if s.warning],
        mirrors=statuses,
    )
    return ChannelPlanning(plan, result, resolved)


def plan_any_channel(
    channel: Channel | PypiChannel,
    index: int,
    config_dir: Path,
    only: set[str] | None = None,
    run_now: bool | set[str] = False,
) -> ChannelPlan:
    """The plan of a channel of either kind."""
    if isinstance(channel, PypiChannel):
        from reconciler.kinds.pypi.plan import plan_pypi_channel  # it builds on this module

        planning = plan_pypi_channel(channel, config_dir, only, run_now)
        planning.resolution.close()
        return planning.plan
    return plan_channel(channel, index, config_dir, only, run_now).plan


def interrupted_action(channel_dir: Path) -> Action | None:
    """A reindex when the channel's last run never finished: its state may lag the files."""
    if not History(channel_dir).unfinished():
        return None
    return Action(
        kind="reindex",
        subdir=None,
        reason="the last run did not finish (killed, or still running): converge again",
    )


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


def make_plan(
    loaded: LoadedConfig,
    channels: Sequence[str] | None = None,
    mirrors: Sequence[str] | None = None,
    run_now: bool = False,
) -> Plan:
    """Plan every channel of the configuration, or only those named.

    ``run_now`` runs mirrors regardless of their schedule: all of them, or with
    ``mirrors`` given, those.
    """
    config = loaded.config
    wanted = set(channels or [])
    unknown = wanted - {c.name for c in config.channels}
    if unknown:
        raise ReconcileError(
            f"no channel named {', '.join(sorted(unknown))} in {loaded.path}",
            hint="channels: " + ", ".join(c.name for c in config.channels),
        )
    only = mirror_selection(loaded, mirrors)
    now: bool | set[str] = (only or True) if run_now else False
    plans = [
        plan_any_channel(channel, i, loaded.base_dir, only, now)
        for i, channel in enumerate(config.channels)
        if not wanted or channel.name in wanted
    ]
    return Plan(
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        config=str(loaded.path),
        config_digest=file_digest(loaded.path),
        revision=git_revision(loaded.path.parent),
        channels=plans,
    )
