"""Deletions after a grace period: a file leaves the index first, the store later.

A client may keep a published index for its ``Cache-Control: max-age`` and then
ask for a file it names; deleting a file the moment the index stops naming it
would answer that client with a 404. So an apply never deletes what it
unpublishes: it records a *pending deletion* in the channel's state (the key,
the time after which it may go, the bytes' sha256 and store tag), and a later
apply — or ``reconcile serve``'s sweep — deletes it once the grace period
(``deletion_grace``, longer than ``index_max_age``) is over, and only when the
published index still does not name it and the file still holds the recorded
bytes (the deletion is conditional on its tag). A grace period of 0 deletes in
the same apply, right after the index is published.

``reconcile plan`` shows the deletions that are due as ``remove`` actions with
the reason ``grace-over``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from reconciler.config.models import AnyChannelModel, LoadedConfig
from reconciler.engine.clock import format_time, now, parse_time
from reconciler.engine.kind import Kind, KindRegistry, Unpublished
from reconciler.engine.plan import Action, Reason
from reconciler.engine.state import ChannelState, PendingDeletion, load_state, save_state
from reconciler.faults import checkpoint
from reconciler.store import channel_store
from reconciler.store.base import LockTimeout, PreconditionFailed, StorageError, Store

log = logging.getLogger(__name__)


def due(state: ChannelState, at: datetime) -> list[PendingDeletion]:
    """The pending deletions whose grace period is over at ``at``."""
    found = []
    for pending in state.pending_deletions:
        after = parse_time(pending.after)
        if after is None or after <= at:
            found.append(pending)
    return found


def _action(pending: PendingDeletion, detail: str) -> Action:
    location, _, name = pending.key.rpartition("/")
    return Action(
        kind="remove",
        location=location or None,
        name=name,
        source=pending.source,
        reason=Reason.GRACE_OVER,
        detail=detail,
    )


def planned(
    kind: Kind, channel: AnyChannelModel, store: Store, state: ChannelState, at: datetime
) -> list[Action]:
    """``remove`` actions for the deletions due now that the index still does not name
    (files already gone are left out: the next apply forgets them)."""
    ready = due(state, at)
    if not ready:
        return []
    named = kind.named(channel, store, [p.key for p in ready])
    return [
        _action(p, f"unpublished; its grace period ended at {p.after}: the file is deleted")
        for p in ready
        if p.key not in named and store.stat(p.key) is not None
    ]


def record(
    state: ChannelState,
    unpublished: Iterable[Unpublished],
    store: Store,
    grace: float,
    at: datetime,
) -> None:
    """Add what an apply unpublished to the pending deletions (a file already pending
    keeps its earlier time)."""
    pending = {p.key: p for p in state.pending_deletions}
    after = format_time(at + timedelta(seconds=grace))
    for item in unpublished:
        if item.key in pending:
            continue
        tag = item.tag
        if tag is None:
            info = store.stat(item.key)
            if info is None:
                continue  # already gone
            tag = info.tag
        pending[item.key] = PendingDeletion(
            key=item.key, after=after, sha256=item.sha256, tag=tag, source=item.source
        )
    state.pending_deletions = sorted(pending.values(), key=lambda p: (p.after, p.key))


def sweep(
    kind: Kind, channel: AnyChannelModel, store: Store, state: ChannelState, at: datetime
) -> list[Action]:
    """Delete the pending deletions that are due (call it holding the channel's lock);
    returns the deletions done, as actions. The state's list is updated: done, skipped
    (named again, or other bytes) and vanished files leave it; failures stay."""
    ready = due(state, at)
    if not ready:
        return []
    named = kind.named(channel, store, [p.key for p in ready])
    done: list[Action] = []
    kept: list[PendingDeletion] = []
    ready_keys = {p.key for p in ready}
    checkpoint("apply.before_prune")
    for pending in ready:
        if pending.key in named:
            log.info("%s is published again: not deleted", store.describe(pending.key))
            continue
        try:
            if pending.tag is None and not _holds(store, pending):
                log.info("%s holds other bytes now: not deleted", store.describe(pending.key))
                continue
            if store.delete(pending.key, if_match=pending.tag):
                log.info("deleted %s (grace period over)", store.describe(pending.key))
                done.append(_action(pending, "unpublished earlier; grace period over: deleted"))
                folder = pending.key.rpartition("/")[0]
                if "/" in folder:  # a project's or a shards folder left empty
                    store.remove_empty_folder(folder)
        except PreconditionFailed:
            log.info("%s holds other bytes now: not deleted", store.describe(pending.key))
        except StorageError as exc:
            log.warning("not deleted yet: %s", exc.message)
            kept.append(pending)
    if done:
        checkpoint("apply.after_prune")
    state.pending_deletions = [p for p in state.pending_deletions if p.key not in ready_keys] + kept
    return done


def _holds(store: Store, pending: PendingDeletion) -> bool:
    """Whether the file still holds the recorded bytes (entries recorded without a tag)."""
    if pending.sha256 is None:
        return True
    digest = hashlib.sha256()
    try:
        with store.open(pending.key) as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    except FileNotFoundError:
        return False
    return digest.hexdigest() == pending.sha256


def sweep_channels(loaded: LoadedConfig, kinds: KindRegistry) -> dict[str, int]:
    """Delete what is due in every channel whose lock is free (``reconcile serve`` calls
    this now and then); a channel an apply holds is left to that apply. Returns the
    number of files deleted per channel."""
    deleted: dict[str, int] = {}
    at = now()
    for channel in loaded.config.channels:
        store = channel_store(channel)
        try:
            if not due(load_state(store, channel.name, published=False).state, at):
                continue
            with store.lock(timeout=0, command="reconcile serve (deletions)"):
                loaded_state = load_state(store, channel.name, published=False)
                if loaded_state.lost is not None:
                    continue
                state = loaded_state.state
                before = list(state.pending_deletions)
                done = sweep(kinds.kind_of(channel), channel, store, state, at)
                if state.pending_deletions != before:
                    save_state(store, state)
                if done:
                    deleted[channel.name] = len(done)
        except LockTimeout:
            continue
        except StorageError as exc:
            log.warning("channel %s: deletions not swept: %s", channel.name, exc.message)
    return deleted
