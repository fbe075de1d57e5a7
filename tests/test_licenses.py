"""Licence matching: families and SPDX ids, expression-aware, never by substring."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.conda.license_text import license_rule_problem
from reconciler.licenses import family_matches, license_matches, license_note


@pytest.mark.parametrize(
    ("license", "family", "expected"),
    [
        ("GPL-2.0-only", None, True),
        ("GPL-3.0-or-later", None, True),
        ("GPL-2.0+", None, True),
        ("GPL v3", None, True),
        ("GPLv2", None, True),
        ("GNU General Public License v3 or later (GPLv3+)", None, True),
        ("GPL-3.0-only WITH GCC-exception-3.1", None, True),
        (None, "gpl3", True),
        (None, "GPL2", True),
        ("LGPL-2.1-only", None, False),
        ("LGPL-2.1-or-later", "LGPL", False),
        ("AGPL-3.0-only", "AGPL", False),
        ("MIT", "MIT", False),
        ("GPL-2.0-only OR MIT", None, False),  # the user may pick MIT
        ("GPL-2.0-only OR GPL-3.0-only", None, True),
        ("MIT AND GPL-2.0-only", None, True),
        (None, None, False),
    ],
)
def test_gpl_family(license: str | None, family: str | None, expected: bool) -> None:
    assert license_matches("GPL", license, family) is expected


@pytest.mark.parametrize(
    ("rule", "license", "expected"),
    [
        ("Apache-2.0", "Apache-2.0", True),
        ("apache-2.0", "Apache-2.0", True),
        ("Apache-2.0", "Apache-2.0 OR MIT", False),
        ("MIT", "MIT OR Apache-2.0", False),
        ("BSD", "BSD-3-Clause", True),
        ("LGPL", "LGPL-2.1-or-later", True),
        ("GPL-2.0", "GPL-2.0-only", True),
        ("GPL-2.0-only", "GPL-3.0-only", False),
    ],
)
def test_ids_and_families(rule: str, license: str, expected: bool) -> None:
    assert license_matches(rule, license, None) is expected


def test_license_family_key_is_exact() -> None:
    assert family_matches("gpl", "GPL")
    assert not family_matches("GPL", "GPL3")
    assert not family_matches("GPL", None)


# -- a record's licence: SPDX decides, free forms are normalised, the family falls back --


@pytest.mark.parametrize(
    ("license", "family", "expected"),
    [
        # An SPDX expression decides over license_family.
        ("GPL-2.0-or-later OR MIT", "GPL2", False),
        ("MIT", "GPL", False),
        ("GPL-3.0-only", "MIT", True),
        # A licence that cannot be read: the family decides.
        ("Custom", "GPL3", True),
        ("Custom", "MIT", False),
        ("GPL/LGPL", "LGPL", False),
        # Neither: words.
        ("GNU GPL-ish terms", None, True),
        ("", "GPL2", True),
        # Free forms, read as SPDX.
        ("GPL v3", "OTHER", True),
        ("GPLv2+ or BSD 3-clause", "GPL2", False),
        ("gpl-2.0+", None, True),
        ("LGPLv2.1+", "GPL", False),
    ],
)
def test_the_licence_text_decides_over_the_family(
    license: str | None, family: str | None, expected: bool
) -> None:
    assert license_matches("GPL", license, family) is expected


def test_the_reading_is_told_when_it_is_not_verbatim() -> None:
    assert license_note("GPL v3", None) == "licence 'GPL v3' read as GPL-3.0-only"
    assert license_note("MIT", "MIT") is None
    assert license_note("Custom", "GPL3") == (
        "licence 'Custom' is not a licence expression; its license_family GPL3 decides"
    )
    assert license_note(None, "GPL") is None


@pytest.mark.parametrize(
    ("rule", "license", "expected"),
    [
        ("GPL OR LGPL", "LGPL-2.1-or-later", True),
        ("GPL OR LGPL", "MIT", False),
        ("MIT AND Apache-2.0", "MIT AND Apache-2.0", True),
        ("MIT AND Apache-2.0", "MIT", False),
        ("GPL-3.0-only WITH GCC-exception-3.1", "GPL-3.0-only WITH GCC-exception-3.1", True),
        ("GPL-3.0-only WITH GCC-exception-3.1", "GPL-3.0-only", False),
        ("GPL-3.0-only", "GPL-3.0-only WITH GCC-exception-3.1", True),
        ("GPL-2.0+", "GPL-2.0-or-later", True),
        ("BSD-3-Clause", "BSD 3-clause", True),
        ("Apache-2.0", "Apache 2", True),
        ("LicenseRef-Mine", "LicenseRef-Mine", True),
    ],
)
def test_rules_as_expressions(rule: str, license: str, expected: bool) -> None:
    assert license_matches(rule, license, None) is expected


@pytest.mark.parametrize(
    "text",
    ["\x00GPL", "(" * 5000 + "MIT", "MIT WITH MIT", "GPL-" * 200, "a OR " * 100 + "b", "ÄÖÜ ☃"],
)
def test_hostile_licence_texts_are_read_safely(text: str) -> None:
    license_matches("GPL", text, None)
    license_matches("GPL", text, "GPL")
    license_note(text, None)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.lists(
            st.sampled_from(
                ["MIT", "GPL", "OR", "AND", "WITH", "(", ")", "GPL-2.0+", "v3", "or later", "+"]
            ),
            max_size=8,
        ).map(" ".join),
    )
)
def test_any_text_gets_an_answer_never_an_error(text: str) -> None:
    problem = license_rule_problem(text)
    assert problem is None or isinstance(problem, str)
    license_matches("GPL", text, None)
    license_matches(text if problem is None else "GPL", text, "GPL")
    license_note(text, "MIT")
