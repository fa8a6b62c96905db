"""The hub's frozen settings: defaults that work with no config, TOML + LIBERATION_HUB_* overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from protocol.config import load_settings

ENV_PREFIX = "LIBERATION_HUB_"


class HubSettings(BaseModel):
    """Everything a hub operator can set; every field is documented in deploy/hub.example.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("data/hub")
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    # Catalog TOML files this hub merges, besides the built-in default catalog.
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


def load_hub_settings(path: Path | str | None = None, **overrides: Any) -> HubSettings:
    """Settings from an optional TOML file, the environment, then command-line overrides."""
    return load_settings(HubSettings, path, ENV_PREFIX, overrides=overrides)
