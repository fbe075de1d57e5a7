"""reconcile watch: config edits, bursts of dropped packages, half-written files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from reconciler.engine.history import History
from reconciler.store.local import LocalStore
from reconciler.watch import Watcher
from tests.packages import PackageSpec, build_package

CONFIG = "version: 1\nchannels:\n  - {name: chan, path: ./chan, subdirs: [linux-64]}\n"


@pytest.fixture
def watcher(tmp_path: Path) -> Watcher:
    (tmp_path / "channels.yaml").write_text(CONFIG)
    return Watcher(tmp_path / "channels.yaml", debounce=0.5, settle=0.3)


def in_background(watcher: Watcher) -> threading.Thread:
    thread = threading.Thread(target=watcher.run, kwargs={"once": True, "wait": 20})
    thread.start()
    time.sleep(0.5)  # let the observer start
    return thread


def channel_runs(tmp_path: Path) -> int:
    return len([r for r in History(LocalStore(tmp_path / "chan")).runs() if r.mirror is None])


def test_burst_of_packages_is_one_reindex(watcher: Watcher, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    built = [
        build_package(staging, PackageSpec(f"p{i:03d}", "1.0", subdir="linux-64"))
        for i in range(200)
    ]
    (tmp_path / "chan" / "linux-64").mkdir(parents=True, exist_ok=True)
    thread = in_background(watcher)
    for path in built:
        path.rename(tmp_path / "chan" / "linux-64" / path.name)
    thread.join(timeout=60)
    assert channel_runs(tmp_path) == 1
    assert watcher.actions[0] == "200 package file(s) changed in chan"
    assert watcher.actions[1].startswith(
        "applied chan (packages changed): Apply complete: 200 added"
    )


def test_half_written_file_waits_until_complete(watcher: Watcher, tmp_path: Path) -> None:
    package = build_package(tmp_path / "staging", PackageSpec("big", "1.0", subdir="linux-64"))
    data = package.read_bytes()
    target = tmp_path / "chan" / "linux-64" / package.name
    target.parent.mkdir(parents=True, exist_ok=True)
    thread = in_background(watcher)
    with target.open("wb") as out:  # a slow copy: the file grows for a while
        for i in range(0, len(data), 64):
            out.write(data[i : i + 64])
            out.flush()
            time.sleep(0.02)
    thread.join(timeout=60)
    assert any("Apply complete: 1 added" in line for line in watcher.actions), watcher.actions
    assert not any("failed" in line for line in watcher.actions)


def test_config_edit_applies_and_invalid_edit_keeps_the_old(
    watcher: Watcher, tmp_path: Path
) -> None:
    config = tmp_path / "channels.yaml"
    thread = in_background(watcher)
    config.write_text(CONFIG.replace("[linux-64]", "[linux-64, osx-arm64]"))
    thread.join(timeout=60)
    assert watcher.actions[0] == f"configuration reloaded from {config}"
    assert (tmp_path / "chan" / "osx-arm64" / "repodata.json").is_file()

    thread = in_background(watcher)
    config.write_text(CONFIG.replace("path:", "pth:"))
    thread.join(timeout=60)
    assert "configuration not applied, keeping the previous one" in watcher.actions[-1]
    assert "channels[0].pth: unknown key 'pth'" in watcher.actions[-1]
    assert watcher.loaded.config.channels[0].served_subdirs == ["linux-64", "noarch", "osx-arm64"]


def test_a_bucket_channel_is_watched_through_its_configuration_and_schedules(
    tmp_path: Path, s3: object, bucket: str
) -> None:
    """No file events from a bucket: the watcher applies at start and on every tick, and
    never creates a folder for an s3:// path."""
    from reconciler.config.models import S3Location
    from reconciler.store.s3 import S3Store

    (tmp_path / "channels.yaml").write_text(
        CONFIG + f"  - {{name: remote, path: 's3://{bucket}/remote', subdirs: [linux-64]}}\n"
    )
    store = S3Store(S3Location(bucket=bucket, prefix="remote"))
    built = build_package(tmp_path / "built", PackageSpec("mine", "1.0", subdir="linux-64"))
    store.write(f"linux-64/{built.name}", built.read_bytes())
    watcher = Watcher(tmp_path / "channels.yaml", debounce=0.2, settle=0.1, tick=0.5)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while store.stat("linux-64/repodata.json") is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        watcher.stopping.set()
        thread.join(timeout=60)
    assert built.name.encode() in (store.read("linux-64/repodata.json") or b"")
    assert watcher.actions[0].startswith("applied all channels (start)")
    assert not list(tmp_path.glob("s3*")) and (tmp_path / "chan").is_dir()
