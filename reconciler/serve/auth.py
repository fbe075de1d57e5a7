"""Read tokens for private channels: where clients put them, and what they grant.

Clients send a token in one of three ways, all accepted everywhere:

- conda and mamba: in the URL, ``/t/<token>/<channel>/...`` (the prefix is removed
  before routing, and pages served under it link relatively so it stays on);
- rattler and pixi: ``Authorization: Bearer <token>``;
- pip and uv: HTTP Basic with the token as the password
  (``https://user:TOKEN@host/pypi/simple/``); a Basic user with an empty password is
  taken as the token too, as ``https://TOKEN@host/...`` sends it.

Secrets come from the environment, named by ``serve.tokens[].token_env``; they are
compared in constant time (:func:`hmac.compare_digest`) against every configured
token, and are never logged, shown or returned: a :class:`Grant` carries only the
token's name and channels.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.config.models import Config

REALM = "conda-reconcile"
TOKEN_PREFIX = "t"  # conda's /t/<token>/ URLs

# What a token looks like in a URL (used to recognise it, then to hide it in logs).
_MAX_TOKEN = 4096


@dataclass(frozen=True)
class Grant:
    """What the credentials of one request may read."""

    presented: bool  # the request carried credentials at all
    names: tuple[str, ...] = ()  # the matching tokens' names
    channels: frozenset[str] = field(default_factory=frozenset)

    @property
    def valid(self) -> bool:
        return bool(self.names)


ANONYMOUS = Grant(presented=False)


class TokenTable:
    """The configured tokens, with their secrets read from the environment once."""

    def __init__(self, config: Config, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._tokens: list[tuple[bytes, str, frozenset[str]]] = []
        for token in config.serve.tokens:
            secret = env.get(token.token_env, "")
            if secret:  # an unset one is a validation error when serving
                self._tokens.append((secret.encode(), token.name, frozenset(token.channels)))

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, presented: str | None) -> Grant:
        """The grant for ``presented`` (None: no credentials)."""
        if presented is None:
            return ANONYMOUS
        given = presented.encode("utf-8", "surrogateescape")[:_MAX_TOKEN]
        names: list[str] = []
        channels: set[str] = set()
        # Every token is compared, matching or not, so the time taken says nothing.
        for secret, name, granted in self._tokens:
            if hmac.compare_digest(secret, given):
                names.append(name)
                channels |= granted
        return Grant(True, tuple(names), frozenset(channels))


def split_token(segments: list[str]) -> tuple[str | None, list[str]]:
    """``["t", TOKEN, *rest]`` → (TOKEN, rest); anything else → (None, segments)."""
    if len(segments) >= 2 and segments[0] == TOKEN_PREFIX and segments[1]:
        return segments[1], segments[2:]
    return None, segments


def header_token(authorization: str | None) -> str | None:
    """The token in an ``Authorization`` header (Bearer, token, or Basic's password)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme in ("bearer", "token"):
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError):
            return ""  # credentials were sent, but no token can be read from them
        user, _, password = decoded.partition(":")
        return password or user
    return ""


def challenge() -> dict[str, str]:
    """Headers of a 401: Basic makes pip and uv retry with their stored credentials."""
    return {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}


def redact_path(raw: str) -> str:
    """A request target fit for a log line: the token of ``/t/<token>/`` hidden."""
    if raw.startswith(f"/{TOKEN_PREFIX}/"):
        rest = raw[len(TOKEN_PREFIX) + 2 :]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        return f"/{TOKEN_PREFIX}/<token>{rest[cut:]}"
    return raw
