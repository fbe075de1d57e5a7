"""Build real conda packages (``.conda`` and ``.tar.bz2``) for tests and benchmarks.

The archives follow the formats conda writes: ``.tar.bz2`` is a bzip2 tarball
holding ``info/`` and the payload; ``.conda`` is a stored zip holding
``metadata.json``, ``pkg-<stem>.tar.zst`` (payload) and ``info-<stem>.tar.zst``.
Everything is deterministic so the same spec gives byte-identical files.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

# 2023-11-14T22:13:20Z: a fixed, plausible package timestamp.
DEFAULT_TIMESTAMP_MS = 1_700_000_000_000
_TAR_MTIME = 1_700_000_000


@dataclass
class PackageSpec:
    """What a test package holds; the fields map onto ``info/index.json``."""

    name: str
    version: str
    build: str = "0"
    build_number: int = 0
    subdir: str = "noarch"
    depends: list[str] = field(default_factory=list)
    constrains: list[str] = field(default_factory=list)
    noarch: str | None = None  # "python" or "generic" for noarch packages
    license: str | None = "MIT"
    license_family: str | None = "MIT"
    timestamp: int | None = DEFAULT_TIMESTAMP_MS
    features: str | None = None
    track_features: str | None = None
    run_exports: dict[str, Any] | None = None
    about: dict[str, Any] = field(default_factory=dict)
    extra_index: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # payload path -> content
    # paths.json file_mode for payload files with a prefix placeholder
    prefix_files: dict[str, str] = field(default_factory=dict)  # path -> "text" | "binary"
    scripts: tuple[str, ...] = ()  # e.g. ("post-link", "pre-unlink")

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def index_json(self) -> dict[str, Any]:
        index: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": self.build_number,
            "depends": list(self.depends),
            "subdir": self.subdir,
        }
        if self.constrains:
            index["constrains"] = list(self.constrains)
        if self.noarch:
            index["noarch"] = self.noarch
        if self.subdir != "noarch":
            platform, _, arch = self.subdir.partition("-")
            index["platform"] = platform
            index["arch"] = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}.get(arch, arch)
        if self.license is not None:
            index["license"] = self.license
        if self.license_family is not None:
            index["license_family"] = self.license_family
        if self.timestamp is not None:
            index["timestamp"] = self.timestamp
        if self.features is not None:
            index["features"] = self.features
        if self.track_features is not None:
            index["track_features"] = self.track_features
        index.update(self.extra_index)
        return index

    def about_json(self) -> dict[str, Any]:
        about = {
            "summary": f"The {self.name} test package",
            "home": f"https://example.org/{self.name}",
            "license": self.license,
        }
        about.update(self.about)
        return about

    def payload(self) -> dict[str, bytes]:
        files = dict(self.files) or {f"share/{self.name}/README": f"{self.stem}\n".encode()}
        for script in self.scripts:
            files[f"bin/.{self.name}-{script}.sh"] = b"#!/bin/sh\nexit 0\n"
        return files

    def paths_json(self, payload: Mapping[str, bytes]) -> dict[str, Any]:
        paths = []
        for path, data in sorted(payload.items()):
            entry: dict[str, Any] = {
                "_path": path,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_in_bytes": len(data),
            }
            mode = self.prefix_files.get(path)
            if mode:
                entry["file_mode"] = mode
                entry["prefix_placeholder"] = "/opt/anaconda1anaconda2anaconda3"
            paths.append(entry)
        return {"paths": paths, "paths_version": 1}

    def info_files(self) -> dict[str, bytes]:
        payload = self.payload()
        info = {
            "info/index.json": _json(self.index_json()),
            "info/about.json": _json(self.about_json()),
            "info/paths.json": _json(self.paths_json(payload)),
            "info/files": "".join(f"{p}\n" for p in sorted(payload)).encode(),
        }
        if self.run_exports is not None:
            info["info/run_exports.json"] = _json(self.run_exports)
        if self.prefix_files:
            info["info/has_prefix"] = "".join(
                f"/opt/anaconda1anaconda2anaconda3 {mode} {path}\n"
                for path, mode in sorted(self.prefix_files.items())
            ).encode()
        return info


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


def _sorted(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return dict(sorted(files.items()))


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed, deterministic tar of ``files``, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o755 if path.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar_bz2(path: Path, files: Mapping[str, bytes]) -> Path:
    path.write_bytes(bz2.compress(tar_bytes(files), 9))
    return path


def write_conda(
    path: Path,
    info: Mapping[str, bytes],
    payload: Mapping[str, bytes],
    stem: str | None = None,
) -> Path:
    """A ``.conda`` archive; ``stem`` overrides the inner component names."""
    stem = stem or path.name[: -len(".conda")]
    compressor = zstandard.ZstdCompressor(level=3)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in (
            ("metadata.json", b'{"conda_pkg_format_version": 2}'),
            (f"pkg-{stem}.tar.zst", compressor.compress(tar_bytes(_sorted(payload)))),
            (f"info-{stem}.tar.zst", compressor.compress(tar_bytes(_sorted(info)))),
        ):
            entry = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
            archive.writestr(entry, data)
    return path


def build_package(directory: Path, spec: PackageSpec, fmt: str = ".conda") -> Path:
    """Write ``spec`` as a real package into ``directory/<subdir>/`` and return its path."""
    folder = directory / spec.subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.stem}{fmt}"
    if fmt == ".conda":
        return write_conda(path, spec.info_files(), spec.payload())
    if fmt == ".tar.bz2":
        # conda-build puts info/ first, so readers can stop before the payload.
        return write_tar_bz2(path, {**_sorted(spec.info_files()), **_sorted(spec.payload())})
    raise ValueError(f"unknown package format {fmt!r}")


def build_channel(
    directory: Path, specs: Iterable[PackageSpec | tuple[PackageSpec, str]]
) -> list[Path]:
    """Build every spec (``.conda`` unless paired with a format) under ``directory``."""
    paths = []
    for item in specs:
        spec, fmt = item if isinstance(item, tuple) else (item, ".conda")
        paths.append(build_package(directory, spec, fmt))
    return paths


def file_digests(path: Path) -> tuple[str, str, int]:
    """(md5, sha256, size) of a file, as repodata records them."""
    data = path.read_bytes()
    return hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest(), len(data)
