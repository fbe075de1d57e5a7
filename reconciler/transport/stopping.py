"""Work on a thread told to stop: another part of the same work failed, so what this
thread would bring is no longer wanted (a mirror's other subdirs, once one failed).

The thread runs inside :func:`stop_on`; transfers look at :func:`check` between
attempts and between the pieces of a body, and wait out a backoff with :func:`pause`,
which ends early when told to stop; a body read through the window looks before each
window (:func:`checker`, also from the thread reading it while it downloads). A request
still waiting for its response headers is not interrupted: its own timeout bounds that,
nor is a document read whole (one call of its decoder).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator

from reconciler.errors import ReconcileError


class Stopped(ReconcileError):
    """This thread's work was told to stop (what it would bring is not wanted)."""


_local = threading.local()


def _event() -> threading.Event | None:
    event: threading.Event | None = getattr(_local, "event", None)
    return event


@contextlib.contextmanager
def stop_on(event: threading.Event) -> Iterator[None]:
    """Within this block, this thread's transfers stop once ``event`` is set."""
    before = _event()
    _local.event = event
    try:
        yield
    finally:
        _local.event = before


def _raise_if_set(event: threading.Event | None) -> None:
    if event is not None and event.is_set():
        raise Stopped("stopped: another part of this work failed first")


def stop_requested() -> bool:
    event = _event()
    return event is not None and event.is_set()


def check() -> None:
    """Raise :class:`Stopped` if this thread was told to stop."""
    _raise_if_set(_event())


def checker() -> Callable[[], None]:
    """:func:`check` for this thread's work, to be called from another thread doing part
    of it (a body read through the window on a thread of its own)."""
    return functools.partial(_raise_if_set, _event())


def pause(seconds: float) -> None:
    """Sleep ``seconds``, or less when told to stop meanwhile (then raise)."""
    event = _event()
    if event is None:
        time.sleep(seconds)
    elif event.wait(seconds):
        _raise_if_set(event)
