"""Reading metadata and digests from real .conda and .tar.bz2 archives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.conda import archive
from reconciler.conda.archive import read_package
from reconciler.errors import PackageError
from tests.packages import (
    PackageSpec,
    build_package,
    file_digests,
    write_conda,
    write_tar_bz2,
)

FORMATS = [".conda", ".tar.bz2"]


@pytest.fixture(params=[False, True], ids=["in-memory", "streamed"])
def streamed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test both with small-file reading and with the large-file streaming path."""
    if request.param:
        monkeypatch.setattr(archive, "IN_MEMORY_LIMIT", 0)
    return bool(request.param)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_index_about_run_exports_verbatim(tmp_path: Path, fmt: str, streamed: bool) -> None:
    spec = PackageSpec(
        "foo",
        "1.2.3",
        build="h1234_0",
        subdir="linux-64",
        depends=["libzlib >=1.3"],
        run_exports={"weak": ["foo >=1.2"]},
        about={"description": "a description", "dev_url": "https://example.org/dev"},
        extra_index={"custom_key": {"nested": [1, 2]}, "track_features": "feat"},
    )
    path = build_package(tmp_path, spec, fmt)
    meta = read_package(path)
    assert meta.filename == path.name
    assert meta.index == spec.index_json()  # every key kept, unknown ones too
    assert meta.about == spec.about_json()
    assert meta.run_exports == {"weak": ["foo >=1.2"]}
    md5, sha256, size = file_digests(path)
    assert (meta.md5, meta.sha256, meta.size) == (md5, sha256, size)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_optional_files_are_empty(tmp_path: Path, fmt: str) -> None:
    path = build_package(tmp_path, PackageSpec("bar", "1.0", noarch="generic"), fmt)
    meta = read_package(path)
    assert meta.run_exports == {}
    assert not any(meta.flags.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_channeldata_flags_from_paths_json(tmp_path: Path, fmt: str) -> None:
    spec = PackageSpec(
        "tool",
        "1.0",
        subdir="linux-64",
        files={
            "bin/tool": b"\x00binary /opt/anaconda1anaconda2anaconda3",
            "etc/conda/activate.d/tool.sh": b"export TOOL=1\n",
        },
        prefix_files={"bin/tool": "binary"},
        scripts=("post-link", "pre-unlink"),
    )
    meta = read_package(build_package(tmp_path, spec, fmt))
    assert meta.flags == {
        "binary_prefix": True,
        "text_prefix": False,
        "activate.d": True,
        "deactivate.d": False,
        "pre_link": False,
        "post_link": True,
        "pre_unlink": True,
    }


def test_old_package_without_paths_json_uses_files_and_has_prefix(tmp_path: Path) -> None:
    spec = PackageSpec("old", "0.1", subdir="linux-64")
    info = spec.info_files()
    del info["info/paths.json"]
    info["info/files"] = b"etc/conda/deactivate.d/old.sh\nbin/.old-pre-link.sh\n"
    info["info/has_prefix"] = b"/opt/anaconda1anaconda2anaconda3 text lib/old.pc\n"
    path = write_tar_bz2(tmp_path / "old-0.1-0.tar.bz2", info)
    flags = read_package(path).flags
    assert flags["deactivate.d"] and flags["pre_link"] and flags["text_prefix"]
    assert not flags["binary_prefix"] and not flags["activate.d"]


def _expect_error(path: Path, fragment: str) -> PackageError:
    with pytest.raises(PackageError) as info:
        read_package(path)
    assert info.value.path == path.name
    assert fragment in info.value.reason
    return info.value


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_archive(tmp_path: Path, fmt: str, streamed: bool) -> None:
    path = build_package(tmp_path, PackageSpec("cut", "1.0"), fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = _expect_error(path, "")
    assert "corrupt" in error.reason or "not a valid" in error.reason


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"empty-1.0-0{fmt}"
    path.write_bytes(b"")
    _expect_error(path, "empty file")


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_package_with_package_suffix(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"notes-1.0-0{fmt}"
    path.write_text("these are not the packages you are looking for\n" * 20)
    error = _expect_error(path, "")
    assert "corrupt" in error.reason or "not a valid" in error.reason


@pytest.mark.parametrize("fmt", FORMATS)
def test_index_json_not_json(tmp_path: Path, fmt: str) -> None:
    spec = PackageSpec("bad", "1.0")
    info = {**spec.info_files(), "info/index.json": b"{not json"}
    path = tmp_path / f"bad-1.0-0{fmt}"
    if fmt == ".conda":
        write_conda(path, info, spec.payload())
    else:
        write_tar_bz2(path, info)
    _expect_error(path, "info/index.json is not valid JSON")


@pytest.mark.parametrize("fmt", FORMATS)
def test_index_json_without_version(tmp_path: Path, fmt: str) -> None:
    spec = PackageSpec("bad", "1.0")
    index = spec.index_json()
    del index["version"]
    info = {**spec.info_files(), "info/index.json": json.dumps(index).encode()}
    path = tmp_path / f"bad-1.0-0{fmt}"
    if fmt == ".conda":
        write_conda(path, info, spec.payload())
    else:
        write_tar_bz2(path, info)
    _expect_error(path, "info/index.json lacks version")


def test_conda_whose_inner_names_do_not_match_filename(tmp_path: Path) -> None:
    spec = PackageSpec("renamed", "1.0")
    path = write_conda(
        tmp_path / "renamed-1.0-0.conda", spec.info_files(), spec.payload(), stem="other-2.0-0"
    )
    error = _expect_error(path, "inner names do not match the filename")
    assert "info-other-2.0-0.tar.zst" in error.reason


def test_member_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("evil", "1.0")
    files = {**spec.info_files(), "../../etc/passwd": b"root::0:0\n"}
    path = write_tar_bz2(tmp_path / "evil-1.0-0.tar.bz2", files)
    _expect_error(path, "tries to escape")


def test_oversized_info_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MEMBER_LIMIT", 100)
    spec = PackageSpec("big", "1.0", about={"description": "x" * 500})
    path = build_package(tmp_path, spec, ".conda")
    _expect_error(path, "over the limit")


def test_wrong_suffix(tmp_path: Path) -> None:
    path = tmp_path / "thing-1.0-0.zip"
    path.write_bytes(b"PK")
    _expect_error(path, "not a .conda or .tar.bz2")
