"""When a mirror is due: cron schedules (UTC) against the mirror's last started run.

A mirror is due when a fire time of its schedule has passed since its last
started run, or when it has never run; a mirror without a schedule is always
due. Several fire times missed while nothing ran make it due once, not once per
missed time. Times come from :mod:`reconciler.engine.clock`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from reconciler.engine.clock import format_time


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str
    next_due: datetime | None  # the next fire time after now (None: every apply)


def due(schedule: str | None, last_started: datetime | None, at: datetime) -> Due:
    if not schedule:
        return Due(True, "no schedule: runs on every apply", None)
    following = croniter(schedule, at).get_next(datetime)
    if last_started is None:
        return Due(True, "never run", following)
    # A fire time exactly at `at` counts as passed.
    latest_fire = croniter(schedule, at + timedelta(seconds=1)).get_prev(datetime)
    if latest_fire > last_started:
        return Due(True, f"scheduled at {format_time(latest_fire)}", following)
    return Due(False, f"next run at {format_time(following)}", following)


def interval(schedule: str, at: datetime) -> timedelta:
    """The gap between two consecutive fire times around ``at``."""
    runner = croniter(schedule, at)
    first = runner.get_next(datetime)
    second = runner.get_next(datetime)
    gap: timedelta = second - first
    return gap


def overlap_warning(
    schedule: str | None, last_duration: timedelta | None, at: datetime
) -> str | None:
    """ "runs would overlap" when the schedule fires faster than the last run took."""
    if not schedule or last_duration is None:
        return None
    gap = interval(schedule, at)
    if last_duration <= gap:
        return None
    return (
        f"runs would overlap: last run took {_human(last_duration)}, "
        f"schedule fires every {_human(gap)}"
    )


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
