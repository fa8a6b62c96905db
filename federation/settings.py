"""The hub's frozen settings: defaults that work with no config, TOML + LIBERATION_HUB_* overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator

from runtime.config import Off, PathTuple, Section, ServiceSettings, StrTuple, load_settings
from runtime.tokens import AdminToken, strong_admin_token

ENV_PREFIX = "LIBERATION_HUB_"


class RoundsSettings(Section):
    """Federation rounds (federation/rounds.py): when a round closes, how the hub asks its keepers."""

    # A round closes this long after its window ends (nodes export an hour after, then push) ...
    close_after_seconds: int = Field(default=6 * 3600, ge=0)
    # ... and never sooner than this after its first contribution arrived (history back-filled at once).
    collect_seconds: int = Field(default=600, ge=0)
    # How often rounds are looked at: closed, checked with the keepers, answered, published.
    interval_seconds: float = Field(default=5.0, gt=0)
    keeper_timeout_seconds: float = Field(default=60.0, gt=0)


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
    admin_token: AdminToken = None
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

    rounds: RoundsSettings = Field(default_factory=RoundsSettings)

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        """Refuse guessable admin tokens at start: the admin API shares its port with public intake."""
        return strong_admin_token(token)


def load_hub_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> HubSettings:
    """Settings from an optional TOML file, the environment (`environ`, default os.environ), then command-line overrides."""
    return load_settings(HubSettings, path, ENV_PREFIX, environ=environ, overrides=overrides)
