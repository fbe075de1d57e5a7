"""current_repodata.json selection: newest, pins, dependency closure, features, .conda first."""

from __future__ import annotations

import random
from typing import Any

import pytest

from reconciler.conda.current_repodata import build_current_repodata, parse_dependency
from reconciler.conda.repodata import build_repodata


def rec(name: str, version: str, build: str = "0", **extra: Any) -> tuple[str, dict[str, Any]]:
    fmt = extra.pop("fmt", ".conda")
    record = {"name": name, "version": version, "build": build, "build_number": 0, **extra}
    return f"{name}-{version}-{build}{fmt}", record


def current(*records: tuple[str, dict[str, Any]], pins: Any = None) -> list[str]:
    repodata = build_repodata("linux-64", dict(records))
    result = build_current_repodata("linux-64", repodata, pins)
    return sorted([*result["packages"], *result["packages.conda"]])


def test_newest_by_conda_version_order_with_all_its_builds() -> None:
    # As strings, "1.9" > "1.10" and "1.10a1" > "1.10".
    assert current(
        rec("a", "1.9"), rec("a", "1.10"), rec("a", "1.10", "1"), rec("a", "1.10a1")
    ) == ["a-1.10-0.conda", "a-1.10-1.conda"]
    assert current(rec("b", "2.0rc1"), rec("b", "1.99")) == ["b-2.0rc1-0.conda"]


def test_equal_versions_written_differently_are_one_version() -> None:
    assert current(rec("a", "1.10"), rec("a", "1.10.0", "1"), rec("a", "1.9")) == [
        "a-1.10-0.conda",
        "a-1.10.0-1.conda",
    ]


def test_unsatisfied_dependency_pulls_newest_match_transitively() -> None:
    result = current(
        rec("app", "2.0", depends=["lib <2"]),
        rec("lib", "1.0", depends=["base 1.*"]),
        rec("lib", "1.5", "0", depends=["base 1.*"]),
        rec("lib", "1.5", "1", depends=["base 1.*"]),
        rec("lib", "2.0"),
        rec("base", "1.2"),
        rec("base", "1.10"),
        rec("base", "2.0"),
        rec("other", "1.0", depends=["notinthissubdir", "lib >=1.0", "app >=9"]),
    )
    assert result == [
        "app-2.0-0.conda",
        "base-1.10-0.conda",  # newest 1.*, through lib 1.5
        "base-2.0-0.conda",
        "lib-1.5-0.conda",  # every build of the version that fills the gap
        "lib-1.5-1.conda",
        "lib-2.0-0.conda",
        "other-1.0-0.conda",
    ]


def test_dependency_with_build_and_build_number() -> None:
    result = current(
        rec("app", "1", depends=["py 3.11.* *_cp311", "lib[build_number='>=2']"]),
        rec("py", "3.12.0", "h0_cp312"),
        rec("py", "3.11.4", "h0_cp311"),
        rec("py", "3.11.9", "h1_cp311"),
        rec("py", "3.11.9", "h1_pypy"),
        rec("lib", "1.0", "a", build_number=2),
        rec("lib", "1.0", "b", build_number=1),
        rec("lib", "2.0", build_number=0),
    )
    assert result == [
        "app-1-0.conda",
        "lib-1.0-a.conda",
        "lib-1.0-b.conda",
        "lib-2.0-0.conda",
        "py-3.11.9-h1_cp311.conda",
        "py-3.11.9-h1_pypy.conda",
        "py-3.12.0-h0_cp312.conda",
    ]


def test_dependency_already_met_by_newest_pulls_nothing() -> None:
    assert current(
        rec("app", "1", depends=["lib >=1.0", "lib <3"]), rec("lib", "2.0"), rec("lib", "1.5")
    ) == ["app-1-0.conda", "lib-2.0-0.conda"]


def test_pins_keep_more_versions() -> None:
    records = [rec("python", v) for v in ("3.1.0", "3.10.4", "3.11.2", "3.11.9", "3.12.1")]
    assert current(*records, pins={"python": ["3.11", "3.1", "2.7"]}) == [
        "python-3.1.0-0.conda",
        "python-3.11.9-0.conda",
        "python-3.12.1-0.conda",
    ]
    assert current(*records, pins={"python": "3.10"}) == [
        "python-3.10.4-0.conda",
        "python-3.12.1-0.conda",
    ]
    assert current(*records, pins={"python": [">=3.10,<3.11"], "absent": ["1"]}) == [
        "python-3.10.4-0.conda",
        "python-3.12.1-0.conda",
    ]


def test_pinned_versions_bring_their_dependencies() -> None:
    assert current(
        rec("python", "3.12.0", depends=["openssl >=3"]),
        rec("python", "3.10.0", depends=["openssl <3"]),
        rec("openssl", "3.1"),
        rec("openssl", "1.1.1w"),
        pins={"python": ["3.10"]},
    ) == [
        "openssl-1.1.1w-0.conda",
        "openssl-3.1-0.conda",
        "python-3.10.0-0.conda",
        "python-3.12.0-0.conda",
    ]


def test_conda_preferred_over_tar_bz2_twin() -> None:
    assert current(
        rec("a", "1.0"),
        rec("a", "1.0", fmt=".tar.bz2"),
        rec("a", "0.9", fmt=".tar.bz2"),
        rec("b", "1", fmt=".tar.bz2"),
    ) == ["a-1.0-0.conda", "b-1-0.tar.bz2"]


def test_newest_tar_bz2_beats_older_conda() -> None:
    assert current(rec("a", "2.0", fmt=".tar.bz2"), rec("a", "1.0")) == ["a-2.0-0.tar.bz2"]


def test_featured_newest_keeps_a_plain_build_and_its_dependencies() -> None:
    assert current(
        rec("blas", "2.0", "mkl", track_features="mkl"),
        rec("blas", "1.9", "openblas", depends=["openblas 0.2.*"]),
        rec("blas", "1.8", "openblas"),
        rec("openblas", "0.3"),
        rec("openblas", "0.2"),
    ) == [
        "blas-1.9-openblas.conda",
        "blas-2.0-mkl.conda",
        "openblas-0.2-0.conda",
        "openblas-0.3-0.conda",
    ]
    # One plain record kept for a dependency is not enough: the newest plain one joins.
    assert current(
        rec("blas", "2.0", "mkl", track_features="mkl"),
        rec("blas", "1.9", "openblas"),
        rec("blas", "1.5", "openblas"),
        rec("app", "1", depends=["blas <1.6"]),
    ) == [
        "app-1-0.conda",
        "blas-1.5-openblas.conda",
        "blas-1.9-openblas.conda",
        "blas-2.0-mkl.conda",
    ]
    # A plain record kept for a pin is not enough either.
    assert current(
        rec("blas", "2.0", "mkl", track_features="mkl"),
        rec("blas", "1.9", "openblas"),
        rec("blas", "1.5", "openblas"),
        pins={"blas": ["1.5"]},
    ) == ["blas-1.5-openblas.conda", "blas-1.9-openblas.conda", "blas-2.0-mkl.conda"]
    # A plain build of the newest version is already there: nothing older is added.
    assert current(
        rec("blas", "2.0", "mkl", features="mkl"),
        rec("blas", "2.0", "openblas"),
        rec("blas", "1.9", "openblas"),
    ) == ["blas-2.0-mkl.conda", "blas-2.0-openblas.conda"]


def test_result_does_not_depend_on_record_order() -> None:
    records = [
        rec("app", "1", depends=["lib <1.3", "tool"]),
        rec("tool", "1", depends=["lib >=1.1,<1.4"]),
        *(rec("lib", f"1.{minor}") for minor in range(5)),
    ]
    expected = current(*records)
    shuffled = list(records)
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        repodata = build_repodata("linux-64", {})
        repodata["packages.conda"] = dict(shuffled)  # unsorted on purpose
        result = build_current_repodata("linux-64", repodata)
        assert sorted(result["packages.conda"]) == expected


def test_unparseable_versions_and_specs_are_skipped() -> None:
    assert current(
        rec("a", "1.0", depends=["b >=>=1", 7]), rec("a", "not a version!"), rec("b", "1")
    ) == ["a-1.0-0.conda", "b-1-0.conda"]


def test_shape_records_shared_and_other_keys_kept() -> None:
    repodata = build_repodata("linux-64", dict([rec("a", "1.0"), rec("b", "1", fmt=".tar.bz2")]))
    repodata["removed"] = ["a-0.9-0.conda"]
    repodata["info"]["base_url"] = "https://example.org/c/linux-64/"
    result = build_current_repodata("linux-64", repodata)
    assert result == {
        "info": {"subdir": "linux-64", "base_url": "https://example.org/c/linux-64/"},
        "packages": {"b-1-0.tar.bz2": repodata["packages"]["b-1-0.tar.bz2"]},
        "packages.conda": {"a-1.0-0.conda": repodata["packages.conda"]["a-1.0-0.conda"]},
        "removed": ["a-0.9-0.conda"],
        "repodata_version": 1,
    }
    assert result["packages.conda"]["a-1.0-0.conda"] is repodata["packages.conda"]["a-1.0-0.conda"]
    assert result["removed"] is not repodata["removed"]
    assert build_current_repodata("noarch", {})["info"] == {"subdir": "noarch"}


@pytest.mark.parametrize(
    ("spec", "record", "expected"),
    [
        ("numpy >=1.26", {"name": "numpy", "version": "1.26.4"}, True),
        ("numpy >=1.26", {"name": "numpy", "version": "1.9"}, False),
        ("numpy 1.26.*", {"name": "numpy", "version": "1.26"}, True),
        ("numpy 1.2.*", {"name": "numpy", "version": "1.26"}, False),
        ("numpy", {"name": "scipy", "version": "1"}, False),
        ("numpy * py3*_0", {"name": "numpy", "version": "1", "build": "py311_0"}, True),
        ("numpy * py3*_0", {"name": "numpy", "version": "1", "build": "py311_1"}, False),
        ("numpy * ^py3.*_(0|1)$", {"name": "numpy", "version": "1", "build": "py311_1"}, True),
        ("numpy * ^py3.*_(0|1)$", {"name": "numpy", "version": "1", "build": "py311_2"}, False),
        ("numpy=1.2=py_0", {"name": "numpy", "version": "1.2", "build": "py_0"}, True),
        (
            "numpy[build_number='>3']",
            {"name": "numpy", "version": "1", "build": "0", "build_number": 3},
            False,
        ),
        (
            "numpy[build_number='>3']",
            {"name": "numpy", "version": "1", "build": "0", "build_number": 4},
            True,
        ),
        # An upstream's regex runs in rattler's linear-time engine: no backtracking.
        ("numpy * ^(a+)+$", {"name": "numpy", "version": "1", "build": "a" * 64 + "b"}, False),
        ("numpy * ^(a+)+$", {"name": "numpy", "version": "1", "build": "a" * 64}, True),
    ],
)
def test_parse_dependency_matches_like_conda(
    spec: str, record: dict[str, Any], expected: bool
) -> None:
    dependency = parse_dependency(spec)
    assert dependency is not None
    assert dependency.matches_record(record) is expected


def test_ten_thousand_records_are_fast() -> None:
    import time

    records: dict[str, dict[str, Any]] = {}
    for i in range(2000):
        for minor in range(5):
            name = f"pkg{i}"
            fn, record = rec(name, f"1.{minor}", depends=[f"pkg{(i * 7 + 3) % 2000} <1.{minor}"])
            records[fn] = record
    repodata = build_repodata("linux-64", records)
    start = time.perf_counter()
    result = build_current_repodata("linux-64", repodata)
    elapsed = time.perf_counter() - start
    # Each newest record needs an older version of another name, which needs an older
    # one still: the closure walks every chain down to 1.0.
    assert len(result["packages.conda"]) == len(records)
    assert elapsed < 5  # about 0.1 s; a quadratic slip takes minutes
