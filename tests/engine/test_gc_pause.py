"""The collector is paused while a plan is made, and as it was once the plan ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.config.models import load_config
from reconciler.engine.gc_pause import collections_paused
from reconciler.engine.planner import make_plan
from reconciler.kinds import REGISTRY


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_and_on_again_after() -> None:
    with collections_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_on_again_after_an_error() -> None:
    with pytest.raises(RuntimeError), collections_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    with collections_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_on_again_only_when_the_last_of_overlapping_pauses_ends() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with collections_paused():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(10)
    with collections_paused():
        pass
    assert not gc.isenabled()  # the other thread's plan is still under way
    release.set()
    thread.join(10)
    assert gc.isenabled()


class _Watching:
    """The real registry, noting whether the collector ran while each channel planned."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def kind_of(self, channel: Any) -> Any:
        kind = REGISTRY.kind_of(channel)
        seen = self.seen

        class Noting:
            def __getattr__(self, name: str) -> Any:
                return getattr(kind, name)

            def plan(self, request: Any) -> Any:
                seen.append(gc.isenabled())
                return kind.plan(request)

        return Noting()


def test_make_plan_plans_with_the_collector_paused(tmp_path: Path) -> None:
    (tmp_path / "chan").mkdir()
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - {name: chan, path: ./chan, subdirs: [linux-64]}\n"
    )
    watching = _Watching()
    planning = make_plan(load_config(config), watching, cache_dir=tmp_path / "cache")
    planning.close()
    assert watching.seen == [False]
    assert gc.isenabled()
