"""The hub's frozen settings: defaults that work with no config, TOML + LIBERATION_HUB_* overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from runtime.config import load_settings

ENV_PREFIX = "LIBERATION_HUB_"
# 32 random bytes are 43 characters of base64url: a token the admin API can trust is at least that long.
MIN_ADMIN_TOKEN_CHARS = 43
# Fewer distinct characters than this is not random output (a random 43-char token has about 30).
MIN_ADMIN_TOKEN_DISTINCT = 10
GENERATE_TOKEN_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


class HubSettings(BaseModel):
    """Everything a hub operator can set; every field is documented in deploy/hub.example.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("data/hub")
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    # The operator's listener for /metrics (never the public port); None = no metrics served.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9700, ge=0, le=65535)
    # Most client connections open at once on the public port; at the cap a newcomer closes the
    # longest-open idle one (or is closed, if every one is busy). Fitted to the open-file limit.
    max_connections: int = Field(default=4096, ge=1)
    # The federation's catalog TOML (its window length, metrics, weights): what the views show
    # unless a request names another. None = the built-in default catalog.
    catalog: Path | None = None
    # Catalog TOML files this hub merges besides it (and the built-in default catalog).
    catalogs: tuple[Path, ...] = ()
    # Bearer token of the admin API (enroll, revoke, list nodes, incidents). None = admin API off.
    admin_token: SecretStr | None = None
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


def load_hub_settings(path: Path | str | None = None, **overrides: Any) -> HubSettings:
    """Settings from an optional TOML file, the environment, then command-line overrides."""
    return load_settings(HubSettings, path, ENV_PREFIX, overrides=overrides)
