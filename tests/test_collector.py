"""The cycle collector is paused while any thread decodes, and put back as it was."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from reconciler.collector import collector_paused


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_two_threads_overlapping_leave_it_on() -> None:
    # A enters, B enters, A leaves (still paused for B), B leaves: on again. Pausing by
    # hand in each thread (is it on? off; ...; on if it was) left it off for good here:
    # B saw it off, so B never turned it back on.
    gc.enable()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with collector_paused():
            a_in.set()
            assert b_in.wait(5)
        a_out.set()

    def second() -> None:
        assert a_in.wait(5)
        with collector_paused():
            b_in.set()
            assert a_out.wait(5)
            seen["after A left, while B is inside"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after A left, while B is inside": False}
    assert gc.isenabled()


def test_left_off_when_it_was_off() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_on_again_after_an_error_inside() -> None:
    gc.enable()
    with pytest.raises(ValueError), collector_paused():
        assert not gc.isenabled()
        raise ValueError("a document that does not decode")
    assert gc.isenabled()
