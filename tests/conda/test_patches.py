"""Patch sources and conda's instruction semantics."""

from __future__ import annotations

import bz2
import copy
import io
import json
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import zstandard

from reconciler.conda.patches import (
    PatchError,
    apply_instructions,
    apply_patch_sources,
    load_patch_source,
)


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


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- apply_instructions ---------------------------------------------------------------


def test_fix_on_tar_bz2_applies_to_conda_twin_null_deletes_list_replaces() -> None:
    original = repodata()
    snapshot = copy.deepcopy(original)
    result = apply_instructions(
        original,
        {"packages": {"a-1.0-0.tar.bz2": {"license": None, "depends": ["base >=2"], "x": 1}}},
    )
    for section, fn in (("packages", "a-1.0-0.tar.bz2"), ("packages.conda", "a-1.0-0.conda")):
        assert "license" not in result[section][fn]
        assert result[section][fn]["depends"] == ["base >=2"]
        assert result[section][fn]["x"] == 1
    assert original == snapshot  # the input is never mutated
    # Untouched records are shared, not copied.
    assert result["packages.conda"]["c-1.0-0.conda"] is original["packages.conda"]["c-1.0-0.conda"]


def test_packages_conda_fix_touches_only_conda_and_wins_over_the_twin_fix() -> None:
    result = apply_instructions(
        repodata(),
        {
            "packages": {"a-1.0-0.tar.bz2": {"license": "BSD", "y": 1}},
            "packages.conda": {"a-1.0-0.conda": {"license": "Apache-2.0"}},
        },
    )
    assert result["packages.conda"]["a-1.0-0.conda"]["license"] == "Apache-2.0"
    assert result["packages.conda"]["a-1.0-0.conda"]["y"] == 1
    assert result["packages"]["a-1.0-0.tar.bz2"]["license"] == "BSD"


def test_conda_name_under_packages_applies_to_packages_conda() -> None:
    # conda-index maps every key of "packages" onto packages.conda by suffix swap.
    result = apply_instructions(repodata(), {"packages": {"c-1.0-0.conda": {"license": "MIT"}}})
    assert result["packages.conda"]["c-1.0-0.conda"]["license"] == "MIT"


def test_nested_mappings_merge_and_lists_are_not_shared() -> None:
    base = repodata()
    base["packages.conda"]["c-1.0-0.conda"]["extra"] = {"keep": 1, "drop": 2, "change": 3}
    depends = ["base >=3"]
    instructions = {
        "packages.conda": {
            "c-1.0-0.conda": {"extra": {"drop": None, "change": 4, "new": 5}, "depends": depends}
        }
    }
    result = apply_instructions(base, instructions)
    fixed = result["packages.conda"]["c-1.0-0.conda"]
    assert fixed["extra"] == {"keep": 1, "change": 4, "new": 5}
    assert base["packages.conda"]["c-1.0-0.conda"]["extra"] == {"keep": 1, "drop": 2, "change": 3}
    assert fixed["depends"] == depends and fixed["depends"] is not depends


def test_revoke_marks_both_formats_once() -> None:
    base = repodata()
    del base["packages.conda"]["c-1.0-0.conda"]["depends"]
    instructions = {"revoke": ["a-1.0-0.tar.bz2", "c-1.0-0.conda"]}
    result = apply_instructions(apply_instructions(base, instructions), instructions)
    for section, fn, depends in (
        ("packages", "a-1.0-0.tar.bz2", ["base", "package_has_been_revoked"]),
        ("packages.conda", "a-1.0-0.conda", ["base", "package_has_been_revoked"]),
        ("packages.conda", "c-1.0-0.conda", ["package_has_been_revoked"]),
    ):
        assert result[section][fn]["revoked"] is True
        assert result[section][fn]["depends"] == depends
    assert "revoked" not in result["packages"]["b-1.0-0.tar.bz2"]
    assert base["packages"]["a-1.0-0.tar.bz2"]["depends"] == ["base"]


def test_remove_drops_records_and_lists_them_sorted_and_unique() -> None:
    base = repodata()
    base["removed"] = ["z-1-0.conda", "a-1.0-0.conda"]
    result = apply_instructions(
        base, {"remove": ["a-1.0-0.tar.bz2", "b-1.0-0.tar.bz2", "missing-1-0.conda"]}
    )
    assert "a-1.0-0.tar.bz2" not in result["packages"]
    assert "a-1.0-0.conda" not in result["packages.conda"]
    assert result["removed"] == [
        "a-1.0-0.conda",
        "a-1.0-0.tar.bz2",
        "b-1.0-0.tar.bz2",
        "z-1-0.conda",
    ]
    assert "a-1.0-0.tar.bz2" in base["packages"]
    assert base["removed"] == ["z-1-0.conda", "a-1.0-0.conda"]


def test_unknown_filenames_are_ignored() -> None:
    instructions = {
        "packages": {"nope-1-0.tar.bz2": {"license": "X"}},
        "packages.conda": {"nope-1-0.conda": {"license": "X"}},
        "revoke": ["nope-2-0.conda"],
        "remove": ["nope-3-0.tar.bz2"],
    }
    assert apply_instructions(repodata(), instructions) == repodata()


# -- sources --------------------------------------------------------------------------


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
    original = repodata()
    sources = [load_patch_source(first), load_patch_source(second)]
    result = apply_patch_sources(original, "linux-64", sources)
    assert result["packages.conda"]["c-1.0-0.conda"]["license"] == "BSD-3-Clause"
    assert len(result["packages"]) == 2
    assert original == repodata()
    # The other order sees no license yet and fails inside the second patch.
    with pytest.raises(PatchError, match="KeyError"):
        apply_patch_sources(repodata(), "linux-64", sources[::-1])


def test_no_sources_or_nothing_for_the_subdir_returns_the_input(tmp_path: Path) -> None:
    original = repodata()
    assert apply_patch_sources(original, "linux-64", []) is original
    none = load_patch_source(write(tmp_path / "none.py", "def _patch_repodata(r, s):\n    pass\n"))
    assert apply_patch_sources(original, "linux-64", [none]) is original


def test_python_patch_gets_the_subdir_and_stays_out_of_sys_modules(tmp_path: Path) -> None:
    path = write(
        tmp_path / "gen.py",
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\n"
        "@dataclass\n"
        "class Fix:\n"
        "    license: str\n"
        "def _patch_repodata(repodata, subdir):\n"
        "    fix = Fix('GPL' if subdir == 'linux-64' else 'MIT')\n"
        "    return {'packages': {'b-1.0-0.tar.bz2': {'license': fix.license}}}\n",
    )
    before = set(sys.modules)
    source = load_patch_source(path)
    assert set(sys.modules) == before
    linux = apply_patch_sources(repodata(), "linux-64", [source])
    osx = apply_patch_sources(repodata(), "osx-64", [source])
    assert linux["packages"]["b-1.0-0.tar.bz2"]["license"] == "GPL"
    assert osx["packages"]["b-1.0-0.tar.bz2"]["license"] == "MIT"


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
    for result in (linux, osx):
        assert result["packages.conda"]["c-1.0-0.conda"]["revoked"] is True


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_patch_package(path: Path, payload: Mapping[str, bytes], stem: str | None = None) -> Path:
    """A real patch package: info/ plus the payload, as .tar.bz2 or .conda."""
    info = {"info/index.json": b'{"name": "patches", "version": "1", "build": "0"}'}
    if path.name.endswith(".tar.bz2"):
        path.write_bytes(bz2.compress(tar_bytes({**info, **payload})))
        return path
    stem = stem or path.name.removesuffix(".conda")
    zst = zstandard.ZstdCompressor()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("metadata.json", '{"conda_pkg_format_version": 2}')
        archive.writestr(f"info-{stem}.tar.zst", zst.compress(tar_bytes(info)))
        archive.writestr(f"pkg-{stem}.tar.zst", zst.compress(tar_bytes(payload)))
    return path


PATCH_PAYLOAD = {
    "linux-64/patch_instructions.json": json.dumps(
        {
            "patch_instructions_version": 1,
            "packages": {"b-1.0-0.tar.bz2": {"license": "GPL"}},
            "remove": ["a-1.0-0.tar.bz2"],
        }
    ).encode(),
    "noarch/patch_instructions.json": json.dumps({"revoke": ["c-1.0-0.conda"]}).encode(),
    "linux-64/other.json": b"not read",
}


@pytest.mark.parametrize("fmt", [".conda", ".tar.bz2"])
def test_patch_package(tmp_path: Path, fmt: str) -> None:
    source = load_patch_source(write_patch_package(tmp_path / f"patches-1-0{fmt}", PATCH_PAYLOAD))
    linux = apply_patch_sources(repodata(), "linux-64", [source])
    assert linux["removed"] == ["a-1.0-0.conda", "a-1.0-0.tar.bz2"]
    assert linux["packages"]["b-1.0-0.tar.bz2"]["license"] == "GPL"
    assert "revoked" not in linux["packages.conda"]["c-1.0-0.conda"]
    noarch = apply_patch_sources(repodata(), "noarch", [source])
    assert noarch["packages.conda"]["c-1.0-0.conda"]["revoked"] is True
    assert apply_patch_sources(repodata(), "win-64", [source]) == repodata()


def test_renamed_conda_patch_package_is_still_read(tmp_path: Path) -> None:
    path = write_patch_package(
        tmp_path / "my-patches.conda", PATCH_PAYLOAD, stem="conda-forge-repodata-patches-1-0"
    )
    result = apply_patch_sources(repodata(), "linux-64", [load_patch_source(path)])
    assert "a-1.0-0.tar.bz2" not in result["packages"]


def test_digest_follows_content(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", "{}")
    before = load_patch_source(path).digest()
    assert before == load_patch_source(path).digest()
    write(path, '{"remove": []}')
    assert load_patch_source(path).digest() != before


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{\n  "packages": ', "bad.json:2: not valid JSON"),
        ("version.json", '{"patch_instructions_version": 3}', "version 3 is not supported"),
        ("zero.json", '{"patch_instructions_version": 0}', "version 0 is not supported"),
        ("bool.json", '{"patch_instructions_version": true}', "version True is not supported"),
        ("shape.json", '{"packages": ["x"]}', "'packages' must map filenames"),
        ("record.json", '{"packages.conda": {"a-1-0.conda": 1}}', "'packages.conda' must map"),
        ("list.json", '{"remove": "a-1.0-0.conda"}', "'remove' must be a list"),
        ("names.json", '{"revoke": [1]}', "'revoke' must be a list of filenames"),
        ("typo.json", '{"packages": {}, "revokes": []}', "unknown instruction key 'revokes'"),
        ("nokey.json", '{"Linux": {}}', "neither an instruction"),
        ("sub.json", '{"linux-64": {"remove": {}}}', "linux-64: 'remove' must be a list"),
        ("array.json", "[]", "must be a JSON object"),
        ("raises.py", "def _patch_repodata(r, s):\n    raise KeyError('x')\n", "KeyError: 'x'"),
        ("nofunc.py", "x = 1\n", "defines no function _patch_repodata"),
        ("broken.py", "def (:\n", "failed to load (SyntaxError"),
        ("returns.py", "def _patch_repodata(r, s):\n    return [1]\n", "returned list"),
        ("badshape.py", "def _patch_repodata(r, s):\n    return {'remove': 'x'}\n", "'remove'"),
        ("notes.txt", "hello", "unknown patch file type"),
    ],
)
def test_errors_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(PatchError) as info:
        apply_patch_sources(repodata(), "linux-64", [load_patch_source(path)])
    assert info.value.message.startswith(str(path))
    assert message in info.value.message


def test_missing_patch_file(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="cannot read patch file"):
        load_patch_source(tmp_path / "gone.json")


@pytest.mark.parametrize("name", ["p-1-0.conda", "p-1-0.tar.bz2"])
def test_corrupt_patch_package(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "garbage")
    with pytest.raises(PatchError, match="not a readable patch package"):
        load_patch_source(path)


def test_patch_package_errors_name_the_member(tmp_path: Path) -> None:
    empty = write_patch_package(tmp_path / "empty-1-0.conda", {"README": b"x"})
    with pytest.raises(PatchError, match=r"holds no <subdir>/patch_instructions\.json"):
        load_patch_source(empty)
    bad = write_patch_package(
        tmp_path / "bad-1-0.tar.bz2",
        {"osx-64/patch_instructions.json": b'{"patch_instructions_version": 2}'},
    )
    with pytest.raises(PatchError) as info:
        load_patch_source(bad)
    assert info.value.message.startswith(f"{bad} (osx-64/patch_instructions.json): ")
    assert "version 2" in info.value.message
