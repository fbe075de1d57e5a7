"""The metadata extracted from one package archive, as the indexer caches it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

# Flags shown in channeldata.json, derived from info/paths.json and info/ scripts.
CHANNELDATA_FLAGS: tuple[str, ...] = (
    "binary_prefix",
    "text_prefix",
    "activate.d",
    "deactivate.d",
    "pre_link",
    "post_link",
    "pre_unlink",
)


@dataclass(frozen=True)
class PackageMetadata:
    """What the index needs from one package file, read without unpacking the payload.

    ``index`` is ``info/index.json`` verbatim; ``about`` and ``run_exports`` are
    ``{}`` when the archive has none. ``flags`` maps each name in
    :data:`CHANNELDATA_FLAGS` to a bool.
    """

    filename: str
    index: dict[str, Any]
    about: dict[str, Any] = field(default_factory=dict)
    run_exports: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    md5: str = ""
    sha256: str = ""
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the stat cache (msgpack/JSON safe)."""
        return {
            "filename": self.filename,
            "index": self.index,
            "about": self.about,
            "run_exports": self.run_exports,
            "flags": self.flags,
            "md5": self.md5,
            "sha256": self.sha256,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackageMetadata:
        return cls(
            filename=str(data["filename"]),
            index=dict(data["index"]),
            about=dict(data.get("about") or {}),
            run_exports=dict(data.get("run_exports") or {}),
            flags={str(k): bool(v) for k, v in (data.get("flags") or {}).items()},
            md5=str(data.get("md5", "")),
            sha256=str(data.get("sha256", "")),
            size=int(data.get("size", 0)),
        )


def encode_metadata(metadata: PackageMetadata) -> bytes:
    """The metadata as the index's stat cache stores it (and reader workers hand it back)."""
    blob: bytes = msgpack.packb(metadata.to_dict(), use_bin_type=True)
    return blob


_FIELDS = frozenset(PackageMetadata.__dataclass_fields__)


def decode_metadata(blob: bytes) -> PackageMetadata:
    """What :func:`encode_metadata` encoded. Its own output is taken as it is (three
    times faster than :meth:`PackageMetadata.from_dict`); anything else is checked."""
    data = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    if (
        type(data) is dict
        and data.keys() == _FIELDS
        and type(data["filename"]) is str
        and type(data["index"]) is dict
        and type(data["about"]) is dict
        and type(data["run_exports"]) is dict
        and type(data["flags"]) is dict
        and type(data["md5"]) is str
        and type(data["sha256"]) is str
        and type(data["size"]) is int
    ):
        return PackageMetadata(**data)
    return PackageMetadata.from_dict(data)
