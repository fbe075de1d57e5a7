"""What `explain` asks about: a filename, a name glob or a match spec."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from reconciler.conda.names import filename_name
from reconciler.kinds.conda.kind import _Query

FILENAMES = [
    "numpy-1.26.4-py311h0_0.conda",
    "numpy-base-1.26.4-py311h0_0.conda",
    "libzlib-1.3-h0_0.tar.bz2",
    "lib-1-0.conda",
    "Mixed-2.0-h1_1.conda",
    "mixed-2.0-h1_1.conda",
    "python-dateutil-2.9.0-pyhd8ed1ab_0.conda",
    "nodash.conda",
]
QUERIES = [
    "numpy",
    "numpy >=1.26",
    "numpy 2.*",
    "numpy-base",
    "lib*",
    "*",
    "Mixed",
    "mixed",
    "mix*",
    "python-dateutil",
    "libzlib-1.3-h0_0.tar.bz2",
    "numpy-1.26.4-py311h0_0.conda",
    "*[",
]


def record_of(filename: str) -> dict[str, Any]:
    stem = filename.rsplit(".conda", 1)[0].rsplit(".tar.bz2", 1)[0]
    parts = stem.rsplit("-", 2)
    version, build = (parts[1], parts[2]) if len(parts) == 3 else ("0", "0")
    return {"name": filename_name(filename), "version": version, "build": build}


@pytest.mark.parametrize("query", QUERIES)
def test_may_match_passes_every_filename_whose_record_matches(query: str) -> None:
    matcher = _Query(query)
    passed = {f for f in FILENAMES if matcher.may_match(f)}
    matched = {f for f in FILENAMES if matcher.matches(f, record_of(f), "linux-64")}
    assert matched <= passed
    # ...and no more than the names that can: explain reads no other record.
    names = {filename_name(f) for f in matched}
    if matched and matcher.filename is None:
        assert {filename_name(f) for f in passed} == names


def test_may_match_rules_out_other_names() -> None:
    for query, filename in itertools.product(["numpy", "lib*", "Mixed"], FILENAMES):
        matcher = _Query(query)
        name = filename_name(filename)
        # A spec's name is normalised (lower case): "Mixed" asks for the package "mixed".
        expected = {"numpy": name == "numpy", "lib*": name.startswith("lib")}.get(
            query, name == "mixed"
        )
        assert matcher.may_match(filename) is expected, (query, filename)
