"""Licence matching: families and SPDX ids, expression-aware, never by substring."""

from __future__ import annotations

import pytest

from reconciler.licenses import family_matches, license_matches


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
