"""The admin HTTP API of hub and share keeper: tokens strong enough to trust (checked at start), compared in
constant time; the enrollment body both take."""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any, Protocol, TypeVar

from aiohttp import web
from pydantic import AfterValidator, BeforeValidator, SecretStr

from protocol import jsontext
from protocol.errors import BadRequest, NotFound, ProblemType, Unauthorized
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


class _AdminSettings(Protocol):
    @property
    def admin_token(self) -> SecretStr | None: ...


class _Service(Protocol):
    @property
    def settings(self) -> _AdminSettings: ...


S = TypeVar("S", bound=_Service)


def admin_service(request: web.Request, key: web.AppKey[S]) -> S:
    """The running service behind an admin API request (`app[key]`), once `require_bearer` let the request in."""
    service = request.app[key]
    require_bearer(request, service.settings.admin_token)
    return service


AdminToken = Annotated[SecretStr | None, BeforeValidator(token_or_off), AfterValidator(strong_admin_token)]
"""An admin token setting: a secret strong enough to trust, or None (unset, or "off") for the admin API off."""


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


async def enrollment_body(request: web.Request) -> dict[str, Any]:
    """The JSON body of an enrollment (`POST /v1/admin/nodes`), with its `name` and `public_key` strings; else 400."""
    try:
        data = jsontext.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON: {\"name\": ..., \"public_key\": ...}", slug=ProblemType.MALFORMED_BODY) from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("public_key"), str):
        raise BadRequest("`name` and `public_key` (base64 or PEM) are required", slug=ProblemType.INVALID_ENROLLMENT)
    return dict(data)
