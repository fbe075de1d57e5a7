"""A record a mirror brings into a channel, and which mirror brought it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MirroredRecord:
    record: dict[str, Any]
    mirror: str
