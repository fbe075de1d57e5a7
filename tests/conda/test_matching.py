"""Dependency specs are decided by rattler, and the version-only shortcut agrees with it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.conda.matching import RecordView, package_record, parse_spec
from tests.fuzz.common import budget

VERSIONS = ["1.0", "1.0.0", "1.10", "1.9", "2.0a1", "2.0", "2!1.0", "1.0.post1", "3.12.0", "1.2.3"]
BUILDS = ["0", "py311_0", "py312h1234_1", "h1234_0", "aaaa", "cpu_mkl"]
SPEC_VERSIONS = [
    "",
    " *",
    " >=1.0",
    " <2",
    " 1.0.*",
    " ==1.0",
    " 1.0",
    " >=1.9,<2.0a0",
    " 1.0|2.0",
    " !=1.10",
    " ~=1.9",
    " >1.0 py3*",
    " * *_0",
    " * ^py3\\d+h.*$",
    " >=1 [build_number='>0']",
    "[version='>=1.0,<2']",
    "[build=h1234_0]",
]


@budget(300)
@given(
    spec=st.sampled_from(SPEC_VERSIONS).map(lambda v: f"pkg{v}"),
    version=st.sampled_from(VERSIONS),
    build=st.sampled_from(BUILDS),
    number=st.integers(0, 2),
)
def test_the_shortcut_agrees_with_rattlers_matcher(
    spec: str, version: str, build: str, number: int
) -> None:
    parsed = parse_spec(spec)
    assert parsed is not None, spec
    record: dict[str, Any] = {
        "name": "pkg",
        "version": version,
        "build": build,
        "build_number": number,
    }
    package = package_record(record, "linux-64")
    assert package is not None
    assert parsed.matches(RecordView(record, "linux-64")) is parsed.match_spec.matches(package)


def test_the_shortcut_is_taken_for_name_and_version_only() -> None:
    assert parse_spec("numpy >=1.26,<2").version_only  # type: ignore[union-attr]
    assert parse_spec("numpy").version_only  # type: ignore[union-attr]
    assert not parse_spec("numpy >=1.26 py3*").version_only  # type: ignore[union-attr]
    assert not parse_spec("numpy[md5=0123456789abcdef0123456789abcdef]").version_only  # type: ignore[union-attr]
    assert not parse_spec("conda-forge::numpy").version_only  # type: ignore[union-attr]


@pytest.mark.parametrize("spec", ["", "  ", "numpy >=>=1", "num*py", "[version=1]", "numpy ]["])
def test_unreadable_specs_match_nothing(spec: str) -> None:
    assert parse_spec(spec) is None


def test_records_rattler_cannot_hold_match_nothing() -> None:
    spec = parse_spec("pkg * [build_number='>0']")
    assert spec is not None
    for record in (
        {"name": "pkg", "version": "not a version!", "build": "0", "build_number": 1},
        {"name": "pkg", "version": "1.0", "build": "", "build_number": 1},
        {"name": "pkg", "version": "1.0", "build": "0", "build_number": "many"},
    ):
        assert spec.matches_record(record) is False


def test_names_match_case_insensitively_as_conda_normalises_them() -> None:
    spec = parse_spec("PyYAML >=6")
    assert spec is not None and spec.name == "pyyaml"
    assert spec.matches_record({"name": "pyyaml", "version": "6.0", "build": "0"})
