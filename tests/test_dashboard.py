"""The dashboard (views/static, served by views.dashboard) in headless Chromium against a real hub.

One hub with a plausible movement (3 nodes x 21 daily windows, shaped like
real use, seeded noise) runs in-process for the whole module; each panel's
numbers are checked against the views API they come from. The page must
talk to nobody but its own origin, log no error, set no cookie, and compute
"Am I typical?" without sending anything. Full-page screenshots (light and
dark) land in tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from federation.settings import HubSettings
from protocol.catalog import STAGES, Catalog, load_catalog
from protocol.keys import SigningKey
from tests.browser import launch_chromium
from tests.servers import admin_token
from tests.snapshots import DAY, envelope
from views.dashboard import CONTENT_SECURITY_POLICY, add_dashboard_routes

if TYPE_CHECKING:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Page,
        Request,
    )

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.browser]

TOKEN = admin_token()
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
TODAY = int(NOW) // DAY * DAY
WINDOWS = [TODAY - d * DAY for d in range(21, 0, -1)]
FROM = datetime.fromtimestamp(WINDOWS[0], UTC).strftime("%Y-%m-%d")
TO = datetime.fromtimestamp(WINDOWS[-1], UTC).strftime("%Y-%m-%d")
VIEW_NAMES = ("headline", "usage", "completion", "tool-combinations", "session-shape", "peak-times",
              "geography", "financial", "breakdown", "trends")
PAGE_TIMEOUT_MS = 15_000
ARTIFACTS = Path(__file__).parent / "artifacts"
CATALOG = load_catalog()


# ---- a plausible movement ----------------------------------------------------------------

# Share of sessions per country (the rest of the world stays below thresholds).
COUNTRY_WEIGHTS = {
    "US": 1.0, "GB": 0.42, "DE": 0.38, "CA": 0.3, "NL": 0.22, "FR": 0.2, "AU": 0.18, "SE": 0.14, "ES": 0.13,
    "BR": 0.12, "IN": 0.12, "MX": 0.09, "IE": 0.08, "NZ": 0.07, "PT": 0.07, "IT": 0.07, "NO": 0.06,
    "DK": 0.06, "FI": 0.05, "AR": 0.05, "ZA": 0.05, "JP": 0.05, "PL": 0.05, "CH": 0.05, "AT": 0.04,
    "BE": 0.04, "KE": 0.04, "NG": 0.04, "CO": 0.04, "CL": 0.03, "SG": 0.03, "PH": 0.03, "ZZ": 0.03,
    # Central Asia: each country too small to stand clear of its noise, the five together do (a region).
    "KZ": 0.012, "UZ": 0.012, "KG": 0.012, "TJ": 0.012, "TM": 0.012,
}
APP_WEIGHT = {"runway-calculator": 1.0, "real-wage-calculator": 0.7, "cognitive-debt-assessment": 0.45}
ACTION_SHARE = {"start": 1.0, "calculate": 0.85, "reveal": 0.8, "answer": 0.9, "complete": 0.6}
COMPLETION = {"runway-calculator": 0.72, "real-wage-calculator": 0.58, "cognitive-debt-assessment": 0.85}
PAIRS = {
    "runway-calculator>real-wage-calculator": 0.47, "real-wage-calculator>runway-calculator": 0.26,
    "runway-calculator>cognitive-debt-assessment": 0.18, "cognitive-debt-assessment>runway-calculator": 0.12,
    "real-wage-calculator>cognitive-debt-assessment": 0.15, "cognitive-debt-assessment>real-wage-calculator": 0.09,
}
INDUSTRY = {"tech": 1.0, "finance": 0.45, "healthcare": 0.35, "education": 0.3, "government": 0.2, "retail": 0.22,
            "manufacturing": 0.12, "creative": 0.28, "nonprofit": 0.15, "other": 0.18}
# Centre of the runway (months) per industry: finance workers have the longest runways.
INDUSTRY_RUNWAY = {"tech": 7.0, "finance": 11.0, "healthcare": 5.0, "education": 4.0, "government": 6.0,
                   "retail": 2.5, "manufacturing": 4.0, "creative": 3.5, "nonprofit": 3.0, "other": 4.5}


def _bucket_probabilities(edges: list[float], cdf: Callable[[float], float]) -> list[float]:
    """P(bucket i) for buckets [e_i, e_i+1), the first open below and the last open above."""
    lower = [-math.inf, *edges[1:]]
    upper = [*edges[1:], math.inf]
    return [cdf(hi) - cdf(lo) for lo, hi in zip(lower, upper, strict=False)]


def _lognormal(centre: float, spread: float) -> Callable[[float], float]:
    def cdf(x: float) -> float:
        if x <= 0:
            return 0.0
        if x == math.inf:
            return 1.0
        return 0.5 * (1 + math.erf((math.log(x) - math.log(centre)) / (spread * math.sqrt(2))))
    return cdf


def _normal(mean: float, sd: float) -> Callable[[float], float]:
    def cdf(x: float) -> float:
        if math.isinf(x):
            return 1.0 if x > 0 else 0.0
        return 0.5 * (1 + math.erf((x - mean) / (sd * math.sqrt(2))))
    return cdf


def _hour_curve(hour: int, weekday: int) -> float:
    """Evening peaks in UTC (Europe, then the Americas after midnight), Sundays busiest."""
    evening = math.exp(-((hour - 20) ** 2) / 18) + 0.8 * math.exp(-(((hour - 1) % 24) ** 2) / 10)
    afternoon = 0.35 * math.exp(-((hour - 13) ** 2) / 12)
    return (0.12 + evening + afternoon) * {6: 2.2, 0: 1.2, 5: 0.7}.get(weekday, 1.0)


ATTRIBUTE_SHAPES: dict[str, Callable[[], Callable[[float], float]]] = {
    "runway_months": lambda: _lognormal(6.5, 0.9),
    "real_wage_gap_pct": lambda: _normal(23, 12),
    "salary": lambda: _lognormal(72_000, 0.5),
    "monthly_expenses": lambda: _lognormal(2_800, 0.5),
    "questions_answered": lambda: _normal(22, 5),
}
BAND_SHAPES = {
    "savings_band": [0.10, 0.19, 0.2, 0.27, 0.14, 0.07, 0.03],
    "debt_level": [0.18, 0.37, 0.3, 0.15, 0.0],
}


def movement(catalog: Catalog, node: int, window_start: int) -> Callable[[str, int], int]:
    """True counts `counts(metric, index)` of node `node` (0 is the biggest) on one day."""
    rng = random.Random(node * 1_000_003 + window_start)
    weekday = (window_start // DAY + 3) % 7
    growth = 1 + 0.012 * ((window_start - WINDOWS[0]) // DAY)
    base = 900.0 * (1.0, 0.55, 0.3)[node % 3] * growth * (1.25 if weekday == 6 else 1.0)
    tables: dict[str, list[int]] = {}
    for metric in catalog.metrics:
        size = catalog.domain_size(metric)
        cells = [0.0] * size
        dims = metric.dimensions
        if len(dims) == 1 and dims[0].startswith("attr:"):
            name = dims[0].removeprefix("attr:")
            attr = catalog.attributes[name]
            if attr.edges is not None:
                shape = _bucket_probabilities(list(attr.edges), ATTRIBUTE_SHAPES[name]())
            elif name == "industry":
                shape = [INDUSTRY.get(v, 0) / sum(INDUSTRY.values()) for v in attr.domain]
            else:
                shape = (BAND_SHAPES.get(metric.name, []) + [0.0] * size)[:size]
            cells = [base * 0.9 * p for p in shape]
        elif metric.name == "industry_runway":
            edges = list(catalog.attributes["runway_months"].edges or ())
            cells = [  # a bigger sample than the other attributes: the 2-D breakdown needs it
                base * 2.5 * INDUSTRY.get(row, 0) / sum(INDUSTRY.values()) * p
                for row in catalog.domain(dims[0])
                for p in _bucket_probabilities(edges, _lognormal(INDUSTRY_RUNWAY.get(row, 4.5), 0.8))
            ]
        elif metric.name == "session_duration":
            edges = list(catalog.session.duration_edges_minutes)
            cells = [base * 1.4 * p for p in _bucket_probabilities(edges, _lognormal(14, 0.8))]
        else:
            for i in range(size):
                labels = catalog.cell_labels(metric, i)
                if metric.name in ("usage_events", "usage_sessions"):
                    app, action = labels[0].split("/")
                    factor = 1.6 if metric.name == "usage_events" else 1.0
                    cells[i] = base * APP_WEIGHT.get(app, 0.3) * ACTION_SHARE.get(action, 0.5) * factor
                elif metric.name == "geo_sessions":
                    cells[i] = base * COUNTRY_WEIGHTS.get(labels[-1], 0.0)
                elif metric.name == "peak_events":
                    cells[i] = base * APP_WEIGHT.get(labels[0], 0.3) * 0.16 * _hour_curve(int(labels[1]), weekday)
                elif metric.name == "tool_pairs":
                    cells[i] = base * 0.5 * PAIRS.get(labels[0], 0.0)
                elif metric.name == "completion":
                    started = base * APP_WEIGHT.get(labels[0], 0.3)
                    cells[i] = started if labels[1] == STAGES[0] else started * COMPLETION.get(labels[0], 0.5)
                elif metric.name == "session_tools":
                    cells[i] = base * (0.9, 0.42, 0.16, 0.05)[min(3, int(labels[0]) - 1)]
        tables[metric.name] = [max(0, round(c * rng.uniform(0.85, 1.15))) for c in cells]
    return lambda metric, i: tables[metric][i]


# ---- the hub, the browser, a loaded page ------------------------------------------------------


@dataclass
class Dashboard:
    url: str
    views: dict[str, Any]  # name -> envelope, for the dashboard's default range
    catalog: dict[str, Any]


@dataclass
class Probe:
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def urls(self) -> list[str]:
        return [r.url for r in self.requests]


def watch(page: Page) -> Probe:
    probe = Probe()
    page.on("request", lambda request: probe.requests.append(request))
    page.on("pageerror", lambda exc: probe.errors.append(f"pageerror: {exc}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            probe.errors.append(f"{message.type}: {message.text}")

    page.on("console", on_console)
    return probe


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, f"{url}: {resp.status}"
        return await resp.json()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dashboard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    from federation.app import create_app

    settings = HubSettings(  # type: ignore[arg-type]
        data_dir=tmp_path_factory.mktemp("dashboard") / "hub", port=0, metrics_port=0, admin_token=TOKEN,
        export_after_seconds=0,
    )
    app = create_app(settings, now=lambda: NOW)
    if not any(getattr(r, "canonical", None) == "/" for r in app.router.resources()):
        add_dashboard_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(3):
                key = SigningKey.generate()
                async with session.post(
                    url + "/v1/admin/nodes", json={"name": f"node-{i}", "public_key": key.public.b64},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    assert resp.status == 201, await resp.text()
                for j, w in enumerate(WINDOWS):
                    body = envelope(key, w, seed=100 * i + j, counts=movement(CATALOG, i, w))
                    async with session.post(
                        url + "/v1/snapshots", data=body, headers={"Content-Type": "application/msgpack"}
                    ) as resp:
                        assert resp.status == 202, await resp.text()
            views = {n: await _get_json(session, f"{url}/v1/views/{n}?from={FROM}&to={TO}") for n in VIEW_NAMES}
            catalog = await _get_json(session, url + "/v1/catalog")
        yield Dashboard(url, views, catalog)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as launched:
        yield launched


async def open_dashboard(
    browser: Browser, url: str, *, scheme: str = "light", setup: Callable[[Page], Any] | None = None
) -> tuple[BrowserContext, Page, Probe]:
    context = await browser.new_context(
        viewport={"width": 1320, "height": 900}, color_scheme=scheme, locale="en-US",  # type: ignore[arg-type]
        timezone_id="America/Chicago",
    )
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    probe = watch(page)
    if setup is not None:
        await setup(page)
    await page.goto(url + "/")
    await page.wait_for_selector("body[data-loaded='true']")
    return context, page, probe


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loaded(browser: Browser, dashboard: Dashboard) -> AsyncIterator[tuple[Page, Probe]]:
    """One page, loaded once, that the read-only tests share."""
    context, page, probe = await open_dashboard(browser, dashboard.url)
    try:
        yield page, probe
    finally:
        await context.close()


# ---- formatting, as the page does it ----------------------------------------------------------


def count(v: float) -> str:
    return f"{math.floor(v + 0.5):,}"


def pct(v: float, digits: int = 1) -> str:
    return f"{v * 100:.{digits}f}%"


def growth(v: float) -> str:
    sign = "+" if v > 0 else "−" if v < 0 else ""
    return f"{sign}{math.floor(abs(v) * 100 + 0.5)}%"


async def texts(page: Page, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_text_contents()]


# ---- the server side ---------------------------------------------------------------------------


async def test_assets_are_served_with_a_strict_policy(dashboard: Dashboard) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(dashboard.url + "/") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert "Set-Cookie" not in resp.headers
            assert resp.headers["Cache-Control"] == "no-cache"
            html = await resp.text()
            etag = resp.headers["ETag"]
        # No inline script or style anywhere: the CSP would block them.
        assert "<style" not in html and " style=" not in html
        assert "<script>" not in html and "<script type=\"module\">" not in html
        async with session.get(dashboard.url + "/", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        for path, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("world.json", "application/json"),
                           ("favicon.svg", "image/svg+xml")):
            async with session.get(f"{dashboard.url}/static/{path}") as resp:
                assert resp.status == 200, path
                assert resp.headers["Content-Type"].startswith(kind), path
                assert resp.headers["Cache-Control"].startswith("public"), path
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert "Set-Cookie" not in resp.headers
        for bad in ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/..%2fdashboard.py",
                    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "/static/LICENSES.md", "/static/.hidden",
                    "/static/nope.js", "/static/", "/static/..\\dashboard.py", "/static/%00.js"):
            async with session.get(dashboard.url + bad) as resp:
                assert resp.status == 404, bad


async def test_page_weight_is_small(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    _, probe = loaded
    total = 0
    async with aiohttp.ClientSession() as session:
        for url in {u for u in probe.urls() if "/v1/" not in u}:
            async with session.get(url) as resp:
                total += len(await resp.read())
    assert total < 500_000, f"the dashboard's own assets weigh {total} bytes"


# ---- every panel matches the API ----------------------------------------------------------------


async def test_nothing_leaves_the_origin_and_nothing_errs(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, probe = loaded
    origin = urlsplit(dashboard.url)
    assert probe.requests, "the page made no request at all"
    for request in probe.requests:
        parts = urlsplit(request.url)
        assert (parts.scheme, parts.hostname, parts.port) == ("http", "127.0.0.1", origin.port), request.url
        assert request.method == "GET", request.url
    assert probe.errors == []
    assert await page.evaluate("document.cookie") == ""
    assert await page.context.cookies() == []
    assert await page.evaluate("window.localStorage.length + window.sessionStorage.length") == 0
    # The views were asked for the default range: the last 30 days of available windows.
    views = [r.url for r in probe.requests if "/v1/views/" in r.url]
    assert {urlsplit(u).path.rsplit("/", 1)[1] for u in views} == set(VIEW_NAMES)
    for u in views:
        assert parse_qs(urlsplit(u).query) == {"from": [FROM], "to": [TO]}
    assert await page.input_value("#range-from") == FROM
    assert await page.input_value("#range-to") == TO


async def test_headline(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    d = dashboard.views["headline"]["data"]
    assert (await texts(page, "#headline [data-metric=sessions] .value")) == [count(d["sessions"]["value"])]
    assert (await texts(page, "#headline [data-metric=sessions] .pm")) == [f"± {count(d['sessions']['sd'])}"]
    assert (await texts(page, "#headline [data-metric=events] .value")) == [count(d["events"]["value"])]
    assert (await texts(page, "#headline [data-metric=countries] .value")) == [str(d["countries"])]
    assert (await texts(page, "#headline [data-metric=nodes] .value")) == ["3"]
    assert (await texts(page, "#headline [data-metric=tools] .value")) == [str(d["tools"])]
    assert (await texts(page, "#headline [data-metric=windows] .value")) == ["21"]
    assert "Nov 3 – Nov 23, 2026" in await page.text_content("#headline [data-metric=windows]")


async def test_usage_and_completion(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    usage = dashboard.views["usage"]["data"]["apps"]
    for app, a in usage.items():
        for action, x in a["actions"].items():
            shown = await texts(page, f"#usage [data-app='{app}'] [data-label='{action}'] .value")
            assert shown == [count(x["sessions"]["value"])], (app, action)
    await page.click("#usage .seg[data-measure=events]")
    shown = await texts(page, "#usage [data-app='runway-calculator'] [data-label='calculate'] .value")
    assert shown == [count(usage["runway-calculator"]["actions"]["calculate"]["events"]["value"])]
    await page.click("#usage .seg[data-measure=sessions]")
    completion = dashboard.views["completion"]["data"]
    for app, c in completion.items():
        assert (await texts(page, f"#completion [data-app='{app}'] .rate-value .value")) == [pct(c["rate"]["value"])]
        assert (await texts(page, f"#completion [data-app='{app}'] .rate-value .pm")) == [f"± {c['rate']['sd'] * 100:.1f}"]


async def test_tool_combinations(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    d = dashboard.views["tool-combinations"]["data"]
    assert await page.locator("#combinations svg.sankey path.flow").count() == len(d["sankey"]["values"]) > 0
    label = await page.get_attribute("#combinations svg.sankey", "aria-labelledby")
    assert label and await page.locator(f"#{label}").count() == 1
    # "x% used A before B": one sentence per pair with a share, in the direction of the majority.
    ab = d["pairs"]["runway-calculator>real-wage-calculator"]["share_before"]["value"]
    first, then, share = (
        ("runway-calculator", "real-wage-calculator", ab) if ab >= 0.5 else ("real-wage-calculator", "runway-calculator", 1 - ab)
    )
    sentence = page.locator(f"#combinations li[data-pair='{first}>{then}']")
    assert (await sentence.locator(".big .value").text_content()) == pct(share, 0)
    assert "opened the" in (await sentence.text_content() or "")


async def test_session_shape(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    d = dashboard.views["session-shape"]["data"]
    median = d["duration"]["quantiles"]["p50"]["value"]
    assert (await texts(page, "#shape [data-metric=median-duration] .value")) == [f"{median:.1f} min"]
    for label, cell in zip(d["tool_count"]["labels"], d["tool_count"]["cells"], strict=False):
        assert (await texts(page, f"#shape [data-label='{label}'] .value")) == [count(cell["value"])]
    assert await page.locator("#shape svg.histogram line.marker.median").count() == 1


async def test_peak_times(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    events = dashboard.views["peak-times"]["data"]["events"]
    cells = page.locator("#peaks svg.heatmap rect.cell")
    assert await cells.count() == 7 * 24
    nulls = sum(1 for row in events for n in row if n is None)
    assert await page.locator("#peaks rect.cell.qnull").count() == nulls
    assert "UTC" in (await page.text_content("#time .lede") or "")
    best = max(((i, j, n) for i, row in enumerate(events) for j, n in enumerate(row) if n), key=lambda x: x[2]["value"])
    weekday = dashboard.views["peak-times"]["data"]["weekdays"][best[0]]
    assert f"{weekday} {best[1]:02d}:00 ({count(best[2]['value'])}" in (await page.text_content("#peaks .sentences") or "")
    # Per tool: the selector redraws from by_app.
    await page.select_option("#peaks-tool", "cognitive-debt-assessment")
    by_app = dashboard.views["peak-times"]["data"]["by_app"]["cognitive-debt-assessment"]
    assert await page.locator("#peaks rect.cell.qnull").count() == sum(1 for row in by_app for n in row if n is None)
    await page.select_option("#peaks-tool", "")


async def test_geography(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    d = dashboard.views["geography"]["data"]
    top = d["countries"][0]
    first = page.locator("#geography .country-list li").first
    assert await first.get_attribute("data-label") == top["country"]
    assert (await first.locator(".value").text_content()) == count(top["sessions"]["value"])
    assert "United States" in (await first.text_content() or "")
    shown = await page.locator("#geography .country-list li").count()
    assert shown == min(12, len(d["countries"]))
    # The heading's number is the list's length.
    assert (await page.text_content("#geography h4") or "").startswith(f"Top {shown} countries")
    # The map colours every country with data, and only those.
    painted = await page.eval_on_selector_all(
        "#geography svg.map [data-country]", "els => els.filter(e => !e.classList.contains('land')).map(e => e.dataset.country)"
    )
    with_data = {c["country"] for c in d["countries"]}  # each session once: every country counted is listed
    assert top["country"] in painted and set(painted) <= with_data
    assert await page.locator("#geography svg.map path.country").count() > 150
    # Countries too small alone, together in their UN M49 region: listed after the countries, in the view's order.
    assert d["regions"], "the fixture's smaller countries should make a region"
    rows = page.locator("#geography .region-list li")
    assert [await rows.nth(i).get_attribute("data-label") for i in range(await rows.count())] == [
        r["region"] for r in d["regions"]]
    assert (await rows.first.locator(".value").text_content()) == count(d["regions"][0]["sessions"]["value"])
    assert d["regions"][0]["name"] in (await rows.first.text_content() or "")


async def test_financial_and_breakdown(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    fin = dashboard.views["financial"]["data"]
    runway = fin["runway_months"]["quantiles"]["p50"]["value"]
    assert (await texts(page, "[data-metric='runway_months-median'] .value")) == [f"{runway:.1f} months"]
    gap = fin["real_wage_gap"]["quantiles"]["p50"]["value"]
    assert (await texts(page, "[data-metric='real_wage_gap-median'] .value")) == [f"{gap:.1f}"]
    for label, share in zip(fin["industry"]["labels"], fin["industry"]["share"], strict=False):
        shown = await texts(page, f"#fin-industry [data-label='{label}'] .bar-value")
        assert shown == ([f"{pct(share['value'])} ± {share['sd'] * 100:.1f}"] if share else ["not distinguishable from noise"]), (
            label
        )
    assert await page.locator("#financial-more article[data-metric]").count() == len(fin) - 4
    b = dashboard.views["breakdown"]["data"]
    assert await page.locator("#breakdown tr[data-row]").count() == len(b["rows"])
    row = page.locator("#breakdown tr[data-row='finance'] td")
    cells = b["cells"][b["rows"].index("finance")]
    assert await row.count() == len(cells) + 1
    for k, n in enumerate(cells):
        assert "mnull" in (await row.nth(k).get_attribute("class") or "") if n is None else True


async def test_trends(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    tools = dashboard.views["trends"]["data"]["tools"]
    for app, t in tools.items():
        card = page.locator(f"#trend-tools [data-app='{app}']")
        assert len(t["series"]) == 21
        present = sum(1 for n in t["series"] if n is not None)
        assert await card.locator("svg.line-chart circle").count() == present
        # A suppressed day is a hatched column, never a point on the zero line.
        assert await card.locator("svg.line-chart rect.null-band").count() == len(t["series"]) - present
        if t["growth"] is not None:
            assert (await card.locator(".growth .value").text_content()) == growth(t["growth"]["value"])


async def test_null_is_below_threshold_never_zero(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    # Every null in the breakdown is shown as a hatched "–" cell, never as "0".
    b = dashboard.views["breakdown"]["data"]
    nulls = sum(1 for row in b["cells"] for n in row if n is None)
    assert nulls > 0, "the fixture should have suppressed cells"
    assert await page.locator("#breakdown td.mnull").count() == nulls
    assert "0" not in await texts(page, "#breakdown td.m")
    assert "not zero" in (await page.text_content("#overview .noise-note") or "")


async def test_transparency_lists_the_catalog(dashboard: Dashboard, loaded: tuple[Page, Probe]) -> None:
    page, _ = loaded
    section = await page.text_content("#privacy") or ""
    cat = dashboard.catalog
    for name in cat["attributes"]:
        assert await page.locator(f"#attributes tr[data-attribute='{name}']").count() == 1, name
        assert name in section
    for name, app in cat["apps"].items():
        assert app["title"] in section
        for action in app["actions"]:
            assert action in (await page.text_content(f"#privacy [data-app='{name}']") or "")
    for metric in cat["metrics"]:
        row = await page.text_content(f"#metrics tr[data-metric='{metric['name']}']") or ""
        assert f"{metric['threshold']:,}" in row and any(f"{metric['epsilon']:.{d}f}" in row for d in (2, 3))
    for item in cat["never_collected"]:
        assert item in section
    assert f"{cat['retention_days']} days" in section
    assert f"≥ {cat['k_min']}" in section
    assert "ε = 1.0" in section
    head = await page.text_content("#log-head") or ""
    assert "63" in head  # 3 nodes x 21 windows
    # The chain alone is no proof against a rewrite (review M1): the page says what is.
    note = await page.text_content("#translog .panel-note") or ""
    assert "agrees with itself" in note and "pinned the hub's key" in note


# ---- interaction ---------------------------------------------------------------------------------


def runway_percentile(fin: dict[str, Any], value: float) -> float:
    """The share of the runway histogram below `value`, as the page computes it."""
    edges = list(CATALOG.attributes["runway_months"].edges or ())
    counts = [max(0.0, c["value"]) if c else 0.0 for c in fin["runway_months"]["cells"]]
    top = edges[-1] + (edges[-1] - edges[-2])
    upper = [*edges[1:], top]
    k = max(i for i, e in enumerate(edges) if e <= value)
    frac = min(1.0, max(0.0, (value - edges[k]) / (upper[k] - edges[k])))
    return (sum(counts[:k]) + frac * counts[k]) / sum(counts)


async def test_am_i_typical_stays_in_the_browser(browser: Browser, dashboard: Dashboard) -> None:
    context, page, probe = await open_dashboard(browser, dashboard.url)
    try:
        await page.wait_for_load_state("networkidle")
        before = len(probe.requests)
        await page.fill("#typical-runway-input", "8.5")
        await page.press("#typical-runway-input", "Enter")
        verdict = page.locator("#typical-runway-out .verdict")
        await verdict.wait_for()
        expected = runway_percentile(dashboard.views["financial"]["data"], 8.5)
        assert (await verdict.locator(".big .value").text_content()) == pct(expected, 0)
        assert await page.locator("#typical-runway-out svg line.you").count() == 1
        await page.select_option("#typical-savings-input", "10k-25k")
        await page.locator("#typical-savings-out .verdict").wait_for()
        cells = dashboard.views["financial"]["data"]["savings_band"]["cells"]
        counts = [max(0, c["value"]) if c else 0 for c in cells]
        less = sum(counts[:3]) / sum(counts)
        assert (await page.text_content("#typical-savings-out .verdict .big .value")) == pct(less, 0)
        await asyncio.sleep(0.5)
        assert len(probe.requests) == before, [r.url for r in probe.requests[before:]]
        for request in probe.requests:
            assert "8.5" not in request.url and "10k-25k" not in request.url
            assert request.post_data is None
        assert probe.errors == []
    finally:
        await context.close()


async def test_keyboard_reaches_the_controls(browser: Browser, dashboard: Dashboard) -> None:
    context, page, probe = await open_dashboard(browser, dashboard.url)
    try:
        reached: list[str] = []
        for _ in range(40):
            await page.keyboard.press("Tab")
            reached.append(await page.evaluate(
                "(() => { const e = document.activeElement; return e.id || e.className || e.tagName; })()"
            ))
            if reached[-1] == "theme-toggle":
                break
        assert reached[0] == "skip-link"
        assert "range-from" in reached and "range-to" in reached and reached[-1] == "theme-toggle"
        # The focused toggle switches the theme from the keyboard, and says so.
        assert await page.get_attribute("#theme-toggle", "aria-pressed") == "false"
        await page.keyboard.press("Enter")
        assert await page.get_attribute("html", "data-theme") == "dark"
        assert await page.get_attribute("#theme-toggle", "aria-pressed") == "true"
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        # Landmarks and headings for screen readers.
        assert await page.locator("header.masthead").count() == 1 and await page.locator("main#main").count() == 1
        assert await page.locator("nav[aria-label]").count() == 1 and await page.locator("h1").count() == 1
        assert await page.locator("svg.chart[role=img][aria-labelledby]").count() >= 10
        assert probe.errors == []
    finally:
        await context.close()


async def test_date_range_reloads_the_views(browser: Browser, dashboard: Dashboard) -> None:
    context, page, probe = await open_dashboard(browser, dashboard.url)
    try:
        before = len(probe.requests)
        await page.click(".presets .chip[data-days='7']")
        start = datetime.fromtimestamp(WINDOWS[-7], UTC).strftime("%Y-%m-%d")
        await page.wait_for_function(
            "() => document.querySelector('#headline [data-metric=windows] .value')?.textContent === '7'"
        )
        assert await page.input_value("#range-from") == start
        urls = [r.url for r in probe.requests[before:] if "/v1/views/" in r.url]
        assert urls and all(parse_qs(urlsplit(u).query) == {"from": [start], "to": [TO]} for u in urls)
        async with aiohttp.ClientSession() as session:
            week = await _get_json(session, f"{dashboard.url}/v1/views/headline?from={start}&to={TO}")
        assert (await texts(page, "#headline [data-metric=sessions] .value")) == [count(week["data"]["sessions"]["value"])]
        assert await page.get_attribute(".presets .chip[data-days='7']", "aria-pressed") == "true"
        assert probe.errors == []
    finally:
        await context.close()


async def test_missing_views_are_hidden(browser: Browser, dashboard: Dashboard) -> None:
    """A community node offers a subset of the API: what 404s disappears, the rest still works."""

    async def setup(page: Page) -> None:
        async def not_found(route: Any) -> None:
            await route.fulfill(status=404, content_type="application/problem+json", body=json.dumps({"title": "Not Found"}))

        async def fewer_views(route: Any) -> None:
            response = await route.fetch()
            index = await response.json()
            index["views"] = [v for v in index["views"] if v["name"] not in ("geography", "trends")]
            await route.fulfill(response=response, json=index)

        await page.route("**/v1/views", fewer_views)
        await page.route("**/v1/views/peak-times*", not_found)
        await page.route("**/v1/log*", not_found)

    context, page, probe = await open_dashboard(browser, dashboard.url, setup=setup)
    try:
        for hidden in ("#time", "#places", "#trends", "#translog"):
            assert await page.locator(hidden).is_hidden(), hidden
        assert await page.locator(".section-nav a[href='#places']").is_hidden()
        assert await page.locator("#overview").is_visible() and await page.locator("#money").is_visible()
        assert not any("/v1/views/geography" in u or "/v1/views/trends" in u for u in probe.urls())
        # Chromium logs each 404 response; nothing else may go wrong.
        assert [e for e in probe.errors if "404" not in e] == []
    finally:
        await context.close()


async def test_api_base_is_configurable(browser: Browser, dashboard: Dashboard) -> None:
    """`data-api` on the root element moves every API call under another base (same origin)."""

    async def setup(page: Page) -> None:
        async def html(route: Any) -> None:
            response = await route.fetch()
            body = (await response.text()).replace('data-api=""', 'data-api="/mirror/"')
            await route.fulfill(response=response, body=body)

        async def mirror(route: Any) -> None:
            response = await route.fetch(url=route.request.url.replace("/mirror/", "/"))
            await route.fulfill(response=response)

        await page.route(dashboard.url + "/", html)
        await page.route("**/mirror/v1/**", mirror)

    context, page, probe = await open_dashboard(browser, dashboard.url, setup=setup)
    try:
        api = [u for u in probe.urls() if "/v1/" in u]
        assert api and all("/mirror/v1/" in u for u in api)
        d = dashboard.views["headline"]["data"]
        assert (await texts(page, "#headline [data-metric=sessions] .value")) == [count(d["sessions"]["value"])]
        assert probe.errors == []
    finally:
        await context.close()


async def test_phone_layout_does_not_scroll_sideways(browser: Browser, dashboard: Dashboard) -> None:
    context = await browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True,
                                        has_touch=True, locale="en-US")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page = await context.new_page()
        probe = watch(page)
        await page.goto(dashboard.url + "/")
        await page.wait_for_selector("body[data-loaded='true']")
        widths = await page.evaluate(
            "() => [document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
        )
        # For the message: the elements that stick out, outside any scroller of their own.
        wide = await page.evaluate("""() => {
            const cw = document.scrollingElement.clientWidth;
            const clipped = (e) => { for (let a = e.parentElement; a; a = a.parentElement) {
                if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(a).overflowX)) return true; } return false; };
            const right = (e) => Math.round(e.getBoundingClientRect().right);
            return [...document.body.querySelectorAll('*')].filter((e) => right(e) > cw + 0.5 && !clipped(e))
                .slice(0, 8).map((e) => `${e.tagName}#${e.id}.${e.getAttribute('class')} ${right(e)}`);
        }""")
        assert widths[0] <= widths[1], (widths, wide)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        assert probe.errors == []
    finally:
        await context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshots(browser: Browser, dashboard: Dashboard, scheme: str) -> None:
    context, page, probe = await open_dashboard(browser, dashboard.url, scheme=scheme)
    try:
        await page.fill("#typical-runway-input", "8.5")
        await page.press("#typical-runway-input", "Enter")
        await page.select_option("#typical-savings-input", "10k-25k")
        await page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        dark = sum(int(x) for x in background[background.index("(") + 1 : -1].split(",")[:3]) < 150
        assert dark == (scheme == "dark"), background
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"dashboard-{scheme}.png"
        await page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 50_000
        assert probe.errors == []
    finally:
        await context.close()
