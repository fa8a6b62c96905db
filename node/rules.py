"""What the node may store, compiled once from the catalog: the rules both filter paths decide with.

The exact path (node/privacy.py, one pydantic Event at a time) and the fast
path (node/fastfilter.py, a whole live batch straight into rows) look up the
same `StorageRules`: which apps and actions are declared, which attributes
each app may carry, and how a raw value becomes a label of its public domain
(`AttributeSpec.labeler`: numbers and money bucketed, bands checked, unknown
categories `other`). A value no rule maps is dropped before storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from protocol.catalog import Catalog


class AttributeRule(NamedTuple):
    """How one declared attribute of an app is stored."""

    column: int
    """Its position among the row layout's attribute columns (the catalog's attribute order)."""
    label: Callable[[object], str | None]
    """Raw value → label of the attribute's public domain; None: drop the value."""


class AppRules(NamedTuple):
    """One declared app: its actions, and the attributes its events may carry."""

    actions: frozenset[str]
    attributes: Mapping[str, AttributeRule]


class StorageRules:
    """The catalog's allowlist and value rules, per app; nothing else about an event is stored."""

    __slots__ = ("apps", "catalog")

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        column = {name: i for i, name in enumerate(catalog.attributes)}
        self.apps: Mapping[str, AppRules] = {
            name: AppRules(
                frozenset(app.actions),
                {a: AttributeRule(column[a], catalog.attributes[a].labeler) for a in app.attributes},
            )
            for name, app in catalog.apps.items()
        }

    def labels(self, app: AppRules, attributes: Mapping[str, object]) -> tuple[dict[str, str], int]:
        """The stored labels of an event's attributes, by name, and how many values were dropped."""
        kept: dict[str, str] = {}
        for name, value in attributes.items():
            rule = app.attributes.get(name)
            label = rule.label(value) if rule is not None else None
            if label is None:
                continue
            kept[name] = label
        return kept, len(attributes) - len(kept)
