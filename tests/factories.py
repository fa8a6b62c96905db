"""Build node stores full of events for aggregation, noise and export tests (no server)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from node.privacy import FilteredEvent, PrivacyFilter
from node.store import Store
from protocol.catalog import Catalog, load_catalog
from protocol.events import Event

WINDOW = datetime(2026, 11, 20, tzinfo=UTC)
W_DAY = int(WINDOW.timestamp())
NOW = WINDOW + timedelta(days=3)
SALT = b"t" * 32


def ev(session: str, app: str, action: str, minute: int = 0, **attributes: Any) -> dict[str, Any]:
    """An event of `session` at `minute` after the window start."""
    geo = attributes.pop("geo", None)
    return {
        "app": app,
        "action": action,
        "attributes": attributes,
        "timestamp": (WINDOW + timedelta(minutes=minute)).isoformat(),
        "session_id": f"session-{session}",
        **({"geo_hint": geo} if geo else {}),
    }


def filtered(catalog: Catalog, raw: Iterable[dict[str, Any]]) -> list[FilteredEvent]:
    """Raw event dicts through the real privacy filter, in import mode."""
    privacy = PrivacyFilter(catalog, clock_skew=timedelta(minutes=10))
    out = []
    for item in raw:
        result = privacy.apply(Event.model_validate(item), now=NOW, salt_for=lambda w: SALT, live=False)
        assert result.event is not None, result.rejection
        out.append(result.event)
    return out


def store_with(tmp: Path, raw: Iterable[dict[str, Any]], catalog: Catalog | None = None) -> Store:
    """A fresh store holding `raw` events."""
    catalog = catalog or load_catalog()
    store = Store(tmp / "node.duckdb", catalog)
    events = filtered(catalog, raw)
    for start in range(0, len(events), 10_000):
        store.commit_events(events[start : start + 10_000])
    return store


def weekly_catalog(directory: Path) -> tuple[Path, Catalog]:
    """The default catalog with weekly windows, as a TOML file a node loads (and the catalog it describes)."""
    text = resources.files("protocol").joinpath("data/default_catalog.toml").read_text()
    assert text.count('window = "day"') == 1
    path = directory / "weekly.toml"
    path.write_text(text.replace('window = "day"', 'window = "week"'))
    return path, load_catalog(path)
