"""Reading packages in worker processes gives what reading them here gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from reconciler.conda.metadata import decode_metadata
from reconciler.conda.read_worker import read_in_workers, read_one
from tests.packages import PackageSpec, build_package


def _channel(tmp_path: Path) -> list[str]:
    paths = [
        build_package(tmp_path, PackageSpec(f"p{i}", "1.0", subdir="linux-64"), fmt)
        for i, fmt in enumerate([".conda", ".tar.bz2", ".conda", ".conda", ".tar.bz2"])
    ]
    garbage = tmp_path / "linux-64" / "bad-1.0-0.conda"
    garbage.write_bytes(b"not an archive")
    # Metadata that disagrees with the folder the file is in.
    elsewhere = build_package(tmp_path, PackageSpec("q", "1.0", subdir="osx-64"), ".conda")
    moved = tmp_path / "linux-64" / elsewhere.name
    elsewhere.rename(moved)
    return [str(p) for p in [*paths, garbage, moved]]


def test_workers_answer_like_reading_here(tmp_path: Path) -> None:
    paths = _channel(tmp_path)
    advanced: list[int] = []
    results = read_in_workers(paths, 2, advanced.append)
    assert results == [read_one(path) for path in paths]
    assert sum(advanced) == len(paths)
    assert [r[0] for r in results] == paths  # in the order asked
    good = [r for r in results if r[1] is not None]
    assert len(good) == 5
    for path, blob, sha256, error in good:
        assert blob is not None and error is None
        meta = decode_metadata(blob)
        assert meta.sha256 == sha256 and path.endswith(meta.filename)
    bad, moved = results[-2:]
    assert bad[1] is None and bad[3]
    assert moved[1] is None and "subdir is 'osx-64'" in str(moved[3])


def test_what_a_dead_worker_left_is_read_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _channel(tmp_path)
    # Workers that exit at once, answering nothing.
    monkeypatch.setattr(sys, "executable", "/bin/false")
    advanced: list[int] = []
    assert read_in_workers(paths, 2, advanced.append) == [read_one(p) for p in paths]
    assert sum(advanced) == len(paths)
