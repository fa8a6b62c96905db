"""The metric catalog: the default covers the seed, bad catalogs are refused, the hash is stable."""

from __future__ import annotations

import copy
import math
import tomllib
from importlib import resources
from typing import Any

import pytest

from protocol.catalog import (
    OTHER,
    CatalogError,
    bucket_index,
    load_catalog,
    parse_catalog,
)
from protocol.countries import COUNTRY_DOMAIN, UNKNOWN_COUNTRY


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    text = resources.files("protocol").joinpath("data/default_catalog.toml").read_text()
    return tomllib.loads(text)


def test_default_catalog_names_the_seed_tools() -> None:
    catalog = load_catalog()
    assert catalog.apps["runway-calculator"].actions == ("start", "calculate", "complete")
    assert catalog.apps["real-wage-calculator"].actions == ("start", "reveal", "complete")
    assert catalog.apps["cognitive-debt-assessment"].actions == ("start", "answer", "complete")
    assert set(catalog.apps["runway-calculator"].attributes) == {
        "runway_months", "savings_band", "monthly_expenses", "industry"
    }
    assert set(catalog.apps["real-wage-calculator"].attributes) == {
        "salary", "real_wage_gap_pct", "industry"
    }
    assert set(catalog.apps["cognitive-debt-assessment"].attributes) == {
        "debt_level", "questions_answered"
    }
    assert catalog.domain("attr:savings_band") == (
        "<1k", "1k-5k", "5k-10k", "10k-25k", "25k-50k", "50k-100k", "100k+"
    )
    assert catalog.domain("attr:industry")[-1] == OTHER
    assert catalog.domain("attr:debt_level") == ("low", "moderate", "high", "severe", OTHER)


def test_default_catalog_covers_every_design_metric() -> None:
    catalog = load_catalog()
    dims = {m.name: m.dimensions for m in catalog.metrics}
    assert dims["usage_events"] == ("app_action",)
    assert dims["usage_sessions"] == ("app_action",)
    assert dims["geo_sessions"] == ("country",)  # once per session: sensitivity 1
    assert dims["peak_events"] == ("app", "hour")
    assert dims["tool_pairs"] == ("app_pair",)
    assert dims["completion"] == ("app", "stage")
    assert dims["session_tools"] == ("tool_count",)
    assert dims["session_duration"] == ("duration",)
    assert dims["industry_runway"] == ("attr:industry", "attr:runway_months")
    for attr in ("runway_months", "real_wage_gap_pct", "savings_band", "industry"):
        assert any(d == (f"attr:{attr}",) for d in dims.values()), attr


def test_domains_are_public_and_ordered() -> None:
    catalog = load_catalog()
    assert catalog.domain("country") == COUNTRY_DOMAIN
    assert catalog.domain("country")[-1] == UNKNOWN_COUNTRY
    assert len(catalog.domain("hour")) == 24
    assert "runway-calculator>real-wage-calculator" in catalog.domain("app_pair")
    assert "runway-calculator>runway-calculator" not in catalog.domain("app_pair")
    assert not set(COUNTRY_DOMAIN) & {"AQ", "BV", "GS", "HM", "TF", "UM"}  # uninhabited: never a visitor's
    geo = catalog.metric("geo_sessions")
    assert catalog.shape(geo) == (244,) and catalog.prefix_size(geo) == 1
    peak = catalog.metric("peak_events")
    assert catalog.shape(peak) == (3, 24)
    # Row-major, last dimension fastest.
    assert catalog.cell_labels(peak, 0) == ("runway-calculator", "00")
    assert catalog.cell_labels(peak, 25) == ("real-wage-calculator", "01")


def test_money_is_banded_and_numbers_bucketed() -> None:
    catalog = load_catalog()
    salary = catalog.attributes["salary"]
    assert salary.bucket(87_000) == "75k-100k"
    assert salary.bucket(10) == "<25k"
    assert salary.bucket(-5) == "<25k"
    assert salary.bucket(10_000_000) == "200k+"
    assert salary.bucket("87000") is None  # wrong type is dropped, not guessed
    assert salary.bucket(True) is None
    runway = catalog.attributes["runway_months"]
    assert runway.bucket(8.5) == "6..9"
    assert runway.bucket(0) == "0..1"
    assert runway.bucket(1000) == "60+"
    industry = catalog.attributes["industry"]
    assert industry.bucket("tech") == "tech"
    assert industry.bucket("astrology") == OTHER
    band = catalog.attributes["savings_band"]
    assert band.bucket("10k-25k") == "10k-25k"
    assert band.bucket("lots") is None


def test_bucket_index_edges() -> None:
    edges = (0.0, 1.0, 5.0)
    assert [bucket_index(edges, v) for v in (-1, 0, 0.99, 1, 4.9, 5, 99)] == [0, 0, 0, 1, 1, 2, 2]


def test_dp_parameters_follow_the_formulas() -> None:
    catalog = load_catalog()
    total = math.fsum(catalog.epsilon(m) for m in catalog.metrics)
    assert total == pytest.approx(catalog.epsilon_community, rel=1e-12)
    for m in catalog.metrics:
        assert catalog.scale(m) == pytest.approx(m.max_cells * m.cell_cap / catalog.epsilon(m))
        assert catalog.threshold(m) == 0  # snapshots suppress nothing; presence is the hub's inference
    assert catalog.total_sensitivity == sum(m.max_cells * m.cell_cap for m in catalog.metrics)


def test_hash_is_stable_and_content_addressed(raw: dict[str, Any]) -> None:
    a, b = parse_catalog(raw), parse_catalog(copy.deepcopy(raw))
    assert a.hash == b.hash == load_catalog().hash
    assert len(a.hash) == 64
    changed = copy.deepcopy(raw)
    changed["k_min"] = 11
    assert parse_catalog(changed).hash != a.hash


def _mutate(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is ...:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param("metrics.0.epsilon_share", 0.5, "replaced by `weight`", id="hand-set-share"),
        pytest.param("metrics.0.weight", 0, "greater than", id="zero-weight"),
        pytest.param("metrics.0.weight", float("inf"), "less than", id="infinite-weight"),
        pytest.param("window", "hour", "'day' or 'week'", id="hourly-window"),
        pytest.param("metrics.1.cell_cap", 3, "cell_cap 1", id="sessions-metric-with-cap"),
        pytest.param("metrics.6.max_cells", 9, "exceeds", id="k-over-domain"),
        pytest.param("metrics.0.dimensions", ["colour"], "unknown dimension", id="unknown-dim"),
        pytest.param("metrics.0.dimensions", ["attr:shoe_size"], "no declared", id="unknown-attr-dim"),
        pytest.param("metrics.0.threshold", 5, "Extra inputs", id="no-per-snapshot-threshold"),
        pytest.param("metrics.0.dimensions", ["country", "stage"], "session dimensions", id="stage-combo"),
        pytest.param("metrics.0.max_cells", 0, "greater than or equal", id="zero-k"),
        pytest.param("attributes.runway_months.edges", [3, 2, 1], "increasing", id="edges-decreasing"),
        pytest.param("attributes.runway_months.edges", [], "non-empty", id="edges-empty"),
        pytest.param("attributes.industry.values", ["a", "a"], "unique", id="duplicate-values"),
        pytest.param("attributes.industry.labels", ["a"], "takes", id="category-with-labels"),
        pytest.param("apps.runway-calculator.attributes", ["nope"], "undeclared", id="undeclared-attr"),
        pytest.param("apps.runway-calculator.actions", [], "non-empty", id="no-actions"),
        pytest.param("apps.runway-calculator.start_action", "begin", "not one of", id="bad-start"),
        pytest.param("epsilon_community", 0, "greater than", id="zero-epsilon"),
        pytest.param("apps.runway-calculator.colour", "red", "Extra inputs", id="typo-field"),
    ],
)
def test_catalogs_that_dont_add_up_are_refused(
    raw: dict[str, Any], path: str, value: Any, message: str
) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(_mutate(raw, path, value))


def test_unreadable_catalog_file(tmp_path: Any) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")


def test_the_epsilon_split_minimises_the_weighted_variance(raw: dict[str, Any]) -> None:
    """eps_j proportional to (w_j (k_j c_j)^2)^(1/3), summing to eps: no other split has less sum w_j Var_j."""
    catalog = load_catalog()
    eps = {m.name: catalog.epsilon(m) for m in catalog.metrics}
    assert math.fsum(eps.values()) == pytest.approx(catalog.epsilon_community, rel=1e-12)
    ratios = {m.name: eps[m.name] / (m.weight * m.sensitivity**2) ** (1 / 3) for m in catalog.metrics}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-12)
    # The values docs/privacy.md prints: geography's weight 64 with k*c = 1, completion's 4 with k = 6.
    assert catalog.epsilon(catalog.metric("geo_sessions")) == pytest.approx(0.0591, abs=5e-5)
    assert catalog.epsilon(catalog.metric("completion")) == pytest.approx(0.0774, abs=5e-5)

    def weighted_variance(split: dict[str, float]) -> float:
        return math.fsum(m.weight * 2 * (m.sensitivity / split[m.name]) ** 2 for m in catalog.metrics)

    best = weighted_variance(eps)
    names = list(eps)
    for i, (a, b) in enumerate(zip(names, names[1:] + names[:1], strict=True)):  # move budget between two metrics
        for delta in (0.01, -0.01):
            moved = dict(eps)
            moved[a] += delta * eps[a]
            moved[b] -= delta * eps[a]
            assert weighted_variance(moved) > best, (i, a, b, delta)
    # Scaling every weight by a constant changes nothing; a heavier metric gets more, in the cube root.
    heavier = copy.deepcopy(raw)
    for metric in heavier["metrics"]:
        metric["weight"] = 3 * metric.get("weight", 1.0)
    assert parse_catalog(heavier).epsilon_shares == pytest.approx(dict(catalog.epsilon_shares), rel=1e-12)
    geo8 = copy.deepcopy(raw)
    for metric in geo8["metrics"]:
        if metric["name"] == "geo_sessions":
            metric["weight"] *= 8
    other = parse_catalog(geo8)
    ratio = other.epsilon_shares["geo_sessions"] / other.epsilon_shares["session_tools"]
    assert ratio == pytest.approx(2 * catalog.epsilon_shares["geo_sessions"] / catalog.epsilon_shares["session_tools"])


def test_a_catalog_fixes_one_window_length(raw: dict[str, Any]) -> None:
    catalog = load_catalog()
    assert catalog.window == "day" and catalog.window_seconds == 86_400
    weekly = parse_catalog(_mutate(raw, "window", "week"))
    assert weekly.window_seconds == 7 * 86_400
    assert weekly.hash != catalog.hash  # a hub never merges windows of two lengths under one catalog
