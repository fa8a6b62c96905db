"""A site in a node's settings file: its origin in `cors_origins`, its Plausible domain or Umami website id
mapped to an app, in one step (`liberation node sites add`).

The TOML is edited in place (tomlkit), so comments and every other setting stay
as they were; the result must validate as the node's settings and name apps and
actions of its catalog before it replaces the file: written beside it, synced,
renamed over it, mode 0600.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomlkit
from pydantic import ValidationError
from tomlkit.exceptions import TOMLKitError

from node.settings import NodeSettings
from protocol.catalog import load_catalog
from protocol.files import write_file_then
from runtime.config import ConfigError

DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> str:
    """An origin as browsers send it (`https://tools.example.org`, `http://127.0.0.1:8080`), or ConfigError."""
    text = text.strip()
    if text == "*":
        return text
    parts = urlsplit(text)
    problem = None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        problem = "it is scheme://host[:port], with http or https"
    elif parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        problem = "an origin has no path, query or user: only scheme://host[:port]"
    if problem is not None:
        raise ConfigError(f"{text!r} is not an origin: {problem}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{text!r} is not an origin: bad port") from None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != DEFAULT_PORTS[parts.scheme] else "")


@dataclass
class Site:
    """What to add: an origin, and optionally its app with the trackers' site names and event names."""

    origin: str
    app: str | None = None
    plausible_domain: str | None = None
    umami_website: str | None = None
    events: Mapping[str, str] = field(default_factory=dict)  # tracker event name -> catalog action


def _table(parent: Any, name: str, *, inline: bool) -> Any:
    if name not in parent:
        parent[name] = tomlkit.inline_table() if inline else tomlkit.table()
    return parent[name]


def _check(site: Site, settings: NodeSettings) -> None:
    """The app and actions exist in the node's catalog; mappings need an app."""
    if (site.plausible_domain or site.umami_website or site.events) and site.app is None:
        raise ConfigError("--app is required with --plausible-domain, --umami-website or --event")
    if site.events and not (site.plausible_domain or site.umami_website):
        raise ConfigError("--event maps a tracker's event names: give --plausible-domain or --umami-website too")
    if site.app is None:
        return
    catalog = load_catalog(settings.catalog)
    app = catalog.apps.get(site.app)
    if app is None:
        raise ConfigError(f"app {site.app!r} is not in the node's catalog (apps: {', '.join(catalog.apps)})")
    for name, action in site.events.items():
        if action not in app.actions:
            raise ConfigError(f"--event {name}={action}: {site.app} has no action {action!r} (actions: {', '.join(app.actions)})")


def add_site(path: Path, site: Site) -> list[str]:
    """Add `site` to the settings file at `path` (created if missing); what changed, one line each."""
    path = path.resolve()
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        doc = tomlkit.parse(text)
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from None
    changes: list[str] = []
    origin = parse_origin(site.origin)
    origins = doc.get("cors_origins")
    if origins is None:
        doc["cors_origins"] = origins = tomlkit.array()
    if origin not in origins:
        origins.append(origin)
        changes.append(f"cors_origins += {origin}")
    for section, key, name in (("plausible", "domains", site.plausible_domain), ("umami", "websites", site.umami_website)):
        if name is None:
            continue
        table = _table(doc, section, inline=False)
        mapping = _table(table, key, inline=True)
        if mapping.get(name) != site.app:
            mapping[name] = site.app
            changes.append(f"{section}.{key}[{name!r}] = {site.app}")
        events = _table(table, "events", inline=True)
        for event, action in site.events.items():
            if events.get(event) != action:
                events[event] = action
                changes.append(f"{section}.events[{event!r}] = {action}")
    try:
        settings = NodeSettings.model_validate(doc.unwrap())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"the settings would not load: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    _check(site, settings)
    if changes:
        write_file_then(path, tomlkit.dumps(doc).encode(), 0o600, os.replace)
    return changes


def describe_sites(settings: NodeSettings) -> list[str]:
    """The origins and tracker mappings a node runs with, one line each."""
    lines = [f"origin   {o}" for o in settings.cors_origins] or ["origin   (none: only same-origin pages can send events)"]
    lines += [f"plausible domain {d} -> {a}" for d, a in settings.plausible.domains.items()]
    lines += [f"plausible event  {n} -> {a}" for n, a in settings.plausible.events.items()]
    lines += [f"umami website    {w} -> {a}" for w, a in settings.umami.websites.items()]
    lines += [f"umami event      {n} -> {a}" for n, a in settings.umami.events.items()]
    return lines
