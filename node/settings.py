"""The node's frozen settings: defaults that work with no config, TOML + LIBERATION_NODE_* overrides."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from protocol.catalog import refuse_removed_keys
from runtime.config import (
    HttpUrl,
    Off,
    OptionalPort,
    Port,
    Section,
    ServerSettings,
    StrTuple,
    load_settings,
)

ENV_PREFIX = "LIBERATION_NODE_"
REMOVED = {
    "ingest_workers": "`ingest_workers` was removed: a node is one process, which takes tens of "
    "thousands of events a second (docs/operations.md); delete the setting",
    "window": "`window` moved to the catalog: a federation has one window length, "
    '`window = "day"` or `"week"` in its catalog (docs/privacy.md); delete the setting',
}
"""Settings no longer taken, and what to do instead."""


class PlausibleSettings(Section):
    """The Plausible Events API endpoint (`POST /api/event`)."""

    # Site domain as the tracker sends it (`d`) -> catalog app. Unknown domains are dropped.
    domains: dict[str, str] = Field(default_factory=dict)
    # Event name (`n`) -> catalog action, where they differ (e.g. pageview = "start").
    events: dict[str, str] = Field(default_factory=dict)


class UmamiSettings(Section):
    """Umami's collect endpoint (`POST /api/send`)."""

    # Website id (the tracker's data-website-id) -> catalog app. Unknown ids are dropped.
    websites: dict[str, str] = Field(default_factory=dict)
    # Event name -> catalog action, where they differ; a send without a name is "pageview".
    events: dict[str, str] = Field(default_factory=dict)


class RateLimitSettings(Section):
    """Per-client token bucket, keyed by an HMAC of the IP (IPv6: its /64) under a key that lives in memory only."""

    requests_per_second: float = Field(default=20.0, ge=0)  # 0 turns the limit off
    burst: int = Field(default=60, ge=1)


class PushSettings(Section):
    """Where and how the node pushes its signed snapshots."""

    hub_url: Annotated[HttpUrl | None, Off] = None  # e.g. "https://hub.example.org"; None = keep snapshots local
    interval_seconds: float = Field(default=10.0, gt=0)  # how often the outbox is looked at
    min_backoff_seconds: float = Field(default=2.0, gt=0)
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    # A snapshot the hub refused as unknown-key (pushed before the node was enrolled) is offered
    # again after about this long (jittered), until the hub takes it.
    enrollment_retry_seconds: float = Field(default=900.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)


class RoundSettings(Section):
    """Federation rounds: the share keepers this node seals its seeds to (docs/operations.md, keepers)."""

    # Key ids (32 hex) of the keepers, as their operators publish them; their keys are learned
    # from the hub and taken only if these identities signed them. Empty: no contributions.
    keepers: tuple[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")], ...] = ()
    # A closed window waits this long for the keepers' keys (the hub unreachable at first start)
    # before it is exported without a contribution.
    wait_for_keepers_seconds: int = Field(default=86_400, ge=0)


class NodeSettings(ServerSettings):
    """Everything a node operator can set; every field is documented in deploy/node.example.toml."""

    data_dir: Path = Path("data/node")
    display_name: str | None = Field(default=None, max_length=120)  # whose node: shown on its own page
    port: Port = 8701
    metrics_port: OptionalPort = 9701
    catalog: Annotated[Path | None, Off] = None  # a catalog TOML; None = the built-in default catalog
    geoip_database: Annotated[Path | None, Off] = None  # a MaxMind-format country .mmdb; None = country ZZ
    trusted_proxies: StrTuple = ()  # CIDRs whose X-Forwarded-For is believed
    cors_origins: StrTuple = ()  # origins allowed to post events; "*" = any
    views_cors_origins: StrTuple = ("*",)  # origins that may GET the public views; () = no CORS
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    clock_skew_seconds: int = Field(default=600, ge=0)  # live events further off are refused
    retention_days: Annotated[Annotated[int, Field(ge=0)] | None, Off] = None  # None = the catalog's
    commit_max_rows: int = Field(default=50_000, ge=1)  # most rows in one group commit
    export_grace_seconds: int = Field(default=3600, ge=0)  # a window closes this long after its end
    export_interval_seconds: float = Field(default=60.0, gt=0)  # how often closed windows are looked for
    epsilon_cap_per_day: Annotated[Annotated[float, Field(gt=0)] | None, Off] = None  # None = one day's worth of windows
    plausible: PlausibleSettings = Field(default_factory=PlausibleSettings)
    umami: UmamiSettings = Field(default_factory=UmamiSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    push: PushSettings = Field(default_factory=PushSettings)
    rounds: RoundSettings = Field(default_factory=RoundSettings)

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return refuse_removed_keys(data, REMOVED)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value


def load_node_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> NodeSettings:
    """Settings from an optional TOML file, the environment (`environ`, default os.environ), then command-line overrides."""
    return load_settings(NodeSettings, path, ENV_PREFIX, environ=environ, overrides=overrides)
