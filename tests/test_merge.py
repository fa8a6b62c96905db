"""The hub's pure merge: sums over nodes and windows, presence folding, hub snapshots, insights."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.noising import build_snapshot
from protocol.catalog import load_catalog
from protocol.noise import laplace_parameter, laplace_variance
from protocol.snapshot import FORMAT, MetricCells, Snapshot
from runtime.dp import opendp_laplace
from tests.seeded_noise import SeededLaplace
from views.insights import (
    breakdown,
    completion,
    financial,
    geography,
    headline,
    peak_times,
    quantiles,
    session_shape,
    tool_combinations,
    trends,
    usage,
    weekday,
)
from views.merge import (
    CellKey,
    CellSum,
    Table,
    add_tables,
    apply_presence,
    combine_windows,
    merge_tables,
    sd,
    snapshot_rows,
    snapshot_table,
    to_snapshot,
)
from views.significance import noise_threshold, presence_threshold

CATALOG = load_catalog()
NODE_A, NODE_B, HUB = "a" * 32, "b" * 32, "c" * 32
DAY = 86_400
SUNDAY = int(datetime(2026, 11, 22, tzinfo=UTC).timestamp())
APPS = CATALOG.app_names  # runway-calculator, real-wage-calculator, cognitive-debt-assessment
GEO_WIDTH = len(CATALOG.domain("country"))
EPSILON = {m.name: CATALOG.epsilon(m) for m in CATALOG.metrics}
SCALE = {m.name: CATALOG.scale(m) for m in CATALOG.metrics}

Cells = tuple[list[int], list[int], list[int], list[int]]


def snap(
    node: str, metrics: Mapping[str, Cells], *, variance: float = 4.0, window_start: int = SUNDAY, nodes: int = 1
) -> Snapshot:
    """A snapshot of the default catalog: `metrics` given as (idx, val, other_idx, other_val), the rest empty."""
    return Snapshot(
        format=FORMAT,
        node=node,
        catalog=CATALOG.hash,
        window_start=window_start,
        window_end=window_start + DAY,
        seq=1,
        created=window_start + DAY + 60,
        nodes=nodes,
        metrics={
            m.name: MetricCells(
                epsilon=EPSILON[m.name],
                scale=SCALE[m.name],
                variance=variance,
                threshold=CATALOG.threshold(m),
                idx=metrics.get(m.name, ([], [], [], []))[0],
                val=metrics.get(m.name, ([], [], [], []))[1],
                other_idx=metrics.get(m.name, ([], [], [], []))[2],
                other_val=metrics.get(m.name, ([], [], [], []))[3],
            )
            for m in CATALOG.metrics
        },
    )


def cell(metric: str, index: int) -> CellKey:
    return (metric, "cell", index)


def other(metric: str, prefix: int) -> CellKey:
    return (metric, "other", prefix)


def approx(num: dict[str, Any] | None, value: float, spread: float, nodes: int | None = None) -> None:
    assert num is not None
    assert num["value"] == pytest.approx(value)
    assert num["sd"] == pytest.approx(spread)
    if nodes is not None:
        assert num["nodes"] == nodes


# ---- merge -------------------------------------------------------------------


def test_snapshot_table_reads_cells_and_others_with_their_variance() -> None:
    geo_cell = 5  # the 6th country
    s = snap(NODE_A, {"usage_sessions": ([0, 3], [20, 15], [0], [12]), "geo_sessions": ([geo_cell], [200], [0], [30])})
    table = snapshot_table(s, CATALOG)
    assert table == {
        cell("usage_sessions", 0): CellSum(20, 4.0, 1),
        cell("usage_sessions", 3): CellSum(15, 4.0, 1),
        # the other sums the 9 - 2 suppressed cells of the (single) prefix
        other("usage_sessions", 0): CellSum(12, 7 * 4.0, 1),
        cell("geo_sessions", geo_cell): CellSum(200, 4.0, 1),
        other("geo_sessions", 0): CellSum(30, (GEO_WIDTH - 1) * 4.0, 1),
    }
    # Without the catalog an other is read as one value.
    assert snapshot_table(s)[other("usage_sessions", 0)] == CellSum(12, 4.0, 1)


def test_snapshot_rows_are_snapshot_table_as_columns() -> None:
    """Intake's columnar rows (merge input and archive) hold exactly the cells `snapshot_table` reads."""
    with_others = snap(NODE_A, {"usage_sessions": ([0, 3], [20, 15], [0], [12])})  # a hub's export can have others
    for s in [node_snapshot(NODE_A, seed)[0] for seed in range(3)] + [with_others]:
        rows = snapshot_rows(s, CATALOG).to_pylist()
        assert len(rows) == len(snapshot_table(s, CATALOG))
        assert {(r["metric"], r["kind"], r["idx"]): CellSum(r["value"], r["variance"], r["nodes"]) for r in rows} == (
            snapshot_table(s, CATALOG)
        )
        assert {(r["catalog"], r["window_start"]) for r in rows} == {(s.catalog, s.window_start)}
    assert any(r["kind"] == "other" for r in rows)


def test_merge_sums_nodes_of_a_window_exactly() -> None:
    a = snapshot_table(snap(NODE_A, {"usage_events": ([0, 1], [300, 160], [0], [170])}, variance=3.0), CATALOG)
    b = snapshot_table(snap(NODE_B, {"usage_events": ([1, 2], [200, 155], [], [])}, variance=5.0, nodes=4), CATALOG)
    merged = merge_tables([a, b])
    assert merged == add_tables(a, b)
    assert merged == {
        cell("usage_events", 0): CellSum(300, 3.0, 1),
        cell("usage_events", 1): CellSum(360, 8.0, 5),
        cell("usage_events", 2): CellSum(155, 5.0, 4),
        other("usage_events", 0): CellSum(170, 7 * 3.0, 1),
    }
    assert sd(merged[cell("usage_events", 1)]) == pytest.approx(math.sqrt(8.0))
    assert merge_tables([]) == {}


def test_combine_windows_adds_values_and_variances_and_keeps_the_most_nodes() -> None:
    day1 = {cell("completion", 0): CellSum(100, 10.0, 3), cell("completion", 1): CellSum(40, 10.0, 2)}
    day2 = {cell("completion", 0): CellSum(50, 6.0, 2)}
    assert combine_windows([day1, day2]) == {
        cell("completion", 0): CellSum(150, 16.0, 3),
        cell("completion", 1): CellSum(40, 10.0, 2),
    }


def test_apply_presence_folds_cells_not_clear_of_noise_into_their_prefix() -> None:
    peak = CATALOG.metric("peak_events")  # app x hour: a prefix per app
    one = laplace_variance(CATALOG.scale(peak))  # one snapshot's noise
    at = presence_threshold(CATALOG, peak, one)
    assert at > CATALOG.k_min  # one community-day: the noise bound, not k_min, decides
    assert presence_threshold(CATALOG, peak, 30 * one) > at  # more snapshots summed: more noise to clear
    table: Table = {
        cell("peak_events", 2 * 24 + 7): CellSum(at - 1, one, 1),  # folds into prefix 2
        cell("peak_events", 2 * 24 + 8): CellSum(at, one, 1),  # clears the bound: present
        other("peak_events", 2): CellSum(8, 6.0, 1),
        cell("peak_events", 0): CellSum(-4, one, 1),  # prefix 0: its other is kept, however small
        other("peak_events", 0): CellSum(6, 1.0, 1),
        cell("session_tools", 2): CellSum(9, 1.0, 2),  # a new other for the 1-D metric
        other("completion", 1): CellSum(-3, 1.0, 1),  # an other is never dropped
    }
    assert apply_presence(CATALOG, table) == {
        cell("peak_events", 2 * 24 + 8): CellSum(at, one, 1),
        other("peak_events", 2): CellSum(8 + at - 1, 6.0 + one, 1),
        other("peak_events", 0): CellSum(2, 1.0 + one, 1),
        other("session_tools", 0): CellSum(9, 1.0, 2),
        other("completion", 1): CellSum(-3, 1.0, 1),
    }


def test_a_view_over_many_all_zero_snapshots_shows_no_country_and_no_tool() -> None:
    """40 nodes' all-zero windows, summed: no cell shows (the node's builder, seeded noise: a fixed outcome)."""
    windows = [snapshot_table(node_snapshot(f"{n:032x}", 100 + n, empty=True)[0], CATALOG) for n in range(40)]
    merged = apply_presence(CATALOG, merge_tables(windows))
    assert [key for key in merged if key[1] == "cell"] == []
    shown = headline(CATALOG, merged, windows=1, nodes=40)
    assert (shown["countries"], shown["tools"]) == (0, 0)


METRICS = [m for m in CATALOG.metrics if m.name in {"geo_sessions", "completion", "session_tools", "industry_runway"}]


@st.composite
def tables(draw: st.DrawFn, metrics: list[Any] = METRICS, low: int = -50, high: int = 400) -> Table:
    """Random tables over some catalog metrics (indices inside their domains)."""
    out: Table = {}
    for metric in draw(st.lists(st.sampled_from(metrics), max_size=len(metrics), unique_by=lambda m: m.name)):
        size, prefixes = CATALOG.domain_size(metric), CATALOG.prefix_size(metric)
        keys = draw(
            st.lists(
                st.one_of(
                    st.builds(cell, st.just(metric.name), st.integers(0, size - 1)),
                    st.builds(other, st.just(metric.name), st.integers(0, prefixes - 1)),
                ),
                max_size=30,
                unique=True,
            )
        )
        for key in keys:
            out[key] = CellSum(
                draw(st.integers(low, high)),
                draw(st.floats(0, 1e4, allow_nan=False)),
                draw(st.integers(1, 40)),
            )
    return out


@given(tables())
def test_apply_presence_preserves_every_prefix_total(table: Table) -> None:
    out = apply_presence(CATALOG, table)
    specs = {m.name: m for m in CATALOG.metrics}
    assert all(cs.value >= presence_threshold(CATALOG, specs[k[0]], cs.variance) for k, cs in out.items() if k[1] == "cell")

    def per_prefix(t: Table) -> dict[tuple[str, int], int]:
        totals: dict[tuple[str, int], int] = defaultdict(int)
        for (name, kind, index), cs in t.items():
            last = CATALOG.shape(CATALOG.metric(name))[-1]
            totals[(name, index // last if kind == "cell" else index)] += cs.value
        return totals

    assert per_prefix(out) == per_prefix(table)


@pytest.mark.parametrize(("scale", "draws"), [(10.0, 1), (10.0, 40), (33.3, 7), (16.7, 150)])
def test_the_presence_bound_is_the_least_with_its_tail_probability(scale: float, draws: int) -> None:
    """P(S >= t) <= p < P(S >= t - 1), S a sum of discrete Laplace draws (a difference of negative binomials)."""
    p = 1e-3
    t = noise_threshold(scale, draws, p)
    a = laplace_parameter(scale)
    rng = np.random.default_rng(draws)
    s = rng.negative_binomial(draws, 1 - a, size=2_000_000) - rng.negative_binomial(draws, 1 - a, size=2_000_000)
    tail, below = float((s >= t).mean()), float((s >= t - 1).mean())
    # 2,000,000 draws: the standard error of a tail near 1e-3 is about 2.2e-5; 4 of them allowed.
    assert tail <= p + 9e-5 and below >= p - 9e-5 * (1 if draws <= 100 else 3)


def node_snapshot(node: str, seed: int | None, *, empty: bool = False) -> tuple[Snapshot, dict[str, list[int]]]:
    """A real node snapshot (the node's builder; seeded noise, or OpenDP's with no seed) and its noisy values."""
    pattern = (0,) if empty else (3000, 1500, 0, 0)  # busy, half as busy, empty
    counts = {m.name: [pattern[i % len(pattern)] for i in range(CATALOG.domain_size(m))] for m in CATALOG.metrics}
    built = build_snapshot(
        CATALOG, counts, node=node, window_start=SUNDAY, window_end=SUNDAY + DAY, seq=1,
        created=SUNDAY + DAY + 60, sampler=opendp_laplace if seed is None else SeededLaplace(seed),
    )
    if seed is None:
        return built, {name: list(cells.val) for name, cells in built.metrics.items()}
    replay = SeededLaplace(seed)  # the same draws, in the builder's order
    noisy = {m.name: replay(counts[m.name], CATALOG.scale(m)) for m in CATALOG.metrics}
    return built, noisy


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_node_snapshot_publishes_every_noisy_cell_and_suppresses_none(seed: int) -> None:
    s, noisy = node_snapshot(NODE_A, seed)
    for metric in CATALOG.metrics:
        cells = s.metrics[metric.name]
        assert cells.idx == tuple(range(CATALOG.domain_size(metric)))
        assert list(cells.val) == noisy[metric.name]
        assert (cells.other_idx, cells.other_val, cells.threshold) == ((), (), 0)
        assert cells.variance == pytest.approx(laplace_variance(CATALOG.scale(metric)))


def test_real_node_snapshots_merge_publish_and_feed_every_insight() -> None:
    (a, _), (b, _) = node_snapshot(NODE_A, 11), node_snapshot(NODE_B, 12)
    merged = apply_presence(CATALOG, merge_tables([snapshot_table(a, CATALOG), snapshot_table(b, CATALOG)]))
    index = CATALOG.domain("app_action").index(f"{APPS[0]}/start")
    assert merged[cell("usage_sessions", index)].value == (
        a.metrics["usage_sessions"].val[a.metrics["usage_sessions"].idx.index(index)]
        + b.metrics["usage_sessions"].val[b.metrics["usage_sessions"].idx.index(index)]
    )
    hub = hub_snapshot(merged)
    assert Snapshot.from_bytes(hub.to_bytes()) == hub
    back = snapshot_table(hub, CATALOG)
    assert {k: cs.value for k, cs in back.items()} == {k: cs.value for k, cs in merged.items()}
    assert hub.metrics["usage_sessions"].variance == pytest.approx(2 * a.metrics["usage_sessions"].variance)
    rate = completion(CATALOG, merged)[APPS[0]]["rate"]  # 3000 started, 1500 completed per node
    assert rate is not None and 0.2 < rate["value"] < 0.8 and rate["nodes"] == 2
    json.dumps([usage(CATALOG, merged), financial(CATALOG, merged), headline(CATALOG, merged, 1, 2)], allow_nan=False)


# ---- hub snapshots -------------------------------------------------------------


def merged_window() -> Table:
    a = snap(NODE_A, {"usage_sessions": ([0, 3], [120, 95], [0], [40]), "completion": ([0, 1], [90, 60], [], [])})
    b = snap(NODE_B, {"usage_sessions": ([0], [100], [0], [30]), "completion": ([0], [70], [0], [12])})
    return merge_tables([snapshot_table(a, CATALOG), snapshot_table(b, CATALOG)])  # a hub publishes every merged cell


def hub_snapshot(table: Table) -> Snapshot:
    return to_snapshot(
        CATALOG, table, node=HUB, window_start=SUNDAY, window_end=SUNDAY + DAY, seq=3,
        created=SUNDAY + DAY + 600, nodes=2, epsilon=EPSILON, scale=SCALE,
    )


def test_to_snapshot_round_trips_through_the_wire_and_back_into_a_table() -> None:
    table = merged_window()
    s = hub_snapshot(table)
    assert Snapshot.from_bytes(s.to_bytes()) == s
    assert set(s.metrics) == {m.name for m in CATALOG.metrics}
    assert s.metrics["usage_sessions"].idx == (0, 3)
    assert s.metrics["usage_sessions"].val == (220, 95)
    assert s.metrics["usage_sessions"].threshold == 0
    assert s.metrics["industry"].idx == () and s.metrics["industry"].variance == 0.0
    back = snapshot_table(s, CATALOG)
    assert {k: cs.value for k, cs in back.items()} == {k: cs.value for k, cs in table.items()}
    for key, cs in table.items():  # never less uncertainty than the hub had
        assert back[key].variance >= cs.variance - 1e-9


def test_to_snapshot_writes_the_largest_per_value_variance() -> None:
    table = merged_window()
    # usage_sessions: cell 0 from both nodes (4 + 4), cell 3 from one (4); the other sums
    # node a's 7 and node b's 8 suppressed cells (15 * 4) and stands for the hub's 7 unpublished ones
    assert table[other("usage_sessions", 0)] == CellSum(70, 60.0, 2)
    assert hub_snapshot(table).metrics["usage_sessions"].variance == pytest.approx(60.0 / 7)
    # completion: both cells from both nodes except node b's completed (in its other)
    assert hub_snapshot(table).metrics["completion"].variance == pytest.approx(8.0)


@settings(max_examples=50)
@given(tables(METRICS, low=-(2**40), high=2**40))
def test_to_snapshot_keeps_every_value_and_bounds_every_variance(table: Table) -> None:
    s = hub_snapshot(table)
    back = snapshot_table(Snapshot.from_bytes(s.to_bytes()), CATALOG)
    assert back.keys() == table.keys()
    for key, cs in table.items():
        assert back[key].value == cs.value
        assert back[key].variance >= cs.variance * (1 - 1e-9)


def test_to_snapshot_refuses_cells_outside_the_catalog() -> None:
    with pytest.raises(ValueError, match="outside"):
        hub_snapshot({cell("session_tools", 3): CellSum(20, 1.0, 1)})
    with pytest.raises(ValueError, match="not in the catalog"):
        hub_snapshot({cell("nope", 0): CellSum(20, 1.0, 1)})


# ---- quantiles -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("edges", "counts", "top", "expected"),
    [
        pytest.param([0, 10], [10, 0], None, (2.5, 5.0, 7.5), id="uniform-in-one-bucket"),
        pytest.param([0, 10, 20, 30], [0, 8, 0, 0], None, (12.5, 15.0, 17.5), id="all-mass-in-one-bucket"),
        pytest.param([0, 10, 20, 30], [5, 5, 5, 5], None, (10.0, 20.0, 30.0), id="uniform-over-buckets"),
        pytest.param([0, 10, 20], [-5, 10, -1], None, (12.5, 15.0, 17.5), id="negatives-clipped"),
        pytest.param([0, 10], [0, 4], None, (12.5, 15.0, 17.5), id="open-last-bucket-one-width"),
        pytest.param([0, 10], [0, 4], 100.0, (32.5, 55.0, 77.5), id="open-last-bucket-top"),
        pytest.param([0, 1, 2, 5], [1, 1, 2, 0], None, (1.0, 2.0, 3.5), id="uneven-widths"),
    ],
)
def test_quantiles(edges: list[float], counts: list[int], top: float | None, expected: tuple[float, ...]) -> None:
    result = quantiles(edges, counts, top=top)
    assert list(result) == ["p25", "p50", "p75"]
    assert tuple(result.values()) == pytest.approx(expected)


def test_quantiles_of_an_empty_histogram_are_none() -> None:
    assert quantiles([0, 10, 20], [0, 0, 0]) == {"p25": None, "p50": None, "p75": None}
    assert quantiles([0, 10, 20], [-3, 0, -1], qs=(0.5,)) == {"p50": None}


def test_quantiles_extremes_and_errors() -> None:
    assert quantiles([0, 10, 20, 30], [0, 3, 3, 0], qs=(0.0, 1.0)) == {"p0": 10.0, "p100": 30.0}
    with pytest.raises(ValueError):
        quantiles([0, 10], [1, 2, 3])
    with pytest.raises(ValueError):
        quantiles([0, 10], [1, 2], qs=(1.5,))


# ---- insights ----------------------------------------------------------------


def test_completion_rate_and_its_delta_method_sd() -> None:
    s = 2  # index of the second app's "started" (app x stage)
    table: Table = {cell("completion", s): CellSum(200, 400.0, 3), cell("completion", s + 1): CellSum(50, 100.0, 2)}
    # rate 0.25, sd = 0.25 * sqrt(100/50^2 + 400/200^2) = 0.25 * sqrt(0.05)
    result = completion(CATALOG, table)
    approx(result[APPS[1]]["rate"], 0.25, 0.25 * math.sqrt(0.05), nodes=3)
    approx(result[APPS[1]]["started"], 200, 20.0, nodes=3)
    assert result[APPS[0]] == {"title": CATALOG.apps[APPS[0]].title, "started": None, "completed": None, "rate": None}


@pytest.mark.parametrize(
    ("started", "completed", "rate"),
    [
        pytest.param(CellSum(40, 1.0, 1), None, None, id="completed-absent"),
        pytest.param(None, CellSum(40, 1.0, 1), None, id="started-absent"),
        pytest.param(CellSum(0, 1.0, 1), CellSum(40, 1.0, 1), None, id="started-zero"),
        pytest.param(CellSum(-5, 1.0, 1), CellSum(40, 1.0, 1), None, id="started-negative"),
        pytest.param(CellSum(30, 1.0, 1), CellSum(40, 1.0, 1), 1.0, id="clipped-to-one"),
    ],
)
def test_completion_rate_undefined_or_clipped(
    started: CellSum | None, completed: CellSum | None, rate: float | None
) -> None:
    table = {k: v for k, v in {cell("completion", 0): started, cell("completion", 1): completed}.items() if v}
    result = completion(CATALOG, table)[APPS[0]]["rate"]
    assert (result and result["value"]) == rate
    if result is not None:  # never outside [0, 1] without saying so
        assert 0 <= result["value"] <= 1 and result["clipped"] == (completed.value > started.value)  # type: ignore[union-attr]


def test_tool_combinations_share_before_and_sankey() -> None:
    domain = CATALOG.domain("app_pair")
    ab, ba = f"{APPS[0]}>{APPS[2]}", f"{APPS[2]}>{APPS[0]}"
    table: Table = {
        cell("tool_pairs", domain.index(ab)): CellSum(30, 9.0, 2),
        cell("tool_pairs", domain.index(ba)): CellSum(10, 16.0, 1),
        cell("tool_pairs", domain.index(f"{APPS[1]}>{APPS[0]}")): CellSum(50, 9.0, 1),
    }
    result = tool_combinations(CATALOG, table)
    # p = 30/40, sd = sqrt(10^2 * 9 + 30^2 * 16) / 40^2
    spread = math.sqrt(100 * 9 + 900 * 16) / 1600
    approx(result["pairs"][ab]["share_before"], 0.75, spread, nodes=2)
    approx(result["pairs"][ba]["share_before"], 0.25, spread)
    assert result["pairs"][f"{APPS[1]}>{APPS[0]}"]["share_before"] is None  # the reverse is absent
    assert result["pairs"][ab]["from"] == APPS[0] and result["pairs"][ab]["to"] == APPS[2]
    sankey = result["sankey"]
    assert sankey["labels"] == [*APPS, *APPS]
    flows = sorted(zip(sankey["sources"], sankey["targets"], sankey["values"], strict=False))
    assert flows == [(0, 3 + 2, 30), (1, 3 + 0, 50), (2, 3 + 0, 10)]


def test_weekday_of_a_known_sunday() -> None:
    assert weekday(SUNDAY) == 6
    assert weekday(SUNDAY + DAY) == 0
    assert weekday(SUNDAY + 5 * 3600) == 6  # an hourly window


def test_peak_times_places_events_by_hour_of_week() -> None:
    hour13 = 1 * 24 + 13  # second app, 13:00 UTC
    sunday: Table = {cell("peak_events", hour13): CellSum(40, 4.0, 2), cell("peak_events", 13): CellSum(20, 5.0, 1)}
    next_sunday: Table = {cell("peak_events", hour13): CellSum(60, 4.0, 3)}
    monday: Table = {cell("peak_events", 2 * 24 + 0): CellSum(15, 4.0, 1)}
    result = peak_times(CATALOG, {SUNDAY: sunday, SUNDAY + 7 * DAY: next_sunday, SUNDAY + DAY: monday})
    assert result["weekdays"][6] == "Sun" and result["hours"][13] == "13"
    approx(result["events"][6][13], 120, 1.0 * math.sqrt(13.0), nodes=3)
    approx(result["by_app"][APPS[1]][6][13], 100, math.sqrt(8.0), nodes=3)
    approx(result["by_app"][APPS[0]][6][13], 20, math.sqrt(5.0))
    approx(result["events"][0][0], 15, 2.0)
    assert result["events"][6][12] is None and result["by_app"][APPS[2]][6][13] is None
    assert result["windows"] == 3
    assert len(result["events"]) == 7 and {len(row) for row in result["events"]} == {24}


def test_trends_series_and_growth() -> None:
    started = 1 * 2  # second app, "started"
    values = [1000, 2000, 3000, 5000]
    windows = {SUNDAY + i * DAY: {cell("completion", started): CellSum(v, 4.0, 1)} for i, v in enumerate(values)}
    result = trends(CATALOG, windows)
    assert result["windows"] == sorted(windows)
    tool = result["tools"][APPS[1]]
    assert [n["value"] for n in tool["series"]] == values
    # (3000 + 5000) / (1000 + 2000) - 1, sd = sqrt(var2 + r^2 var1) / S1 with r = 8000/3000
    r = 8000 / 3000
    approx(tool["growth"], r - 1, math.sqrt(8.0 + r * r * 8.0) / 3000)
    assert result["tools"][APPS[0]]["growth"] is None and result["tools"][APPS[0]]["series"] == [None] * 4


def test_trends_growth_undefined_cases_and_odd_windows() -> None:
    def growth(values: list[int | None]) -> Any:
        windows = {
            SUNDAY + i * DAY: {cell("completion", 0): CellSum(v, 1.0, 1)} if v is not None else {}
            for i, v in enumerate(values)
        }
        return trends(CATALOG, windows)["tools"][APPS[0]]["growth"]

    assert growth([10]) is None
    assert growth([]) is None
    assert growth([None, 20]) is None
    assert growth([0, 20]) is None
    assert growth([-5, 20]) is None
    assert growth([1000, 99_900, 3000])["value"] == pytest.approx(2.0)  # the middle window belongs to neither half
    # An end that noise could have made up (under one snapshot's presence bound, 431): no trend.
    assert growth([100, 3000]) is None and growth([3000, 100]) is None


def test_trends_by_country() -> None:
    countries = CATALOG.domain("country")
    de = countries.index("DE")
    windows = {
        SUNDAY: {cell("geo_sessions", de): CellSum(300, 18.0, 1)},
        SUNDAY + DAY: {cell("geo_sessions", de): CellSum(600, 9.0, 2)},
    }
    result = trends(CATALOG, windows)
    assert [c["country"] for c in result["countries"]] == ["DE"]
    series = result["countries"][0]["series"]
    approx(series[0], 300, math.sqrt(18.0))
    approx(result["countries"][0]["growth"], 1.0, math.sqrt(9.0 + 4 * 18.0) / 300)


def test_geography_ranks_countries_each_session_once() -> None:
    countries = CATALOG.domain("country")
    de, br, us = (countries.index(c) for c in ("DE", "BR", "US"))
    table: Table = {
        cell("geo_sessions", de): CellSum(390, 18.0, 3),
        cell("geo_sessions", br): CellSum(250, 9.0, 1),
        cell("geo_sessions", us): CellSum(180, 9.0, 1),
        other("geo_sessions", 0): CellSum(70, 90.0, 2),
    }
    result = geography(CATALOG, table, top=2)
    assert [(c["country"], c["sessions"]["value"]) for c in result["countries"]] == [("DE", 390), ("BR", 250)]
    approx(result["countries"][0]["sessions"], 390, math.sqrt(18.0), nodes=3)
    approx(result["rest"], 180, 3.0)
    assert result["countries_with_data"] == 3 and result["per"] == "session"
    assert result["by_app"] == {}  # one country per session: no per-tool split
    approx(result["unattributed"]["all"], 70, math.sqrt(90.0))
    everyone = geography(CATALOG, table)  # by default every country counted is listed
    assert len(everyone["countries"]) == everyone["countries_with_data"] == 3 and everyone["rest"] is None


def test_usage_per_action_and_tool() -> None:
    domain = CATALOG.domain("app_action")
    start, done = domain.index(f"{APPS[0]}/start"), domain.index(f"{APPS[0]}/complete")
    table: Table = {
        cell("usage_sessions", start): CellSum(100, 4.0, 2),
        cell("usage_sessions", done): CellSum(60, 5.0, 1),
        cell("usage_events", start): CellSum(300, 9.0, 2),
        other("usage_events", 0): CellSum(40, 27.0, 1),
    }
    result = usage(CATALOG, table)
    app = result["apps"][APPS[0]]
    approx(app["actions"]["start"]["sessions"], 100, 2.0, nodes=2)
    assert app["actions"]["calculate"] == {"events": None, "sessions": None}
    approx(app["action_sessions"], 160, 3.0, nodes=2)
    approx(app["events"], 300, 3.0)
    assert result["apps"][APPS[1]]["events"] is None
    approx(result["other"]["events"], 40, math.sqrt(27.0))
    assert result["other"]["sessions"] is None


def test_session_shape_histograms_and_duration_quartiles() -> None:
    # duration edges 0, 1, 2, 5, 10, ...: 40 sessions in [2, 5) and 40 in [5, 10)
    table: Table = {
        cell("session_duration", 2): CellSum(40, 1.0, 1),
        cell("session_duration", 3): CellSum(40, 1.0, 2),
        cell("session_tools", 0): CellSum(70, 1.0, 1),
    }
    result = session_shape(CATALOG, table)
    assert result["tool_count"]["labels"] == ["1", "2", "3"]
    assert result["tool_count"]["cells"][1] is None
    quartiles = result["duration"]["quantiles"]
    assert [quartiles[q]["value"] for q in ("p25", "p50", "p75")] == pytest.approx([3.5, 5.0, 7.5])
    assert quartiles["p50"]["nodes"] == 2 and quartiles["p50"]["sd"] > 0
    assert session_shape(CATALOG, {})["duration"]["quantiles"] == {"p25": None, "p50": None, "p75": None}


def test_financial_histograms_shares_and_medians() -> None:
    table: Table = {
        cell("runway_months", 0): CellSum(30, 1.0, 1),  # [0, 1)
        cell("runway_months", 1): CellSum(-10, 1.0, 1),  # clipped to 0 in shares and quantiles
        cell("runway_months", 2): CellSum(10, 1.0, 1),  # [2, 3)
        cell("industry", 0): CellSum(40, 1.0, 1),
    }
    result = financial(CATALOG, table)
    single = {m.name for m in CATALOG.metrics if len(m.dimensions) == 1 and m.dimensions[0].startswith("attr:")}
    assert set(result) == single
    runway = result["runway_months"]
    assert runway["attribute"] == "runway_months" and runway["labels"][:2] == ["0..1", "1..2"]
    assert [s and s["value"] for s in runway["share"][:4]] == pytest.approx([0.75, 0.0, 0.25, None])
    assert runway["quantiles"]["p50"]["value"] == pytest.approx(20 / 30)
    assert result["industry"]["quantiles"] is None
    assert result["industry"]["share"][0]["value"] == 1.0
    assert result["salary_band"]["share"] == [None] * 7


def test_breakdown_matrix_with_absent_cells_and_row_medians() -> None:
    industries, runway = CATALOG.domain("attr:industry"), CATALOG.domain("attr:runway_months")
    tech = industries.index("tech")
    table: Table = {
        cell("industry_runway", tech * len(runway) + 3): CellSum(20, 1.0, 1),  # [3, 4)
        other("industry_runway", tech): CellSum(12, 4.0, 1),
    }
    result = breakdown(CATALOG, table)
    assert result["rows"] == list(industries) and result["columns"] == list(runway)
    approx(result["cells"][tech][3], 20, 1.0)
    assert result["cells"][tech][2] is None and result["cells"][tech + 1][3] is None
    approx(result["row_total"][tech], 32, math.sqrt(5.0))
    assert result["median"][tech]["value"] == pytest.approx(3.5)
    assert result["median"][tech + 1] is None
    with pytest.raises(ValueError):
        breakdown(CATALOG, table, "industry")
    with pytest.raises(KeyError):
        breakdown(CATALOG, table, "nope")


def test_headline_counts_each_session_once() -> None:
    countries = CATALOG.domain("country")
    table: Table = {
        cell("session_tools", 0): CellSum(90, 4.0, 2),
        cell("session_tools", 1): CellSum(30, 4.0, 1),
        other("session_tools", 0): CellSum(11, 4.0, 1),
        cell("usage_events", 0): CellSum(400, 9.0, 2),
        cell("usage_sessions", 4): CellSum(80, 9.0, 2),  # second app
        cell("geo_sessions", countries.index("DE")): CellSum(200, 9.0, 1),
        cell("geo_sessions", countries.index("FR")): CellSum(-3, 9.0, 1),
    }
    result = headline(CATALOG, table, windows=7, nodes=2)
    approx(result["sessions"], 131, math.sqrt(12.0), nodes=2)
    approx(result["events"], 400, 3.0)
    assert (result["tools"], result["tools_in_catalog"], result["countries"]) == (2, 3, 1)
    assert (result["windows"], result["nodes"]) == (7, 2)


ALL_METRICS = list(CATALOG.metrics)


@settings(max_examples=40, deadline=None)
@given(st.lists(tables(ALL_METRICS, low=-(10**6), high=10**6), min_size=1, max_size=4))
def test_every_insight_is_json_without_nan_or_inf(windows: list[Table]) -> None:
    by_window = {SUNDAY + i * DAY: t for i, t in enumerate(windows)}
    table = combine_windows(windows)
    outputs = [
        usage(CATALOG, table),
        completion(CATALOG, table),
        tool_combinations(CATALOG, table),
        session_shape(CATALOG, table),
        financial(CATALOG, table),
        breakdown(CATALOG, table),
        geography(CATALOG, table),
        peak_times(CATALOG, by_window),
        trends(CATALOG, by_window),
        headline(CATALOG, table, windows=len(windows), nodes=3),
    ]
    for output in outputs:
        assert json.loads(json.dumps(output, allow_nan=False)) == output


def test_medians_read_every_bucket_not_only_the_shown_ones() -> None:
    """A flat histogram of buckets each too small to show: its median is still the data's, not None or the layout's."""
    spec = CATALOG.metric("runway_months")
    one = CATALOG.variance(spec)
    counts = [0, 40, 120, 130, 90, 30, 10, 0, 0, 0, 0, 0]  # every bucket under one snapshot's bound (144)
    raw: Table = {cell("runway_months", i): CellSum(v, one, 1) for i, v in enumerate(counts)}
    shown = apply_presence(CATALOG, raw)
    assert [k for k in shown if k[1] == "cell"] == []  # nothing distinguishable bucket by bucket
    result = financial(CATALOG, shown, raw)["runway_months"]
    edges = CATALOG.attributes["runway_months"].edges
    assert edges is not None
    assert result["quantiles"]["p50"]["value"] == pytest.approx(quantiles(edges, counts)["p50"])
    assert result["quantiles"]["p50"]["sd"] > 0
