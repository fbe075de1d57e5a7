"""What every store promises, checked on each: a folder and a bucket (moto's S3 server)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from reconciler.config.models import S3Location
from reconciler.store.base import LockTimeout, PreconditionFailed, StorageError, Store
from reconciler.store.local import LocalStore
from reconciler.store.s3 import S3Store


@pytest.fixture(params=["disk", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "disk":
        return LocalStore(tmp_path / "channel")
    bucket = request.getfixturevalue("bucket")
    return S3Store(S3Location(bucket=bucket, prefix="team/chan"))


def test_write_read_stat_and_list(store: Store) -> None:
    assert not store.exists()
    assert store.read("linux-64/repodata.json") is None
    assert store.stat("linux-64/repodata.json") is None
    info = store.write("linux-64/repodata.json", b"{}")
    store.write("linux-64/shards/abc.msgpack.zst", b"shard")
    store.write("channeldata.json", b"[]")
    assert store.exists()
    assert store.read("linux-64/repodata.json") == b"{}"
    stat = store.stat("linux-64/repodata.json")
    assert stat is not None and stat.fingerprint == info.fingerprint == (2, info.tag)
    assert [i.key for i in store.list_files("linux-64")] == ["linux-64/repodata.json"]
    assert store.list_dirs("linux-64") == ["shards"]
    assert store.list_dirs() == ["linux-64"]
    assert [i.name for i in store.list_files()] == ["channeldata.json"]
    assert store.list_files("nothing-here") == [] and store.list_dirs("nothing-here") == []
    with store.open("linux-64/shards/abc.msgpack.zst") as handle:
        assert handle.read() == b"shard"
    with store.open_range("linux-64/shards/abc.msgpack.zst", 1, 3) as handle:
        assert handle.read() == b"har"
    with pytest.raises(FileNotFoundError):
        store.open("absent").__enter__()
    with pytest.raises(StorageError, match="more than the 1 allowed"):
        store.read("channeldata.json", limit=1)


def test_write_if_changed_keeps_the_tag_of_identical_bytes(store: Store) -> None:
    assert store.write_if_changed("noarch/repodata.json", b"one") is True
    before = store.stat("noarch/repodata.json")
    time.sleep(0.01)
    assert store.write_if_changed("noarch/repodata.json", b"one") is False
    assert store.stat("noarch/repodata.json") == before
    assert store.write_if_changed("noarch/repodata.json", b"two") is True
    after = store.stat("noarch/repodata.json")
    assert after is not None and before is not None and after.tag != before.tag


def test_conditional_writes_and_deletes(store: Store) -> None:
    first = store.write("noarch/repodata.json", b"one", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.write("noarch/repodata.json", b"two", if_absent=True)
    time.sleep(0.01)  # a new mtime on disk
    second = store.write("noarch/repodata.json", b"two", if_match=first.tag)
    with pytest.raises(PreconditionFailed):
        store.write("noarch/repodata.json", b"three", if_match=first.tag)
    with pytest.raises(PreconditionFailed):
        store.delete("noarch/repodata.json", if_match=first.tag)
    assert store.read("noarch/repodata.json") == b"two"
    assert store.delete("noarch/repodata.json", if_match=second.tag) is True
    assert store.delete("noarch/repodata.json") is False
    with pytest.raises(PreconditionFailed):
        store.write("noarch/repodata.json", b"four", if_match=second.tag)


def test_writer_commits_whole_or_leaves_nothing(store: Store) -> None:
    writer = store.writer("linux-64/a-1-0.conda")
    writer.handle.write(b"partial")
    writer.abort()
    assert store.stat("linux-64/a-1-0.conda") is None
    writer = store.writer("linux-64/a-1-0.conda")
    writer.handle.write(b"package bytes")
    info = writer.commit()
    assert store.read("linux-64/a-1-0.conda") == b"package bytes"
    # The same bytes again (a second run, a passive fetch racing an apply): success.
    again = store.writer("linux-64/a-1-0.conda")
    again.handle.write(b"package bytes")
    committed = again.commit()
    assert committed.size == info.size and store.read("linux-64/a-1-0.conda") == b"package bytes"
    if isinstance(store, S3Store):  # a 412 on the same bytes: the object is left as it is
        assert committed.tag == info.tag
    # Other bytes under the name (a re-upload, unpublished first): replaced.
    other = store.writer("linux-64/a-1-0.conda")
    other.handle.write(b"other bytes")
    other.commit()
    assert store.read("linux-64/a-1-0.conda") == b"other bytes"


def test_log_lines_come_back_in_order(store: Store) -> None:
    for number in range(5):
        store.append_line(".reconciler/history.jsonl", f'{{"n": {number}}}\n'.encode())
    lines = list(store.read_lines(".reconciler/history.jsonl"))
    assert lines == [f'{{"n": {n}}}\n'.encode() for n in range(5)]
    store.compact_lines(".reconciler/history.jsonl")
    assert list(store.read_lines(".reconciler/history.jsonl")) == lines
    assert list(store.read_lines(".reconciler/other.jsonl")) == []


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "a\x00b", ""])
def test_keys_that_leave_the_channel_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StorageError, match="refusing the path"):
        store.write(key, b"x")
    with pytest.raises(StorageError, match="refusing the path"):
        store.read(key)


def test_one_lock_holder_at_a_time(store: Store) -> None:
    assert store.lock_holder() is None
    with store.lock(timeout=0, command="reconcile apply") as holder:
        seen = store.lock_holder()
        assert seen is not None and seen.pid == holder.pid and seen.command == "reconcile apply"
        with (
            pytest.raises(LockTimeout, match="reconcile apply") as caught,
            store.lock(timeout=0.3, command="reconcile index"),
        ):
            pass
        assert caught.value.holder is not None
    assert store.lock_holder() is None
    with store.lock(timeout=0, command="again"):
        pass


def test_a_waiter_gets_the_lock_when_the_holder_is_done(store: Store) -> None:
    released = threading.Event()

    def hold() -> None:
        with store.lock(timeout=0, command="first"):
            released.wait(5)
            time.sleep(0.3)

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.3)
    released.set()
    with store.lock(timeout=10, command="second", poll=0.1) as holder:  # type: ignore[call-arg]
        assert holder.command == "second"
    thread.join()
