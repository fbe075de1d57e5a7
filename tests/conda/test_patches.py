"""Patch sources and conda's instruction semantics."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.conda.patches import (
    PatchError,
    apply_instructions,
    apply_patch_sources,
    load_patch_source,
)
from tests.packages import write_conda, write_tar_bz2


def record(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "build": "0", "depends": ["base"], **extra}


def repodata() -> dict[str, Any]:
    return {
        "info": {"subdir": "linux-64"},
        "packages": {"a-1.0-0.tar.bz2": record("a", license="MIT"), "b-1.0-0.tar.bz2": record("b")},
        "packages.conda": {
            "a-1.0-0.conda": record("a", license="MIT"),
            "c-1.0-0.conda": record("c"),
        },
        "removed": [],
        "repodata_version": 1,
    }


def test_fix_on_tar_bz2_applies_to_conda_twin_null_deletes_list_replaces() -> None:
    original = repodata()
    snapshot = copy.deepcopy(original)
    result = apply_instructions(
        original,
        {"packages": {"a-1.0-0.tar.bz2": {"license": None, "depends": ["base >=2"]}}},
    )
    for section, fn in (("packages", "a-1.0-0.tar.bz2"), ("packages.conda", "a-1.0-0.conda")):
        assert "license" not in result[section][fn]
        assert result[section][fn]["depends"] == ["base >=2"]
    assert original == snapshot  # the input is never mutated


def test_packages_conda_fix_touches_only_conda() -> None:
    result = apply_instructions(repodata(), {"packages.conda": {"a-1.0-0.conda": {"x": 1}}})
    assert result["packages.conda"]["a-1.0-0.conda"]["x"] == 1
    assert "x" not in result["packages"]["a-1.0-0.tar.bz2"]


def test_revoke_marks_both_formats_once() -> None:
    instructions = {"revoke": ["a-1.0-0.tar.bz2", "c-1.0-0.conda"]}
    result = apply_instructions(apply_instructions(repodata(), instructions), instructions)
    for section, fn in (
        ("packages", "a-1.0-0.tar.bz2"),
        ("packages.conda", "a-1.0-0.conda"),
        ("packages.conda", "c-1.0-0.conda"),
    ):
        assert result[section][fn]["revoked"] is True
        assert result[section][fn]["depends"] == ["base", "package_has_been_revoked"]
    assert "revoked" not in result["packages"]["b-1.0-0.tar.bz2"]


def test_remove_drops_records_and_lists_them() -> None:
    result = apply_instructions(repodata(), {"remove": ["a-1.0-0.tar.bz2", "missing-1-0.conda"]})
    assert "a-1.0-0.tar.bz2" not in result["packages"]
    assert "a-1.0-0.conda" not in result["packages.conda"]
    assert result["removed"] == ["a-1.0-0.conda", "a-1.0-0.tar.bz2"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sources_apply_in_order(tmp_path: Path) -> None:
    first = write(
        tmp_path / "one.py",
        "def _patch_repodata(repodata, subdir):\n"
        "    repodata['packages'].clear()  # scribbling on its copy is harmless\n"
        "    return {'packages.conda': {'c-1.0-0.conda': {'license': 'BSD'}}}\n",
    )
    second = write(
        tmp_path / "two.py",
        "def _patch_repodata(repodata, subdir):\n"
        "    lic = repodata['packages.conda']['c-1.0-0.conda']['license']\n"
        "    return {'packages.conda': {'c-1.0-0.conda': {'license': lic + '-3-Clause'}}}\n",
    )
    sources = [load_patch_source(first), load_patch_source(second)]
    result = apply_patch_sources(repodata(), "linux-64", sources)
    assert result["packages.conda"]["c-1.0-0.conda"]["license"] == "BSD-3-Clause"
    assert len(result["packages"]) == 2


def test_json_patch_per_subdir_and_global(tmp_path: Path) -> None:
    per_subdir = write(
        tmp_path / "a.json", json.dumps({"linux-64": {"remove": ["b-1.0-0.tar.bz2"]}})
    )
    everywhere = write(tmp_path / "b.json", json.dumps({"revoke": ["c-1.0-0.conda"]}))
    sources = [load_patch_source(per_subdir), load_patch_source(everywhere)]
    linux = apply_patch_sources(repodata(), "linux-64", sources)
    osx = apply_patch_sources(repodata(), "osx-64", sources)
    assert "b-1.0-0.tar.bz2" not in linux["packages"]
    assert "b-1.0-0.tar.bz2" in osx["packages"]
    assert osx["packages.conda"]["c-1.0-0.conda"]["revoked"] is True


@pytest.mark.parametrize("fmt", [".conda", ".tar.bz2"])
def test_patch_package(tmp_path: Path, fmt: str) -> None:
    files = {
        "linux-64/patch_instructions.json": json.dumps(
            {"patch_instructions_version": 1, "remove": ["a-1.0-0.tar.bz2"]}
        ).encode(),
        "noarch/patch_instructions.json": b'{"patch_instructions_version": 1}',
    }
    info = {"info/index.json": b'{"name": "patches", "version": "1", "build": "0"}'}
    path = tmp_path / f"patches-1-0{fmt}"
    if fmt == ".conda":
        write_conda(path, info, files)
    else:
        write_tar_bz2(path, {**info, **files})
    source = load_patch_source(path)
    result = apply_patch_sources(repodata(), "linux-64", [source])
    assert result["removed"] == ["a-1.0-0.conda", "a-1.0-0.tar.bz2"]
    assert apply_patch_sources(repodata(), "win-64", [source]) == repodata()
    assert len(source.digest()) == 64


def test_digest_follows_content(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", "{}")
    before = load_patch_source(path).digest()
    write(path, '{"remove": []}')
    assert load_patch_source(path).digest() != before


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{\n  "packages": ', "bad.json:2: not valid JSON"),
        ("version.json", '{"patch_instructions_version": 3}', "version 3 is not supported"),
        ("shape.json", '{"packages": ["x"]}', "'packages' must map filenames"),
        ("list.json", '{"remove": "a-1.0-0.conda"}', "'remove' must be a list"),
        ("nokey.json", '{"Linux": {}}', "neither an instruction"),
        ("raises.py", "def _patch_repodata(r, s):\n    raise KeyError('x')\n", "KeyError"),
        ("nofunc.py", "x = 1\n", "defines no function _patch_repodata"),
        ("broken.py", "def (:\n", "failed to load"),
        ("returns.py", "def _patch_repodata(r, s):\n    return [1]\n", "returned list"),
        ("notes.txt", "hello", "unknown patch file type"),
    ],
)
def test_errors_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(PatchError) as info:
        apply_patch_sources(repodata(), "linux-64", [load_patch_source(path)])
    assert str(path) in info.value.message
    assert message in info.value.message


def test_missing_patch_file(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="cannot read patch file"):
        load_patch_source(tmp_path / "gone.json")


def test_corrupt_patch_package(tmp_path: Path) -> None:
    path = write(tmp_path / "p-1-0.conda", "garbage")
    with pytest.raises(PatchError, match="not a readable patch package"):
        load_patch_source(path)
