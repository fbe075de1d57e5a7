"""The one clock and the one timestamp format of the tool.

``RECONCILE_NOW`` (an ISO 8601 time) replaces the clock, so schedules can be
rehearsed and tests are repeatable; plan, apply, history, status and the server
all read time here. Times are written as ISO 8601 in UTC with milliseconds and a
``Z`` (``2026-11-29T20:41:08.123Z``): sortable as text, unambiguous to read.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from reconciler.errors import ReconcileError

CLOCK_ENV = "RECONCILE_NOW"


def now() -> datetime:
    """The current time in UTC (or ``RECONCILE_NOW``)."""
    override = os.environ.get(CLOCK_ENV)
    if override:
        value = parse_time(override)
        if value is None:
            raise ReconcileError(f"{CLOCK_ENV}={override!r} is not an ISO 8601 time")
        return value
    return datetime.now(timezone.utc)


def format_time(when: datetime) -> str:
    """``when`` as the tool writes times everywhere."""
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamp() -> str:
    """:func:`now`, formatted."""
    return format_time(now())


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time (a missing zone means UTC); None when it is not one."""
    if not text or not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def now_ms() -> int:
    """:func:`now` in milliseconds since the epoch (CEP-47 ``indexed_timestamp``)."""
    return int(now().timestamp() * 1000)
