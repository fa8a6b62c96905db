"""The hub's frozen settings: defaults that work with no config, TOML + LIBERATION_HUB_* overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr, field_validator

from runtime.config import OFF_WORDS, Off, PathTuple, ServiceSettings, StrTuple, load_settings

ENV_PREFIX = "LIBERATION_HUB_"
# 32 random bytes are 43 characters of base64url: a token the admin API can trust is at least that long.
MIN_ADMIN_TOKEN_CHARS = 43
# Fewer distinct characters than this is not random output (a random 43-char token has about 30).
MIN_ADMIN_TOKEN_DISTINCT = 10
GENERATE_TOKEN_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _token_or_off(value: Any) -> Any:
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


class HubSettings(ServiceSettings):
    """Everything a hub operator can set; every field is documented in deploy/hub.example.toml."""

    data_dir: Path = Path("data/hub")
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    # The operator's listener for /metrics (never the public port); None = no metrics served.
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[Annotated[int, Field(ge=0, le=65535)] | None, Off] = 9700
    # Most client connections open at once on the public port; at the cap a newcomer closes the
    # longest-open idle one (or is closed, if every one is busy). Fitted to the open-file limit.
    max_connections: int = Field(default=4096, ge=1)
    # The federation's catalog TOML (its window length, metrics, weights): what the views show
    # unless a request names another. None = the built-in default catalog.
    catalog: Path | None = None
    # Catalog TOML files this hub merges besides it (and the built-in default catalog).
    catalogs: PathTuple = ()
    views_cors_origins: StrTuple = ("*",)  # origins that may GET the public views; () = no CORS
    # Bearer token of the admin API (enroll, revoke, list nodes, incidents). None (unset, or "off") = admin API off.
    admin_token: Annotated[SecretStr | None, BeforeValidator(_token_or_off)] = None
    # Ceiling on an envelope's size; intake takes the smaller of this and twice the largest
    # envelope its catalogs can produce (protocol.snapshot.max_envelope_size).
    max_snapshot_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Snapshots of windows older than this many days are refused; newer than now never accepted.
    window_horizon_days: int = Field(default=400, ge=1)
    # A node's clock may run this far ahead of the hub's before its window counts as "future".
    clock_skew_seconds: int = Field(default=600, ge=0)
    # A window is exported upstream (GET /v1/export, hub of hubs) this long after its end,
    # once late node snapshots had their chance; the export never changes afterwards.
    export_after_seconds: int = Field(default=6 * 3600, ge=0)
    memory_limit: str = Field(default="640MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")
    log_level: str = "INFO"

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        """Refuse guessable admin tokens at start: the admin API shares its port with public intake."""
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


def load_hub_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> HubSettings:
    """Settings from an optional TOML file, the environment (`environ`, default os.environ), then command-line overrides."""
    return load_settings(HubSettings, path, ENV_PREFIX, environ=environ, overrides=overrides)
