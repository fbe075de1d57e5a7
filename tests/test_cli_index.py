"""`reconcile index` on the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.errors import ExitCode
from tests.packages import PackageSpec, build_package


def make_channel(root: Path) -> Path:
    build_package(root, PackageSpec("one", "1.0", subdir="linux-64"))
    build_package(root, PackageSpec("two", "1.0", noarch="generic"), ".tar.bz2")
    return root


def test_index_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    channel = make_channel(tmp_path / "ch")
    assert cli.main(["index", str(channel)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out == f"{channel}: indexed 2 packages in 2 subdirs: +2 ~0 -0, 0 skipped\n"
    assert (channel / "linux-64" / "repodata.json.zst").is_file()


def test_switches_turn_outputs_on_and_off(tmp_path: Path) -> None:
    channel = make_channel(tmp_path / "ch")
    args = ["index", str(channel), "--no-zst", "--bz2", "--no-channeldata", "--shards"]
    assert cli.main(args) == ExitCode.OK
    assert not (channel / "linux-64" / "repodata.json.zst").exists()
    assert (channel / "linux-64" / "repodata.json.bz2").is_file()
    assert (channel / "linux-64" / "repodata_shards.msgpack.zst").is_file()
    assert not (channel / "channeldata.json").exists()


def test_extra_subdir_and_patch(tmp_path: Path) -> None:
    channel = make_channel(tmp_path / "ch")
    patch = tmp_path / "p.json"
    patch.write_text('{"packages.conda": {"one-1.0-0.conda": {"license": "Apache-2.0"}}}')
    assert cli.main(["index", str(channel), "--subdir", "win-64", "--patch", str(patch)]) == 0
    assert (channel / "win-64" / "repodata.json").is_file()
    assert '"license": "Apache-2.0"' in (channel / "linux-64" / "repodata.json").read_text()


def test_bad_package_warns_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = make_channel(tmp_path / "ch")
    (channel / "linux-64" / "broken-1.0-0.conda").write_bytes(b"\x00" * 64)
    assert cli.main(["index", str(channel)]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out
    assert "linux-64/broken-1.0-0.conda: not a valid .conda" in captured.err
    assert cli.main(["index", "--strict", str(channel)]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "error: 1 package(s) could not be indexed" in err
    assert "hint:" in err


def test_invalid_subdir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["index", str(tmp_path), "--subdir", "Linux_64"]) == ExitCode.ERROR
    assert "invalid subdir name(s): Linux_64" in capsys.readouterr().err


def test_index_waits_for_the_channel_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.store.test_local import hold_in_child

    channel = make_channel(tmp_path / "ch")
    child = hold_in_child(channel, 30)
    try:
        assert cli.main(["index", str(channel), "--lock-timeout", "0.2"]) == ExitCode.ERROR
        assert f"is locked by pid {child.pid}" in capsys.readouterr().err
    finally:
        child.kill()
        child.wait()
    assert cli.main(["index", str(channel)]) == ExitCode.OK


def test_a_killed_runs_spool_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """Outputs wait in the temporary folder before they are published; a run killed
    there (OOM, SIGKILL) leaves them, and the next run removes them."""
    channel = make_channel(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "RECONCILE_CRASH_AT": "index.before_repodata"}
    command = [sys.executable, "-m", "reconciler", "index", str(channel)]
    killed = subprocess.run(command, env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in temp.iterdir() if p.name.startswith("reconcile-spool-")]
    assert len(left) == 1 and any(left[0].iterdir())
    del env["RECONCILE_CRASH_AT"]
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert left[0].exists()  # changed a moment ago: maybe a run this one cannot see
    os.utime(left[0], (time.time() - 7200,) * 2)
    older = temp / "reconcile-index-k2kqvf9q"  # named before spools carried a pid
    older.mkdir()
    (older / "5-repodata.json").write_bytes(b"{}")
    os.utime(older, (time.time() - 7200,) * 2)
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert not left[0].exists() and not older.exists()
    assert list(temp.iterdir()) == []  # and each run removed its own at exit
