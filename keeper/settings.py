"""The share keeper's frozen settings: defaults that work with no config, TOML + LIBERATION_KEEPER_* overrides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from protocol.keys import PublicKey
from runtime.config import MemoryLimit, OptionalPort, PathTuple, Port, ServerSettings, StrTuple, load_settings
from runtime.tokens import AdminToken

ENV_PREFIX = "LIBERATION_KEEPER_"


class KeeperSettings(ServerSettings):
    """Everything a keeper operator can set; every field is documented in deploy/keeper.example.toml."""

    data_dir: Path = Path("data/keeper")
    port: Port = 8710
    metrics_port: OptionalPort = 9710
    max_connections: int = Field(default=256, ge=1)
    memory_limit: MemoryLimit = "256MB"
    # Catalog TOML files whose rounds this keeper answers, besides the built-in default catalog.
    catalogs: PathTuple = ()
    # Public keys (base64) of the hubs allowed to ask for answers: a request is signed by one of them.
    hub_keys: StrTuple = ()
    # Bearer token of the admin API (enroll, revoke, list nodes). None (unset, or "off") = admin API off.
    admin_token: AdminToken = None
    # Largest round request read: about 5 KB per participant with the default catalog.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # A hub's clock may run this far ahead of the keeper's before a window counts as not ended.
    clock_skew_seconds: int = Field(default=600, ge=0)

    @field_validator("hub_keys")
    @classmethod
    def _hub_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            PublicKey.from_b64(key)  # KeyFormatError is a ValueError: reported as a settings error
        return keys


def load_keeper_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> KeeperSettings:
    """Settings from an optional TOML file, the environment (`environ`, default os.environ), then command-line overrides."""
    return load_settings(KeeperSettings, path, ENV_PREFIX, environ=environ, overrides=overrides)
