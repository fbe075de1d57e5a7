"""Real wheels and sdists of tiny projects, built offline with no build backend.

The bytes are deterministic (fixed timestamps, owners and modes), so a test that
builds the same project twice gets the same file and the same sha256.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import itertools
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from packaging.version import Version

# 2024-01-01T00:00:00Z: a fixed time for every archive member.
FIXED_EPOCH = 1_704_067_200
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def normalize(name: str) -> str:
    """PEP 503 project name: lowercase, runs of ``-_.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(name: str) -> str:
    """The name as it appears in wheel and sdist filenames and import packages."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _file_version(version: str) -> str:
    """PEP 440 normalised version, with ``-`` escaped as the filename specs require."""
    return str(Version(version)).replace("-", "_")


def expand_tags(tag: str) -> list[str]:
    """Every tag of a compressed tag set (``py2.py3-none-any`` gives two tags)."""
    parts = tag.split("-")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a python-abi-platform tag: {tag!r}")
    pythons, abis, platforms = (part.split(".") for part in parts)
    return ["-".join(combo) for combo in itertools.product(pythons, abis, platforms)]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, as simple-index pages publish it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def _metadata(
    name: str, version: str, requires_python: str | None, requires_dist: Iterable[str]
) -> bytes:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines.append(f"Summary: {name}, a tiny project built for tests")
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {requirement}" for requirement in requires_dist)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _as_bytes(content: bytes | str) -> bytes:
    return content if isinstance(content, bytes) else content.encode("utf-8")


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    *,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    files: Mapping[str, bytes | str] | None = None,
) -> Path:
    """Write a valid PEP 427 wheel and return its path.

    It holds ``<pkg>/__init__.py`` recording the version, plus ``files`` (archive
    path to content, which may replace the default module), then the dist-info
    folder with METADATA, WHEEL (one ``Tag`` line per expanded tag) and RECORD.
    """
    package = dist_name(name)
    file_version = _file_version(version)
    dist_info = f"{package}-{file_version}.dist-info"
    tags = expand_tags(tag)
    pure = all(t.endswith("-any") for t in tags)

    members: dict[str, bytes] = {f"{package}/__init__.py": f'__version__ = "{version}"\n'.encode()}
    for member, content in (files or {}).items():
        members[member] = _as_bytes(content)
    members = dict(sorted(members.items()))
    members[f"{dist_info}/METADATA"] = _metadata(name, file_version, requires_python, requires_dist)
    wheel_lines = [
        "Wheel-Version: 1.0",
        "Generator: tests.pypi.builder",
        f"Root-Is-Purelib: {'true' if pure else 'false'}",
        *(f"Tag: {t}" for t in tags),
    ]
    members[f"{dist_info}/WHEEL"] = ("\n".join(wheel_lines) + "\n").encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members.items())
    members[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{package}-{file_version}-{tag}.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            info = zipfile.ZipInfo(member, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever machine builds it
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    path.write_bytes(buffer.getvalue())
    return path


# A complete PEP 517 backend shipped inside the "inline" sdists. setuptools 65 (what a
# Python 3.11 venv brings) cannot prepare metadata without the separate ``wheel``
# package, and build isolation would fetch build requirements from the index under
# test; this backend needs nothing, so pip builds the sdist offline either way.
_INLINE_BACKEND = '''"""Minimal PEP 517 backend for test sdists: a pure wheel from PKG-INFO."""

import base64
import hashlib
import os
import re
import tarfile
import zipfile
from email.parser import Parser

_TIME = (2024, 1, 1, 0, 0, 0)


def _meta():
    with open("PKG-INFO", encoding="utf-8") as handle:
        text = handle.read()
    message = Parser().parsestr(text)
    return text, re.sub(r"[-_.]+", "_", message["Name"]).lower(), message["Version"]


def _dist_info():
    text, package, version = _meta()
    dist_info = package + "-" + version + ".dist-info"
    wheel = "Wheel-Version: 1.0\\nGenerator: tests-inline-backend\\nRoot-Is-Purelib: true\\n"
    return dist_info, {
        dist_info + "/METADATA": text.encode("utf-8"),
        dist_info + "/WHEEL": (wheel + "Tag: py3-none-any\\n").encode("ascii"),
    }


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info, files = _dist_info()
    for path, data in files.items():
        target = os.path.join(metadata_directory, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(data)
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _, package, version = _meta()
    dist_info, members = _dist_info()
    for root, dirs, names in os.walk(package):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                members[path.replace(os.sep, "/")] = handle.read()
    record = ""
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record += path + ",sha256=" + digest.decode("ascii") + "," + str(len(data)) + "\\n"
    members[dist_info + "/RECORD"] = (record + dist_info + "/RECORD,,\\n").encode("utf-8")
    filename = package + "-" + version + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as archive:
        for path, data in members.items():
            archive.writestr(zipfile.ZipInfo(path, _TIME), data, zipfile.ZIP_DEFLATED)
    return filename


def build_sdist(sdist_directory, config_settings=None):
    _, package, version = _meta()
    base = package + "-" + version
    with tarfile.open(os.path.join(sdist_directory, base + ".tar.gz"), "w:gz") as archive:
        for entry in sorted(os.listdir(".")):
            archive.add(entry, arcname=base + "/" + entry)
    return base + ".tar.gz"
'''


def build_sdist(
    out_dir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    backend: Literal["inline", "setuptools"] = "inline",
) -> Path:
    """Write a valid ``.tar.gz`` sdist (PKG-INFO, pyproject.toml with a minimal
    ``[project]`` table, the package) and return its path.

    ``backend="inline"`` ships a tiny PEP 517 backend (``requires = []``) so that pip
    builds it offline with or without build isolation. ``"setuptools"`` uses
    ``setuptools.build_meta``: pip can only build that offline with
    ``--no-build-isolation`` and a setuptools that has ``bdist_wheel`` (>= 70.1, or
    the ``wheel`` package installed beside an older one).
    """
    package = dist_name(name)
    file_version = _file_version(version)
    root = f"{package}-{file_version}"
    project = [f'name = "{name}"', f'version = "{file_version}"']
    if requires_python:
        project.append(f'requires-python = "{requires_python}"')
    if backend == "inline":
        build_system = ["requires = []", 'build-backend = "_tests_backend"', 'backend-path = ["."]']
        tool = []
    else:
        build_system = ['requires = ["setuptools>=61"]', 'build-backend = "setuptools.build_meta"']
        tool = ["", "[tool.setuptools]", f'packages = ["{package}"]']
    pyproject = "\n".join(["[build-system]", *build_system, "", "[project]", *project, *tool, ""])
    members = {
        f"{root}/PKG-INFO": _metadata(name, file_version, requires_python, ()),
        f"{root}/pyproject.toml": pyproject.encode(),
        f"{root}/{package}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    if backend == "inline":
        members[f"{root}/_tests_backend.py"] = _INLINE_BACKEND.encode()
    members = dict(sorted(members.items()))

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{root}.tar.gz"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in (root, f"{root}/{package}"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_EPOCH
            archive.addfile(info)
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, FIXED_EPOCH
            archive.addfile(info, io.BytesIO(data))
    gz_bytes = io.BytesIO()
    # gzip's header holds a time and a name too: both fixed, so the bytes are stable.
    with gzip.GzipFile(filename="", fileobj=gz_bytes, mode="wb", mtime=0) as zipped:
        zipped.write(tar_bytes.getvalue())
    path.write_bytes(gz_bytes.getvalue())
    return path


def core_metadata(path: Path) -> bytes:
    """The METADATA bytes of a wheel: what a PEP 658 ``<file>.metadata`` serves."""
    if not path.name.endswith(".whl"):
        raise ValueError(f"not a wheel: {path.name}")
    with zipfile.ZipFile(path) as archive:
        found = [
            member
            for member in archive.namelist()
            if member.count("/") == 1 and member.endswith(".dist-info/METADATA")
        ]
        if len(found) != 1:
            raise ValueError(f"{path.name}: expected one .dist-info/METADATA, found {found}")
        return archive.read(found[0])


def write_core_metadata(path: Path) -> Path:
    """Write ``<wheel>.metadata`` beside a wheel, as a static PEP 658 index holds it."""
    target = path.with_name(path.name + ".metadata")
    target.write_bytes(core_metadata(path))
    return target
