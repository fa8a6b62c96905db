"""The dashboard as served by a community node (whose page it is, one community) and over absent days."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
import pytest_asyncio

from federation.settings import HubSettings
from node.importer import import_lines
from node.service import close_node, open_node
from protocol.keys import SigningKey
from tests.browser import launch_chromium
from tests.servers import admin_token, node_settings, run_hub, run_node
from tests.snapshots import DAY, envelope

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.browser]

PAGE_TIMEOUT_MS = 15_000
NAME = "Berlin tenants' collective"
NO_SIDEWAYS = "() => document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth"
# For the message: the elements that stick out, outside any scroller of their own.
STICKING_OUT = """() => {
    const cw = document.scrollingElement.clientWidth;
    const clipped = (e) => { for (let a = e.parentElement; a; a = a.parentElement) {
        if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(a).overflowX)) return true; } return false; };
    return [...document.body.querySelectorAll('*')].filter((e) => e.getBoundingClientRect().right > cw + 0.5 && !clipped(e))
        .slice(0, 8).map((e) => `${e.tagName}#${e.id}.${e.getAttribute('class')} ${Math.round(e.getBoundingClientRect().right)}`);
}"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as launched:
        yield launched


async def open_page(browser: Browser, url: str, width: int = 1320) -> tuple[Page, list[str]]:
    context = await browser.new_context(viewport={"width": width, "height": 900}, locale="en-US")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # A node offers a subset of the API (no transparency log): Chromium logs each 404, nothing else may err.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "404" not in m.text else None)
    await page.goto(url + "/")
    try:
        await page.wait_for_selector("body[data-loaded='true']")
    except Exception:  # noqa: BLE001 - any failure to load: report what the page said
        raise AssertionError((await page.text_content("#status"), errors)) from None
    return page, errors


def history(days: int) -> list[str]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        json.dumps({"app": "runway-calculator", "action": a, "timestamp": (today - timedelta(days=d, hours=-10)).isoformat(),
                    "session_id": f"hist-{d}-{s:04d}", "attributes": {"runway_months": 7}, "geo_hint": "DE"})
        for d in range(1, days + 1) for s in range(60) for a in ("start", "calculate")
    ]


async def test_the_node_page_says_whose_node_and_one_community(tmp_path: Path, browser: Browser) -> None:
    settings = node_settings(tmp_path / "node", display_name=NAME, export_grace_seconds=0)
    node = open_node(settings)
    try:
        assert import_lines(node, history(3)).accepted == 360
    finally:
        close_node(node)
    async with run_node(settings) as running:
        for _ in range(200):  # exported by the export pass at start
            if len(running.node.windows.exported) >= 3:
                break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session, session.get(running.url + "/v1/about") as resp:
            assert await resp.json() == {"kind": "node", "name": NAME, "key_id": running.node.key.public.key_id,
                                         "communities": 1}
        for width in (1320, 375):
            page, errors = await open_page(browser, running.url, width)
            whose = page.locator("#whose")
            assert await whose.is_visible()
            text = await whose.text_content() or ""
            assert NAME in text and "one community" in text and "not the movement" in text
            assert await page.text_content("h1") == "This community at a glance"
            assert NAME in await page.title()
            assert await page.evaluate(NO_SIDEWAYS), (width, await page.evaluate(STICKING_OUT))
            assert errors == []
            await page.context.close()


async def test_a_hub_page_says_nothing_of_a_node(tmp_path: Path, browser: Browser) -> None:
    settings = HubSettings.model_validate({"data_dir": tmp_path / "hub", "port": 0, "metrics_port": 0})
    async with run_hub(settings) as running:
        page, errors = await open_page(browser, running.url)
        assert await page.locator("#whose").is_hidden()
        assert await page.text_content("h1") == "The movement at a glance"
        assert errors == []
        await page.context.close()


async def test_absent_days_are_gaps_not_zeros(tmp_path: Path, browser: Browser) -> None:
    token = admin_token()
    now = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
    today = int(now) // DAY * DAY
    windows = [today - d * DAY for d in (6, 5, 4, 2, 1)]  # nothing at all for the day 3 days ago
    settings = HubSettings.model_validate({"data_dir": tmp_path / "hub", "port": 0, "metrics_port": 0, "admin_token": token})
    async with run_hub(settings, now=lambda: now) as running, aiohttp.ClientSession() as session:
        for i in range(2):
            key = SigningKey.generate()
            async with session.post(running.url + "/v1/admin/nodes", json={"name": f"n{i}", "public_key": key.public.b64},
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 201
            for j, w in enumerate(windows):
                async with session.post(
                    running.url + "/v1/snapshots",
                    data=envelope(key, w, seed=7 * i + j, counts=lambda m, k: 2000),  # clear of the noise every day
                    headers={"Content-Type": "application/msgpack"},
                ) as resp:
                    assert resp.status == 202
        async with session.get(running.url + "/v1/views/trends?from=2026-11-18&to=2026-11-23") as resp:
            trends = (await resp.json())["data"]
        page, errors = await open_page(browser, running.url)
        for app, tool in trends["tools"].items():
            assert trends["windows"] == windows and all(n is not None for n in tool["series"]), app
            card = page.locator(f"#trend-tools [data-app='{app}'] svg.line-chart")
            xs = [float(x) for x in await card.locator("circle.dot").evaluate_all("els => els.map(e => e.getAttribute('cx'))")]
            step = xs[1] - xs[0]
            assert step > 0 and abs((xs[3] - xs[2]) - 2 * step) < 0.01, xs  # the absent day keeps its place
            assert await card.locator("polyline.line").count() == 2  # the line breaks there: no dip to zero
        assert errors == []
        await page.context.close()
