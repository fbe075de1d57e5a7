"""Licence matching for filters: families (``GPL``) and SPDX ids, expression-aware.

``license: GPL`` means the GPL family: ``license_family`` GPL/GPL2/GPL3 in any
case, SPDX ids such as ``GPL-2.0-only``, ``GPL-3.0-or-later`` or legacy
``GPL-2.0+``, and free forms like ``GPL v3`` or ``GPLv2`` — but not LGPL or AGPL.
An expression matches when the licence applies however the user chooses: every
alternative of an ``OR`` must match; one part of an ``AND`` is enough, as is the
base licence of a ``WITH`` exception.
"""

from __future__ import annotations

import functools
import re

from license_expression import (
    AND,
    OR,
    LicenseExpression,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
    Licensing,
)

from reconciler.config.models import LICENSE_FAMILIES

# Family names a rule may give, and the license_family values each one covers.
FAMILY_MEMBERS: dict[str, frozenset[str]] = {
    family: frozenset({family}) for family in LICENSE_FAMILIES
} | {
    "GPL": frozenset({"GPL", "GPL2", "GPL3"}),
}

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

_licensing = Licensing()


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


@functools.lru_cache(maxsize=4096)
def _parse(expression: str) -> LicenseExpression | None:
    try:
        parsed = _licensing.parse(expression)
    except Exception:
        return None
    return parsed if isinstance(parsed, LicenseExpression) else None


def _fallback_split(expression: str) -> tuple[str, list[str]]:
    """Split free text the SPDX parser refused on OR/AND words."""
    # "v3 or later" is one licence, not a choice.
    expression = re.sub(
        r"\s+or\s+(later|newer|any later version)\b", "+", expression, flags=re.IGNORECASE
    )
    if re.search(r"\s+or\s+|\s*\|\s*", expression, re.IGNORECASE):
        return "or", [p for p in re.split(r"\s+or\s+|\s*\|\s*", expression, flags=re.I) if p]
    if re.search(r"\s+and\s+|\s*&\s*", expression, re.IGNORECASE):
        return "and", [p for p in re.split(r"\s+and\s+|\s*&\s*", expression, flags=re.I) if p]
    return "single", [expression]


def _symbol_name(node: LicenseExpression) -> str:
    if isinstance(node, LicenseWithExceptionSymbol):
        return str(node.license_symbol.key)
    if isinstance(node, LicenseSymbol):
        return str(node.key)
    return str(node)


def _matches_token(rule: str, token: str) -> bool:
    rule_upper = rule.strip().upper()
    if rule_upper in FAMILY_MEMBERS:
        return _family_covers(rule_upper, token_family(token))
    # An SPDX id: exact, ignoring case; "GPL-2.0" also names "GPL-2.0-only".
    left, right = _normalise(rule), _normalise(token)
    return left == right or right == f"{left}-only" or left == f"{right}-only"


def _matches_expression(rule: str, node: LicenseExpression) -> bool:
    if isinstance(node, OR):
        return all(_matches_expression(rule, arg) for arg in node.args)
    if isinstance(node, AND):
        return any(_matches_expression(rule, arg) for arg in node.args)
    return _matches_token(rule, _symbol_name(node))


@functools.lru_cache(maxsize=65536)
def license_matches(rule: str, license: str | None, license_family: str | None) -> bool:
    """Does a package with ``license`` / ``license_family`` fall under ``rule``?"""
    rule_upper = rule.strip().upper()
    if rule_upper in FAMILY_MEMBERS and license_family:
        family = license_family.strip().upper()
        if family in FAMILY_MEMBERS.get(rule_upper, frozenset()):
            return True
    if not license:
        return False
    parsed = _parse(license)
    if parsed is not None and _matches_expression(rule, parsed):
        return True
    # Free text the SPDX parser refuses or misreads ("GNU GPL v3 or later"): by words.
    kind, parts = _fallback_split(license)  # cached above: real channels repeat licences
    if kind == "or":
        return all(_matches_token(rule, p) for p in parts)
    return any(_matches_token(rule, p) for p in parts)


def family_matches(rule_family: str, license_family: str | None) -> bool:
    """``license_family: GPL`` in a rule: exact family, any case (GPL2 is not GPL here)."""
    return bool(license_family) and rule_family.strip().upper() == str(license_family).upper()
