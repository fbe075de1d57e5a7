from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.store.local import (
    TEMP_PREFIX,
    StorageError,
    clean_temp_files,
    remove_if_exists,
    temp_writer_alive,
    write_atomic,
    write_if_changed,
)


def test_write_if_changed_leaves_identical_files_alone(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "repodata.json"
    assert write_if_changed(target, b"one") is True
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    assert write_if_changed(target, b"one") is False
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert write_if_changed(target, b"two") is True
    assert target.read_bytes() == b"two"
    assert target.stat().st_mtime_ns != 1_000_000_000


def test_written_files_are_world_readable_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_failed_write_cleans_up_and_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "f.json"
    target.write_bytes(b"old")
    # A directory in place of the target makes the rename fail after the temp file exists.
    target.unlink()
    target.mkdir()
    with pytest.raises(StorageError, match=r"f\.json"):
        write_atomic(target, b"new")
    assert not [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_temp_names_carry_the_writers_pid_and_live_writers_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = 4194305  # above any pid_max: no process has it
    names = [
        f"{TEMP_PREFIX}{os.getpid()}-abcd1234",  # write_atomic's, this (live) process
        f"{TEMP_PREFIX}pkg-1.0-0.conda.{os.getpid()}",  # a download in flight
        f"{TEMP_PREFIX}{dead}-abcd1234",
        f"{TEMP_PREFIX}pkg-1.0-0.conda.{dead}",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    assert temp_writer_alive(names[0]) and temp_writer_alive(names[1])
    assert clean_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:2])
    renamed: list[str] = []
    replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: renamed.append(Path(src).name) or replace(src, dst)
    )
    write_atomic(tmp_path / "x.json", b"{}")
    assert renamed[0].startswith(f"{TEMP_PREFIX}{os.getpid()}-")


def test_clean_temp_files_and_remove(tmp_path: Path) -> None:
    (tmp_path / f"{TEMP_PREFIX}abc").write_bytes(b"partial")
    (tmp_path / "keep.conda").write_bytes(b"k")
    assert clean_temp_files(tmp_path) == 1
    assert clean_temp_files(tmp_path / "missing") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["keep.conda"]
    assert remove_if_exists(tmp_path / "keep.conda") is True
    assert remove_if_exists(tmp_path / "keep.conda") is False
