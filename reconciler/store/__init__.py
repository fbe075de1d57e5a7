"""Where a channel lives: :func:`open_store` gives the store for a channel's ``path``."""

from __future__ import annotations

from pathlib import Path

from reconciler.store.base import Store
from reconciler.store.local import LocalStore


def open_store(path: Path | str) -> Store:
    """The store of a channel folder."""
    return LocalStore(Path(path))
