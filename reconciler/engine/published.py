"""What a channel folder publishes: its folders, and how many packages they hold."""

from __future__ import annotations

from pathlib import Path

import orjson

from reconciler.config.models import Channel, PypiChannel


def published_counts(channel: Channel | PypiChannel) -> dict[str, int | None]:
    """Packages per subdir (None: not indexed); a PyPI channel counts ``simple`` files."""
    path = Path(channel.path)
    if isinstance(channel, PypiChannel):
        from reconciler.kinds.pypi.simple_index import SIMPLE, published_entries

        return {SIMPLE: len(published_entries(path)) if (path / SIMPLE).is_dir() else None}
    counts: dict[str, int | None] = {}
    for subdir in channel.served_subdirs:
        try:
            data = orjson.loads((path / subdir / "repodata.json").read_bytes())
            counts[subdir] = len(data.get("packages") or {}) + len(data.get("packages.conda") or {})
        except (OSError, ValueError, AttributeError):
            counts[subdir] = None
    return counts


def channel_folders(channel: Channel | PypiChannel) -> list[Path]:
    """Every folder the tool writes files into (where a crash can leave temp files)."""
    path = Path(channel.path)
    folders = [path]
    state = path / ".reconciler"  # state, caches, upstream responses: written atomically too
    if state.is_dir():
        folders += [state, *sorted(p for p in state.rglob("*") if p.is_dir())]
    if isinstance(channel, PypiChannel):
        for top in ("simple", "packages"):
            folders.append(path / top)
            if (path / top).is_dir():
                folders.extend(sorted(p for p in (path / top).iterdir() if p.is_dir()))
        return folders
    for subdir in channel.served_subdirs:
        folders += [path / subdir, path / subdir / "shards"]
    return folders
