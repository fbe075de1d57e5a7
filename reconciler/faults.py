"""Deterministic crash points, so tests can prove a kill at any step is survivable.

``RECONCILE_CRASH_AT=step`` (or ``step#N`` for its N-th hit) makes the process
SIGKILL itself when it reaches that checkpoint; ``RECONCILE_CRASH_TRACE=FILE``
appends every checkpoint reached to FILE, one ``step#N`` per line, so a test can
list every point of a run. Unset (always, outside tests) a checkpoint costs one
attribute lookup.
"""

from __future__ import annotations

import os
import signal
import threading

CRASH_AT_ENV = "RECONCILE_CRASH_AT"
CRASH_TRACE_ENV = "RECONCILE_CRASH_TRACE"

_lock = threading.Lock()
_counts: dict[str, int] = {}
_crash_at: str | None = None
_trace: str | None = None
_armed = False


def arm() -> None:
    """(Re)read the environment; forked test children call this after setting it."""
    global _crash_at, _trace, _armed
    with _lock:
        _crash_at = os.environ.get(CRASH_AT_ENV) or None
        _trace = os.environ.get(CRASH_TRACE_ENV) or None
        _counts.clear()
        _armed = _crash_at is not None or _trace is not None


def checkpoint_armed() -> bool:
    return _armed


def checkpoint(step: str) -> None:
    """A point where a crash must leave a usable channel."""
    if not _armed:
        return
    with _lock:
        hit = _counts[step] = _counts.get(step, 0) + 1
        if _trace is not None:
            with open(_trace, "a", encoding="utf-8") as handle:
                handle.write(f"{step}#{hit}\n")
        if (_crash_at == step and hit == 1) or _crash_at == f"{step}#{hit}":
            os.kill(os.getpid(), signal.SIGKILL)


arm()
