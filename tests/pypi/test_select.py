"""Which files a PyPI mirror keeps, and why."""

from __future__ import annotations

import datetime as dt
import random

from packaging.requirements import Requirement

from reconciler.config.models import PypiFilters
from reconciler.kinds.pypi.pages import DistFile
from reconciler.kinds.pypi.select import Level, select_files

UTC = dt.timezone.utc


def _file(filename: str, *, yanked: bool | str = False, day: int = 1) -> DistFile:
    return DistFile(
        filename=filename,
        url=f"https://files.example/{filename}",
        sha256="e" * 64,
        yanked=yanked,
        upload_time=dt.datetime(2024, 1, day, tzinfo=UTC),
    )


FILES = [
    _file("demo-1.0.tar.gz", day=1),
    _file("demo-1.0-py3-none-any.whl", day=1),
    _file("demo-1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", day=2),
    _file("demo-1.1-cp311-cp311-win_amd64.whl", day=2),
    _file("demo-1.2-py3-none-any.whl", yanked="broken", day=3),
    _file("demo-2.0rc1-py3-none-any.whl", day=4),
    _file("other-1.0.tar.gz", day=4),
]


def _kept(
    requirement: str, mirror: dict[str, object], channel: dict[str, object] | None = None
) -> list[str]:
    levels = [
        Level(PypiFilters.model_validate(mirror), "mirror m", mirror_level=True),
        Level(PypiFilters.model_validate(channel or {}), "channel c", mirror_level=False),
    ]
    return [
        v.file.filename for v in select_files(Requirement(requirement), FILES, levels) if v.selected
    ]


def test_defaults_drop_prereleases_yanked_and_other_projects() -> None:
    assert _kept("demo", {}) == [
        "demo-1.0.tar.gz",
        "demo-1.0-py3-none-any.whl",
        "demo-1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "demo-1.1-cp311-cp311-win_amd64.whl",
    ]


def test_a_requirement_naming_a_prerelease_allows_it() -> None:
    assert _kept("demo>=2.0rc1", {}) == ["demo-2.0rc1-py3-none-any.whl"]
    assert _kept("demo>=1.1,<2", {}) == [
        "demo-1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "demo-1.1-cp311-cp311-win_amd64.whl",
    ]


def test_prerelease_and_yanked_switches() -> None:
    assert "demo-2.0rc1-py3-none-any.whl" in _kept("demo", {"prerelease": True})
    assert "demo-1.2-py3-none-any.whl" in _kept("demo", {"yanked": True})
    # The channel narrows: a mirror's yes is not enough when the channel says no.
    assert "demo-1.2-py3-none-any.whl" not in _kept("demo", {"yanked": True}, {"yanked": False})


def test_kinds_and_wheel_tags() -> None:
    assert _kept("demo", {"kinds": ["sdist"]}) == ["demo-1.0.tar.gz"]
    tags = {"include": [{"platform": "manylinux*_x86_64"}, {"python": "py3", "platform": "any"}]}
    assert _kept("demo", {"wheel_tags": tags}) == [
        "demo-1.0.tar.gz",  # tag rules apply to wheels only
        "demo-1.0-py3-none-any.whl",
        "demo-1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    ]
    excluded = _kept("demo", {"wheel_tags": {"exclude": [{"platform": "win_*"}]}})
    assert "demo-1.1-cp311-cp311-win_amd64.whl" not in excluded
    assert "demo-1.0-py3-none-any.whl" in excluded


def test_date_and_latest() -> None:
    assert _kept("demo", {"date": {"after": "2024-01-02"}}) == [
        "demo-1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "demo-1.1-cp311-cp311-win_amd64.whl",
    ]
    assert _kept("demo", {"latest": 1}) == [
        "demo-1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "demo-1.1-cp311-cp311-win_amd64.whl",
    ]
    # latest counts versions after the other filters: the yanked 1.2 does not count.
    assert len(_kept("demo", {"latest": 2})) == 4


def test_reasons_name_the_rule_and_level() -> None:
    levels = [
        Level(PypiFilters(), "mirror m", mirror_level=True),
        Level(PypiFilters.model_validate({"kinds": ["wheel"]}), "channel c", mirror_level=False),
    ]
    reasons = {v.file.filename: v.reason for v in select_files(Requirement("demo"), FILES, levels)}
    assert reasons["demo-1.0.tar.gz"] == "sdist (channel c: kinds: wheel)"
    assert reasons["demo-1.2-py3-none-any.whl"] == "yanked: broken (mirror m: yanked: false)"
    assert "prerelease: false" in reasons["demo-2.0rc1-py3-none-any.whl"]
    assert reasons["other-1.0.tar.gz"] == "belongs to project other"


def test_decisions_do_not_depend_on_page_order() -> None:
    levels = [Level(PypiFilters.model_validate({"latest": 2}), "mirror m", mirror_level=True)]
    expected = {
        v.file.filename: v.selected for v in select_files(Requirement("demo"), FILES, levels)
    }
    for seed in range(5):
        shuffled = FILES[:]
        random.Random(seed).shuffle(shuffled)
        got = {
            v.file.filename: v.selected for v in select_files(Requirement("demo"), shuffled, levels)
        }
        assert got == expected
