"""Per-channel state under ``<channel>/.reconciler/`` (never served): the inventory.

The inventory records which file came from where (``local`` or a mirror's name)
with its sha256, the configuration digest and revision that last changed the
channel, and a serial that every apply which changes the channel bumps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from reconciler.store.local import write_if_changed

log = logging.getLogger(__name__)

STATE_NAME = ".reconciler/state.json"


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


class ChannelState(BaseModel):
    state_version: Literal[1] = 1
    channel: str
    serial: int = 0
    config_digest: str | None = None
    revision: str | None = None
    updated: str | None = None
    files: dict[str, InventoryEntry] = Field(
        default_factory=dict, description="'<subdir>/<filename>' -> where it came from"
    )

    @classmethod
    def load(cls, channel_dir: Path, channel: str) -> ChannelState:
        """The channel's state; missing or unreadable state starts empty (with a warning)."""
        path = channel_dir / STATE_NAME
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return cls(channel=channel)
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); starting a new inventory", path, exc)
            return cls(channel=channel)

    def save(self, channel_dir: Path) -> None:
        data = (self.model_dump_json(indent=1) + "\n").encode()
        write_if_changed(channel_dir / STATE_NAME, data, step="state.mid_write")
