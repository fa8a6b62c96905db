"""The declarative metric catalog: apps, attributes, public domains, metrics, DP budget, hash.

One catalog drives the node's privacy filter and SQL, the noise, the hub's
merge and the views. Every dimension has a public, finite, ordered domain, so
a metric's cells are the cartesian product of its dimensions' domains
(row-major: the last dimension varies fastest) and can all be noised.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.countries import COUNTRY_DOMAIN
from protocol.errors import LiberationError
from protocol.events import SLUG_PATTERN
from protocol.noise import laplace_variance
from protocol.windows import WINDOW_LENGTHS

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
OTHER = "other"
MAX_DOMAIN = 1_000_000


class CatalogError(LiberationError):
    """A catalog file that cannot be read or whose parts do not add up."""


class AttributeKind(StrEnum):
    """How an attribute's values map onto its public domain."""

    NUMBER = "number"  # numeric, bucketed by `edges`
    MONEY = "money"  # numeric amount, banded by `edges` at ingest (labels like 10k-25k)
    BAND = "band"  # the client sends one of `labels`
    CATEGORY = "category"  # one of `values`; anything else becomes `other`


class Unit(StrEnum):
    """What a metric counts."""

    EVENTS = "events"
    SESSIONS = "sessions"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


METRIC_KEYS_REPLACED: Mapping[str, str] = {
    "epsilon_share": "`epsilon_share` was replaced by `weight`: the split of epsilon across metrics is derived "
    "from the weights and sensitivities (docs/privacy.md, the epsilon split)",
}


def refuse_removed_keys(data: Any, removed: Mapping[str, str]) -> Any:
    """`data` unchanged, or ValueError with the message `removed` gives for a key it holds that is no longer taken.

    For a `model_validator(mode="before")` of a file's model (a catalog's, a service's settings):
    a key that was removed or replaced says what to write instead, rather than "not a setting".
    """
    if isinstance(data, dict):
        for key, message in removed.items():
            if key in data:
                raise ValueError(message)
    return data


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _fmt_money(value: float) -> str:
    for divisor, suffix in ((1_000_000, "M"), (1_000, "k")):
        if abs(value) >= divisor:
            return _fmt_number(value / divisor) + suffix
    return _fmt_number(value)


def bucket_labels(edges: tuple[float, ...], *, money: bool = False) -> tuple[str, ...]:
    """Labels of the buckets [e_i, e_i+1) and [e_last, inf) that `edges` define."""
    fmt = _fmt_money if money else _fmt_number
    sep = "-" if money else ".."
    labels = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        if money and lo == 0:
            labels.append(f"<{fmt(hi)}")
        else:
            labels.append(f"{fmt(lo)}{sep}{fmt(hi)}")
    labels.append(f"{fmt(edges[-1])}+")
    return tuple(labels)


def bucket_index(edges: tuple[float, ...], value: float) -> int:
    """Index of the bucket holding `value`; values below the first edge clamp into bucket 0."""
    return max(0, bisect.bisect_right(edges, value) - 1)


class AttributeSpec(_Frozen):
    """One declared attribute and its public domain."""

    kind: AttributeKind
    description: str = ""
    edges: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None
    values: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> AttributeSpec:
        needs = {
            AttributeKind.NUMBER: "edges",
            AttributeKind.MONEY: "edges",
            AttributeKind.BAND: "labels",
            AttributeKind.CATEGORY: "values",
        }[self.kind]
        for name in ("edges", "labels", "values"):
            present = getattr(self, name) is not None
            if present != (name == needs):
                raise ValueError(f"a {self.kind.value} attribute takes `{needs}` only")
        if self.edges is not None:
            if not self.edges or not all(math.isfinite(e) for e in self.edges):
                raise ValueError("edges must be a non-empty list of finite numbers")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise ValueError("edges must be strictly increasing")
        for name in ("labels", "values"):
            items = getattr(self, name)
            if items is not None:
                if not items or len(set(items)) != len(items) or any(not i for i in items):
                    raise ValueError(f"{name} must be non-empty and unique")
        return self

    @cached_property
    def domain(self) -> tuple[str, ...]:
        """The ordered public domain of this attribute's stored values."""
        if self.edges is not None:
            return bucket_labels(self.edges, money=self.kind is AttributeKind.MONEY)
        if self.labels is not None:
            return self.labels
        assert self.values is not None
        return self.values if OTHER in self.values else self.values + (OTHER,)

    def bucket(self, value: str | int | float | bool) -> str | None:
        """Map a raw value onto the domain; None means "drop it" (wrong type or unknown band)."""
        return self.labeler(value)

    @cached_property
    def labeler(self) -> Callable[[object], str | None]:
        """`bucket` as one closure over this attribute's domain: what a node's filters call per value."""
        domain = self.domain
        if self.edges is not None:
            edges = self.edges

            def number(value: object) -> str | None:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return None
                return domain[bucket_index(edges, value)]

            return number
        if self.labels is not None:
            bands = frozenset(self.labels)

            def band(value: object) -> str | None:
                return value if isinstance(value, str) and value in bands else None

            return band
        values = frozenset(domain)

        def category(value: object) -> str | None:
            if not isinstance(value, str):
                return None
            return value if value in values else OTHER

        return category


class AppSpec(_Frozen):
    """A tool: its actions and the attributes its events may carry."""

    title: str = ""
    actions: tuple[Slug, ...]
    attributes: tuple[Slug, ...] = ()
    start_action: Slug | None = "start"
    complete_action: Slug | None = "complete"

    @model_validator(mode="after")
    def _check(self) -> AppSpec:
        if not self.actions or len(set(self.actions)) != len(self.actions):
            raise ValueError("actions must be non-empty and unique")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError("attributes must be unique")
        for name in ("start_action", "complete_action"):
            action = getattr(self, name)
            if action is not None and action not in self.actions:
                raise ValueError(f"{name} {action!r} is not one of the app's actions")
        return self


class MetricSpec(_Frozen):
    """One published metric: what it counts over which dimensions, and its DP bounds."""

    name: Slug
    description: str = ""
    unit: Unit
    dimensions: tuple[str, ...]
    max_cells: int = Field(ge=1)  # k: distinct cells one session may touch
    cell_cap: int = Field(default=1, ge=1)  # c: most one session adds to one cell
    weight: float = Field(default=1.0, gt=0, le=1e6)  # w: worth of a unit of noise variance in one cell

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        return refuse_removed_keys(data, METRIC_KEYS_REPLACED)

    @property
    def sensitivity(self) -> int:
        """L1 sensitivity for one session: k * c."""
        return self.max_cells * self.cell_cap


class SessionSpec(_Frozen):
    """Public domains of the session-shape dimensions."""

    duration_edges_minutes: tuple[float, ...] = (0, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120)


FIXED_DIMENSIONS = ("app", "app_action", "app_pair", "country", "hour", "stage", "tool_count", "duration")
ATTRIBUTE_DIMENSION_PREFIX = "attr:"
STAGES = ("started", "completed")
SESSION_SHAPES = (("app", "stage"), ("app_pair",), ("tool_count",), ("duration",))


class FederationSpec(_Frozen):
    """Federation rounds (docs/protocol.md section 13): metrics summed over nodes, noised once by share keepers.

    `metrics` maps a catalog metric to its share of `epsilon_federation`; its bounds
    (k, c) and public domain are the metric's own, so one bounded true vector serves
    the community snapshot and the contribution.
    """

    min_nodes: int = Field(default=3, ge=2, le=1_000_000)
    """Fewest contributions a round is combined from; a keeper refuses a smaller participant set."""
    metrics: dict[Slug, float]
    """Metric name -> share of `epsilon_federation` (the shares add up to 1)."""


class Catalog(_Frozen):
    """A versioned, content-hashed catalog; `hash` identifies it on the wire."""

    name: str
    version: int = Field(ge=1)
    k_min: int = Field(default=10, ge=1)
    epsilon_community: float = Field(gt=0, le=100)
    """Spent per window on a node's own snapshot (noise added at the node)."""
    epsilon_federation: float = Field(default=0.0, ge=0, le=100)
    """Spent per window on a node's contribution to the federation round (noise added once, by the keepers)."""
    window: Literal["day", "week"] = "day"  # the federation's window: a UTC day, or an ISO week (Monday 00:00 UTC)
    max_events_per_session: int = Field(ge=1)
    retention_days: int = Field(default=7, ge=0)
    apps: dict[Slug, AppSpec]
    attributes: dict[Slug, AttributeSpec] = Field(default_factory=dict)
    metrics: tuple[MetricSpec, ...]
    session: SessionSpec = Field(default_factory=SessionSpec)
    federation: FederationSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_epsilon(cls, data: Any) -> Any:
        # Catalogs from before federation rounds name the community's epsilon `epsilon_per_window`.
        if isinstance(data, dict) and "epsilon_per_window" in data and "epsilon_community" not in data:
            data = dict(data)
            data["epsilon_community"] = data.pop("epsilon_per_window")
        return data

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        if not self.apps:
            raise ValueError("a catalog declares at least one app")
        if not math.isfinite(self.epsilon_community) or not math.isfinite(self.epsilon_federation):
            raise ValueError("epsilon_community and epsilon_federation must be finite")
        for app_name, app in self.apps.items():
            for attr in app.attributes:
                if attr not in self.attributes:
                    raise ValueError(f"app {app_name!r} uses undeclared attribute {attr!r}")
        names = [m.name for m in self.metrics]
        if not names or len(set(names)) != len(names):
            raise ValueError("metrics must be non-empty with unique names")
        for metric in self.metrics:
            self._check_metric(metric)
        if not all(math.isfinite(m.weight) for m in self.metrics):
            raise ValueError("metric weights must be finite")
        self._check_federation(set(names))
        return self

    def _check_federation(self, names: set[str]) -> None:
        if self.federation is None:
            if self.epsilon_federation:
                raise ValueError("epsilon_federation is spent on federation rounds: declare [federation] or set it to 0")
            return
        if not self.epsilon_federation:
            raise ValueError("a catalog with [federation] gives its rounds an epsilon_federation above 0")
        shares = self.federation.metrics
        if not shares:
            raise ValueError("federation.metrics names at least one metric")
        for name, share in shares.items():
            if name not in names:
                raise ValueError(f"federation.metrics: {name!r} is not a metric of the catalog")
            if not (math.isfinite(share) and 0 < share <= 1):
                raise ValueError(f"federation.metrics: the share of {name!r} is not in (0, 1]")
        total = math.fsum(shares.values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"federation metric shares add up to {total:.6g}, not 1")

    def _check_metric(self, metric: MetricSpec) -> None:
        where = f"metric {metric.name!r}"
        if not metric.dimensions or len(set(metric.dimensions)) != len(metric.dimensions):
            raise ValueError(f"{where}: dimensions must be non-empty and unique")
        for dim in metric.dimensions:
            if dim.startswith(ATTRIBUTE_DIMENSION_PREFIX):
                if dim.removeprefix(ATTRIBUTE_DIMENSION_PREFIX) not in self.attributes:
                    raise ValueError(f"{where}: dimension {dim!r} names no declared attribute")
            elif dim not in FIXED_DIMENSIONS:
                raise ValueError(f"{where}: unknown dimension {dim!r}")
        session_dims = {"stage", "app_pair", "tool_count", "duration"} & set(metric.dimensions)
        if session_dims and metric.dimensions not in SESSION_SHAPES:
            raise ValueError(
                f"{where}: session dimensions go alone (app_pair, tool_count, duration) "
                "or as (app, stage)"
            )
        size = self.domain_size(metric)
        if size > MAX_DOMAIN:
            raise ValueError(f"{where}: domain of {size} cells is over {MAX_DOMAIN}")
        if metric.max_cells > size:
            raise ValueError(f"{where}: max_cells {metric.max_cells} exceeds its {size} cells")
        if metric.unit is Unit.SESSIONS and metric.cell_cap != 1:
            raise ValueError(f"{where}: a sessions metric counts each session once (cell_cap 1)")
        if metric.cell_cap > self.max_events_per_session:
            raise ValueError(f"{where}: cell_cap exceeds max_events_per_session")

    # ---- identity -------------------------------------------------------------

    @cached_property
    def canonical_json(self) -> bytes:
        """The canonical JSON form (sorted keys, no spaces) that the hash covers."""
        data = self.model_dump(mode="json")
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON form, lowercase hex: the catalog's wire identity."""
        return hashlib.sha256(self.canonical_json).hexdigest()

    # ---- domains --------------------------------------------------------------

    @cached_property
    def app_names(self) -> tuple[str, ...]:
        return tuple(self.apps)

    def domain(self, dimension: str) -> tuple[str, ...]:
        """The ordered public domain of one dimension."""
        return self._domains[dimension]

    @cached_property
    def _domains(self) -> Mapping[str, tuple[str, ...]]:
        apps = self.app_names
        domains: dict[str, tuple[str, ...]] = {
            "app": apps,
            "app_action": tuple(f"{a}/{act}" for a in apps for act in self.apps[a].actions),
            "app_pair": tuple(f"{a}>{b}" for a in apps for b in apps if a != b) or ("none",),
            "country": COUNTRY_DOMAIN,
            "hour": tuple(f"{h:02d}" for h in range(24)),
            "stage": STAGES,
            "tool_count": tuple(str(n) for n in range(1, len(apps) + 1)),
            "duration": bucket_labels(self.session.duration_edges_minutes),
        }
        for name, spec in self.attributes.items():
            domains[ATTRIBUTE_DIMENSION_PREFIX + name] = spec.domain
        return domains

    def metric(self, name: str) -> MetricSpec:
        """The metric called `name` (KeyError if none)."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    def shape(self, metric: MetricSpec) -> tuple[int, ...]:
        """Sizes of the metric's dimensions, in declared order."""
        return (self._size_memo.get(metric.dimensions) or self._sizes(metric.dimensions))[0]

    def domain_size(self, metric: MetricSpec) -> int:
        """Number of cells of the metric: the product of its dimensions' domain sizes."""
        return (self._size_memo.get(metric.dimensions) or self._sizes(metric.dimensions))[1]

    def prefix_size(self, metric: MetricSpec) -> int:
        """Number of `other` cells: the product of all dimensions but the last."""
        return (self._size_memo.get(metric.dimensions) or self._sizes(metric.dimensions))[2]

    def _sizes(self, dimensions: tuple[str, ...]) -> tuple[tuple[int, ...], int, int]:
        """(shape, cells, prefixes) of a metric's dimensions, computed once: intake asks for each metric of every snapshot."""
        shape = tuple(len(self._domains[d]) for d in dimensions)
        return self._size_memo.setdefault(dimensions, (shape, math.prod(shape), math.prod(shape[:-1])))

    @cached_property
    def _size_memo(self) -> dict[tuple[str, ...], tuple[tuple[int, ...], int, int]]:
        return {}

    def cell_labels(self, metric: MetricSpec, index: int) -> tuple[str, ...]:
        """The labels of cell `index` (row-major, last dimension fastest)."""
        labels: list[str] = []
        for dim in reversed(metric.dimensions):
            domain = self._domains[dim]
            index, rest = divmod(index, len(domain))
            labels.append(domain[rest])
        return tuple(reversed(labels))

    # ---- windows ----------------------------------------------------------------

    @property
    def window_seconds(self) -> int:
        """The length of every window of this catalog's federation, in seconds (a day or a week)."""
        return WINDOW_LENGTHS[self.window]

    # ---- differential privacy ------------------------------------------------

    @property
    def epsilon_per_window(self) -> float:
        """What one session-day (a session of one window) is protected with: community plus federation epsilon."""
        return self.epsilon_community + self.epsilon_federation

    @cached_property
    def epsilon_shares(self) -> Mapping[str, float]:
        """Each metric's share of the community snapshot's epsilon, derived from its weight and sensitivity.

        Minimising the weighted noise variance sum_j w_j Var_j subject to sum_j eps_j = eps,
        with Var_j = 2 (k_j c_j / eps_j)^2 (discrete Laplace for large scales): by Lagrange,
        w_j (k_j c_j)^2 / eps_j^3 is the same for every j, so eps_j is proportional to
        (w_j (k_j c_j)^2)^(1/3). The shares add up to 1.
        """
        parts = {m.name: (m.weight * m.sensitivity**2) ** (1 / 3) for m in self.metrics}
        total = math.fsum(parts.values())
        return {name: part / total for name, part in parts.items()}

    def epsilon(self, metric: MetricSpec) -> float:
        """The metric's share of the community snapshot's epsilon (`epsilon_shares`)."""
        return self._noise(metric)[1]

    def scale(self, metric: MetricSpec) -> float:
        """Discrete Laplace scale b = sensitivity / epsilon for the metric's cells."""
        return self._noise(metric)[2]

    def variance(self, metric: MetricSpec) -> float:
        """Noise variance of one published cell of the metric: `laplace_variance(scale(metric))`."""
        return self._noise(metric)[3]

    def _noise(self, metric: MetricSpec) -> tuple[MetricSpec, float, float, float]:
        """(metric, epsilon, scale, variance), computed once per metric: intake checks each metric of every snapshot.

        Kept by name for the spec it was computed from: another spec of that name is computed afresh.
        """
        noise = self._noise_memo.get(metric.name)
        if noise is None or noise[0] is not metric:
            epsilon = self.epsilon_community * self.epsilon_shares[metric.name]
            scale = metric.sensitivity / epsilon
            noise = (metric, epsilon, scale, laplace_variance(scale))
            self._noise_memo.setdefault(metric.name, noise)
        return noise

    @cached_property
    def _noise_memo(self) -> dict[str, tuple[MetricSpec, float, float, float]]:
        return {}

    def threshold(self, metric: MetricSpec) -> int:
        """A snapshot's publication threshold: 0, every noisy cell of the domain is published.

        Thresholds per snapshot (about one false cell per metric per snapshot)
        multiplied over the hub's nodes and windows, and sums of what cleared
        them were biased; presence is decided once, on merged sums (the hub's
        views/significance.py), and a node suppresses nothing.
        """
        return 0

    @property
    def total_sensitivity(self) -> int:
        """L1 sensitivity of a whole snapshot: sum over metrics of k_j * c_j."""
        return sum(m.sensitivity for m in self.metrics)

    # ---- federation rounds ------------------------------------------------------

    @cached_property
    def federation_metrics(self) -> tuple[MetricSpec, ...]:
        """The metrics of the federation rounds, in catalog order (the order of a contribution's vector)."""
        if self.federation is None:
            return ()
        return tuple(m for m in self.metrics if m.name in self.federation.metrics)

    def federation_epsilon(self, metric: MetricSpec) -> float:
        """The metric's share of the round's epsilon (KeyError outside the federation metrics)."""
        assert self.federation is not None
        return self.epsilon_federation * self.federation.metrics[metric.name]

    def federation_scale(self, metric: MetricSpec) -> float:
        """The keepers' noise scale for the metric: each keeper adds discrete Laplace of this scale to each cell."""
        return metric.sensitivity / self.federation_epsilon(metric)

    @cached_property
    def federation_size(self) -> int:
        """Cells of a contribution's vector: the federation metrics' full domains, concatenated."""
        return sum(self.domain_size(m) for m in self.federation_metrics)


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    """Validate a catalog from its parsed TOML/JSON data."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "catalog"
        raise CatalogError(f"invalid catalog: {where}: {first['msg']}") from None


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Load a catalog TOML file, or the packaged default catalog when `path` is None."""
    try:
        if path is None:
            text = resources.files("protocol").joinpath("data/default_catalog.toml").read_text()
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {path or 'default'}: {exc}") from None
    return parse_catalog(data)
