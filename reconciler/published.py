"""How many packages each channel publishes now (for status output and pages)."""

from __future__ import annotations

from pathlib import Path

import orjson

from reconciler.config import Channel, PypiChannel


def published_counts(channel: Channel | PypiChannel) -> dict[str, int | None]:
    """Packages per subdir (None: not indexed); a PyPI channel counts ``simple`` files."""
    path = Path(channel.path)
    if isinstance(channel, PypiChannel):
        from reconciler.pypi.simple_index import SIMPLE, published_entries

        return {SIMPLE: len(published_entries(path)) if (path / SIMPLE).is_dir() else None}
    counts: dict[str, int | None] = {}
    for subdir in channel.served_subdirs:
        try:
            data = orjson.loads((path / subdir / "repodata.json").read_bytes())
            counts[subdir] = len(data.get("packages") or {}) + len(data.get("packages.conda") or {})
        except (OSError, ValueError, AttributeError):
            counts[subdir] = None
    return counts
