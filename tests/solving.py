"""Ask py-rattler's solver about records held in memory (written out as a channel)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rattler
from rattler.exceptions import SolverError

Key = tuple[str, str]


def write_channel(
    root: Path, records: Mapping[Key, Mapping[str, Any]], subdirs: Iterable[str]
) -> Path:
    """A channel folder holding ``records`` (repodata only, no package files)."""
    for subdir in {*subdirs, "noarch"}:
        folder = root / subdir
        folder.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "info": {"subdir": subdir},
            "packages": {},
            "packages.conda": {},
            "repodata_version": 1,
        }
        for (where, filename), record in sorted(records.items()):
            if where == subdir:
                section = "packages.conda" if filename.endswith(".conda") else "packages"
                data[section][filename] = {"subdir": subdir, **record}
        (folder / "repodata.json").write_text(json.dumps(data))
    return root


def solve(channel: Path, specs: Sequence[str], platform: str) -> list[str] | None:
    """The filenames rattler installs for ``specs`` on ``platform``, None when it cannot."""
    source = rattler.Channel(channel.as_uri())
    sparse = [
        rattler.SparseRepoData(source, subdir, channel / subdir / "repodata.json")
        for subdir in dict.fromkeys([platform, "noarch"])
        if (channel / subdir / "repodata.json").is_file()
    ]
    try:
        found = asyncio.run(rattler.solve_with_sparse_repodata(list(specs), sparse))
    except SolverError:
        return None
    return sorted(record.file_name for record in found)


def exact(record: Mapping[str, Any]) -> str:
    """A spec only ``record`` (and its format twin) matches; build strings must be unique."""
    return f"{record['name']} =={record['version']} {record['build']}"
