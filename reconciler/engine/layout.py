"""Where the tool keeps its own files inside a channel: everything under ``.reconciler/``.

``.reconciler/`` is never served. Every name the engine and the kinds use for
their own files is defined here, so the layout is visible in one place:

=====================================  ===================================================
``state.json``                         the inventory: which file came from where
``history.jsonl``                      one line per state change of every run
``lock``                               the channel's lock (``flock``), naming its holder
``cache/<location>.*``                 the indexer's caches (facts about files; safe to lose)
``upstream/<mirror>/<location>/...``   the upstream metadata each mirror's last run used
``passive.json``                       counts of passive fetches by ``reconcile serve``
``passive-verified.json``              what ``serve`` verified of each passive file it fetched
``progress.json``                      where the current (or last) apply run is: its step
=====================================  ===================================================
"""

from __future__ import annotations

STATE_DIR = ".reconciler"
STATE = f"{STATE_DIR}/state.json"
HISTORY = f"{STATE_DIR}/history.jsonl"
LOCK = f"{STATE_DIR}/lock"
CACHE = f"{STATE_DIR}/cache"
UPSTREAM = f"{STATE_DIR}/upstream"
PASSIVE_STATS = f"{STATE_DIR}/passive.json"
PASSIVE_VERIFIED = f"{STATE_DIR}/passive-verified.json"
PROGRESS = f"{STATE_DIR}/progress.json"


def cache_key(name: str) -> str:
    """An indexer cache file, e.g. ``linux-64.msgpack``."""
    return f"{CACHE}/{name}"


def snapshot_prefix(mirror: str, location: str) -> str:
    """Where a mirror's last-used upstream metadata for one location (subdir, project) lives."""
    return f"{UPSTREAM}/{mirror}/{location}"


def is_private(key: str) -> bool:
    """True for the tool's own files, which clients never see."""
    return key == STATE_DIR or key.startswith(f"{STATE_DIR}/")
