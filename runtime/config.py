"""Settings loading shared by node and hub: a TOML file, then `LIBERATION_<SVC>_*` environment overrides."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from protocol.errors import LiberationError

S = TypeVar("S", bound=BaseModel)


class ConfigError(LiberationError):
    """A settings file or environment variable that does not fit the settings model."""


def _env_value(raw: str) -> Any:
    # JSON where it parses (numbers, lists, tables), else the plain string:
    # LIBERATION_NODE_PORT=0 and LIBERATION_NODE_CORS_ORIGINS='["*"]' both work.
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_settings(
    model: type[S],
    path: Path | str | None,
    env_prefix: str,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """Build a frozen settings model from TOML, then environment, then explicit overrides.

    `env_prefix` like "LIBERATION_NODE_": LIBERATION_NODE_DATA_DIR sets `data_dir`;
    a double underscore reaches into a table (LIBERATION_NODE_PLAUSIBLE__DOMAINS).
    Unknown keys are errors (the models forbid extras): a typo never becomes a silent default.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc}") from None
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(env_prefix) or name == env_prefix + "CONFIG":
            continue
        keys = name.removeprefix(env_prefix).lower().split("__")
        target = data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = _env_value(raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
