"""Licence texts: SPDX read through aliases, free forms normalised, rule values checked."""

from __future__ import annotations

import pytest

from reconciler.conda.license_text import license_rule_problem, read_license


@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        ("GPL v3", "GPL-3.0-only"),
        ("GPLv2+", "GPL-2.0-or-later"),
        ("GPL-2.0 or later", "GPL-2.0-or-later"),
        ("GNU General Public License v3 or later (GPLv3+)", "GPL-3.0-or-later"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("gpl-2.0+", "GPL-2.0-or-later"),
        ("BSD 3-clause", "BSD-3-Clause"),
        ("BSD-2-Clause", "BSD-2-Clause"),
        ("Apache 2", "Apache-2.0"),
        ("Apache License 2.0", "Apache-2.0"),
        ("MIT License", "MIT"),
        ("PSF", "PSF-2.0"),
        ("MIT and BSD 3-clause", "MIT AND BSD-3-Clause"),
        ("mit or apache-2.0", "MIT OR Apache-2.0"),
        ("(MIT OR Apache-2.0) AND BSD-3-Clause", "(MIT OR Apache-2.0) AND BSD-3-Clause"),
        ("GPL-3.0-only with gcc-exception-3.1", "GPL-3.0-only WITH GCC-exception-3.1"),
        ("LicenseRef-Custom", "LicenseRef-Custom"),
        ("BSD", None),
        ("LGPL", None),
        ("Public Domain", None),
        ("MIT OR", None),
        ("GPL v3 or MIT and BSD", None),  # no precedence in free text
        ("x" * 10_000, None),
    ],
)
def test_reading_licences(text: str, spdx: str | None) -> None:
    assert read_license(text).spdx == spdx


# -- rule values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "GPL",
        "gpl",
        "MIT",
        "PUBLIC-DOMAIN",
        "Apache-2.0",
        "apache-2.0",
        "GPL-2.0",
        "GPL-2.0+",
        "GPL OR LGPL",
        "(MIT OR Apache-2.0) AND BSD-3-Clause",
        "GPL-3.0-only WITH GCC-exception-3.1",
        "LicenseRef-Internal",
    ],
)
def test_valid_rule_values(value: str) -> None:
    assert license_rule_problem(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("GLP", "unknown licence 'GLP' (did you mean 'GPL'?)"),
        ("Apache 2", "unknown licence 'Apache 2' (did you mean 'Apache-2.0'?)"),
        ("BSD 3-clause", "unknown licence 'BSD 3-clause' (did you mean 'BSD-3-Clause'?)"),
        ("GPL v3", "(did you mean 'GPL-3.0-only'?)"),
        ("MIT OR", "(OR requires two or more licenses as in: MIT OR BSD)"),
        ("(MIT", "Invalid expression"),
        ("GPL-3.0-only WITH Nope", "unknown licence exception 'Nope' after WITH"),
        ("GCC-exception-3.1", "'GCC-exception-3.1' is a licence exception: give it after WITH"),
        ("   ", "license is empty"),
    ],
)
def test_invalid_rule_values(value: str, message: str) -> None:
    problem = license_rule_problem(value)
    assert problem is not None and message in problem, problem
