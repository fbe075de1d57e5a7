"""The filter engine: include, exclude with except, date, latest — with reasons."""

from __future__ import annotations

from typing import Any

from reconciler.config.models import FilterBlock
from reconciler.filters import Candidate, FilterEngine


def cand(name: str, version: str, subdir: str = "linux-64", **extra: Any) -> Candidate:
    record = {"name": name, "version": version, "build": extra.pop("build", "0"), **extra}
    return Candidate(subdir, f"{name}-{version}-{record['build']}.conda", record)


def decide(block: dict[str, Any], *candidates: Candidate) -> dict[str, tuple[bool, str]]:
    engine = FilterEngine(FilterBlock.model_validate(block), "filters")
    return {k[1]: (d.selected, d.reason) for k, d in engine.evaluate(candidates).items()}


def test_include_rules_are_ored_and_keys_anded() -> None:
    result = decide(
        {"include": [{"name": "num*", "version": ">=1.26"}, {"spec": "scipy >=1.11"}]},
        cand("numpy", "1.26.0"),
        cand("numpy", "1.25.0"),
        cand("scipy", "1.11.1"),
        cand("pandas", "2.0"),
    )
    assert result["numpy-1.26.0-0.conda"][0] and result["scipy-1.11.1-0.conda"][0]
    assert result["numpy-1.25.0-0.conda"] == (False, "matches no filters.include rule")
    assert not result["pandas-2.0-0.conda"][0]


def test_exclude_with_except_names_the_rule() -> None:
    block = {
        "exclude": [
            {"license": "GPL", "except": [{"name": "libgcc*"}]},
            {"name": "pywin32", "subdir": "win-*"},
        ]
    }
    result = decide(
        block,
        cand("readline", "8.2", license="GPL-3.0-only"),
        cand("libgcc-ng", "13", license="GPL-3.0-only WITH GCC-exception-3.1"),
        cand("glib", "2.0", license="LGPL-2.1-or-later"),
        cand("pywin32", "306", subdir="win-64"),
        cand("pywin32", "306", subdir="linux-64"),
    )
    assert result["readline-8.2-0.conda"] == (
        False,
        "excluded by filters.exclude[0] (license: GPL)",
    )
    assert result["libgcc-ng-13-0.conda"][0]
    assert result["glib-2.0-0.conda"][0]
    engine = FilterEngine(FilterBlock.model_validate(block))
    by_key = engine.evaluate([cand("pywin32", "306", subdir="win-64")])
    assert by_key[("win-64", "pywin32-306-0.conda")].reason == (
        "excluded by filters.exclude[1] (name: pywin32, subdir: win-*)"
    )


def test_date_window_in_ms_or_seconds_and_missing_timestamp_kept() -> None:
    result = decide(
        {"date": {"after": "2023-01-01", "before": "2024-01-01"}},
        cand("a", "1", timestamp=1_672_531_200_000),  # 2023-01-01T00:00Z in ms: inside
        cand("b", "1", timestamp=1_672_531_199),  # a second earlier, in s: outside
        cand("c", "1", timestamp=1_704_067_200_000),  # 2024-01-01: excluded (before is open)
        cand("d", "1"),
    )
    assert result["a-1-0.conda"][0]
    assert result["b-1-0.conda"] == (False, "built before filters.date.after")
    assert result["c-1-0.conda"] == (False, "built on or after filters.date.before")
    assert result["d-1-0.conda"][0]


def test_latest_uses_conda_version_order_after_the_rules() -> None:
    result = decide(
        {"latest": 2, "exclude": [{"name": "a", "version": "1.11"}]},
        cand("a", "1.9"),
        cand("a", "1.10"),
        cand("a", "1.10", build="1"),
        cand("a", "1.11"),
        cand("a", "1.8"),
    )
    kept = sorted(k for k, (selected, _) in result.items() if selected)
    assert kept == ["a-1.10-0.conda", "a-1.10-1.conda", "a-1.9-0.conda"]
    assert result["a-1.8-0.conda"] == (
        False,
        "older than the newest 2 in linux-64 by filters.latest",
    )


def test_empty_block_selects_everything() -> None:
    engine = FilterEngine(FilterBlock())
    assert engine.is_empty
    assert all(d.selected for d in engine.evaluate([cand("x", "1")]).values())


def test_latest_counts_versions_in_each_subdir() -> None:
    # osx-arm64 lags behind and noarch has an older series: each keeps its own newest.
    result = decide(
        {"latest": 1},
        cand("a", "2.0", "linux-64"),
        cand("a", "1.0", "linux-64"),
        cand("a", "1.0", "osx-arm64"),
        cand("a", "0.9", "osx-arm64"),
        cand("a", "0.5", "noarch"),
    )
    kept = sorted(k for k, (selected, _) in result.items() if selected)
    assert kept == ["a-0.5-0.conda", "a-1.0-0.conda", "a-2.0-0.conda"]
    engine = FilterEngine(FilterBlock.model_validate({"latest": 1}), "filters")
    decisions = engine.evaluate(
        [cand("a", "1.0", "osx-arm64"), cand("a", "0.9", "osx-arm64"), cand("a", "2.0")]
    )
    assert decisions[("osx-arm64", "a-1.0-0.conda")].selected
    assert decisions[("osx-arm64", "a-0.9-0.conda")].reason == (
        "older than the newest 1 in osx-arm64 by filters.latest"
    )


def test_reasons_say_how_a_licence_was_read() -> None:
    result = decide(
        {"exclude": [{"license": "GPL"}]},
        cand("a", "1", license="GPL v3"),
        cand("b", "1", license="BSD 3-clause"),
        cand("c", "1", license="Custom", license_family="GPL3"),
        cand("d", "1", license="GPL-2.0-or-later OR MIT", license_family="GPL2"),
    )
    assert result["a-1-0.conda"] == (
        False,
        "excluded by filters.exclude[0] (license: GPL); licence 'GPL v3' read as GPL-3.0-only",
    )
    assert result["b-1-0.conda"] == (True, "selected; licence 'BSD 3-clause' read as BSD-3-Clause")
    assert result["c-1-0.conda"] == (
        False,
        "excluded by filters.exclude[0] (license: GPL); licence 'Custom' is not a licence "
        "expression; its license_family GPL3 decides",
    )
    assert result["d-1-0.conda"] == (True, "selected")


def test_include_by_exact_name_and_by_glob_together() -> None:
    block = {
        "include": [
            {"name": "numpy", "version": ">=2"},
            {"name": "scipy"},
            {"name": "lib*"},
            {"spec": "pandas >=2"},
        ]
    }
    result = decide(
        block,
        cand("numpy", "2.1"),
        cand("numpy", "1.26"),
        cand("scipy", "1.11"),
        cand("libfoo", "1"),
        cand("pandas", "2.2"),
        cand("pandas", "1.5"),
        cand("Scipy", "1"),  # names are exact, as globs are case-sensitive
    )
    kept = sorted(k for k, (selected, _) in result.items() if selected)
    assert kept == [
        "libfoo-1-0.conda",
        "numpy-2.1-0.conda",
        "pandas-2.2-0.conda",
        "scipy-1.11-0.conda",
    ]
