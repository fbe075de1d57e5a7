"""A plan is made with the cycle collector paused, and it is as it was after."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.config.models import load_config
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
