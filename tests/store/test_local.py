"""The local-disk store: atomic, write-if-changed, conditional, never following links."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.store.base import LockTimeout, PreconditionFailed, StorageError
from reconciler.store.local import (
    TEMP_PREFIX,
    LocalStore,
    remove_dead_temporaries,
    temp_writer_alive,
    write_atomic,
)


def test_write_if_changed_leaves_identical_files_alone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    target = tmp_path / "sub" / "repodata.json"
    assert store.write_if_changed("sub/repodata.json", b"one") is True
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    assert store.write_if_changed("sub/repodata.json", b"one") is False
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert store.write_if_changed("sub/repodata.json", b"two") is True
    assert target.read_bytes() == b"two"
    assert target.stat().st_mtime_ns != 1_000_000_000


def test_written_files_are_world_readable_and_no_temp_left(tmp_path: Path) -> None:
    info = LocalStore(tmp_path).write("f.json", b"x")
    target = tmp_path / "f.json"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert info.fingerprint == (1, str(target.stat().st_mtime_ns))


def test_failed_write_cleans_up_and_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f.json").mkdir()  # a folder where the file goes: the rename fails
    with pytest.raises(StorageError, match=r"f\.json"):
        LocalStore(tmp_path).write("ro/f.json", b"new")
    assert not [p for p in (tmp_path / "ro").iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "a\x00b", ""])
def test_keys_that_leave_the_channel_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "channel")
    with pytest.raises(StorageError, match="refusing the path"):
        store.write(key, b"x")
    with pytest.raises(StorageError, match="refusing the path"):
        store.read(key)
    assert not (tmp_path / "x").exists()


def test_a_planted_folder_symlink_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.msgpack.zst").write_bytes(b"keep me")
    channel = tmp_path / "channel"
    (channel / "linux-64").mkdir(parents=True)
    (channel / "linux-64" / "shards").symlink_to(outside)
    store = LocalStore(channel)
    with pytest.raises(StorageError, match="symbolic link"):
        store.write("linux-64/shards/new.msgpack.zst", b"x")
    with pytest.raises(StorageError, match="symbolic link"):
        store.delete("linux-64/shards/victim.msgpack.zst")
    assert store.list_files("linux-64/shards") == []
    assert (outside / "victim.msgpack.zst").read_bytes() == b"keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.msgpack.zst"]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "index.html").symlink_to(outside)
    store = LocalStore(channel)
    store.write_if_changed("index.html", b"<html>")
    assert outside.read_bytes() == b"keep me"
    assert not (channel / "index.html").is_symlink()
    assert store.delete("index.html") is True
    assert outside.exists()


def test_reads_refuse_links_fifos_and_folders(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "link.json").symlink_to(tmp_path / "secret")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(StorageError, match="symbolic link"):
        store.read("link.json")
    started = time.monotonic()
    with pytest.raises(StorageError, match="not a regular file"):
        store.read("fifo.json")  # would block forever if opened for reading normally
    assert time.monotonic() - started < 5
    listed = {info.name: info.regular for info in store.list_files()}
    assert listed == {"secret": True, "link.json": False, "fifo.json": False}
    assert store.read("missing.json") is None


def test_conditional_writes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.write("a", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.write("a", b"2", if_absent=True)
    second = store.write("a", b"2", if_match=first.tag)
    with pytest.raises(PreconditionFailed):
        store.write("a", b"3", if_match=first.tag)
    with pytest.raises(PreconditionFailed):
        store.delete("a", if_match=first.tag)
    assert store.delete("a", if_match=second.tag)
    assert store.stat("a") is None


def test_writer_commits_atomically_or_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("pkg.conda", b"old")
    writer = store.writer("pkg.conda")
    writer.handle.write(b"partial")
    assert (tmp_path / "pkg.conda").read_bytes() == b"old"
    writer.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["pkg.conda"]
    writer = store.writer("pkg.conda")
    writer.handle.write(b"new")
    writer.commit()
    assert (tmp_path / "pkg.conda").read_bytes() == b"new"


def test_temp_names_carry_the_writers_pid_and_live_writers_are_left_alone(
    tmp_path: Path,
) -> None:
    dead = 4194305  # above any pid_max: no process has it
    (tmp_path / "sub").mkdir()
    names = [f"{TEMP_PREFIX}{os.getpid()}-abcd1234", f"{TEMP_PREFIX}{dead}-abcd1234"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
        (tmp_path / "sub" / name).write_bytes(b"partial")
    (tmp_path / f"{TEMP_PREFIX}no-pid").write_bytes(b"partial")
    (tmp_path / f"{TEMP_PREFIX}\u00b2-abcd1234").write_bytes(b"partial")  # a digit, no pid
    assert temp_writer_alive(names[0]) and not temp_writer_alive(names[1])
    assert LocalStore(tmp_path).clean_temporaries() == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], "sub"])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [names[0]]
    assert LocalStore(tmp_path / "missing").clean_temporaries() == 0


def test_append_line_survives_a_torn_last_line(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.append_line("log.jsonl", b'{"a": 1}\n')
    with (tmp_path / "log.jsonl").open("ab") as handle:
        handle.write(b'{"torn":')
    store.append_line("log.jsonl", b'{"b": 2}\n')
    assert list(store.read_lines("log.jsonl")) == [b'{"a": 1}\n', b'{"torn":\n', b'{"b": 2}\n']


def test_write_atomic_for_files_outside_channels(tmp_path: Path) -> None:
    write_atomic(tmp_path / "plan.json", b"{}")
    assert (tmp_path / "plan.json").read_bytes() == b"{}"


# -- the lock --------------------------------------------------------------------------

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reconciler.store.local import LocalStore
    with LocalStore(Path(sys.argv[1])).lock(timeout=0, command="reconcile apply (test)"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def hold_in_child(channel: Path, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(channel), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_holder_times_out_naming_the_first(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path, 30)
    store = LocalStore(tmp_path)
    try:
        holder = store.lock_holder()
        assert holder is not None and holder.pid == child.pid
        with pytest.raises(LockTimeout) as info, store.lock(timeout=0.3, command="x"):
            pass
        assert f"pid {child.pid}" in info.value.message
        assert "reconcile apply (test)" in info.value.message
    finally:
        child.kill()
        child.wait()


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path, 0.5)
    store = LocalStore(tmp_path)
    started = time.monotonic()
    with store.lock(timeout=20, command="x") as me:
        assert time.monotonic() - started >= 0.2
        assert store.lock_holder() is not None
        assert me.pid != child.pid
    child.wait()
    assert store.lock_holder() is None


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path, 60)
    child.kill()
    child.wait()
    store = LocalStore(tmp_path)
    with store.lock(timeout=0, command="x"):
        holder = store.lock_holder()
        assert holder is not None and holder.pid != child.pid


def test_a_lock_file_planted_as_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    channel = tmp_path / "channel"
    (channel / ".reconciler").mkdir(parents=True)
    (channel / ".reconciler" / "lock").symlink_to(outside)
    with (
        pytest.raises(StorageError, match="symbolic link"),
        LocalStore(channel).lock(timeout=0, command="x"),
    ):
        pass
    assert outside.read_text() == "keep"


def test_dead_processes_temporaries_are_removed_from_the_temporary_folder(
    tmp_path: Path,
) -> None:
    prefix = "reconcile-spool-"
    dead = 4194305  # above any pid_max: no process has it
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    temp = tmp_path / "tmp"
    temp.mkdir()
    (temp / f"{prefix}{dead}-a").mkdir()
    (temp / f"{prefix}{dead}-a" / "5-repodata.json").write_bytes(b"x" * 1000)
    (temp / f"{prefix}{dead}-a" / "link").symlink_to(outside)  # removed, not followed
    (temp / f"{prefix}{dead}-b").symlink_to(outside)  # the link goes, not what it names
    (temp / f"{prefix}{dead}-c").write_bytes(b"a file")
    (temp / f"{prefix}{os.getpid()}-d").mkdir()  # a live run's
    (temp / f"other-{dead}-e").mkdir()  # not this prefix
    for path in temp.iterdir():
        os.utime(path, (time.time() - 7200,) * 2, follow_symlinks=False)
    (temp / f"{prefix}{dead}-f").mkdir()  # changed lately: maybe a pid this one cannot see
    assert remove_dead_temporaries(prefix, folder=temp) == 3
    assert sorted(p.name for p in temp.iterdir()) == sorted(
        [f"other-{dead}-e", f"{prefix}{os.getpid()}-d", f"{prefix}{dead}-f"]
    )
    assert remove_dead_temporaries(prefix, folder=temp, older_than=0) == 1
    assert (outside / "keep.txt").read_text() == "not ours"
    assert remove_dead_temporaries(prefix, folder=tmp_path / "missing") == 0
