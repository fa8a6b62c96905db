"""Settings of a service from a TOML file, then `LIBERATION_<SVC>_*` environment variables, then flags (pydantic-settings).

A typo is an error that names the closest setting, a URL must be a URL, and "off" is the one
word that turns an optional setting off (`null` too, where it was documented), never a secret.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources import TomlConfigSettingsSource

from protocol.errors import LiberationError

S = TypeVar("S", bound="ServiceSettings")

NESTED = "__"
OFF_WORDS = frozenset({"off", "null", "none"})
"""Values of an optional setting that turn it off; `null` was the documented way before `off`."""


class ConfigError(LiberationError):
    """A settings file or environment variable that does not fit the settings model."""


class ServiceSettings(BaseSettings):
    """Base of a service's frozen settings. Constructing one reads nothing from outside: `load_settings` does."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit wiring: a demo or a test that builds settings in code never picks up the environment.
        return (init_settings,)


class Section(BaseModel):
    """A table of a service's settings (`[push]`): as strict about typos as the service's model."""

    model_config = {"extra": "forbid", "frozen": True}


def _off(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in OFF_WORDS else value


def list_items(value: Any) -> Any:
    """A list from the environment: JSON (`["a", "b"]`) or comma-separated (`a,b`)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("a list: JSON such as [\"a\", \"b\"], or a,b") from None
    return [item.strip() for item in text.split(",") if item.strip()]


def _http_url(value: str) -> str:
    parsed = TypeAdapter(AnyHttpUrl).validate_python(value)  # raises with pydantic's own message
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("an http:// or https:// URL")
    return value.rstrip("/")


def _require_scheme(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty: give a URL such as https://hub.example.org, or off")
    if isinstance(value, str) and "://" not in value:
        raise ValueError(f"a URL starts with its scheme: https://{value.strip('/')} (or http:// on a private network)")
    return value


Off = BeforeValidator(_off)
"""Marks an optional setting that "off" (or the documented "null") turns off."""

StrTuple = Annotated[tuple[str, ...], NoDecode, BeforeValidator(list_items)]
"""A list of strings: a TOML array, or from the environment JSON or comma-separated."""

PathTuple = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(list_items)]
"""A list of paths, given as `StrTuple`."""

HttpUrl = Annotated[str, BeforeValidator(_require_scheme), AfterValidator(_http_url)]
"""An http(s) URL with its scheme, kept as the string given (without a trailing slash)."""

Port = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port (0: any free one)."""

OptionalPort = Annotated[Port | None, Off]
"""A port that "off" turns off."""

MemoryLimit = Annotated[str, Field(pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")]
"""DuckDB's memory limit, such as 640MB or 1.5GiB."""


class ServerSettings(ServiceSettings):
    """What the settings of every service hold: its data dir, listeners, connection cap, DuckDB memory, log level.

    Each service gives its own `data_dir`, `port` and `metrics_port` defaults (and its own where others differ).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: Port
    # The operator's listener for /metrics (never the public port); None ("off") = no metrics served.
    metrics_host: str = "127.0.0.1"
    metrics_port: OptionalPort
    # Most client connections open at once on the public port; at the cap a newcomer closes the
    # longest-open idle one (or is closed, if every one is busy). Fitted to the open-file limit.
    max_connections: int = Field(default=4096, ge=1)
    memory_limit: MemoryLimit = "640MB"  # DuckDB's; bigger queries spill to the store's .tmp directory
    log_level: str = "INFO"


def _known_env_names(model: type[BaseModel], prefix: str) -> dict[str, bool]:
    """Every environment variable name the model takes (upper case) -> whether names may continue below it."""
    names: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(_known_env_names(annotation, f"{prefix}{name.upper()}{NESTED}"))
            names[f"{prefix}{name.upper()}"] = False
        else:
            names[f"{prefix}{name.upper()}"] = "dict" in str(annotation)  # a table: keys of its own
    return names


def _check_env_names(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> None:
    known = _known_env_names(model, prefix)
    for name in environ:
        upper = name.upper()
        if not upper.startswith(prefix) or upper == prefix + "CONFIG" or upper in known:
            continue
        if any(open_below and upper.startswith(known_name + NESTED) for known_name, open_below in known.items()):
            continue
        raise ConfigError(f"{name} is not a setting{_did_you_mean(upper, list(known))}")


def _did_you_mean(given: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (sub)model a validation error's location points into."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        info = current.model_fields.get(str(part))
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        current = info.annotation
    return list(current.model_fields)


def _describe(model: type[BaseModel], exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc) or "settings"
        if error["type"] == "extra_forbidden":
            hint = _did_you_mean(str(loc[-1]), _fields_at(model, loc))
            problems.append(f"{where}: not a setting{hint}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
    return "invalid settings: " + "; ".join(problems)


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def _toml(model: type[ServiceSettings], path: Path) -> dict[str, Any]:
    try:
        with path.open("rb"):
            pass  # a missing or unreadable file is an error here; the TOML source would read it as empty
        return dict(TomlConfigSettingsSource(model, toml_file=path)())
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from None


def load_settings(
    model: type[S],
    path: Path | str | None,
    env_prefix: str,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """The model from a TOML file, then the environment, then explicit overrides (flags), each over the last.

    `env_prefix` like "LIBERATION_NODE_": LIBERATION_NODE_DATA_DIR sets `data_dir`;
    a double underscore reaches into a table (LIBERATION_NODE_PUSH__HUB_URL). Plain
    values stay strings until the model converts them (a numeric-looking token stays
    a string); lists and tables are JSON (lists also a,b). Unknown keys and variables
    are errors that name the closest setting.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = _toml(model, Path(path)) if path is not None else {}
    _check_env_names(model, env_prefix, env)
    source = EnvSettingsSource(
        model,
        case_sensitive=False,
        env_prefix=env_prefix,
        env_nested_delimiter=NESTED,
        env_parse_none_str=None,
    )
    source.env_vars = {name.lower(): value for name, value in env.items()}  # the mapping given, not os.environ
    try:
        from_env = source()
    except SettingsError as exc:
        cause = exc.__cause__
        raise ConfigError(f"invalid settings: {exc}{f' ({cause})' if cause else ''}") from None
    data = _deep_update(data, from_env)
    data = _deep_update(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(model, exc)) from None
