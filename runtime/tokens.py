"""Admin API tokens of hub and share keeper: strong enough to trust (checked at start), compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from aiohttp import web
from pydantic import BeforeValidator, SecretStr

from protocol.errors import NotFound, ProblemType, Unauthorized
from runtime.config import OFF_WORDS

MIN_ADMIN_TOKEN_CHARS = 43
"""32 random bytes are 43 characters of base64url: a token the admin API can trust is at least that long."""
MIN_ADMIN_TOKEN_DISTINCT = 10
"""Fewer distinct characters than this is not random output (a random 43-char token has about 30)."""
GENERATE_TOKEN_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def token_or_off(value: Any) -> Any:
    """`off` turns the admin API off, said so; `null`, `none` or nothing at all is a mistake, not a wish."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "off":
            return None
        if word in OFF_WORDS or word in ("", "false", "0"):
            raise ValueError(
                f"the admin token is {word or 'empty'}, which is not a token; to turn the admin API off, "
                "leave admin_token unset or set it to off (the CLI works through the local socket anyway); "
                f"{GENERATE_TOKEN_HINT}"
            )
    return value


AdminToken = Annotated[SecretStr | None, BeforeValidator(token_or_off)]
"""An admin token setting: a secret, or None (unset, or "off") for the admin API off."""


def strong_admin_token(token: SecretStr | None) -> SecretStr | None:
    """The token, or ValueError if it is guessable (settings refuse to start with it); never echoes it."""
    if token is None:
        return None
    value = token.get_secret_value()  # never echoed: the messages below describe, not quote
    if value.lower().startswith("change-me"):
        raise ValueError(f"the admin token is the public placeholder; {GENERATE_TOKEN_HINT}")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError(f"the admin token must be printable ASCII without spaces; {GENERATE_TOKEN_HINT}")
    if len(value) < MIN_ADMIN_TOKEN_CHARS or len(set(value)) < MIN_ADMIN_TOKEN_DISTINCT:
        raise ValueError(
            f"the admin token is too weak (need 32 random bytes, at least {MIN_ADMIN_TOKEN_CHARS} "
            f"characters); {GENERATE_TOKEN_HINT}"
        )
    return token


def require_bearer(request: web.Request, token: SecretStr | None) -> None:
    """404 if the admin API is off (no token), 401 unless the request carries `Bearer <token>`."""
    if token is None:
        raise NotFound("the admin API is off (no admin_token configured)", slug=ProblemType.ADMIN_OFF)
    given = request.headers.get("Authorization", "")
    expected = "Bearer " + token.get_secret_value()
    # Header bytes that are not UTF-8 arrive as lone surrogates, which cannot be encoded; the
    # token is ASCII (settings), so a non-ASCII header is simply not it.
    if not given.isascii() or not hmac.compare_digest(given.encode("ascii"), expected.encode("ascii")):
        raise Unauthorized("a valid bearer token is required", slug=ProblemType.UNAUTHORIZED)
