"""Repodata patches ("hotfixes"): Python generators, instruction files and patch packages.

A patch source yields, per subdir, instructions in conda's format
(``patch_instructions_version`` 1: ``packages``, ``packages.conda``, ``revoke``,
``remove``); :func:`apply_instructions` applies them the way conda-index's
``_apply_instructions`` does. Sources apply in order, each to the result of the
previous one, and never mutate the repodata they are given.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
import uuid
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from reconciler.conda.names import is_valid_subdir
from reconciler.conda.records import field_problem
from reconciler.errors import ReconcileError

PATCH_INSTRUCTIONS_VERSION = 1
INSTRUCTION_KEYS: frozenset[str] = frozenset(
    {"patch_instructions_version", "packages", "packages.conda", "revoke", "remove"}
)
REVOKED_DEPENDENCY = "package_has_been_revoked"
PATCH_FILE_TYPES = ".py, .json, .conda or .tar.bz2"

_TAR_BZ2 = ".tar.bz2"
_CONDA = ".conda"


class PatchError(ReconcileError):
    """A patch file that cannot be loaded or that produced unusable instructions."""


class PatchSource(ABC):
    """One patch file; ``instructions`` says what to do to one subdir's repodata."""

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
        """sha256 of the file's bytes: a changed patch changes the outputs it feeds."""
        return hashlib.sha256(self._bytes).hexdigest()

    def describe(self, subdir: str) -> str:
        """Where the instructions for ``subdir`` come from, for error messages."""
        return str(self.path)

    @abstractmethod
    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        """Instructions for ``subdir``; None or ``{}`` when the patch has none for it."""


class PythonPatch(PatchSource):
    """A Python file defining ``_patch_repodata(repodata, subdir) -> instructions``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._function = self._load()

    def _load(self) -> Callable[..., Any]:
        name = f"_reconcile_patch_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        if spec is None or spec.loader is None:
            raise PatchError(f"{self.path}: cannot load as a Python module")
        module = importlib.util.module_from_spec(spec)
        # Registered only while the file runs: dataclasses and pickling look the module
        # up there, but two patch files must never see each other's module.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PatchError(
                f"{self.path}: the patch failed to load ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            sys.modules.pop(name, None)
        function = getattr(module, "_patch_repodata", None)
        if not callable(function):
            raise PatchError(
                f"{self.path}: defines no function _patch_repodata(repodata, subdir)",
                hint="a Python patch returns patch instructions from _patch_repodata",
            )
        return function  # type: ignore[no-any-return]

    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        try:
            result = self._function(_private_copy(repodata), subdir)
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


def _private_copy(repodata: dict[str, Any]) -> dict[str, Any]:
    """A deep copy the patch generator may scribble on.

    A JSON round trip is several times faster than ``copy.deepcopy`` on big repodata;
    anything JSON cannot hold falls back to the slow path.
    """
    try:
        copied = orjson.loads(orjson.dumps(repodata))
    except TypeError:  # orjson.JSONEncodeError included
        return copy.deepcopy(repodata)
    return copied  # type: ignore[no-any-return]


def _looks_like_instructions(data: Mapping[str, Any]) -> bool:
    return any(key in INSTRUCTION_KEYS for key in data)


class _NotJson(ValueError):
    """NaN or Infinity: Python's reader takes them, no JSON reader of repodata does."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _not_json(name: str) -> Any:
    raise _NotJson(name)


class JsonPatch(PatchSource):
    """``patch_instructions.json``: one instructions object, or ``{subdir: instructions}``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            data = json.loads(self._bytes, parse_constant=_not_json)
        except json.JSONDecodeError as exc:
            raise PatchError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
            ) from None
        except UnicodeDecodeError as exc:
            raise PatchError(f"{path}: not UTF-8 text ({exc})") from None
        except _NotJson as exc:
            line = self._bytes[: self._bytes.find(exc.name.encode())].count(b"\n") + 1
            raise PatchError(
                f"{path}:{line}: not valid JSON ({exc.name} is not a JSON value)"
            ) from None
        if not isinstance(data, dict):
            raise PatchError(f"{path}: patch instructions must be a JSON object")
        self._everywhere: dict[str, Any] | None = None
        self._by_subdir: dict[str, dict[str, Any]] = {}
        if _looks_like_instructions(data):
            validate_instructions(data, str(path), strict=True)
            self._everywhere = data
            return
        for subdir, instructions in data.items():
            if not is_valid_subdir(subdir) or not isinstance(instructions, dict):
                raise PatchError(
                    f"{path}: key {subdir!r} is neither an instruction "
                    "(packages, packages.conda, revoke, remove) nor a subdir holding them"
                )
            validate_instructions(instructions, f"{path}: {subdir}", strict=True)
            self._by_subdir[subdir] = instructions

    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        if self._everywhere is not None:
            return self._everywhere
        return self._by_subdir.get(subdir)


_INSTRUCTIONS_MEMBER = "patch_instructions.json"


class PackagePatch(PatchSource):
    """A patch package holding ``<subdir>/patch_instructions.json`` (conda-forge style).

    Every subdir's instructions are read once, when the package is loaded.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._by_subdir: dict[str, dict[str, Any]] = {}
        try:
            for member, handle in _payload_members(path.name, self._bytes):
                subdir = _instructions_subdir(member)
                if subdir is None:
                    continue
                where = self.describe(subdir)
                try:
                    data = json.loads(handle.read(), parse_constant=_not_json)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise PatchError(f"{where}: not valid JSON ({exc})") from None
                if not isinstance(data, dict):
                    raise PatchError(f"{where}: not a JSON object")
                validate_instructions(data, where)
                self._by_subdir[subdir] = data
        except PatchError:
            raise
        except Exception as exc:  # zip, tar and decompressor errors alike
            raise PatchError(
                f"{path}: not a readable patch package ({type(exc).__name__}: {exc})"
            ) from None
        if not self._by_subdir:
            raise PatchError(
                f"{path}: holds no <subdir>/{_INSTRUCTIONS_MEMBER}",
                hint="a patch package is built like conda-forge-repodata-patches",
            )

    def describe(self, subdir: str) -> str:
        return f"{self.path} ({subdir}/{_INSTRUCTIONS_MEMBER})"

    def instructions(self, repodata: dict[str, Any], subdir: str) -> dict[str, Any] | None:
        return self._by_subdir.get(subdir)


def _instructions_subdir(member: tarfile.TarInfo) -> str | None:
    """The subdir of a ``<subdir>/patch_instructions.json`` file member, else None."""
    if not member.isfile():
        return None
    parts = member.name.removeprefix("./").split("/")
    if len(parts) != 2 or parts[1] != _INSTRUCTIONS_MEMBER or not is_valid_subdir(parts[0]):
        return None
    return parts[0]


def _payload_members(filename: str, data: bytes) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """The payload's file members of a ``.conda`` or ``.tar.bz2`` package, streamed."""
    if filename.endswith(_CONDA):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # Found by prefix, not by the file's own stem: a renamed package still works.
            names = [
                n for n in archive.namelist() if n.startswith("pkg-") and n.endswith(".tar.zst")
            ]
            if len(names) != 1:
                raise ValueError(f"expected one pkg-*.tar.zst component, found {len(names)}")
            with archive.open(names[0]) as raw:
                reader = zstandard.ZstdDecompressor().stream_reader(raw)
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    yield from _file_members(tar)
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|bz2") as tar:
            yield from _file_members(tar)


def _file_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    for member in tar:
        handle = tar.extractfile(member) if member.isfile() else None
        if handle is not None:
            yield member, handle


def load_patch_source(path: Path) -> PatchSource:
    """The patch source for ``path``, chosen by its suffix."""
    name = path.name
    if name.endswith(".py"):
        return PythonPatch(path)
    if name.endswith(".json"):
        return JsonPatch(path)
    if name.endswith((_CONDA, _TAR_BZ2)):
        return PackagePatch(path)
    raise PatchError(
        f"{path}: unknown patch file type",
        hint=f"a patch is a {PATCH_FILE_TYPES} file",
    )


def validate_instructions(
    instructions: Mapping[str, Any], source: str, *, strict: bool = False
) -> None:
    """Refuse instructions conda would misread; errors name ``source`` and the key.

    ``strict`` (hand-written JSON) also refuses unknown top-level keys, which are
    more likely typos than extensions.
    """
    version = instructions.get("patch_instructions_version", PATCH_INSTRUCTIONS_VERSION)
    if type(version) is not int or version != PATCH_INSTRUCTIONS_VERSION:
        raise PatchError(
            f"{source}: patch_instructions_version {version!r} is not supported "
            f"(only {PATCH_INSTRUCTIONS_VERSION})"
        )
    for key in ("packages", "packages.conda"):
        fixes = instructions.get(key, {})
        if not isinstance(fixes, dict):
            raise PatchError(f"{source}: {key!r} must map filenames to field changes")
        for filename, changes in fixes.items():
            if not isinstance(filename, str):
                raise PatchError(
                    f"{source}: {key!r} must map filenames to field changes "
                    f"({filename!r} is not a filename)"
                )
            if not isinstance(changes, dict):
                raise PatchError(
                    f"{source}: {key!r} must map filenames to field changes "
                    f"({filename!r} maps to {type(changes).__name__})"
                )
            for field, value in changes.items():
                problem = field_problem(str(field), value)
                if problem is not None:
                    raise PatchError(f"{source}: {key!r} {filename!r}: {problem}")
    for key in ("revoke", "remove"):
        names = instructions.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PatchError(f"{source}: {key!r} must be a list of filenames")
    try:
        # Patched records are written as JSON by orjson: a value it cannot write (an
        # integer beyond 64 bits, a set, a non-string key) must fail here, naming the patch.
        orjson.dumps(instructions)
    except TypeError as exc:  # orjson.JSONEncodeError included
        raise PatchError(f"{source}: instructions cannot be written as JSON ({exc})") from None
    if strict:
        unknown = sorted(set(instructions) - INSTRUCTION_KEYS)
        if unknown:
            raise PatchError(
                f"{source}: unknown instruction key {unknown[0]!r}",
                hint="instructions are " + ", ".join(sorted(INSTRUCTION_KEYS)),
            )


def _conda_twin(filename: str) -> str:
    """The ``packages.conda`` name a ``packages`` instruction also covers.

    As conda-index does: ``x.tar.bz2`` → ``x.conda``; any other name unchanged.
    """
    if filename.endswith(_TAR_BZ2):
        return filename[: -len(_TAR_BZ2)] + _CONDA
    return filename


def _merged(base: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a new dict) with ``changes``: None deletes, dicts merge, the rest replaces."""
    result: dict[str, Any] = dict(base) if isinstance(base, Mapping) else {}
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            result[key] = _merged(result.get(key), value)
        elif isinstance(value, list):
            result[key] = list(value)  # records never share a list with the instructions
        else:
            result[key] = value
    return result


def apply_instructions(
    repodata: Mapping[str, Any], instructions: Mapping[str, Any]
) -> dict[str, Any]:
    """A new repodata with ``instructions`` (already validated) applied.

    Changed records are new dicts; unchanged ones are shared with ``repodata``,
    whose records are never mutated. Filenames that are not in the repodata are
    ignored, as conda does.
    """
    result = dict(repodata)
    packages: dict[str, Any] = dict(repodata.get("packages") or {})
    conda: dict[str, Any] = dict(repodata.get("packages.conda") or {})
    result["packages"], result["packages.conda"] = packages, conda

    tar_fixes: Mapping[str, Mapping[str, Any]] = instructions.get("packages") or {}
    for filename, changes in tar_fixes.items():
        if filename in packages:
            packages[filename] = _merged(packages[filename], changes)
    # .tar.bz2 fixes first, .conda-only fixes second, so the latter win on the same key.
    for filename, changes in tar_fixes.items():
        twin = _conda_twin(filename)
        if twin in conda:
            conda[twin] = _merged(conda[twin], changes)
    for filename, changes in (instructions.get("packages.conda") or {}).items():
        if filename in conda:
            conda[filename] = _merged(conda[filename], changes)

    def targets(filename: str) -> list[tuple[dict[str, Any], str]]:
        found = [(packages, filename)] if filename in packages else []
        twin = _conda_twin(filename)
        if twin in conda:
            found.append((conda, twin))
        return found

    for filename in instructions.get("revoke") or ():
        for section, name in targets(filename):
            record = dict(section[name])
            record["revoked"] = True
            # An upstream depends that is not a list (garbage) gives way to the revocation.
            found = record.get("depends")
            depends = list(found) if isinstance(found, list) else []
            if REVOKED_DEPENDENCY not in depends:
                depends.append(REVOKED_DEPENDENCY)
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
    """Apply every source in order, each to the previous one's result.

    Returns a new dict, except that when no source has anything for ``subdir``
    the ``repodata`` object itself comes back (unchanged).
    """
    for source in sources:
        instructions = source.instructions(repodata, subdir)
        if not instructions:
            continue
        validate_instructions(instructions, source.describe(subdir))
        repodata = apply_instructions(repodata, instructions)
    return repodata
