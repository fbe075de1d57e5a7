"""Mirror selection: filters, and a dependency closure a solver agrees with."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.config.models import FilterBlock
from reconciler.filters import Candidate, FilterEngine
from reconciler.kinds.conda.select import Selection, SelectionWarning, select
from tests.fuzz.common import budget
from tests.solving import exact, solve, write_channel

PLATFORMS = ("linux-64", "osx-arm64")
Upstream = dict[str, dict[str, dict[str, Any]]]


def rec(
    name: str,
    version: str,
    subdir: str = "noarch",
    depends: Iterable[str] = (),
    build: str | None = None,
    fmt: str = ".conda",
    **extra: Any,
) -> tuple[str, str, dict[str, Any]]:
    build = build or "h" + hashlib.sha256(f"{name} {version} {subdir}".encode()).hexdigest()[:7]
    record = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": list(depends),
        "subdir": subdir,
        "license": "MIT",
        **extra,
    }
    return subdir, f"{name}-{version}-{build}{fmt}", record


def upstream(*records: tuple[str, str, dict[str, Any]], subdirs: Iterable[str] = ()) -> Upstream:
    found: Upstream = {s: {} for s in (*PLATFORMS, "noarch", *subdirs)}
    for subdir, filename, record in records:
        found[subdir][filename] = record
    return found


def engines(mirror: dict[str, Any], channel: dict[str, Any] | None = None) -> tuple[Any, Any]:
    return (
        FilterEngine(FilterBlock.model_validate(channel or {}), "channels[0].filters"),
        FilterEngine(FilterBlock.model_validate(mirror), "channels[0].mirrors[0].filters"),
    )


def run(
    up: Upstream, mirror: dict[str, Any], channel: dict[str, Any] | None = None, **kw: Any
) -> Selection:
    return select(up, *engines(mirror, channel), dependencies=True, **kw)


def chosen(selection: Selection) -> list[str]:
    return sorted(f"{s}/{f}" for s, f in selection.selected)


PYTHONS = [
    rec("python", v, p, build=f"h{v.replace('.', '')}_{p.replace('-', '_')}")
    for v in ("3.10.0", "3.12.0")
    for p in PLATFORMS
]


# -- where dependencies are looked up --------------------------------------------------


def test_a_noarch_record_finds_python_in_every_platform_subdir(tmp_path: Path) -> None:
    tqdm = rec("tqdm", "4.66", depends=["python >=3.8"], build="pyhd8ed1ab_0")
    up = upstream(*PYTHONS, tqdm)
    result = run(up, {"include": [{"name": "tqdm"}]})
    assert chosen(result) == sorted(
        [f"{s}/{f}" for s, f, _ in PYTHONS] + ["noarch/tqdm-4.66-pyhd8ed1ab_0.conda"]
    )
    reason = result.decisions[("osx-arm64", "python-3.12.0-h3120_osx_arm64.conda")].reason
    assert reason == "dependency of noarch/tqdm-4.66-pyhd8ed1ab_0.conda (python >=3.8)"
    assert result.warnings == []
    mirror = write_channel(tmp_path / "mirror", result.selected, PLATFORMS)
    for platform in PLATFORMS:
        assert solve(mirror, ["tqdm"], platform) is not None, platform


def test_a_noarch_dependency_is_closed_on_every_platform(tmp_path: Path) -> None:
    # util (osx-arm64) brings in noarch lib; lib is then listed for linux-64 clients too,
    # who need linux-64's python to install it.
    up = upstream(
        rec("python", "3.12.0", "linux-64", build="l"),
        rec("lib", "1.0", depends=["python"], build="n"),
        rec("util", "1.0", "osx-arm64", ["lib"], build="o"),
    )
    result = run(up, {"include": [{"name": "util"}]})
    assert chosen(result) == [
        "linux-64/python-3.12.0-l.conda",
        "noarch/lib-1.0-n.conda",
        "osx-arm64/util-1.0-o.conda",
    ]
    assert result.decisions[("linux-64", "python-3.12.0-l.conda")].reason == (
        "dependency of noarch/lib-1.0-n.conda (python)"
    )
    mirror = write_channel(tmp_path / "mirror", result.selected, PLATFORMS)
    assert solve(mirror, ["lib"], "linux-64") is not None


def test_a_platform_record_looks_in_its_own_subdir_and_noarch_only() -> None:
    up = upstream(
        rec("app", "1.0", "linux-64", ["helper", "data"]),
        rec("helper", "1.0", "linux-64"),
        rec("helper", "1.0", "osx-arm64"),  # another platform's: never needed by app
        rec("data", "1.0", "noarch"),
    )
    result = run(up, {"include": [{"name": "app"}]})
    assert [f.split("-")[0] + "@" + s for s, f in sorted(result.selected)] == [
        "app@linux-64",
        "helper@linux-64",
        "data@noarch",
    ]


def test_noarch_lookups_use_the_platforms_given() -> None:
    up = upstream(*PYTHONS, rec("tqdm", "4.66", depends=["python"]))
    result = run(up, {"include": [{"name": "tqdm"}]}, platforms=["osx-arm64", "noarch"])
    assert {s for s, _ in result.selected} == {"osx-arm64", "noarch"}


def test_a_platform_outside_those_given_still_finds_its_noarch_dependencies() -> None:
    up = upstream(
        *PYTHONS,
        rec("tqdm", "4.66", depends=["python"], build="n"),
        rec("app", "1", "linux-64", ["tqdm"], build="a"),
    )
    result = run(up, {"include": [{"name": "app"}]}, platforms=["osx-arm64"])
    assert ("noarch", "tqdm-4.66-n.conda") in result.selected
    assert {s for s, _ in result.selected} == {"linux-64", "noarch", "osx-arm64"}


def test_a_noarch_only_mirror_looks_in_noarch() -> None:
    up = {"noarch": {f: r for s, f, r in [rec("a", "1", depends=["b", "python"]), rec("b", "1")]}}
    result = run(up, {"include": [{"name": "a"}]})
    assert chosen(result) == sorted(f"noarch/{f}" for f in up["noarch"])
    assert result.warnings == []  # python is not in these subdirs: nothing to say


# -- every candidate that can take part, not only the newest ---------------------------


def newest_conflicts() -> Upstream:
    return upstream(
        *PYTHONS,
        rec("lib", "3.0", depends=["python >=3.12"], build="b3"),
        rec("lib", "2.0", depends=["python >=3.8"], build="b2"),
        rec("app", "1.0", "linux-64", ["python 3.10.*", "lib >=2"], build="a1"),
    )


def test_when_the_newest_candidate_conflicts_an_older_one_is_there(tmp_path: Path) -> None:
    up = newest_conflicts()
    result = run(up, {"include": [{"name": "app"}]})
    assert ("noarch", "lib-2.0-b2.conda") in result.selected
    assert ("noarch", "lib-3.0-b3.conda") in result.selected
    mirror = write_channel(tmp_path / "mirror", result.selected, PLATFORMS)
    original = write_channel(
        tmp_path / "upstream",
        {(s, f): r for s, recs in up.items() for f, r in recs.items()},
        PLATFORMS,
    )
    expected = solve(original, ["app"], "linux-64")
    assert expected is not None and "lib-2.0-b2.conda" in expected
    assert solve(mirror, ["app"], "linux-64") == expected


def test_only_one_version_per_spec_would_break_the_root(tmp_path: Path) -> None:
    # What the previous closure did (the newest match only) leaves app uninstallable.
    up = newest_conflicts()
    newest_only = {
        key: record
        for key, record in run(up, {"include": [{"name": "app"}]}).selected.items()
        if key != ("noarch", "lib-2.0-b2.conda")
    }
    mirror = write_channel(tmp_path / "narrow", newest_only, PLATFORMS)
    assert solve(mirror, ["app"], "linux-64") is None


def test_candidates_that_can_never_be_installed_stay_out() -> None:
    # python 3.10 excluded: lib builds pinned to it cannot be installed anywhere.
    up = upstream(
        *PYTHONS,
        rec("lib", "1.0", "linux-64", ["python 3.10.*"], build="py310"),
        rec("lib", "1.0", "linux-64", ["python 3.12.*"], build="py312"),
        rec("app", "1.0", "linux-64", ["lib"], build="a"),
    )
    result = run(up, {"include": [{"name": "app"}]}, {"exclude": [{"spec": "python 3.10.*"}]})
    assert chosen(result) == [
        "linux-64/app-1.0-a.conda",
        "linux-64/lib-1.0-py312.conda",
        "linux-64/python-3.12.0-h3120_linux_64.conda",
    ]
    assert result.warnings == []


def test_format_twins_are_taken_once() -> None:
    up = upstream(
        rec("app", "1", "linux-64", ["z"], build="a"),
        rec("z", "1", "linux-64", build="0"),
        rec("z", "1", "linux-64", build="0", fmt=".tar.bz2"),
        rec("z", "0.9", "linux-64", build="0", fmt=".tar.bz2"),
    )
    result = run(up, {"include": [{"name": "app"}]})
    assert chosen(result) == [
        "linux-64/app-1-a.conda",
        "linux-64/z-0.9-0.tar.bz2",
        "linux-64/z-1-0.conda",
    ]


def test_virtual_packages_and_unknown_names_are_left_to_the_client() -> None:
    up = upstream(rec("app", "1", "linux-64", ["__glibc >=2.17", "elsewhere", "not a spec ]["]))
    result = run(up, {"include": [{"name": "app"}]})
    assert len(result.selected) == 1 and result.warnings == []


def test_conditional_dependencies_are_added_but_never_required() -> None:
    up = upstream(
        rec("app", "1", "linux-64", ['winonly[when="__win"]', "lib"], build="a"),
        rec("winonly", "1", "linux-64", build="w", license="GPL-3.0-only"),
        rec("lib", "1", "linux-64", build="l"),
    )
    result = run(up, {"include": [{"name": "app"}]}, {"exclude": [{"license": "GPL"}]})
    assert chosen(result) == ["linux-64/app-1-a.conda", "linux-64/lib-1-l.conda"]
    assert result.warnings == []


def test_an_upstream_regex_cannot_hang_the_selection() -> None:
    # `^(a+)+$` backtracks exponentially in Python's `re` on "aaa…ab"; rattler's is linear.
    up = upstream(
        rec("app", "1", "linux-64", ["dep * ^(a+)+$"], build="x"),
        rec("dep", "1", "linux-64", build="a" * 60 + "b"),
        rec("dep", "2", "linux-64", build="a" * 60),
    )
    found: list[Selection] = []
    worker = threading.Thread(
        target=lambda: found.append(run(up, {"include": [{"name": "app"}]})), daemon=True
    )
    worker.start()
    worker.join(timeout=60)  # a hang, not a slow run: Python's re would need ~2**60 steps
    assert found, "selection did not finish"
    assert chosen(found[0]) == ["linux-64/app-1-x.conda", f"linux-64/dep-2-{'a' * 60}.conda"]


# -- warnings for what exclude rules take away -----------------------------------------


def test_an_excluded_dependency_is_a_warning_with_a_stable_key() -> None:
    up = upstream(
        rec("cli", "1.0", "linux-64", ["readline >=8"], build="0"),
        rec("readline", "8.2", "linux-64", build="0", license="GPL-3.0-only"),
        rec("readline", "8.1", "linux-64", build="0", license="GPL-3.0-only"),
    )
    mirror = {"include": [{"name": "cli"}]}
    channel = {"exclude": [{"license": "GPL"}]}
    result = run(up, mirror, channel)
    assert chosen(result) == ["linux-64/cli-1.0-0.conda"]
    assert result.warnings == [
        SelectionWarning(
            "excluded-dependency|linux-64/cli-1.0-0.conda|readline >=8|linux-64|"
            "channels[0].filters.exclude[0] (license: GPL)",
            "linux-64/cli-1.0-0.conda needs 'readline >=8', but readline-8.2-0.conda is "
            "excluded by channels[0].filters.exclude[0] (license: GPL)",
        )
    ]
    assert str(result.warnings[0]) == result.warnings[0].message
    # Another run, another upstream order: the same warning, the same key.
    shuffled = {s: dict(reversed(list(r.items()))) for s, r in up.items()}
    assert run(shuffled, mirror, channel).warnings == result.warnings


def test_a_warning_follows_what_cannot_be_installed_to_the_rule() -> None:
    up = upstream(
        rec("tool", "1.0", "linux-64", ["helper"], build="0"),
        rec("helper", "1.0", "linux-64", ["gpl-thing >=1"], build="0"),
        rec("gpl-thing", "1.0", "linux-64", build="0", license="GPL-2.0-or-later"),
    )
    result = run(up, {"include": [{"name": "tool"}]}, {"exclude": [{"license": "GPL"}]})
    assert chosen(result) == ["linux-64/tool-1.0-0.conda"]
    (warning,) = result.warnings
    assert warning.message == (
        "linux-64/tool-1.0-0.conda needs 'helper', but no candidate of it can be installed "
        "(helper-1.0-0.conda needs 'gpl-thing >=1', but gpl-thing-1.0-0.conda is excluded "
        "by channels[0].filters.exclude[0] (license: GPL))"
    )
    assert warning.key.endswith("|channels[0].filters.exclude[0] (license: GPL)")


def test_a_noarch_record_blocked_on_one_platform_names_it() -> None:
    up = upstream(
        rec("python", "3.12.0", "linux-64", build="l"),
        rec("python", "3.12.0", "osx-arm64", build="o"),
        rec("tqdm", "4.66", depends=["python >=3.8"], build="n"),
    )
    mirror = {"include": [{"name": "tqdm"}], "exclude": [{"name": "python", "subdir": "osx-*"}]}
    result = run(up, mirror)
    assert chosen(result) == ["linux-64/python-3.12.0-l.conda", "noarch/tqdm-4.66-n.conda"]
    assert [w.message for w in result.warnings] == [
        "noarch/tqdm-4.66-n.conda needs 'python >=3.8' on osx-arm64, but "
        "osx-arm64/python-3.12.0-o.conda is excluded by "
        "channels[0].mirrors[0].filters.exclude[0] (name: python, subdir: osx-*)"
    ]


def test_no_warning_while_another_candidate_is_allowed() -> None:
    up = upstream(
        rec("app", "1", "linux-64", ["lib"], build="a"),
        rec("lib", "2", "linux-64", build="0", license="GPL-3.0-only"),
        rec("lib", "1", "linux-64", build="0"),
    )
    result = run(up, {"include": [{"name": "app"}]}, {"exclude": [{"license": "GPL"}]})
    assert chosen(result) == ["linux-64/app-1-a.conda", "linux-64/lib-1-0.conda"]
    assert result.warnings == []


def test_include_date_and_latest_do_not_apply_to_dependencies() -> None:
    up = upstream(
        rec("app", "2", "linux-64", ["lib <2"], build="a", timestamp=1_700_000_000_000),
        rec("lib", "1", "linux-64", build="0", timestamp=1_500_000_000_000),
        rec("lib", "2", "linux-64", build="0", timestamp=1_700_000_000_000),
    )
    mirror = {"include": [{"name": "app"}], "date": {"after": "2020-01-01"}, "latest": 1}
    result = run(up, mirror)
    assert chosen(result) == ["linux-64/app-2-a.conda", "linux-64/lib-1-0.conda"]
    assert result.decisions[("linux-64", "lib-2-0.conda")].selected is False


# -- the solver's view, on random upstreams ----------------------------------------------

NAMES = ("python", "lib", "util", "app")
SPECS = ("", " >=2", " <3", " 2.*", " >=3")


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Upstream, dict[str, Any], dict[str, Any]]:
    records = []
    count = draw(st.integers(2, 9))
    for i in range(count):
        name = draw(st.sampled_from(NAMES))
        subdir = draw(st.sampled_from(PLATFORMS if name == "python" else (*PLATFORMS, "noarch")))
        depends = draw(
            st.lists(
                st.tuples(st.sampled_from(NAMES), st.sampled_from(SPECS)).map("".join),
                max_size=2,
                unique_by=lambda spec: spec.split()[0],
            )
        )
        depends = [d for d in depends if d.split()[0] != name]
        version = draw(st.sampled_from(("1.0", "2.0", "2.5", "3.0")))
        licence = draw(st.sampled_from(("MIT", "MIT", "GPL-3.0-only")))
        records.append(rec(name, version, subdir, depends, build=f"b{i}", license=licence))
        if draw(st.integers(0, 4)) == 0:  # the same package in both formats
            records.append(
                rec(name, version, subdir, depends, f"b{i}", ".tar.bz2", license=licence)
            )
    up = upstream(*records)
    mirror = {"include": [{"name": draw(st.sampled_from(NAMES[1:]))}]}
    channel = draw(
        st.sampled_from(
            [
                {},
                {"exclude": [{"license": "GPL"}]},
                {"exclude": [{"spec": "python >=3"}]},
                {"exclude": [{"name": "python", "subdir": "osx-*"}, {"spec": "lib <2"}]},
            ]
        )
    )
    return up, mirror, channel


@budget(150)
@given(world=worlds())
def test_what_the_upstream_can_install_the_mirror_can(
    world: tuple[Upstream, dict[str, Any], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    up, mirror_block, channel_block = world
    channel, mirror = engines(mirror_block, channel_block)
    result = select(up, channel, mirror, dependencies=True)
    # The upstream as the mirror may use it: its subdirs, less what exclude rules remove.
    allowed = {
        (s, f): r
        for s, records in up.items()
        for f, r in records.items()
        if channel.exclusion(Candidate(s, f, r)) is None
        and mirror.exclusion(Candidate(s, f, r)) is None
    }
    folder = tmp_path_factory.mktemp("world")
    restricted = write_channel(folder / "upstream", allowed, PLATFORMS)
    mirrored = write_channel(folder / "mirror", result.selected, PLATFORMS)
    assert set(result.selected) <= set(allowed)
    selected = sorted(result.selected.items())
    for (subdir, _), record in selected:
        for platform in PLATFORMS if subdir == "noarch" else (subdir,):
            # Each selected record alone, and with each other one: every environment
            # around the selection that the upstream has, the mirror has.
            for _, other in selected:
                if other["name"] == record["name"] and other is not record:
                    continue
                specs = list(dict.fromkeys([exact(record), exact(other)]))
                expected = solve(restricted, specs, platform) is not None
                assert (solve(mirrored, specs, platform) is not None) == expected, (
                    specs,
                    platform,
                    sorted(result.selected),
                    [str(w) for w in result.warnings],
                )


def test_a_version_only_dependency_is_matched_once_per_version_not_per_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconciler.conda import matching

    # lib 1.0 and 2.0 with eight builds each; app needs lib >=2.
    libs = [
        rec("lib", version, "linux-64", build=f"py3{i}h0_0")
        for version in ("1.0", "2.0")
        for i in range(8)
    ]
    app = rec("app", "1.0", "linux-64", depends=["lib >=2"])
    up = upstream(app, *libs)
    asked: list[str] = []
    matches = matching.DependencySpec.matches

    def counting(self: matching.DependencySpec, view: matching.RecordView) -> bool:
        asked.append(str(view.record["version"]))
        return matches(self, view)

    monkeypatch.setattr(matching.DependencySpec, "matches", counting)
    selection = run(up, {"include": [{"name": "app"}]})
    assert chosen(selection) == sorted(
        [f"linux-64/{app[1]}", *(f"linux-64/lib-2.0-py3{i}h0_0.conda" for i in range(8))]
    )
    assert sorted(asked) == ["1.0", "2.0"]  # not 16 calls: one per version
