"""The node's frozen settings: defaults that work with no config, TOML + LIBERATION_NODE_* overrides."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.config import load_settings

ENV_PREFIX = "LIBERATION_NODE_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlausibleSettings(_Section):
    """The Plausible Events API endpoint (`POST /api/event`)."""

    # Site domain as the tracker sends it (`d`) -> catalog app. Unknown domains are dropped.
    domains: dict[str, str] = Field(default_factory=dict)
    # Event name (`n`) -> catalog action, where they differ (e.g. pageview = "start").
    events: dict[str, str] = Field(default_factory=dict)


class RateLimitSettings(_Section):
    """Per-client token bucket, keyed by an HMAC of the IP (IPv6: its /64) under a key that lives in memory only."""

    requests_per_second: float = Field(default=20.0, ge=0)  # 0 turns the limit off
    burst: int = Field(default=60, ge=1)


class PushSettings(_Section):
    """Where and how the node pushes its signed snapshots."""

    hub_url: str | None = None  # e.g. "https://hub.example.org"; None = keep snapshots local
    interval_seconds: float = Field(default=10.0, gt=0)  # how often the outbox is looked at
    min_backoff_seconds: float = Field(default=2.0, gt=0)
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)


class NodeSettings(_Section):
    """Everything a node operator can set; every field is documented in deploy/node.example.toml."""

    data_dir: Path = Path("data/node")
    host: str = "127.0.0.1"
    port: int = Field(default=8701, ge=0, le=65535)
    # The operator's listener for /metrics (never the public port); None = no metrics served.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9701, ge=0, le=65535)
    # Most client connections open at once on the public port; at the cap a newcomer closes the
    # longest-open idle one (or is closed, if every one is busy). Fitted to the open-file limit.
    max_connections: int = Field(default=4096, ge=1)
    catalog: Path | None = None  # a catalog TOML; None = the built-in default catalog
    geoip_database: Path | None = None  # a MaxMind-format country .mmdb; None = country ZZ
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    cors_origins: tuple[str, ...] = ()  # origins allowed to post events; "*" = any
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    clock_skew_seconds: int = Field(default=600, ge=0)  # live events further off are refused
    retention_days: int | None = Field(default=None, ge=0)  # None = the catalog's
    commit_max_rows: int = Field(default=50_000, ge=1)  # most rows in one group commit
    memory_limit: str = Field(default="640MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")  # DuckDB's
    export_grace_seconds: int = Field(default=3600, ge=0)  # a window closes this long after its end
    export_interval_seconds: float = Field(default=60.0, gt=0)  # how often closed windows are looked for
    epsilon_cap_per_day: float | None = Field(default=None, gt=0)  # None = one day's worth of windows
    log_level: str = "INFO"
    plausible: PlausibleSettings = Field(default_factory=PlausibleSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    push: PushSettings = Field(default_factory=PushSettings)

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ingest_workers" in data:
            raise ValueError(
                "`ingest_workers` was removed: a node is one process, which takes tens of "
                "thousands of events a second (docs/operations.md); delete the setting"
            )
        if isinstance(data, dict) and "window" in data:
            raise ValueError(
                "`window` moved to the catalog: a federation has one window length, "
                '`window = "day"` or `"week"` in its catalog (docs/privacy.md); delete the setting'
            )
        return data

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value


def load_node_settings(path: Path | str | None = None, **overrides: Any) -> NodeSettings:
    """Settings from an optional TOML file, the environment, then command-line overrides."""
    return load_settings(NodeSettings, path, ENV_PREFIX, overrides=overrides)
