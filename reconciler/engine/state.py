"""Per-channel state under ``.reconciler/state.json`` (never served): the inventory.

The inventory records which file came from where (``local`` or a mirror's name)
with its sha256, the configuration digest and revision that last changed the
channel, a serial that every apply which changes the channel bumps, the warnings
still outstanding (so a warning is shown when its situation appears, not on
every run) and deletions waiting for their grace period.

A state that is missing while the channel publishes something, or unreadable,
is *lost*: :func:`load_state` says so and the kinds rebuild the inventory from
the published index, the kept upstream metadata and the files, and apply writes
it back on that same run.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, Field

from reconciler.engine import layout
from reconciler.store.base import StorageError, Store

log = logging.getLogger(__name__)


class InventoryEntry(BaseModel):
    source: str = Field(description="'local' or the mirror that placed the file")
    sha256: str
    size: int
    passive: bool = Field(
        False, description="listed from a passive mirror: the file is fetched on demand"
    )
    url: str | None = Field(
        None, description="where a passive PyPI file is fetched from (its upstream URL)"
    )


class PendingDeletion(BaseModel):
    key: str = Field(description="the file to delete")
    after: str = Field(description="not before this time (UTC): clients may cache the old index")
    sha256: str | None = Field(None, description="delete only while it still holds these bytes")
    tag: str | None = Field(
        None,
        description="the store's tag of those bytes (mtime on disk, ETag in a bucket): the "
        "deletion is conditional on it",
    )
    source: str = Field("local", description="'local' or the mirror that placed the file")


class ChannelState(BaseModel):
    state_version: Literal[1] = 1
    channel: str
    serial: int = 0
    config_digest: str | None = None
    revision: str | None = None
    updated: str | None = None
    files: dict[str, InventoryEntry] = Field(
        default_factory=dict, description="'<location>/<filename>' -> where it came from"
    )
    warnings: dict[str, str] = Field(
        default_factory=dict, description="outstanding warnings by key, shown once"
    )
    fingerprints: dict[str, str] = Field(
        default_factory=dict,
        description="per location, what the published index was made from when this state "
        "was saved (a location whose index moved on since has its inventory re-derived)",
    )
    pending_deletions: list[PendingDeletion] = Field(default_factory=list)

    def source(self, key: str) -> str | None:
        entry = self.files.get(key)
        return entry.source if entry is not None else None


class LoadedState(BaseModel):
    state: ChannelState
    lost: str | None = Field(None, description="why the inventory must be rebuilt, if it must")


def load_state(store: Store, channel: str, *, published: bool) -> LoadedState:
    """The channel's state. ``published``: the channel publishes an index already, so a
    missing state means a lost one."""
    try:
        data = store.read(layout.STATE)
    except StorageError as exc:
        return LoadedState(state=ChannelState(channel=channel), lost=exc.message)
    if data is None:
        if published:
            lost = f"{store.describe(layout.STATE)} is missing"
            return LoadedState(state=ChannelState(channel=channel), lost=lost)
        return LoadedState(state=ChannelState(channel=channel))
    try:
        state = ChannelState.model_validate_json(data)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        lost = f"{store.describe(layout.STATE)} is unreadable ({first})"
        return LoadedState(state=ChannelState(channel=channel), lost=lost)
    return LoadedState(state=state)


def read_state(store: Store, channel: str) -> ChannelState:
    """The state as it is (empty when missing or unreadable), for readers that change nothing."""
    return load_state(store, channel, published=False).state


def save_state(store: Store, state: ChannelState) -> None:
    data = (state.model_dump_json(indent=1) + "\n").encode()
    store.write_if_changed(layout.STATE, data, step="state.mid_write")
