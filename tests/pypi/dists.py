"""Real wheels and sdists of tiny projects, built offline without a build backend."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

_EPOCH = (2024, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _metadata(name: str, version: str, requires_python: str | None) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    return "\n".join(lines) + "\n"


def build_wheel(
    out: Path,
    name: str,
    version: str,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
) -> Path:
    """A valid PEP 427 wheel with one module that records its version."""
    module = name.replace("-", "_").lower()
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{dist}.dist-info/METADATA": _metadata(name, version, requires_python).encode(),
        f"{dist}.dist-info/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ).encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}.dist-info/RECORD,,\n"
    files[f"{dist}.dist-info/RECORD"] = record.encode()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(zipfile.ZipInfo(member, _EPOCH), data)
    return path


def build_sdist(out: Path, name: str, version: str) -> Path:
    """A valid sdist (PKG-INFO, pyproject.toml for setuptools, the module)."""
    module = name.replace("-", "_").lower()
    root = f"{module}-{version}"
    files = {
        f"{root}/PKG-INFO": _metadata(name, version, None).encode(),
        f"{root}/pyproject.toml": (
            '[build-system]\nrequires = ["setuptools"]\n'
            'build-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\n'
        ).encode(),
        f"{root}/{module}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{root}.tar.gz"
    buffer = io.BytesIO()
    # gzip's header holds a time too: fixed, so the same inputs give the same bytes.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as archive,
    ):
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), 1_704_067_200, 0o644
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path
