"""Schedules with an injected clock: due once per fire time, caught up once, run-now."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.engine.history import History
from reconciler.engine.schedule import due, overlap_warning
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from reconciler.store.local import LocalStore
from tests.packages import PackageSpec, build_package

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)


def test_due_logic() -> None:
    daily = "17 3 * * *"
    assert due(daily, None, T0).due  # never run
    last = T0 + timedelta(hours=3, minutes=17)
    assert not due(daily, last, T0 + timedelta(hours=20)).due
    assert due(daily, last, T0 + timedelta(days=1, hours=3, minutes=17)).due
    # Missed for three days: due, once.
    assert due(daily, last, T0 + timedelta(days=4)).due
    assert due(None, last, T0).due  # no schedule: every apply
    assert due(daily, last, last + timedelta(hours=1)).next_due == T0 + timedelta(
        days=1, hours=3, minutes=17
    )


def test_overlap_warning() -> None:
    assert overlap_warning("0 * * * *", timedelta(hours=2), T0) == (
        "runs would overlap: last run took 2 h, schedule fires every 1 h"
    )
    assert overlap_warning("0 * * * *", timedelta(minutes=5), T0) is None


@pytest.fixture
def project(tmp_path: Path) -> Path:
    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("zlib", "1.3", subdir="linux-64"))
    index_channel(upstream)
    (tmp_path / "channels.yaml").write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n    subdirs: [linux-64]\n"
        "    mirrors:\n      - {name: daily, source: ./upstream, schedule: '17 3 * * *'}\n"
        "      - {name: always, source: ./upstream, mode: passive}\n"
    )
    return tmp_path


def apply_at(project: Path, when: datetime, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("RECONCILE_NOW", when.isoformat())
    return cli.main(["apply", "-c", str(project / "channels.yaml"), *args])


def daily_runs(project: Path) -> list[str]:
    return [r.started for r in History(LocalStore(project / "chan")).runs() if r.mirror == "daily"]


def test_daily_schedule_runs_once_over_a_day_of_ticks(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    start = T0 + timedelta(hours=12)
    for tick in range(4 * 24):  # every 15 minutes for a day
        assert apply_at(project, start + timedelta(minutes=15 * tick), monkeypatch) == ExitCode.OK
    # The first apply (never run) and the one after 03:17 the next day.
    assert len(daily_runs(project)) == 2
    assert (project / "chan" / "linux-64" / "zlib-1.3-0.conda").exists()


def test_missed_window_runs_once_and_run_now_runs_at_once(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    apply_at(project, T0 + timedelta(hours=4), monkeypatch)
    assert len(daily_runs(project)) == 1
    later = T0 + timedelta(days=3, hours=12)  # three fire times missed
    apply_at(project, later, monkeypatch)
    capsys.readouterr()
    apply_at(project, later + timedelta(minutes=15), monkeypatch)
    assert "mirror chan/daily not refreshed: next run at 2026-03-05T03:17:00.000Z" in (
        capsys.readouterr().out
    )
    assert len(daily_runs(project)) == 2
    capsys.readouterr()
    monkeypatch.setenv("RECONCILE_NOW", (later + timedelta(minutes=30)).isoformat())
    cli.main(["plan", "-c", str(project / "channels.yaml")])
    out = capsys.readouterr().out
    assert "mirror daily: not refreshed (next run at 2026-03-05T03:17:00.000Z; last run" in out
    assert "mirror always: refreshes (no schedule: runs on every apply" in out
    apply_at(project, later + timedelta(minutes=30), monkeypatch, "--run-now", "--mirror", "daily")
    assert len(daily_runs(project)) == 3


def test_a_mirror_that_is_not_due_keeps_what_it_published(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_at(project, T0 + timedelta(hours=4), monkeypatch)
    # Upstream gains a package; the daily mirror is not due, so nothing changes yet.
    build_package(project / "upstream", PackageSpec("extra", "1.0", subdir="linux-64"))
    index_channel(project / "upstream")
    apply_at(project, T0 + timedelta(hours=5), monkeypatch)
    assert not (project / "chan" / "linux-64" / "extra-1.0-0.conda").exists()
    assert (project / "chan" / "linux-64" / "zlib-1.3-0.conda").exists()
    apply_at(project, T0 + timedelta(days=1, hours=4), monkeypatch)
    assert (project / "chan" / "linux-64" / "extra-1.0-0.conda").exists()


def test_status_shows_next_run_and_overlap_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler.engine.history import new_run

    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("zlib", "1.3", subdir="linux-64"))
    index_channel(upstream)
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n    subdirs: [linux-64]\n"
        "    mirrors:\n      - {name: hourly, source: ./upstream, schedule: '0 * * * *'}\n"
    )
    # A run of the hourly mirror that took two hours.
    history = History(LocalStore(tmp_path / "chan"))
    monkeypatch.setenv("RECONCILE_NOW", T0.isoformat())
    run = history.transition(history.append(new_run("chan", "hourly")), "running")
    monkeypatch.setenv("RECONCILE_NOW", (T0 + timedelta(hours=2)).isoformat())
    history.transition(run, "completed")
    capsys.readouterr()
    assert cli.main(["status", "-c", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    # The hour that fired since the last run makes it due; the schedule fires again at 03:00.
    assert (
        "due now: the next apply refreshes it (schedule fires next at 2026-03-01T03:00:00.000Z)"
        in out
    )
    assert "warning: runs would overlap: last run took 2 h, schedule fires every 1 h" in out
