"""Hypothesis profiles for the property-based fuzz tests in this folder.

``ci`` (the default) is bounded and derandomized: every test here together runs in
well under a minute on two cores, and a failure reproduces on the next run. ``long``
searches with random seeds and a hundred times more examples, keeping failing
examples in ``.hypothesis/`` so that a re-run tries them first::

    HYPOTHESIS_PROFILE=long python -m pytest -q tests/fuzz

Each test sets its own example count for ``ci`` (building archives and channels costs
more than parsing text); ``long`` multiplies it (see ``tests/fuzz/common.py``).
"""

from __future__ import annotations

from hypothesis import settings

from tests.fuzz.common import PROFILE, PROFILES

for _name, _profile in PROFILES.items():
    settings.register_profile(_name, _profile)
settings.load_profile(PROFILE)


def pytest_report_header() -> str:
    return f"hypothesis profile for tests/fuzz: {PROFILE}"
