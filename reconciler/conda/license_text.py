"""Licence texts: SPDX expressions read and checked, free forms normalised.

What a package's ``license`` says, read the way license-expression and conda-forge's
linter read it, and whether a filter rule's ``license`` value is a licence family or
a valid SPDX expression. Matching rules against packages is in reconciler.licenses.

A text is first read as an SPDX expression through license-expression's SPDX list
(ids in any case, deprecated ids and aliases: ``GPL-2.0`` is ``GPL-2.0-only``,
``gpl-2.0+`` is ``GPL-2.0-or-later``). Free forms that name licences unambiguously
are normalised the way conda-forge's linter asks packagers to write them: ``GPL v3``
is ``GPL-3.0-only``, ``GPLv2+`` ``GPL-2.0-or-later``, ``BSD 3-clause``
``BSD-3-Clause``, ``Apache 2`` ``Apache-2.0``; ``or`` / ``and`` between such parts are
read as SPDX ``OR`` / ``AND``. What cannot be read either way is not guessed at here.

Everything here may read untrusted upstream text: it is bounded in length, parsed by
license-expression (no backtracking regexes of upstream origin), and cached per
distinct text (real channels repeat a few hundred licences).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any

from license_expression import (
    AND,
    OR,
    LicenseExpression,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
    Licensing,
    get_spdx_licensing,
)

# conda-build's license_family values (compared case-insensitively).
LICENSE_FAMILIES: tuple[str, ...] = (
    "AGPL",
    "APACHE",
    "BSD",
    "CC",
    "GPL",
    "GPL2",
    "GPL3",
    "LGPL",
    "MIT",
    "MOZILLA",
    "NONE",
    "OTHER",
    "PROPRIETARY",
    "PSF",
    "PUBLIC-DOMAIN",
)

# Family names a rule may give, and the license_family values each one covers.
FAMILY_MEMBERS: dict[str, frozenset[str]] = {
    family: frozenset({family}) for family in LICENSE_FAMILIES
} | {
    "GPL": frozenset({"GPL", "GPL2", "GPL3"}),
}

# Longer licence texts are not read (an upstream can send anything).
MAX_LICENSE_TEXT = 512

plain_licensing = Licensing()


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """SPDX licence ids and exception ids, upper-cased, with license-expression's
    deprecated ids and aliases (``GPL-2.0+``, ``GPL 2.0``), to their canonical id.

    Parsing goes through the plain ``Licensing`` and these tables: the SPDX
    ``Licensing``'s own tokenizer takes seconds to build on first use.
    """
    licences: dict[str, str] = {}
    exceptions: dict[str, str] = {}
    for symbol in get_spdx_licensing().known_symbols.values():
        key = str(symbol.key)
        if key.startswith("LicenseRef-"):
            continue  # scancode's own keys: not SPDX ids
        table = exceptions if getattr(symbol, "is_exception", False) else licences
        for name in (key, *getattr(symbol, "aliases", ())):
            table.setdefault(str(name).upper(), key)
        table[key.upper()] = key
    return licences, exceptions


def spdx_ids() -> dict[str, str]:
    """Upper-cased SPDX licence ids (and aliases) to their canonical spelling."""
    return _tables()[0]


def spdx_exceptions() -> dict[str, str]:
    """Upper-cased SPDX exception ids (and aliases) to their canonical spelling."""
    return _tables()[1]


# -- reading a record's licence --------------------------------------------------------


def licence_id(key: str) -> str | None:
    """The canonical SPDX id of one licence name, a ``LicenseRef-`` as given, else None."""
    found = spdx_ids().get(key.upper())
    if found is not None:
        return found
    return key if key.startswith("LicenseRef-") and " " not in key else None


def _canonical(node: Any) -> str | None:
    """An expression's text with canonical ids, None when a name is unknown."""
    if isinstance(node, LicenseWithExceptionSymbol):
        base = licence_id(str(node.license_symbol.key))
        exception = spdx_exceptions().get(str(node.exception_symbol.key).upper())
        return None if base is None or exception is None else f"{base} WITH {exception}"
    if isinstance(node, LicenseSymbol):
        return licence_id(str(node.key))
    if isinstance(node, (AND, OR)):
        parts = []
        for arg in node.args:
            text = _canonical(arg)
            if text is None:
                return None
            if isinstance(arg, (AND, OR)) and type(arg) is not type(node):
                text = f"({text})"
            parts.append(text)
        return (" AND " if isinstance(node, AND) else " OR ").join(parts)
    return None


@functools.lru_cache(maxsize=65536)
def spdx_read(text: str) -> tuple[LicenseExpression, str] | None:
    """``text`` as an expression of SPDX ids (or ``LicenseRef-``s) and its canonical text."""
    try:
        parsed = plain_licensing.parse(text)
    except Exception:  # license-expression raises several unrelated types
        return None
    if not isinstance(parsed, LicenseExpression):
        return None  # an empty text parses to None
    canonical = _canonical(parsed)
    if canonical is None:
        return None
    try:
        expression = plain_licensing.parse(canonical)
    except Exception:
        return None
    return (expression, canonical) if isinstance(expression, LicenseExpression) else None


# One free-form licence, after lower-casing, dropping "license", "the" and "version",
# and turning "or later" into "+". Each pattern reads one licence with its version.
_VERSION = r"[ -]?v?[ -]?(?P<v>\d(?:\.\d)?)(?:\.0)?"
_FREE_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"(?:gnu )?(?:agpl|affero general public|gnu affero){_VERSION}"), "AGPL"),
    (
        re.compile(rf"(?:gnu )?(?:lgpl|(?:lesser|library) general public|gnu lesser){_VERSION}"),
        "LGPL",
    ),
    (re.compile(rf"(?:gnu )?(?:gpl|general public){_VERSION}"), "GPL"),
    (
        re.compile(r"bsd[ -]?(?P<v>[234])[ -]?clause(?: new| simplified| revised)?"),
        "BSD",
    ),
    (re.compile(r"(?:new|modified|revised) bsd"), "BSD-3-Clause"),
    (re.compile(r"(?:simplified|freebsd) bsd"), "BSD-2-Clause"),
    (re.compile(rf"apache(?: software)?{_VERSION}"), "Apache"),
    (re.compile(rf"(?:mpl|mozilla public){_VERSION}"), "MPL"),
    (re.compile(r"mit|expat|mit expat"), "MIT"),
    (re.compile(r"(?:psf|python software foundation)(?: 2(?:\.0)?)?"), "PSF-2.0"),
    (re.compile(r"zlib(?:/libpng)?"), "Zlib"),
    (re.compile(r"isc"), "ISC"),
)
_GNU_VERSIONS = {"1": "1.0", "2": "2.0", "2.0": "2.0", "2.1": "2.1", "3": "3.0", "3.0": "3.0"}


def _free_form_one(part: str) -> str | None:
    """One free-form licence as an SPDX id (``GPL v3 or later`` → ``GPL-3.0-or-later``)."""
    text = part.strip().lower()
    later = False
    text, count = re.subn(
        r"\s*(?:\+|\bor (?:any )?(?:later|newer)(?: versions?)?|\band (?:any )?later)\s*$",
        "",
        text,
    )
    later = count > 0
    text = re.sub(r"\b(?:the|licen[cs]e[sd]?|version|terms)\b", " ", text)
    text = re.sub(r"[\s_,;:]+", " ", text).strip(" -")
    if text.endswith("+"):
        text, later = text[:-1].strip(), True
    for pattern, kind in _FREE_FORMS:
        found = pattern.fullmatch(text)
        if found is None:
            continue
        version = found.groupdict().get("v")
        if kind in ("GPL", "LGPL", "AGPL"):
            number = _GNU_VERSIONS.get(version or "")
            if number is None:
                return None
            candidate = f"{kind}-{number}-{'or-later' if later else 'only'}"
        elif later:
            return None  # "MIT or later" names no SPDX licence
        elif kind == "BSD":
            candidate = f"BSD-{version}-Clause"
        elif kind in ("Apache", "MPL"):
            candidate = f"{kind}-{version if version and '.' in version else f'{version}.0'}"
        else:
            candidate = kind
        return spdx_ids().get(candidate.upper())
    return None


def _free_form(text: str) -> str | None:
    """A free-form licence (one, or several joined by "or" / "and") as SPDX, else None."""
    # "GPL v3 or later" is one licence, not a choice: protect the phrase from the split.
    guarded = re.sub(
        r"\s+or\s+((?:any\s+)?(?:later|newer)(?:\s+versions?)?)\b",
        lambda m: " OR_" + m.group(1).replace(" ", "_"),
        text,
        flags=re.IGNORECASE,
    )
    ors = [p for p in re.split(r"\s+or\s+|\s*\|\s*", guarded, flags=re.IGNORECASE) if p.strip()]
    ands = [p for p in re.split(r"\s+and\s+|\s*&\s*", guarded, flags=re.IGNORECASE) if p.strip()]
    if len(ors) > 1 and len(ands) > 1:
        return None  # "A or B and C": free text says nothing of precedence
    parts, joiner = (ors, " OR ") if len(ors) > 1 else (ands, " AND ")
    texts: list[str] = []
    for part in parts:
        part = part.replace("OR_", "or ").replace("_", " ")
        inner = re.fullmatch(r"(.*?)\s*\(([^()]*)\)\s*", part)
        # "GNU General Public License v3 or later (GPLv3+)": either half will do.
        options = [part] if inner is None else [inner.group(1), inner.group(2)]
        for option in options:
            read = spdx_read(option) if " " not in option.strip() else None
            found = read[1] if read is not None else _free_form_one(option)
            if found is not None:
                texts.append(found)
                break
        else:
            return None
    return joiner.join(texts) if texts else None


@dataclass(frozen=True)
class LicenseReading:
    """How a record's ``license`` text was read."""

    text: str
    expression: LicenseExpression | None  # None: not readable as a licence expression
    spdx: str | None  # the expression as SPDX text

    @property
    def normalised(self) -> bool:
        return self.spdx is not None and self.spdx != self.text.strip()


@functools.lru_cache(maxsize=65536)
def read_license(text: str) -> LicenseReading:
    """Read ``text`` as SPDX, directly or as a normalised free form."""
    stripped = text.strip()
    if not stripped or len(stripped) > MAX_LICENSE_TEXT:
        return LicenseReading(text, None, None)
    read = spdx_read(stripped)
    if read is None:
        free = _free_form(stripped)
        read = spdx_read(free) if free is not None else None
    if read is None:
        return LicenseReading(text, None, None)
    return LicenseReading(text, *read)


# -- checking rule values ----------------------------------------------------------------


def _suggest(symbol: str) -> str | None:
    """A licence family or SPDX id close to an unknown ``symbol``."""
    free = _free_form(symbol)
    if free is not None and free.upper() != symbol.strip().upper():
        return free
    families = sorted(FAMILY_MEMBERS)
    close = difflib.get_close_matches(symbol.strip().upper(), families, n=1, cutoff=0.6)
    if close:
        return close[0]
    ids = sorted(set(spdx_ids().values()))
    by_upper = {key.upper(): key for key in ids}
    close = difflib.get_close_matches(symbol.strip().upper(), list(by_upper), n=1, cutoff=0.75)
    return by_upper[close[0]] if close else None


def _known_id(key: str) -> bool:
    """An SPDX id (or deprecated id), a ``LicenseRef-``, or a family name."""
    if key.upper() in FAMILY_MEMBERS or key.startswith("LicenseRef-"):
        return True
    return " " not in key and licence_id(key) is not None


def license_rule_problem(value: str) -> str | None:
    """Why ``value`` is no usable ``license`` rule (None when it is one)."""
    text = value.strip()
    if not text:
        return "license is empty; give a licence family (GPL, MIT, ...) or an SPDX expression"
    if text.upper() in FAMILY_MEMBERS:
        return None
    head = f"license {value!r} is neither a licence family nor a valid SPDX expression"
    if len(text) > MAX_LICENSE_TEXT:
        return f"{head}: longer than {MAX_LICENSE_TEXT} characters"
    try:
        parsed = plain_licensing.parse(text)
    except Exception as exc:
        reason = str(exc).split(" for token:")[0].strip() or type(exc).__name__
        hint = _suggest(text)
        return f"{head} ({reason})" + (f"; did you mean {hint!r}?" if hint else "")
    if not isinstance(parsed, LicenseExpression):
        return head
    try:
        symbols = list(plain_licensing.license_symbols(parsed, decompose=False))
    except Exception as exc:
        return f"{head} ({type(exc).__name__}: {exc})"
    problems: list[str] = []
    for symbol in symbols:
        if isinstance(symbol, LicenseWithExceptionSymbol):
            exception = str(symbol.exception_symbol.key)
            if exception.upper() not in spdx_exceptions():
                problems.append(f"unknown licence exception {exception!r} after WITH")
            symbol = symbol.license_symbol
        key = str(symbol.key)
        if key.upper() in spdx_exceptions():
            problems.append(f"{key!r} is a licence exception: give it after WITH")
        elif not _known_id(key):
            hint = _suggest(key)
            problems.append(
                f"unknown licence {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
            )
    if problems:
        return f"{head}: " + "; ".join(problems)
    return None
