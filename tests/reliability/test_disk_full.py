"""A full disk: a clear error, nothing half-written published, the old index still
served, no temporary files left, and convergence once there is room again.

The channel lives on a small tmpfs mounted for the test (root only; skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from reconciler import cli
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from tests.http_server import serve_directory
from tests.packages import PackageSpec, build_package

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the filesystem."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def _visible_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".reconcile-tmp-*")]


def test_index_write_fails_cleanly_on_a_full_disk(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = small_disk / "chan"
    build_package(channel, PackageSpec("alpha", "1.0", subdir="linux-64"))
    config = small_disk / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - {name: chan, path: ./chan, subdirs: [linux-64]}\n"
    )
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK
    before = (channel / "linux-64" / "repodata.json").read_bytes()
    build_package(
        channel, PackageSpec("beta", "1.0", subdir="linux-64", about={"description": "b" * 4000})
    )
    filler = _fill(small_disk, leave=2048)
    capsys.readouterr()
    code = cli.main(["apply", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == ExitCode.ERROR, err  # a user-facing error, not an internal one (3)
    assert "No space left on device" in err and "free some disk space" in err
    # The published index is the previous one, whole.
    assert (channel / "linux-64" / "repodata.json").read_bytes() == before
    orjson.loads(before)
    assert not _visible_temp_files(channel)
    filler.unlink()
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK
    repodata = orjson.loads((channel / "linux-64" / "repodata.json").read_bytes())
    assert "beta-1.0-0.conda" in repodata["packages.conda"]
    assert cli.main(["plan", "-c", str(config), "--detailed-exitcode"]) == ExitCode.OK


def test_a_download_that_does_not_fit_is_refused_before_it_starts(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("alpha", "1.0", subdir="linux-64"))
    index_channel(upstream)
    with serve_directory(upstream) as (url, _):
        config = small_disk / "channels.yaml"
        config.write_text(
            "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n    subdirs: [linux-64]\n"
            f"    mirrors:\n      - {{name: up, source: '{url}', retries: 0}}\n"
        )
        capsys.readouterr()
        assert cli.main(["apply", "-c", str(config)]) == ExitCode.ERROR
        err = capsys.readouterr().err
        assert "not enough free disk space" in err
        channel = small_disk / "chan"
        assert not (channel / "linux-64" / "alpha-1.0-0.conda").exists()
        assert not _visible_temp_files(channel)
        if (channel / "linux-64" / "repodata.json").exists():
            repodata = orjson.loads((channel / "linux-64" / "repodata.json").read_bytes())
            assert repodata["packages.conda"] == {}  # never names a file that is not there
