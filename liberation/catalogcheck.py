"""`liberation catalog check FILE`: a catalog validated, and what it would publish (docs/catalog.md).

Prints the figures an author needs to judge a catalog before nodes run it: the
epsilon per window and per metric, each metric's sensitivity (k * c), noise
scale and sd, the least value one snapshot's cell is shown from at a hub, and
the hash that hubs and nodes must agree on.
"""

from __future__ import annotations

import math
from pathlib import Path

from protocol.catalog import Catalog, load_catalog
from views.significance import presence_threshold


def describe_catalog(path: Path) -> list[str]:
    """The check's report, one line each; CatalogError (one line, exit 1) if the file is not a valid catalog."""
    catalog = load_catalog(path)
    default = load_catalog()
    lines = [
        f"ok: {path} is a valid catalog",
        f"catalog   {catalog.name} v{catalog.version}",
        f"hash      {catalog.hash}",
        f"window    one {'UTC day' if catalog.window == 'day' else 'ISO week, from Monday 00:00 UTC'}",
        f"epsilon   {catalog.epsilon_per_window:g} per window (pure epsilon-DP per session and window): "
        f"{catalog.epsilon_community:g} for the community snapshot, split by weight, "
        f"{catalog.epsilon_federation:g} for the federation round; total sensitivity {catalog.total_sensitivity}",
        f"sessions  at most {catalog.max_events_per_session} events counted each; "
        f"raw rows kept {catalog.retention_days} days after export",
        f"apps      {', '.join(catalog.apps)}",
        "",
        f"  {'metric':22s} {'unit':8s} {'cells':>7s} {'k*c':>4s} {'epsilon':>8s} {'scale':>7s} {'sd':>7s} {'shown':>6s}"
        f" {'weight':>7s}",
    ]
    for m in catalog.metrics:
        scale, variance = catalog.scale(m), catalog.variance(m)
        lines.append(
            f"  {m.name:22s} {m.unit.value:8s} {catalog.domain_size(m):7d} {m.sensitivity:4d} "
            f"{catalog.epsilon(m):8.4f} {scale:7.2f} {math.sqrt(variance):7.2f} "
            f"{presence_threshold(catalog, m, variance):6d} {m.weight:7g}"
        )
    lines += [
        "",
        "epsilon: the community snapshot's, split to minimise sum_j weight_j Var_j (docs/privacy.md);",
        "scale: discrete Laplace b = k*c / epsilon; sd: the noise of one published cell;",
        "shown: the least value of one community's cell, in one window, that a hub shows as present.",
        *_against_default(catalog, default),
    ]
    return lines


def _against_default(catalog: Catalog, default: Catalog) -> list[str]:
    if catalog.hash == default.hash:
        return ["this is the built-in default catalog."]
    return [
        "not the built-in default: hubs merge only snapshots of the same hash. Nodes take it with",
        '  catalog = "/etc/liberation/catalog.toml" in node.toml; a hub merges it once the file is',
        "  listed in its catalogs = [...] (hub.toml): update hubs first (docs/catalog.md).",
    ]
