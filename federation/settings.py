"""The hub's frozen settings: defaults that work with no config, TOML + LIBERATION_HUB_* overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from runtime.config import OptionalPort, PathTuple, Port, Section, ServerSettings, StrTuple, load_settings
from runtime.tokens import AdminToken

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


class HubSettings(ServerSettings):
    """Everything a hub operator can set; every field is documented in deploy/hub.example.toml."""

    data_dir: Path = Path("data/hub")
    port: Port = 8700
    metrics_port: OptionalPort = 9700
    # The federation's catalog TOML (its window length, metrics, weights): what the views show
    # unless a request names another. None = the built-in default catalog.
    catalog: Path | None = None
    # Catalog TOML files this hub merges besides it (and the built-in default catalog).
    catalogs: PathTuple = ()
    views_cors_origins: StrTuple = ("*",)  # origins that may GET the public views; () = no CORS
    # Bearer token of the admin API (enroll, revoke, list nodes, incidents). None (unset, or "off") = admin API off.
    # A guessable one is refused at start: the admin API shares its port with public intake.
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

    rounds: RoundsSettings = Field(default_factory=RoundsSettings)


def load_hub_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> HubSettings:
    """Settings from an optional TOML file, the environment (`environ`, default os.environ), then command-line overrides."""
    return load_settings(HubSettings, path, ENV_PREFIX, environ=environ, overrides=overrides)
