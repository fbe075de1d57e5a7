"""Where a channel lives: :func:`open_store` gives the store for a channel's ``path`` —
a folder on the local disk, or ``s3://bucket/prefix`` in S3-compatible object storage."""

from __future__ import annotations

import re
from pathlib import Path

from reconciler.config.models import (
    DEFAULT_INDEX_MAX_AGE,
    AnyChannelModel,
    S3Location,
    StorageOptions,
    parse_location,
)
from reconciler.store.base import StorageError, Store
from reconciler.store.local import LocalStore

# "s3:/bucket/x": an S3 URL that went through a Path, which folds "//" into "/".
_FOLDED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def open_store(
    path: Path | str | S3Location,
    storage: StorageOptions | None = None,
    *,
    index_max_age: int = DEFAULT_INDEX_MAX_AGE,
    private: bool = False,
) -> Store:
    """The store of a channel folder or bucket location (``s3://...`` as text too)."""
    if isinstance(path, str):
        try:
            path = parse_location(path)
        except ValueError as exc:
            raise StorageError(str(exc)) from None
    if isinstance(path, S3Location):
        from reconciler.store.s3 import S3Store

        return S3Store(path, storage, index_max_age=index_max_age, private=private)
    if _FOLDED_URL.match(str(path)):
        # Never a folder named "s3:": a URL mangled into a path is a bug upstream of here.
        raise StorageError(f"refusing {str(path)!r} as a folder: it looks like a mangled URL")
    if storage is not None:
        raise StorageError(f"{path}: storage settings apply to s3:// locations only")
    return LocalStore(Path(path))


def channel_store(channel: AnyChannelModel) -> Store:
    """The store of a configured channel (its path, storage settings, max-age, access)."""
    return open_store(
        channel.path,
        channel.storage,
        index_max_age=channel.max_age,
        private=channel.access == "private",
    )
