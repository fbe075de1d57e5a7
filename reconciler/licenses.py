"""Licence rules against packages: families and SPDX ids, expression-aware.

A package's ``license`` is read by reconciler.conda.license_text (SPDX, or a free
form normalised to SPDX); what can be read that way decides, whatever
``license_family`` says. Only a licence that cannot be read (``BSD``, ``Custom``,
``GPL/LGPL``) falls back on ``license_family``; a record with neither is read word
by word (the ``GPL`` in ``GNU GPL-ish terms``).

``license: GPL`` in a rule means the GPL family: ``license_family`` GPL, GPL2 or
GPL3, SPDX ``GPL-*`` ids and free forms of them — not LGPL or AGPL. A record
licence expression matches when the rule applies however the user chooses:
every alternative of an ``OR`` must match; one part of an ``AND`` is enough, as
is the base licence of a ``WITH`` exception. A rule may itself be an expression
of families and SPDX ids: ``GPL OR LGPL`` matches what either matches,
``MIT AND Apache-2.0`` what both match; a rule's ``WITH`` asks for that exception.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from license_expression import (
    AND,
    OR,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
)

from reconciler.conda.license_text import (
    FAMILY_MEMBERS,
    MAX_LICENSE_TEXT,
    licence_id,
    plain_licensing,
    read_license,
)

# Prefixes of normalised licence tokens (lower case, no spaces) and their family.
# Order matters: LGPL and AGPL before GPL.
_TOKEN_FAMILIES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("agpl", "gnuaffero"), "AGPL"),
    (("lgpl", "gnulesser", "gnulibrary"), "LGPL"),
    (("gpl3", "gplv3", "gpl-3"), "GPL3"),
    (("gpl2", "gplv2", "gpl-2"), "GPL2"),
    (("gpl", "gnugeneral", "gnugpl"), "GPL"),
    (("mit", "expat"), "MIT"),
    (("bsd", "0bsd"), "BSD"),
    (("apache",), "APACHE"),
    (("mpl", "mozilla"), "MOZILLA"),
    (("psf", "python-2.0", "python"), "PSF"),
    (("cc0", "cc-", "creativecommons"), "CC"),
    (("publicdomain", "unlicense"), "PUBLIC-DOMAIN"),
    (("proprietary", "commercial"), "PROPRIETARY"),
)


def _normalise(token: str) -> str:
    return re.sub(r"[\s_]+", "", token.strip().lower())


def token_family(token: str) -> str | None:
    """The family of one licence name: ``GPL-2.0-or-later`` → GPL2, ``LGPL-3.0`` → LGPL."""
    normalised = _normalise(token)
    for prefixes, family in _TOKEN_FAMILIES:
        if normalised.startswith(prefixes):
            return family
    return None


def _family_covers(rule_family: str, family: str | None) -> bool:
    if family is None:
        return False
    members = FAMILY_MEMBERS.get(rule_family, frozenset({rule_family}))
    return family in members


@functools.lru_cache(maxsize=65536)
def license_note(license: str | None, license_family: str | None) -> str | None:
    """How the licence was read, when that was not verbatim: for reasons and ``explain``."""
    if not license or not license.strip():
        return None
    reading = read_license(license)
    if reading.normalised:
        return f"licence {license.strip()!r} read as {reading.spdx}"
    if reading.expression is None:
        if license_family:
            return (
                f"licence {license.strip()!r} is not a licence expression; "
                f"its license_family {license_family} decides"
            )
        return f"licence {license.strip()!r} is not a licence expression; read word by word"
    return None


# -- matching ----------------------------------------------------------------------------


def _symbol_name(node: Any) -> str:
    if isinstance(node, LicenseWithExceptionSymbol):
        return str(node.license_symbol.key)
    if isinstance(node, LicenseSymbol):
        return str(node.key)
    return str(node)


@dataclass(frozen=True)
class _Atom:
    """One licence a rule names: a family or SPDX id, with the exception it requires."""

    base: str
    exception: str | None = None


def _atom_of(node: Any) -> _Atom:
    if isinstance(node, LicenseWithExceptionSymbol):
        return _Atom(str(node.license_symbol.key), str(node.exception_symbol.key))
    return _Atom(_symbol_name(node))


@functools.lru_cache(maxsize=4096)
def _canonical_id(token: str) -> str:
    """An SPDX id as license-expression spells it (``gpl-2.0`` → ``GPL-2.0-only``)."""
    return licence_id(token.strip()) or token.strip()


def _matches_token(rule: str, token: str) -> bool:
    """One rule licence (family or SPDX id) against one licence name."""
    rule_upper = rule.strip().upper()
    if rule_upper in FAMILY_MEMBERS:
        return _family_covers(rule_upper, token_family(token))
    # An SPDX id: exact, ignoring case, after resolving deprecated ids and aliases.
    left, right = _normalise(_canonical_id(rule)), _normalise(_canonical_id(token))
    return left == right or right == f"{left}-only" or left == f"{right}-only"


def _record_matches(atom: _Atom, node: Any) -> bool:
    """A rule's licence against a record's licence expression."""
    if isinstance(node, OR):
        return all(_record_matches(atom, arg) for arg in node.args)
    if isinstance(node, AND):
        return any(_record_matches(atom, arg) for arg in node.args)
    if atom.exception is not None:
        if not isinstance(node, LicenseWithExceptionSymbol):
            return False
        if str(node.exception_symbol.key).upper() != atom.exception.upper():
            return False
    return _matches_token(atom.base, _symbol_name(node))


def _fallback_split(expression: str) -> tuple[str, list[str]]:
    """Split free text that could not be read on OR/AND words."""
    # "v3 or later" is one licence, not a choice.
    expression = re.sub(
        r"\s+or\s+(later|newer|any later version)\b", "+", expression, flags=re.IGNORECASE
    )
    if re.search(r"\s+or\s+|\s*\|\s*", expression, re.IGNORECASE):
        return "or", [p for p in re.split(r"\s+or\s+|\s*\|\s*", expression, flags=re.I) if p]
    if re.search(r"\s+and\s+|\s*&\s*", expression, re.IGNORECASE):
        return "and", [p for p in re.split(r"\s+and\s+|\s*&\s*", expression, flags=re.I) if p]
    return "single", [expression]


def _atom_matches(atom: _Atom, license: str | None, license_family: str | None) -> bool:
    if license and license.strip():
        reading = read_license(license)
        if reading.expression is not None:
            return _record_matches(atom, reading.expression)
    if atom.exception is not None:
        return False  # only a readable licence can show its exception
    rule_upper = atom.base.strip().upper()
    if license_family:
        # The licence cannot be read: its family decides, for family rules.
        if rule_upper in FAMILY_MEMBERS:
            return license_family.strip().upper() in FAMILY_MEMBERS[rule_upper]
        return False
    if not license or len(license) > MAX_LICENSE_TEXT:
        return False
    # Neither: free text read by words ("GNU GPL-ish terms", "BSD-like").
    kind, parts = _fallback_split(license)
    if kind == "or":
        return all(_matches_token(atom.base, p) for p in parts)
    return any(_matches_token(atom.base, p) for p in parts)


@functools.lru_cache(maxsize=4096)
def _rule_expression(rule: str) -> Any:
    """A rule as an expression of atoms (families, SPDX ids, ``A WITH E``)."""
    if rule.strip().upper() in FAMILY_MEMBERS:
        return _Atom(rule.strip())
    try:
        parsed = plain_licensing.parse(rule)
    except Exception:
        return _Atom(rule.strip())  # validation refuses these; match as written
    if isinstance(parsed, (AND, OR)):
        return parsed
    return _atom_of(parsed) if parsed is not None else _Atom(rule.strip())


def _rule_matches(node: Any, license: str | None, license_family: str | None) -> bool:
    if isinstance(node, _Atom):
        return _atom_matches(node, license, license_family)
    if isinstance(node, OR):
        return any(_rule_matches(arg, license, license_family) for arg in node.args)
    if isinstance(node, AND):
        return all(_rule_matches(arg, license, license_family) for arg in node.args)
    return _atom_matches(_atom_of(node), license, license_family)


@functools.lru_cache(maxsize=65536)
def license_matches(rule: str, license: str | None, license_family: str | None) -> bool:
    """Does a package with ``license`` / ``license_family`` fall under ``rule``?"""
    return _rule_matches(_rule_expression(rule), license, license_family)


def family_matches(rule_family: str, license_family: str | None) -> bool:
    """``license_family: GPL`` in a rule: exact family, any case (GPL2 is not GPL here)."""
    return bool(license_family) and rule_family.strip().upper() == str(license_family).upper()
