"""Ground-truth federations for the utility bench: communities, their generated history, and what is true.

A community's events come from `liberation.traffic.Traffic` (the demo's session
model) and go through a real node (bench/utility_product.py); the raw truth is
counted from the same generated events, per session-window (the privacy unit: a
session that crosses a window's end is two sessions, as the window's salt makes it),
with daily or weekly windows.
Each community is generated once and cached, keyed by the sources that decide
its numbers, so a rerun of the bench costs only its noise runs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bench import utility_product as product
from liberation.traffic import COMMUNITIES, Community, Traffic
from protocol.windows import DAY, WINDOW_LENGTHS, is_window_start, window_start

TODAY = datetime(2026, 3, 2, tzinfo=UTC)  # the reviewer's fixed date: the same windows every run
MEDIAN_ATTRIBUTES = ("runway_months", "real_wage_gap_pct")
CACHE_FORMAT = "2"  # of the files `generate` writes: bump it when they change
REPO = Path(__file__).resolve().parent.parent

# Regions of neighbouring countries and a UTC offset each: a small or medium community
# has a home country (60-85 % of its sessions) and 1-3 neighbours from one region.
REGIONS: dict[str, tuple[int, tuple[str, ...]]] = {
    "western-europe": (1, ("DE", "FR", "NL", "BE", "AT", "CH", "LU")),
    "southern-europe": (1, ("ES", "PT", "IT", "GR", "HR", "SI")),
    "northern-europe": (1, ("SE", "NO", "DK", "FI", "IE", "GB")),
    "eastern-europe": (2, ("PL", "CZ", "HU", "RO", "SK", "BG")),
    "east-africa": (3, ("KE", "UG", "TZ", "RW", "ET")),
    "west-africa": (0, ("NG", "GH", "SN", "CI", "BJ")),
    "south-america": (-3, ("BR", "AR", "CL", "UY", "PY", "PE", "CO")),
    "north-america": (-5, ("US", "CA", "MX")),
    "south-east-asia": (7, ("TH", "MY", "ID", "PH", "VN", "SG")),
    "south-asia": (5, ("IN", "BD", "LK", "NP", "PK")),
}


@dataclass(frozen=True)
class FederationSpec:
    """A federation by name: `demo` (the demo's three communities) or `NxS` (N communities of S sessions a day)."""

    name: str
    communities: tuple[tuple[Community, int], ...]  # (community, Traffic seed)

    @classmethod
    def parse(cls, name: str) -> FederationSpec:
        if name == "demo":
            return cls(name, tuple((c, 1000 + i) for i, c in enumerate(COMMUNITIES)))  # the demo's seeds
        try:
            count, per_day = (int(part) for part in name.lower().split("x"))
        except ValueError:
            raise ValueError(f"a federation is `demo` or NxS (N communities x S sessions/day), not {name!r}") from None
        return cls(name, tuple(_community(count, per_day, i) for i in range(count)))

    @property
    def sessions_per_day(self) -> int:
        return min(c.sessions_per_day for c, _ in self.communities)


def _community(count: int, per_day: int, i: int) -> tuple[Community, int]:
    """Community i of an NxS federation: a home country, 1-3 neighbours, one of the demo's tool/industry profiles."""
    rng = random.Random(f"{count}x{per_day}-{i}")
    offset, countries = REGIONS[rng.choice(sorted(REGIONS))]
    home = rng.choice(countries)
    share = rng.uniform(0.60, 0.85)
    others = [c for c in countries if c != home]
    neighbours = rng.sample(others, rng.randint(1, min(3, len(others))))
    weights = [rng.uniform(0.2, 1.0) for _ in neighbours]
    mix = ((home, share),) + tuple((c, (1 - share) * w / sum(weights)) for c, w in zip(neighbours, weights, strict=False))
    profile = COMMUNITIES[rng.randrange(len(COMMUNITIES))]
    community = Community(
        f"c{count}x{per_day}-{i:03d}", per_day, mix, offset, profile.tool_weights, profile.industries
    )
    return community, 20_000 + 1_000 * (count % 97) + i


@dataclass
class RawTruth:
    """What is true in a range, counted from generated events per session-window (before any bounding)."""

    sessions: int = 0
    country_sessions: Counter[str] = field(default_factory=Counter)
    country_tool_sessions: Counter[str] = field(default_factory=Counter)  # a session once per tool it used
    tool_sessions: Counter[str] = field(default_factory=Counter)  # used the tool at all
    started: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)  # started and completed
    histograms: dict[str, Counter[str]] = field(default_factory=dict)  # attribute -> label -> sessions
    values: dict[str, list[float]] = field(default_factory=dict)  # MEDIAN_ATTRIBUTES' last values

    def add(self, other: RawTruth) -> None:
        self.sessions += other.sessions
        for mine, theirs in (
            (self.country_sessions, other.country_sessions), (self.country_tool_sessions, other.country_tool_sessions),
            (self.tool_sessions, other.tool_sessions), (self.started, other.started), (self.completed, other.completed),
        ):
            mine.update(theirs)
        for name, counts in other.histograms.items():
            self.histograms.setdefault(name, Counter()).update(counts)
        for name, values in other.values.items():
            self.values.setdefault(name, []).extend(values)

    def to_json(self) -> dict[str, Any]:
        return {key: dict(value) if isinstance(value, Counter) else value for key, value in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RawTruth:
        return cls(
            data["sessions"], Counter(data["country_sessions"]), Counter(data["country_tool_sessions"]),
            Counter(data["tool_sessions"]), Counter(data["started"]), Counter(data["completed"]),
            {k: Counter(v) for k, v in data["histograms"].items()}, data["values"],
        )

    def median(self, attribute: str) -> float | None:
        values = self.values.get(attribute)
        return statistics.median(values) if values else None


class _Observer:
    """Counts the raw truth of events as they stream past, one session at a time."""

    def __init__(self, windows: Sequence[int], window: str) -> None:
        self.catalog = product.catalog(window)
        self.windows, self.length = set(windows), WINDOW_LENGTHS[window]
        self.truth = RawTruth()
        self._session: str | None = None
        self._events: list[dict[str, Any]] = []

    def watch(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            event = json.loads(line)
            if event["session_id"] != self._session:
                self._flush()
                self._session = event["session_id"]
            self._events.append(event)
            yield line
        self._flush()

    def _flush(self) -> None:
        by_window: dict[int, list[dict[str, Any]]] = {}
        for event in self._events:
            moment = int(datetime.fromisoformat(event["timestamp"]).timestamp())
            by_window.setdefault(window_start(moment, self.length), []).append(event)
        self._events = []
        for window, events in by_window.items():
            if window in self.windows:
                self._count(events)

    def _count(self, events: list[dict[str, Any]]) -> None:
        truth, catalog = self.truth, self.catalog
        truth.sessions += 1
        actions: dict[str, set[str]] = {}
        last: dict[str, Any] = {}
        for event in events:  # in time order: the last value of an attribute wins, as the metrics keep it
            actions.setdefault(event["app"], set()).add(event["action"])
            last.update(event["attributes"])
        country = events[0]["geo_hint"]
        truth.country_sessions[country] += 1
        truth.country_tool_sessions[country] += len(actions)
        for app, done in actions.items():
            truth.tool_sessions[app] += 1
            spec = catalog.apps[app]
            if spec.start_action in done:
                truth.started[app] += 1
                if spec.complete_action in done:
                    truth.completed[app] += 1
        for name, value in last.items():
            label = catalog.attributes[name].bucket(value)
            if label is not None:
                truth.histograms.setdefault(name, Counter())[label] += 1
            if name in MEDIAN_ATTRIBUTES:
                truth.values.setdefault(name, []).append(float(value))


def windows_before(today: datetime, days: int, window: str = "day") -> list[int]:
    """The windows of the `days` days before `today` (a whole number of windows, ending at a window's start), oldest first."""
    end, length = int(today.timestamp()), WINDOW_LENGTHS[window]
    if not is_window_start(end, length) or (days * DAY) % length:
        raise ValueError(f"{days} days before {today:%Y-%m-%d} are not a whole number of {window}s")
    return [end - back * length for back in range(days * DAY // length, 0, -1)]


@lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of every source that decides a community's truth: a cached one from other code is never used."""
    digest = hashlib.sha256()
    paths = [*sorted((REPO / "node").glob("*.py")), *sorted((REPO / "protocol").rglob("*.py")),
             REPO / "liberation" / "traffic.py"]
    for path in paths:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    # The catalog decides the truth but for its weights, which only split epsilon: a new weight keeps the cache.
    digest.update(product.truth_identity(product.catalog()).encode())
    for code in (RawTruth, _Observer, product.import_history):
        digest.update(inspect.getsource(code).encode())
    digest.update(CACHE_FORMAT.encode())
    return digest.hexdigest()[:16]


def cache_stem(cache: Path, community: Community, seed: int, days: int, window: str = "day") -> Path:
    key = hashlib.sha256(
        repr((community, seed, days, window, TODAY.isoformat(), source_digest())).encode()
    ).hexdigest()[:16]
    return cache / f"{community.name}-{key}"


def generate(community: Community, seed: int, days: int, cache: str, window: str = "day") -> str:
    """Generate one community's history through a node and cache its true tables and raw truth (a pool task)."""
    stem = cache_stem(Path(cache), community, seed, days, window)
    if stem.with_suffix(".json").exists():
        return community.name
    windows = windows_before(TODAY, days, window)
    observer = _Observer(windows, window)
    work = Path(tempfile.mkdtemp(prefix=f"utility-{community.name}-"))
    try:
        lines = observer.watch(Traffic(community, seed).history_lines(days, TODAY))
        catalog_hash, tables = product.import_history(
            lines, work, windows=windows, today=TODAY, catalog_path=product.catalog_file(window, work)
        )
        if catalog_hash != product.catalog(window).hash:
            raise ValueError("the nodes did not load the catalog the bench describes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(tables[windows[0]])
    arrays = {name: np.array([tables[w][name] for w in windows], dtype=np.int64) for name in names}
    np.savez_compressed(stem.with_suffix(".npz"), **arrays)
    # The JSON is written last: its presence says the cache entry is whole.
    identity = product.truth_identity(product.catalog(window))
    stem.with_suffix(".json").write_text(json.dumps({"catalog": identity, "windows": windows,
                                                     "truth": observer.truth.to_json()}))
    return community.name


@dataclass
class FederationTruth:
    """A federation's true tables per node and window, their sums, and its raw truth."""

    spec: FederationSpec
    catalog_identity: str  # utility_product.truth_identity of the nodes' catalog
    windows: list[int]
    nodes: dict[str, dict[str, np.ndarray]]  # node id -> metric -> (windows x cells) true counts
    raw: RawTruth

    @classmethod
    def load(cls, spec: FederationSpec, days: int, cache: Path, window: str = "day") -> FederationTruth:
        raw, nodes = RawTruth(), {}
        hashes, windows = set(), None
        for community, seed in spec.communities:
            stem = cache_stem(cache, community, seed, days, window)
            meta = json.loads(stem.with_suffix(".json").read_text())
            with np.load(stem.with_suffix(".npz")) as arrays:
                nodes[product.node_id(community.name)] = {name: arrays[name] for name in arrays.files}
            raw.add(RawTruth.from_json(meta["truth"]))
            hashes.add(meta["catalog"])
            windows = meta["windows"]
        if len(hashes) != 1 or windows is None:
            raise ValueError(f"federation {spec.name}: its nodes' catalogs differ")
        return cls(spec, hashes.pop(), windows, nodes, raw)

    def window_tables(self, index: int) -> dict[str, dict[str, list[int]]]:
        """Each node's true tables of one window, as the export reads them."""
        return {
            node: {name: counts[index].tolist() for name, counts in metrics.items()}
            for node, metrics in self.nodes.items()
        }

    def federation_sum(self) -> dict[str, np.ndarray]:
        """Per metric, the (windows x cells) sum over nodes: the federation-wide true vectors."""
        names = next(iter(self.nodes.values()))
        return {name: sum(metrics[name] for metrics in self.nodes.values()) for name in names}  # type: ignore[misc]
