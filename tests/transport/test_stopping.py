"""A thread told to stop: checks raise, a backoff ends early, other threads go on."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.transport import stopping
from reconciler.transport.stopping import Stopped


def test_nothing_stops_outside_stop_on() -> None:
    stopping.check()
    started = time.monotonic()
    stopping.pause(0.05)
    assert time.monotonic() - started >= 0.05


def test_a_pause_ends_when_told_to_stop() -> None:
    event = threading.Event()
    threading.Timer(0.1, event.set).start()
    started = time.monotonic()
    with stopping.stop_on(event), pytest.raises(Stopped):
        stopping.pause(30)
    assert time.monotonic() - started < 5


def test_only_the_threads_inside_stop_on_are_told() -> None:
    event = threading.Event()
    event.set()
    seen: list[bool] = []

    def elsewhere() -> None:
        seen.append(stopping.stop_requested())

    with stopping.stop_on(event):
        assert stopping.stop_requested()
        with pytest.raises(Stopped, match="another part of this work failed"):
            stopping.check()
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
    assert seen == [False]
    assert not stopping.stop_requested()  # left as it was after the block


def test_a_checker_tells_another_thread_working_for_the_stopped_one() -> None:
    event = threading.Event()
    with stopping.stop_on(event):
        check = stopping.checker()
    outside = stopping.checker()
    raised: list[BaseException] = []

    def helper() -> None:  # a thread of its own, outside any stop_on
        check()  # not told yet
        event.set()
        outside()  # made outside stop_on: never stops
        try:
            check()
        except Stopped as exc:
            raised.append(exc)

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join(10)
    assert len(raised) == 1
