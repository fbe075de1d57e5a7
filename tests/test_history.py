"""Run history: append-only, folds to the latest state, survives a torn last line."""

from __future__ import annotations

from pathlib import Path

from reconciler.history import History, new_run


def test_runs_fold_to_latest_state(tmp_path: Path) -> None:
    history = History(tmp_path)
    first = history.append(new_run("internal", "forge"))
    first = history.transition(first, "running")
    history.transition(first, "completed", added=3, bytes=1024)
    second = history.append(new_run("internal", None))
    history.transition(second, "failed", error="disk full")

    runs = history.runs()
    assert [(r.mirror, r.state) for r in runs] == [("forge", "completed"), (None, "failed")]
    assert runs[0].added == 3 and runs[0].finished is not None
    assert history.last_run(None) is not None and history.last_run(None).error == "disk full"  # type: ignore[union-attr]
    assert len(history.path.read_text().splitlines()) == 5


def test_torn_last_line_is_ignored_and_next_append_is_whole(tmp_path: Path) -> None:
    history = History(tmp_path)
    run = history.transition(history.append(new_run("c", "m")), "running")
    with history.path.open("a") as handle:
        handle.write('{"run_id": "x", "state": "compl')  # a crash mid-write
    assert [r.state for r in history.runs()] == ["running"]
    history.transition(run, "failed", error="killed")
    assert [r.state for r in history.runs()] == ["failed"]


def test_missing_history_is_empty(tmp_path: Path) -> None:
    assert History(tmp_path).runs() == []
    assert History(tmp_path).last_run("m") is None
