"""Patches applied by the indexer: repodata, current_repodata and shards, never the rest."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from reconciler.conda.shards import read_shard, read_shard_index
from reconciler.config.models import IndexOptions
from reconciler.errors import ReconcileError
from reconciler.kinds.conda.indexer import index_channel
from tests.packages import PackageSpec, build_channel

SPECS: list[PackageSpec | tuple[PackageSpec, str]] = [
    PackageSpec("base", "1.0", subdir="linux-64"),
    (PackageSpec("base", "1.0", subdir="linux-64"), ".tar.bz2"),
    (PackageSpec("base", "1.9", subdir="linux-64"), ".tar.bz2"),
    (PackageSpec("lib", "2.0", subdir="linux-64", depends=["base >=1.0"]), ".tar.bz2"),
    PackageSpec("lib", "2.0", subdir="linux-64", depends=["base >=1.0"]),
    PackageSpec("app", "3.1", subdir="linux-64", depends=["lib"], track_features="fancy"),
    PackageSpec("helper", "0.5", noarch="python", depends=["python >=3.8"]),
    (PackageSpec("data", "1.0", noarch="generic"), ".tar.bz2"),
]

PY_PATCH = """
def _patch_repodata(repodata, subdir):
    instructions = {
        "patch_instructions_version": 1,
        "packages": {},
        "packages.conda": {},
        "revoke": [],
        "remove": [],
    }
    if subdir == "linux-64":
        # A fix for the .tar.bz2 applies to its .conda twin too.
        instructions["packages"]["lib-2.0-0.tar.bz2"] = {"depends": ["base >=1.0", "%(dep)s"]}
        instructions["packages.conda"]["app-3.1-0.conda"] = {
            "track_features": None,
            "license": "BSD-3-Clause",
        }
        instructions["revoke"] = ["base-1.0-0.tar.bz2"]
        instructions["remove"] = ["base-1.9-0.tar.bz2"]
    return instructions
"""

JSON_PATCH = {
    "noarch": {
        "patch_instructions_version": 1,
        "packages.conda": {"helper-0.5-0.conda": {"depends": ["python >=3.9"]}},
        "remove": ["data-1.0-0.tar.bz2"],
    }
}


@pytest.fixture
def channel(tmp_path: Path) -> Path:
    root = tmp_path / "channel"
    build_channel(root, SPECS)
    return root


def write_patches(folder: Path, dep: str = "libzlib >=1.3") -> list[Path]:
    folder.mkdir(exist_ok=True)
    py = folder / "hotfix.py"
    py.write_text(textwrap.dedent(PY_PATCH % {"dep": dep}))
    js = folder / "patch_instructions.json"
    js.write_text(json.dumps(JSON_PATCH))
    return [py, js]


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())


def sharded_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Every record the subdir's shards hold, by filename."""
    index = read_shard_index((folder / "repodata_shards.msgpack.zst").read_bytes())
    records: dict[str, dict[str, Any]] = {}
    removed: list[str] = []
    for digest in index["shards"].values():
        shard = read_shard((folder / "shards" / f"{digest}.msgpack.zst").read_bytes())
        records.update(shard.get("packages", {}))
        records.update(shard.get("packages.conda", {}))
        removed.extend(shard.get("removed", []))
    return records


def check_linux_patched(records: dict[str, dict[str, Any]], dep: str, current: bool) -> None:
    if not current:  # current_repodata lists only the .conda twin
        assert records["lib-2.0-0.tar.bz2"]["depends"] == ["base >=1.0", dep]
    assert records["lib-2.0-0.conda"]["depends"] == ["base >=1.0", dep]
    app = records["app-3.1-0.conda"]
    assert "track_features" not in app and app["license"] == "BSD-3-Clause"
    assert "base-1.9-0.tar.bz2" not in records
    if not current:  # current_repodata keeps only the .conda of base 1.0
        revoked = records["base-1.0-0.tar.bz2"]
        assert revoked["revoked"] is True
        assert "package_has_been_revoked" in revoked["depends"]
    assert records["base-1.0-0.conda"]["revoked"] is True


def test_every_instruction_kind_reaches_every_patched_output(channel: Path, tmp_path: Path) -> None:
    patches = write_patches(tmp_path / "patches")
    index_channel(channel, patches=patches, options=IndexOptions(shards=True))
    linux = channel / "linux-64"
    noarch = channel / "noarch"

    repodata = load(linux / "repodata.json")
    assert repodata["removed"] == ["base-1.9-0.tar.bz2"]
    check_linux_patched(
        {**repodata["packages"], **repodata["packages.conda"]}, "libzlib >=1.3", False
    )
    current = load(linux / "current_repodata.json")
    check_linux_patched({**current["packages"], **current["packages.conda"]}, "libzlib >=1.3", True)
    check_linux_patched(sharded_records(linux), "libzlib >=1.3", False)

    noarch_repodata = load(noarch / "repodata.json")
    assert noarch_repodata["packages.conda"]["helper-0.5-0.conda"]["depends"] == ["python >=3.9"]
    assert "data-1.0-0.tar.bz2" not in noarch_repodata["packages"]
    assert sharded_records(noarch)["helper-0.5-0.conda"]["depends"] == ["python >=3.9"]

    # Never patched: the packages' own records and run_exports.
    unpatched = load(linux / "repodata_from_packages.json")
    assert unpatched["packages"]["lib-2.0-0.tar.bz2"]["depends"] == ["base >=1.0"]
    assert "base-1.9-0.tar.bz2" in unpatched["packages"]
    assert unpatched["removed"] == []
    run_exports = load(linux / "run_exports.json")
    assert "base-1.9-0.tar.bz2" in run_exports["packages"]


def test_changed_patch_file_updates_outputs(channel: Path, tmp_path: Path) -> None:
    folder = tmp_path / "patches"
    index_channel(channel, patches=write_patches(folder), options=IndexOptions(shards=True))
    linux = channel / "linux-64"
    from_packages = (linux / "repodata_from_packages.json").stat().st_mtime_ns

    index_channel(
        channel, patches=write_patches(folder, "libzlib >=1.3.1"), options=IndexOptions(shards=True)
    )
    check_linux_patched(
        load(linux / "repodata.json")["packages"] | load(linux / "repodata.json")["packages.conda"],
        "libzlib >=1.3.1",
        False,
    )
    check_linux_patched(sharded_records(linux), "libzlib >=1.3.1", False)
    assert (linux / "repodata_from_packages.json").stat().st_mtime_ns == from_packages

    # Dropping the patches restores the packages' own records.
    index_channel(channel, options=IndexOptions(shards=True))
    assert (linux / "repodata.json").read_bytes() == (
        linux / "repodata_from_packages.json"
    ).read_bytes()


def test_failing_patch_is_a_clear_error(channel: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def _patch_repodata(repodata, subdir):\n    raise KeyError('oops')\n")
    with pytest.raises(ReconcileError) as info:
        index_channel(channel, patches=[bad])
    assert "broken.py" in str(info.value)
