"""Repodata patches ("hotfixes"): Python generators, instruction files and patch packages.

A patch source yields, per subdir, instructions in conda's format
(``patch_instructions_version`` 1: ``packages``, ``packages.conda``, ``revoke``,
``remove``); :func:`apply_instructions` applies them the way conda's own
``_apply_instructions`` does. Sources apply in order, each to the result of the
previous one, and never mutate the repodata they are given.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from conda_package_streaming.package_streaming import stream_conda_component

from reconciler.conda.names import is_valid_subdir
from reconciler.errors import ReconcileError

PATCH_INSTRUCTIONS_VERSION = 1
INSTRUCTION_KEYS: frozenset[str] = frozenset(
    {"patch_instructions_version", "packages", "packages.conda", "revoke", "remove"}
)


class PatchError(ReconcileError):
    """A patch file that cannot be loaded or that produced unusable instructions."""


class PatchSource(ABC):
    """One patch file; ``instructions`` returns what to do to one subdir's repodata."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._bytes = path.read_bytes()
        except OSError as exc:
            raise PatchError(
                f"{path}: cannot read patch file ({exc.strerror or exc})",
                hint="check the `patches` list of the channel",
            ) from None

    def digest(self) -> str:
        """sha256 of the file: a changed patch changes the outputs it feeds."""
        return hashlib.sha256(self._bytes).hexdigest()

    @abstractmethod
    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        """Instructions for ``subdir`` (None when the patch has none for it)."""


class PythonPatch(PatchSource):
    """A Python file defining ``_patch_repodata(repodata, subdir) -> instructions``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._function = self._load()

    def _load(self) -> Callable[[dict[str, Any], str], Any]:
        name = f"_reconcile_patch_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        if spec is None or spec.loader is None:
            raise PatchError(f"{self.path}: cannot load as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PatchError(
                f"{self.path}: the patch failed to load ({type(exc).__name__}: {exc})"
            ) from None
        function = getattr(module, "_patch_repodata", None)
        if not callable(function):
            raise PatchError(
                f"{self.path}: defines no function _patch_repodata(repodata, subdir)",
                hint="a Python patch returns patch instructions from _patch_repodata",
            )
        return function  # type: ignore[no-any-return]

    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        try:
            # A deep copy: the generator may scribble on what it is given.
            result = self._function(copy.deepcopy(repodata), subdir)
        except Exception as exc:
            raise PatchError(
                f"{self.path}: _patch_repodata failed for {subdir} ({type(exc).__name__}: {exc})"
            ) from None
        if result is None:
            return None
        if not isinstance(result, dict):
            raise PatchError(
                f"{self.path}: _patch_repodata returned {type(result).__name__}, not a dict"
            )
        return result


def _looks_like_instructions(data: Mapping[str, Any]) -> bool:
    return any(key in INSTRUCTION_KEYS for key in data)


class JsonPatch(PatchSource):
    """``patch_instructions.json``: one instructions object, or ``{subdir: instructions}``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            data = json.loads(self._bytes)
        except json.JSONDecodeError as exc:
            raise PatchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise PatchError(f"{path}: not UTF-8 text ({exc})") from None
        if not isinstance(data, dict):
            raise PatchError(f"{path}: patch instructions must be a JSON object")
        self._all: dict[str, Any] | None = None
        self._by_subdir: dict[str, dict[str, Any]] = {}
        if _looks_like_instructions(data):
            self._all = data
        else:
            for subdir, instructions in data.items():
                if not is_valid_subdir(subdir) or not isinstance(instructions, dict):
                    raise PatchError(
                        f"{path}: key {subdir!r} is neither an instruction "
                        "(packages, packages.conda, revoke, remove) nor a subdir holding them"
                    )
                self._by_subdir[subdir] = instructions

    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        return self._all if self._all is not None else self._by_subdir.get(subdir)


class PackagePatch(PatchSource):
    """A patch package holding ``<subdir>/patch_instructions.json`` (conda-forge style)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._by_subdir: dict[str, dict[str, Any]] = {}
        try:
            for tar, member in stream_conda_component(path.name, io.BytesIO(self._bytes), "pkg"):
                parts = member.name.removeprefix("./").split("/")
                if len(parts) != 2 or parts[1] != "patch_instructions.json":
                    continue
                if not member.isfile() or not is_valid_subdir(parts[0]):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                try:
                    data = json.loads(handle.read())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise PatchError(f"{path}: {member.name} is not valid JSON ({exc})") from None
                if not isinstance(data, dict):
                    raise PatchError(f"{path}: {member.name} is not a JSON object")
                self._by_subdir[parts[0]] = data
        except PatchError:
            raise
        except Exception as exc:  # zip, tar and decompressor errors alike
            raise PatchError(
                f"{path}: not a readable patch package ({type(exc).__name__}: {exc})"
            ) from None
        if not self._by_subdir:
            raise PatchError(f"{path}: holds no <subdir>/patch_instructions.json")

    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        return self._by_subdir.get(subdir)


def load_patch_source(path: Path) -> PatchSource:
    """The patch source for ``path``, chosen by its suffix."""
    name = path.name
    if name.endswith(".py"):
        return PythonPatch(path)
    if name.endswith(".json"):
        return JsonPatch(path)
    if name.endswith((".conda", ".tar.bz2")):
        return PackagePatch(path)
    raise PatchError(
        f"{path}: unknown patch file type",
        hint="use a .py patch generator, a .json instructions file or a .conda/.tar.bz2 "
        "patch package",
    )


def validate_instructions(instructions: Mapping[str, Any], source: str) -> None:
    version = instructions.get("patch_instructions_version", PATCH_INSTRUCTIONS_VERSION)
    if version != PATCH_INSTRUCTIONS_VERSION:
        raise PatchError(
            f"{source}: patch_instructions_version {version!r} is not supported "
            f"(only {PATCH_INSTRUCTIONS_VERSION})"
        )
    for key in ("packages", "packages.conda"):
        fixes = instructions.get(key, {})
        if not isinstance(fixes, dict) or not all(isinstance(v, dict) for v in fixes.values()):
            raise PatchError(f"{source}: {key!r} must map filenames to field changes")
    for key in ("revoke", "remove"):
        names = instructions.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PatchError(f"{source}: {key!r} must be a list of filenames")


def _conda_twin(filename: str) -> str | None:
    if filename.endswith(".tar.bz2"):
        return filename[: -len(".tar.bz2")] + ".conda"
    return None


def apply_instructions(
    repodata: Mapping[str, Any], instructions: Mapping[str, Any]
) -> dict[str, Any]:
    """A new repodata with ``instructions`` applied; input records are never mutated."""
    result = dict(repodata)
    packages: dict[str, Any] = dict(repodata.get("packages") or {})
    conda: dict[str, Any] = dict(repodata.get("packages.conda") or {})
    result["packages"], result["packages.conda"] = packages, conda

    def fix(section: dict[str, Any], filename: str, changes: Mapping[str, Any]) -> None:
        record = section.get(filename)
        if record is None:
            return
        record = dict(record)  # copy on write
        for key, value in changes.items():
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value
        section[filename] = record

    for filename, changes in (instructions.get("packages") or {}).items():
        fix(packages, filename, changes)
        twin = _conda_twin(filename)
        if twin:
            fix(conda, twin, changes)
    for filename, changes in (instructions.get("packages.conda") or {}).items():
        fix(conda, filename, changes)

    def targets(filename: str) -> list[tuple[dict[str, Any], str]]:
        found = []
        if filename in packages:
            found.append((packages, filename))
        for name in (filename, _conda_twin(filename)):
            if name and name in conda:
                found.append((conda, name))
        return found

    for filename in instructions.get("revoke") or ():
        for section, name in targets(filename):
            record = dict(section[name])
            record["revoked"] = True
            depends = list(record.get("depends") or [])
            if "package_has_been_revoked" not in depends:
                depends.append("package_has_been_revoked")
            record["depends"] = depends
            section[name] = record

    removed = set(repodata.get("removed") or ())
    for filename in instructions.get("remove") or ():
        for section, name in targets(filename):
            del section[name]
            removed.add(name)
    result["removed"] = sorted(removed)
    return result


def apply_patch_sources(
    repodata: dict[str, Any], subdir: str, sources: Sequence[PatchSource]
) -> dict[str, Any]:
    """Apply every source in order. With no sources, ``repodata`` itself is returned."""
    for source in sources:
        instructions = source.instructions(repodata, subdir)
        if not instructions:
            continue
        validate_instructions(instructions, str(source.path))
        repodata = apply_instructions(repodata, instructions)
    return repodata
