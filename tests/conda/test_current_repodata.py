"""current_repodata.json selection: newest, pins, dependency closure, .conda first."""

from __future__ import annotations

from typing import Any

from reconciler.conda.current_repodata import build_current_repodata
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
    assert current(
        rec("a", "1.9"), rec("a", "1.10"), rec("a", "1.10", "1"), rec("a", "1.10a1")
    ) == ["a-1.10-0.conda", "a-1.10-1.conda"]


def test_unsatisfied_dependency_pulls_newest_match_transitively() -> None:
    result = current(
        rec("app", "2.0", depends=["lib <2"]),
        rec("lib", "1.0", depends=["base 1.*"]),
        rec("lib", "1.5", depends=["base 1.*"]),
        rec("lib", "2.0"),
        rec("base", "1.2"),
        rec("base", "2.0"),
        rec("other", "1.0", depends=["notinthissubdir"]),
    )
    assert result == [
        "app-2.0-0.conda",
        "base-1.2-0.conda",
        "base-2.0-0.conda",
        "lib-1.5-0.conda",
        "lib-2.0-0.conda",
        "other-1.0-0.conda",
    ]


def test_pins_keep_more_versions() -> None:
    records = [rec("python", v) for v in ("3.10.4", "3.11.2", "3.11.9", "3.12.1")]
    assert current(*records, pins={"python": ["3.11", "3.10"]}) == [
        "python-3.10.4-0.conda",
        "python-3.11.9-0.conda",
        "python-3.12.1-0.conda",
    ]


def test_conda_preferred_over_tar_bz2_twin() -> None:
    assert current(
        rec("a", "1.0"), rec("a", "1.0", fmt=".tar.bz2"), rec("b", "1", fmt=".tar.bz2")
    ) == [
        "a-1.0-0.conda",
        "b-1-0.tar.bz2",
    ]


def test_featured_newest_keeps_a_plain_build() -> None:
    assert current(
        rec("blas", "2.0", "mkl", track_features="mkl"),
        rec("blas", "1.9", "openblas"),
        rec("blas", "1.8", "openblas"),
    ) == ["blas-1.9-openblas.conda", "blas-2.0-mkl.conda"]


def test_patched_away_records_stay_away() -> None:
    repodata = build_repodata("linux-64", dict([rec("a", "1.0")]))
    repodata["removed"] = ["a-0.9-0.conda"]
    result = build_current_repodata("linux-64", repodata)
    assert result["removed"] == ["a-0.9-0.conda"]
    assert result["info"] == {"subdir": "linux-64"}
