"""The filter engine and mirror selection on random records and random filter blocks.

Properties that hold whatever the records and the blocks:

* a decision never depends on the order the records come in (upstreams list them in
  any order; a re-ordered repodata is the same repodata);
* records of other names never change a decision: rules look at one record, ``latest``
  ranks versions within one name. With ``dependencies`` this holds for records that
  neither depend on the original names nor are depended on by them, since a dependency
  pulls its target in by name;
* a mirror selects a record only if both the channel's and the mirror's blocks let it
  through, or a selected record depends on it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from reconciler import cli
from reconciler.config.models import FilterBlock
from reconciler.errors import ExitCode
from reconciler.filters import Candidate, Decision, FilterEngine, _version
from reconciler.kinds.conda.indexer import index_channel
from reconciler.kinds.conda.select import Selection, select
from tests.fuzz.common import budget, utc
from tests.packages import PackageSpec, build_package

NAMES = ("alpha", "beta", "libgamma", "gpl-tool")
OTHER_NAMES = ("zeta", "zlib-other")  # never named by the records above
VERSIONS = (
    "1.0",
    "1.0.0",
    "1.0.0.0",
    "1.1",
    "1.10",
    "2.0a1",
    "2.0",
    "2.0.post1",
    "10",
    "1!0.1",
    "1.0+local",
    "x!y",
    "",
)
LICENSES = (
    "MIT",
    "GPL-3.0-only",
    "GPL-2.0-or-later",
    "BSD-3-Clause OR GPL-2.0-only",
    "LGPL-2.1",
    "GPL-2.0-only AND MIT",
    "AGPL-3.0",
    "Proprietary",
    None,
)
FAMILIES = ("MIT", "GPL", "GPL3", "LGPL", "BSD", None)
TIMESTAMPS = (None, 1_600_000_000_000, 1_700_000_000_000, 1_700_000_000, 0, -5, 2**63, 1.5e12)
SUBDIRS = ("linux-64", "noarch", "win-64")


def depends_on(names: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    specs = st.one_of(
        st.sampled_from(names),
        st.tuples(st.sampled_from(names), st.sampled_from([">=1.0", "<2", "1.0.*", "==10"])).map(
            " ".join
        ),
    )
    return st.lists(specs, max_size=3)


def records_of(names: tuple[str, ...]) -> st.SearchStrategy[list[Candidate]]:
    """Candidates with distinct (subdir, filename) keys, as one upstream holds them."""
    one = st.builds(
        lambda name, version, build, number, suffix, subdir, lic, family, stamp, deps: Candidate(
            subdir,
            f"{name}-{version}-{build}_{number}{suffix}",
            {
                "name": name,
                "version": version,
                "build": f"{build}_{number}",
                "build_number": number,
                "license": lic,
                "license_family": family,
                "timestamp": stamp,
                "depends": deps,
            },
        ),
        st.sampled_from(names),
        st.sampled_from(VERSIONS),
        st.sampled_from(["py311", "h1234", "0"]),
        st.integers(0, 2),
        st.sampled_from([".conda", ".tar.bz2"]),
        st.sampled_from(SUBDIRS),
        st.sampled_from(LICENSES),
        st.sampled_from(FAMILIES),
        st.sampled_from(TIMESTAMPS),
        depends_on(names),
    )
    return st.lists(one, max_size=14, unique_by=lambda c: c.key)


RULE_VALUES: dict[str, st.SearchStrategy[str]] = {
    "name": st.sampled_from(["alpha", "lib*", "*", "b?ta", "[ab]*", "zeta"]),
    "version": st.sampled_from([">=1.1", "<2", "1.0.*", "==1.0", ">=2.0a0"]),
    "build": st.sampled_from(["py311*", "*_0", "h1234_1", "0"]),
    "spec": st.sampled_from(["alpha >=1.0", "beta 2.0*", "libgamma * *_1", "gpl-tool"]),
    "license": st.sampled_from(["GPL", "MIT", "GPL-3.0-only", "LGPL", "BSD-3-Clause"]),
    "license_family": st.sampled_from(["GPL", "MIT", "BSD"]),
    "subdir": st.sampled_from(["win-*", "noarch", "linux-*"]),
}
# One or two keys, AND-ed.
rule = st.lists(st.sampled_from(sorted(RULE_VALUES)), min_size=1, max_size=2, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({key: RULE_VALUES[key] for key in keys})
)
exclude_rule = st.tuples(rule, st.lists(rule, max_size=2)).map(
    lambda pair: {**pair[0], "except": pair[1]} if pair[1] else pair[0]
)
STAMPS = (utc(2020), utc(2023, 11, 14), utc(2023, 11, 15), utc(2030))
date_window = st.sampled_from(
    [(None, None), *((a, None) for a in STAMPS), *((None, b) for b in STAMPS)]
    + [(a, b) for a in STAMPS for b in STAMPS if a < b]
)


@st.composite
def blocks(draw: st.DrawFn, includes: bool = True) -> FilterBlock:
    data: dict[str, Any] = {}
    if includes and draw(st.booleans()):
        data["include"] = draw(st.lists(rule, min_size=1, max_size=3))
    if draw(st.booleans()):
        data["exclude"] = draw(st.lists(exclude_rule, min_size=1, max_size=3))
    after, before = draw(st.one_of(st.just((None, None)), date_window))
    if after or before:
        data["date"] = {k: v for k, v in (("after", after), ("before", before)) if v}
    if draw(st.booleans()):
        data["latest"] = draw(st.integers(1, 3))
    data["dependencies"] = draw(st.booleans())
    return FilterBlock.model_validate(data)


def decisions(engine: FilterEngine, candidates: list[Candidate]) -> dict[tuple[str, str], Decision]:
    return engine.evaluate(candidates)


def shuffled(items: list[Any], seed: int) -> list[Any]:
    copy = list(items)
    random.Random(seed).shuffle(copy)
    return copy


@budget(300)
@given(candidates=records_of(NAMES), block=blocks(), seed=st.integers(0, 2**16))
def test_decisions_do_not_depend_on_record_order(
    candidates: list[Candidate], block: FilterBlock, seed: int
) -> None:
    engine = FilterEngine(block)
    expected = decisions(engine, candidates)
    assert set(expected) == {c.key for c in candidates}
    assert decisions(engine, shuffled(candidates, seed)) == expected
    assert decisions(engine, list(reversed(candidates))) == expected


@budget(300)
@given(
    candidates=records_of(NAMES),
    others=records_of(OTHER_NAMES),
    block=blocks(),
    seed=st.integers(0, 2**16),
)
def test_records_of_other_names_change_no_decision(
    candidates: list[Candidate], others: list[Candidate], block: FilterBlock, seed: int
) -> None:
    engine = FilterEngine(block)
    expected = decisions(engine, candidates)
    mixed = decisions(engine, shuffled(candidates + others, seed))
    assert {k: v for k, v in mixed.items() if k in expected} == expected


@budget(200)
@given(candidates=records_of(NAMES), block=blocks())
def test_without_latest_each_decision_is_the_record_alone(
    candidates: list[Candidate], block: FilterBlock
) -> None:
    engine = FilterEngine(block.model_copy(update={"latest": None}))
    assert engine.per_record
    together = decisions(engine, candidates)
    for candidate in candidates:
        assert decisions(engine, [candidate])[candidate.key] == together[candidate.key]


# -- mirror selection ----------------------------------------------------------------


def upstream_of(candidates: list[Candidate]) -> dict[str, dict[str, dict[str, Any]]]:
    upstream: dict[str, dict[str, dict[str, Any]]] = {}
    for c in candidates:
        upstream.setdefault(c.subdir, {})[c.filename] = dict(c.record)
    return upstream


def selected(selection: Selection) -> dict[tuple[str, str], tuple[bool, str]]:
    return {k: (d.selected, d.reason) for k, d in selection.decisions.items()}


@budget(300)
@given(
    candidates=records_of(NAMES),
    channel=blocks(),
    mirror=blocks(),
    seed=st.integers(0, 2**16),
)
def test_selection_does_not_depend_on_upstream_order(
    candidates: list[Candidate], channel: FilterBlock, mirror: FilterBlock, seed: int
) -> None:
    engines = (FilterEngine(channel, "c"), FilterEngine(mirror, "m"))
    first = select(upstream_of(candidates), *engines, dependencies=mirror.dependencies)
    again = select(
        upstream_of(shuffled(candidates, seed)), *engines, dependencies=mirror.dependencies
    )
    assert selected(again) == selected(first)
    assert set(again.selected) == set(first.selected)
    assert sorted(again.warnings) == sorted(first.warnings)


@budget(300)
@given(
    candidates=records_of(NAMES),
    others=records_of(OTHER_NAMES),
    channel=blocks(),
    mirror=blocks(),
    seed=st.integers(0, 2**16),
)
def test_selection_of_unrelated_names_is_independent(
    candidates: list[Candidate],
    others: list[Candidate],
    channel: FilterBlock,
    mirror: FilterBlock,
    seed: int,
) -> None:
    # ``others`` depend only on OTHER_NAMES and nothing of NAMES depends on them.
    engines = (FilterEngine(channel, "c"), FilterEngine(mirror, "m"))
    alone = select(upstream_of(candidates), *engines, dependencies=mirror.dependencies)
    mixed = select(
        upstream_of(shuffled(candidates + others, seed)), *engines, dependencies=mirror.dependencies
    )
    assert {k: v for k, v in selected(mixed).items() if k in alone.decisions} == selected(alone)


@budget(300)
@given(candidates=records_of(NAMES), channel=blocks(), mirror=blocks())
def test_selected_means_both_blocks_agree_or_a_dependency(
    candidates: list[Candidate], channel: FilterBlock, mirror: FilterBlock
) -> None:
    c_engine, m_engine = FilterEngine(channel, "c"), FilterEngine(mirror, "m")
    plain = select(upstream_of(candidates), c_engine, m_engine, dependencies=False)
    both = {
        key
        for key, decision in m_engine.evaluate(candidates).items()
        if decision.selected and c_engine.evaluate(candidates)[key].selected
    }
    assert set(plain.selected) == both
    with_deps = select(upstream_of(candidates), c_engine, m_engine, dependencies=True)
    assert set(with_deps.selected) >= set(plain.selected)
    for key in set(with_deps.selected) - set(plain.selected):
        assert with_deps.decisions[key].reason.startswith("dependency of "), with_deps.decisions[
            key
        ]
        # A dependency is never one that an exclude rule removes.
        candidate = Candidate(key[0], key[1], with_deps.records[key])
        assert c_engine.exclusion(candidate) is None and m_engine.exclusion(candidate) is None


@budget(200)
@given(candidates=records_of(NAMES), latest=st.integers(1, 3))
def test_equal_versions_are_kept_or_dropped_together(
    candidates: list[Candidate], latest: int
) -> None:
    # 1.0 and 1.0.0 are one version to conda: ``latest`` keeps both or neither in a
    # subdir (a choice between them would follow the hash order of a set, which
    # differs per run).
    result = decisions(FilterEngine(FilterBlock(latest=latest)), candidates)
    for a in candidates:
        for b in candidates:
            va, vb = _version(str(a.record["version"])), _version(str(b.record["version"]))
            same = a.name == b.name and a.subdir == b.subdir
            if same and va is not None and vb is not None and va == vb:
                assert result[a.key].selected == result[b.key].selected, (a, b)


@budget(200)
@given(candidates=records_of(NAMES), latest=st.integers(1, 3))
def test_latest_counts_each_subdir_alone(candidates: list[Candidate], latest: int) -> None:
    # What ``latest`` keeps in one subdir is what it keeps from that subdir's records alone.
    engine = FilterEngine(FilterBlock(latest=latest))
    together = decisions(engine, candidates)
    for subdir in {c.subdir for c in candidates}:
        alone = decisions(engine, [c for c in candidates if c.subdir == subdir])
        assert {k: v for k, v in together.items() if k[0] == subdir} == alone


# Packages that need one library, under specs its versions meet differently: which
# library versions are pulled in must not depend on the order the upstream lists them.
LIB_VERSIONS = ("1.0", "1.1", "1.10", "2.0", "10")
dependency_worlds = st.tuples(
    st.lists(
        st.tuples(
            st.sampled_from(["app", "tool", "cli"]),
            st.lists(
                st.sampled_from(["lib", "lib >=1.0", "lib <2", "lib 1.1.*", "lib >=2,<10", "x"]),
                min_size=1,
                max_size=2,
            ),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda pair: pair[0],
    ),
    st.lists(
        st.tuples(st.sampled_from(LIB_VERSIONS), st.sampled_from([".conda", ".tar.bz2"])),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    st.sampled_from(["linux-64", "noarch"]),
)


@budget(200)
@given(world=dependency_worlds, seed=st.integers(0, 2**16), excluded=st.sampled_from(["", "<2"]))
def test_dependency_choice_does_not_depend_on_upstream_order(
    world: tuple[list[tuple[str, list[str]]], list[tuple[str, str]], str], seed: int, excluded: str
) -> None:
    apps, libs, lib_subdir = world
    candidates = [
        Candidate(
            "linux-64", f"{name}-1.0-0.conda", {"name": name, "version": "1.0", "depends": deps}
        )
        for name, deps in apps
    ] + [
        Candidate(lib_subdir, f"lib-{v}-0{suffix}", {"name": "lib", "version": v, "build": "0"})
        for v, suffix in libs
    ]
    mirror = FilterBlock.model_validate(
        {
            "include": [{"name": name} for name, _ in apps],
            "exclude": [{"spec": f"lib {excluded}"}] if excluded else [],
            "dependencies": True,
        }
    )
    engines = (FilterEngine(FilterBlock(), "c"), FilterEngine(mirror, "m"))
    first = select(upstream_of(candidates), *engines, dependencies=True)
    for order in (shuffled(candidates, seed), list(reversed(candidates))):
        again = select(upstream_of(order), *engines, dependencies=True)
        assert set(again.selected) == set(first.selected)
        assert selected(again) == selected(first)
        assert again.warnings == first.warnings


# -- explain agrees with what apply published ----------------------------------------

UPSTREAM_SPECS: list[tuple[PackageSpec, str]] = [
    (PackageSpec("alpha", "1.0", subdir="linux-64", timestamp=1_690_000_000_000), ".conda"),
    (PackageSpec("alpha", "1.0", subdir="linux-64", timestamp=1_690_000_000_000), ".tar.bz2"),
    (
        PackageSpec(
            "alpha", "1.1", subdir="linux-64", depends=["libgamma >=2"], timestamp=1_705_000_000_000
        ),
        ".conda",
    ),
    (PackageSpec("alpha", "2.0a1", subdir="linux-64", depends=["libgamma"]), ".conda"),
    (PackageSpec("beta", "2.0", noarch="generic", depends=["alpha <2", "gpl-tool"]), ".conda"),
    (PackageSpec("beta", "2.0.1", noarch="generic", license="BSD-3-Clause"), ".tar.bz2"),
    (
        PackageSpec(
            "libgamma", "2.0", subdir="linux-64", license="LGPL-2.1", license_family="LGPL"
        ),
        ".conda",
    ),
    (PackageSpec("libgamma", "1.0", subdir="linux-64", build="1"), ".conda"),
    (
        PackageSpec(
            "gpl-tool", "3.0", noarch="generic", license="GPL-3.0-only", license_family="GPL3"
        ),
        ".conda",
    ),
    (PackageSpec("win-only", "1.0", subdir="win-64"), ".conda"),
]
LOCAL_SPECS = [
    PackageSpec("mine", "1.0", subdir="linux-64", license="GPL-2.0-only"),
    PackageSpec("ours", "0.1", noarch="generic"),
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("upstream")
    for spec, fmt in UPSTREAM_SPECS:
        build_package(root, spec, fmt)
    index_channel(root)
    return root


@pytest.fixture(scope="module")
def local_packages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("local")
    return [build_package(root, spec) for spec in LOCAL_SPECS]


def block_yaml(block: FilterBlock) -> dict[str, Any]:
    data: dict[str, Any] = block.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return data


def published(channel: Path) -> set[tuple[str, str]]:
    names = set()
    for subdir in ("linux-64", "noarch", "win-64"):
        path = channel / subdir / "repodata.json"
        if path.exists():
            data = json.loads(path.read_bytes())
            names |= {(subdir, n) for n in (*data["packages"], *data["packages.conda"])}
    return names


@budget(20)
@given(
    # A channel's block usually only excludes; two blocks that both include leave
    # little in, and an empty channel agrees with anything.
    channel_block=blocks(includes=False),
    mirror_block=blocks(),
    mode=st.sampled_from(["active", "passive"]),
    locals_in=st.booleans(),
)
def test_explain_agrees_with_what_apply_published(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    upstream: Path,
    local_packages: list[Path],
    channel_block: FilterBlock,
    mirror_block: FilterBlock,
    mode: str,
    locals_in: bool,
) -> None:
    root = tmp_path_factory.mktemp("project")
    channel = root / "chan"
    if locals_in:
        for package in local_packages:
            (channel / package.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(package, channel / package.parent.name / package.name)
    config = root / "channels.yaml"
    mirror: dict[str, Any] = {"name": "up", "source": str(upstream), "mode": mode}
    mirror["filters"] = block_yaml(mirror_block)
    document = {
        "version": 1,
        "channels": [
            {
                "name": "chan",
                "path": "./chan",
                "subdirs": ["linux-64", "win-64", "noarch"],
                "filters": block_yaml(channel_block),
                "mirrors": [mirror],
            }
        ],
    }
    config.write_text(yaml.safe_dump(document))
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK, capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(["explain", "*", "--json", "-c", str(config)]) == ExitCode.OK
    explained = json.loads(capsys.readouterr().out)
    said_in = {(e["location"], e["name"]) for e in explained if e["selected"]}
    said_out = {(e["location"], e["name"]) for e in explained if not e["selected"]}
    on_disk = published(channel)
    event(f"{len(on_disk)} published, {len(said_out)} left out")
    assert said_in == on_disk, (said_in ^ on_disk, explained)
    assert not said_out & on_disk
    # Every upstream package is explained, in or out.
    listed = {(spec.subdir, f"{spec.stem}{fmt}") for spec, fmt in UPSTREAM_SPECS}
    assert listed <= said_in | said_out
