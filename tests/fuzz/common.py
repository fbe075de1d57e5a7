"""Profiles, budgets and strategies shared by the fuzz tests."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CI_PROFILE = "ci"
LONG_PROFILE = "long"
# The long search runs this many times the examples of the ci one.
LONG_FACTOR = 100

_QUIET = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
PROFILES: dict[str, settings] = {
    # No example database in CI: derandomized runs replay themselves, and the working
    # tree stays clean.
    CI_PROFILE: settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_QUIET,
        print_blob=True,
    ),
    LONG_PROFILE: settings(
        max_examples=100 * LONG_FACTOR,
        deadline=None,
        suppress_health_check=_QUIET,
        print_blob=True,
    ),
}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", CI_PROFILE)
if PROFILE not in PROFILES:
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: expected one of {', '.join(PROFILES)}")


def budget(ci_examples: int) -> settings:
    """The active profile with this test's example count (``long`` multiplies it).

    Set per test rather than through the loaded default, so another folder's
    profiles loaded later in the same run cannot change this folder's budget.
    """
    factor = 1 if PROFILE == CI_PROFILE else LONG_FACTOR
    return settings(PROFILES[PROFILE], max_examples=ci_examples * factor)


# -- values --------------------------------------------------------------------------

# Strings that reach the interesting branches: paths, URLs, cron, specs, licences,
# separators, control and bidi characters.
TRICKY_TEXT: tuple[str, ...] = (
    "",
    " ",
    ".",
    "..",
    "../x",
    "/",
    "/etc/passwd",
    "\\",
    "a\x00b",
    "~",
    "~nosuchuser/x",
    "./upstream",
    "noarch",
    "linux-64",
    "win-*",
    "Linux-64",
    "https://",
    "https://user@host/x",
    "https://@host",
    "ftp://host/x",
    "file://",
    "file:///nonexistent",
    "17 3 * * *",
    "* * * * *",
    "0 0 31 2 *",
    "0 0 30 2 *",
    "numpy >=1.26",
    ">=1.1",
    ">=1.1,<",
    "==",
    "GPL",
    "GPL-3.0-only OR MIT",
    "MIT",
    "x!y",
    "*",
    "[",
    "\u202e",
    "\ufeff",
    "${HOME}",
    "1e400",
    "2023-02-30",
    "2001-12-14 21:59:43.10 +99:99",
    "!!int x",
    "!!bool maybe",
    "!!timestamp x",
    "&a [*a]",
    "{<<: 1}",
    "é" * 3,
    "\ud800x",
    "\udc80x",
    "a" * 300,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(TRICKY_TEXT),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=16),
    st.sampled_from(TRICKY_TEXT),
)


def nested(leaves: st.SearchStrategy[Any], max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Lists and string-keyed mappings of ``leaves``."""
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.text(max_size=10), st.sampled_from(TRICKY_TEXT)), inner, max_size=4
            ),
        ),
        max_leaves=max_leaves,
    )


json_like = nested(json_scalars)
yaml_like = nested(st.one_of(scalars, st.dates(), st.datetimes()))


# -- mutations -----------------------------------------------------------------------

BYTE_OPS = ("flip", "delete", "insert", "set", "truncate", "duplicate")
# One mutation: (operation, position, value), applied by :func:`mutate_bytes`.
byte_mutations = st.lists(
    st.tuples(st.sampled_from(BYTE_OPS), st.integers(0, 2**20), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def mutate_bytes(data: bytes, mutations: Sequence[tuple[str, int, int]]) -> bytes:
    """``data`` with each mutation applied at ``position`` modulo the current length."""
    out = bytearray(data)
    for op, position, value in mutations:
        if not out:
            out.append(value)
            continue
        i = position % len(out)
        if op == "flip":
            out[i] ^= 1 << (value % 8)
        elif op == "delete":
            del out[i : i + 1 + value % 16]
        elif op == "insert":
            out[i:i] = bytes([value]) * (1 + value % 4)
        elif op == "set":
            out[i] = value
        elif op == "truncate":
            del out[i:]
        else:
            out[i:i] = out[i : i + 1 + value % 64]
    return bytes(out)


LINE_OPS = ("delete", "duplicate", "swap", "indent", "dedent", "cut", "append", "replace")
LINE_SUFFIXES = (": x", " [", "{", "}", " - 1", ": *a", " &a", " !!binary", ": |", " #", ":", "'")
line_mutations = st.lists(
    st.tuples(
        st.sampled_from(LINE_OPS),
        st.integers(0, 2**16),
        st.integers(0, 2**16),
        st.one_of(st.sampled_from(LINE_SUFFIXES), st.sampled_from(TRICKY_TEXT)),
    ),
    min_size=1,
    max_size=5,
)


def mutate_lines(text: str, mutations: Sequence[tuple[str, int, int, str]]) -> str:
    """``text`` with whole-line edits: what a hurried hand does to a YAML file."""
    lines = text.splitlines()
    for op, a, b, token in mutations:
        if not lines:
            lines.append(token)
            continue
        i, j = a % len(lines), b % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[j])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = " " * (1 + b % 4) + lines[i]
        elif op == "dedent":
            lines[i] = lines[i].lstrip()
        elif op == "cut":
            lines[i] = lines[i][: b % (len(lines[i]) + 1)]
        elif op == "append":
            lines[i] = lines[i] + token
        else:
            # Replace a value: what follows the first ": " on the line.
            key, sep, _ = lines[i].partition(": ")
            lines[i] = key + sep + token if sep else token
    return "\n".join(lines) + "\n"


def utc(year: int, month: int = 1, day: int = 1) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=dt.timezone.utc)
