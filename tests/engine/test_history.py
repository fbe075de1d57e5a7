"""Run history: append-only, folds to the latest state, survives a torn last line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from reconciler.engine.history import History, new_run
from reconciler.store.base import StorageError
from reconciler.store.local import LocalStore


def _history(folder: Path) -> History:
    return History(LocalStore(folder))


def _path(folder: Path) -> Path:
    return folder / ".reconciler" / "history.jsonl"


def test_runs_fold_to_latest_state(tmp_path: Path) -> None:
    history = _history(tmp_path)
    first = history.append(new_run("internal", "forge"))
    first = history.transition(first, "running")
    history.transition(first, "completed", added=3, bytes=1024)
    second = history.append(new_run("internal", None))
    history.transition(second, "failed", error="disk full")

    runs = history.runs()
    assert [(r.mirror, r.state) for r in runs] == [("forge", "completed"), (None, "failed")]
    assert runs[0].added == 3 and runs[0].finished is not None
    assert history.last_run(None) is not None and history.last_run(None).error == "disk full"  # type: ignore[union-attr]
    assert len(_path(tmp_path).read_text().splitlines()) == 5


def test_torn_last_line_is_ignored_and_next_append_is_whole(tmp_path: Path) -> None:
    history = _history(tmp_path)
    run = history.transition(history.append(new_run("c", "m")), "running")
    with _path(tmp_path).open("a") as handle:
        handle.write('{"run_id": "x", "state": "compl')  # a crash mid-write
    assert [r.state for r in history.runs()] == ["running"]
    history.transition(run, "failed", error="killed")
    assert [r.state for r in history.runs()] == ["failed"]


def test_missing_history_is_empty(tmp_path: Path) -> None:
    assert _history(tmp_path).runs() == []
    assert _history(tmp_path).last_run("m") is None


def test_a_filling_disk_finishes_short_writes_or_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.write`` on a filling disk writes less than asked, then fails with ENOSPC."""
    history = _history(tmp_path)
    run = history.transition(history.append(new_run("c", "m")), "running")
    real_write, calls = os.write, []

    def short(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:10])  # the disk had room for 10 bytes
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short)
    with pytest.raises(StorageError, match=r"history\.jsonl: No space left") as raised:
        history.transition(run, "completed")
    assert raised.value.hint == "free some disk space and run again"
    assert calls[1] == calls[0] - 10  # the rest was asked for, not dropped
    monkeypatch.setattr(os, "write", real_write)
    assert [r.state for r in history.runs()] == ["running"]  # the torn line is skipped
    history.transition(run, "failed", error="interrupted")
    assert [r.state for r in history.runs()] == ["failed"]

    # A short write followed by room again: the whole line lands.
    pieces = iter([5])
    monkeypatch.setattr(
        os, "write", lambda fd, data: real_write(fd, data[: next(pieces, len(data))])
    )
    history.transition(run, "completed")
    monkeypatch.setattr(os, "write", real_write)
    assert [r.state for r in history.runs()] == ["completed"]


def test_lines_that_are_not_runs_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = _history(tmp_path)
    good = history.transition(history.append(new_run("c", None)), "completed")
    with _path(tmp_path).open("a") as handle:
        handle.write('{"run_id": 7, "channel": "c", "state": "completed", "started": "x"}\n')
        handle.write(
            '{"run_id": "a", "channel": "c", "mirror": null, "state": "done", "started": "x"}\n'
        )
        handle.write(
            '{"run_id": "b", "channel": "c", "mirror": null, "state": "failed",'
            ' "started": "x", "added": "three"}\n'
        )
        handle.write("[1, 2]\n")
    with caplog.at_level("WARNING"):
        runs = history.runs()
        history.runs()
    assert [r.run_id for r in runs] == [good.run_id]
    warnings = [r for r in caplog.records if "not runs" in r.getMessage()]
    assert len(warnings) == 1
    assert "line 3" in warnings[0].getMessage() and "4 line(s)" in warnings[0].getMessage()
