"""Solve against a channel with a real conda client (py-rattler)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import rattler


def solve(
    channel: str,
    specs: Sequence[str],
    platform: str,
    cache_dir: Path,
    *,
    sharded: bool = False,
) -> dict[str, str]:
    """Solve ``specs`` from ``channel`` (URL) for ``platform``; returns name → filename."""
    config = rattler.SourceConfig(sharded_enabled=sharded)
    gateway = rattler.Gateway(cache_dir=cache_dir, default_config=config)
    records = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(channel)],
            specs=list(specs),
            gateway=gateway,
            platforms=[platform, "noarch"],
            virtual_packages=[],
        )
    )
    return {record.name.normalized: record.file_name for record in records}
