"""The first-party client script (`/js/liberation.js`) in headless Chromium against a real node.

Each test serves a host page from its own origin (a second aiohttp server on
127.0.0.1) that loads the script from the node's URL, so every event crosses
origins exactly as on a community's site.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from node.store import Store
from tests.browser import launch_chromium
from tests.servers import RunningNode, node_settings, run_node

if TYPE_CHECKING:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Page,
        Request,
    )

# One Chromium serves the whole module (each test gets a fresh context), so the
# tests, the browser and every server share the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGE_TIMEOUT_MS = 5_000
WAIT_SECONDS = 5.0
# How long a page is watched after a failed send for a late unhandled rejection.
QUIET_SECONDS = 0.5
SIZE_LIMIT = 2048
TRACK_CALL = 'liberation.track("runway-calculator", "calculate", {runway_months: 8.5, industry: "tech"})'
SESSION_ID = re.compile(r"^s_[0-9a-f]{32}$")
# What the script must never touch: storage beyond sessionStorage, or fingerprinting surfaces.
FORBIDDEN_APIS = (
    "cookie", "localStorage", "indexedDB", "userAgent", "screen", "plugins", "platform",
    "language", "hardwareConcurrency", "deviceMemory", "canvas", "WebGL", "getTimezoneOffset",
    "Intl", "referrer", "location",
)


# ---- host site and page probes ---------------------------------------------------


@dataclass
class HostSite:
    """A tool's own website: serves `pages[path]` as HTML from a separate origin."""

    url: str = ""
    pages: dict[str, str] = field(default_factory=dict)

    def page(
        self, script_src: str, *, attrs: str = 'data-app="runway-calculator"', before: str = "", after: str = ""
    ) -> str:
        """Register a page that loads the script (synchronously, so inline code after it can call it)."""
        path = f"/page{len(self.pages)}.html"
        self.pages[path] = (
            "<!doctype html><html><head><meta charset=utf-8><title>tool</title>"
            '<link rel=icon href="data:,">'  # no favicon request
            f"<script>{before}</script>"
            f'<script src="{script_src}" {attrs}></script>'
            f"<script>{after}</script>"
            "</head><body>a tool</body></html>"
        )
        return self.url + path


@dataclass
class Probe:
    """What a page did: its requests, uncaught errors and console errors."""

    requests: list[Request] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def event_posts(self) -> list[Request]:
        return [r for r in self.requests if urlsplit(r.url).path == "/v1/events"]


def watch(page: Page) -> Probe:
    probe = Probe()
    page.on("request", lambda request: probe.requests.append(request))
    page.on("pageerror", lambda exc: probe.page_errors.append(str(exc)))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            probe.console_errors.append(message.text)

    page.on("console", on_console)
    return probe


async def new_page(context: BrowserContext) -> tuple[Page, Probe]:
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
    return page, watch(page)


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll `check` until it holds; the node runs on this loop, so sleeping lets it work."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_rows(store: Store, n: int) -> None:
    await eventually(lambda: store.row_count() >= n, f"{n} stored event(s)")
    assert store.row_count() == n
    store.drain()  # acked rows wait in a stage until drained


def distinct_sessions(store: Store) -> int:
    store.drain()  # acked rows wait in a stage until drained
    row = store.cursor().execute("SELECT count(DISTINCT session) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def closed_port_url() -> str:
    """An address on loopback where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/events"


# ---- fixtures ----------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as launched:
        yield launched


@pytest_asyncio.fixture(loop_scope="module")
async def host() -> AsyncIterator[HostSite]:
    site = HostSite()

    async def serve(request: web.Request) -> web.Response:
        html = site.pages.get(request.path)
        if html is None:
            raise web.HTTPNotFound()
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    site.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield site
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def cors_node(tmp_path: Path, host: HostSite) -> AsyncIterator[RunningNode]:
    """A real node that accepts events from the host site's origin."""
    async with run_node(node_settings(tmp_path / "node", cors_origins=(host.url,))) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context()
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        await ctx.close()


def script_url(node: RunningNode) -> str:
    return node.url + "/js/liberation.js"


# ---- tests -------------------------------------------------------------------------


@pytest.mark.browser
async def test_tracked_event_lands_in_duckdb(context: BrowserContext, host: HostSite, cors_node: RunningNode) -> None:
    page, probe = await new_page(context)
    await page.goto(host.page(script_url(cors_node)))

    assert await page.evaluate(TRACK_CALL) is True
    await wait_rows(cors_node.node.store, 1)

    row = cors_node.node.store.cursor().execute(
        "SELECT app, action, country, a_runway_months, a_industry FROM events"
    ).fetchone()
    assert row == ("runway-calculator", "calculate", "ZZ", "6..9", "tech")
    [post] = probe.event_posts()
    assert post.method == "POST"
    assert post.url == cors_node.url + "/v1/events"
    assert (await post.all_headers())["content-type"] == "text/plain;charset=UTF-8"
    body = json.loads(post.post_data or "")
    assert SESSION_ID.match(body["session_id"])
    assert body["timestamp"].endswith("Z")
    assert probe.page_errors == []
    assert probe.console_errors == []


@pytest.mark.browser
async def test_fetch_fallback_when_beacon_is_refused(
    context: BrowserContext, host: HostSite, cors_node: RunningNode
) -> None:
    await context.add_init_script("navigator.sendBeacon = function () { return false; };")
    page, probe = await new_page(context)
    await page.goto(host.page(script_url(cors_node)))

    assert await page.evaluate(TRACK_CALL) is True
    await wait_rows(cors_node.node.store, 1)

    [post] = probe.event_posts()
    assert post.resource_type == "fetch"
    assert (await post.all_headers())["content-type"] == "text/plain"
    response = await post.response()
    assert response is not None and response.status == 202
    assert probe.page_errors == []
    assert probe.console_errors == []  # the node's CORS answer satisfied the browser


@pytest.mark.browser
async def test_queued_calls_and_data_app(context: BrowserContext, host: HostSite, cors_node: RunningNode) -> None:
    """Calls queued before the script loads are sent on load; trackAction uses data-app."""
    page, _ = await new_page(context)
    stub = 'window.liberation = {q: [["runway-calculator", "start", {}]]};'
    await page.goto(host.page(script_url(cors_node), before=stub))
    await wait_rows(cors_node.node.store, 1)

    assert await page.evaluate('liberation.trackAction("complete", {industry: "tech"})') is True
    await page.evaluate('liberation.q.push(["runway-calculator", "calculate", {}])')
    await wait_rows(cors_node.node.store, 3)
    actions = cors_node.node.store.cursor().execute("SELECT action FROM events ORDER BY seq").fetchall()
    assert [a for (a,) in actions] == ["start", "complete", "calculate"]
    assert distinct_sessions(cors_node.node.store) == 1


@pytest.mark.browser
async def test_one_session_per_tab(
    browser: Browser, context: BrowserContext, host: HostSite, cors_node: RunningNode
) -> None:
    store = cors_node.node.store
    url = host.page(script_url(cors_node))
    page, _ = await new_page(context)
    await page.goto(url)
    await page.evaluate(TRACK_CALL)
    await page.evaluate('liberation.track("runway-calculator", "complete", {})')
    await wait_rows(store, 2)
    assert distinct_sessions(store) == 1

    await page.reload()  # same tab: sessionStorage survives a reload
    await page.evaluate(TRACK_CALL)
    await wait_rows(store, 3)
    assert distinct_sessions(store) == 1

    other_tab, _ = await new_page(context)
    await other_tab.goto(url)
    await other_tab.evaluate(TRACK_CALL)
    await wait_rows(store, 4)
    assert distinct_sessions(store) == 2

    fresh = await browser.new_context()
    try:
        fresh_page, _ = await new_page(fresh)
        await fresh_page.goto(url)
        await fresh_page.evaluate(TRACK_CALL)
        await wait_rows(store, 5)
    finally:
        await fresh.close()
    assert distinct_sessions(store) == 3


# The page's own code runs on after the call whether the beacon or fetch is used.
AFTER_CALL = f"window.returned = {TRACK_CALL}; window.pageGoesOn = true;"
NETWORK_ERROR = re.compile(r"Failed to load resource|net::ERR_")


@pytest.mark.browser
@pytest.mark.parametrize("transport", ["beacon", "fetch"])
async def test_unreachable_node_never_breaks_the_page(
    transport: str, context: BrowserContext, host: HostSite, cors_node: RunningNode
) -> None:
    if transport == "fetch":
        await context.add_init_script("delete Navigator.prototype.sendBeacon;")
    page, probe = await new_page(context)
    endpoint = closed_port_url()
    attrs = f'data-app="runway-calculator" data-endpoint="{endpoint}"'
    async with page.expect_event("requestfailed", timeout=PAGE_TIMEOUT_MS) as failed:
        await page.goto(host.page(script_url(cors_node), attrs=attrs, after=AFTER_CALL))
    assert (await failed.value).url == endpoint

    assert await page.evaluate("window.pageGoesOn") is True
    assert await page.evaluate("window.returned") is True
    # A second call after the failure behaves the same, and a rejected fetch
    # must not surface as an unhandled rejection (a pageerror).
    assert await page.evaluate(TRACK_CALL) is True
    await asyncio.sleep(QUIET_SECONDS)
    assert probe.page_errors == []
    assert [m for m in probe.console_errors if not NETWORK_ERROR.search(m)] == []
    assert cors_node.node.store.row_count() == 0


@pytest.mark.browser
async def test_stopped_node_never_breaks_the_page(tmp_path: Path, context: BrowserContext, host: HostSite) -> None:
    page, probe = await new_page(context)
    async with run_node(node_settings(tmp_path / "node", cors_origins=(host.url,))) as running:
        await page.goto(host.page(script_url(running)))
    # The node is gone; the page already has the script.
    for without_beacon in (False, True):
        if without_beacon:
            await page.evaluate("delete Navigator.prototype.sendBeacon;")
        async with page.expect_event("requestfailed", timeout=PAGE_TIMEOUT_MS):
            assert await page.evaluate(f"(function () {{ {AFTER_CALL} return window.pageGoesOn; }})()") is True
    await asyncio.sleep(QUIET_SECONDS)
    assert probe.page_errors == []
    assert [m for m in probe.console_errors if not NETWORK_ERROR.search(m)] == []


# Each signal is configurable so the test can lift it afterwards as a control.
NAVIGATOR = "Navigator.prototype"
OPT_OUTS = {
    "gpc": (NAVIGATOR, "globalPrivacyControl", "true"),
    "dnt": (NAVIGATOR, "doNotTrack", "'1'"),
    "window-dnt": ("window", "doNotTrack", "'1'"),
    "ms-dnt": (NAVIGATOR, "msDoNotTrack", "'1'"),
}


def define(target: str, name: str, value: str) -> str:
    return f"Object.defineProperty({target}, '{name}', {{get: () => {value}, configurable: true}});"


@pytest.mark.browser
@pytest.mark.parametrize(("target", "name", "value"), OPT_OUTS.values(), ids=OPT_OUTS.keys())
async def test_privacy_signals_send_nothing(
    target: str, name: str, value: str, context: BrowserContext, host: HostSite, cors_node: RunningNode
) -> None:
    await context.add_init_script(define(target, name, value))
    page, probe = await new_page(context)
    await page.goto(host.page(script_url(cors_node), after="window.atLoad = " + TRACK_CALL))

    assert await page.evaluate("window.atLoad") is False
    assert await page.evaluate(TRACK_CALL) is False
    assert await page.evaluate('liberation.trackAction("start", {})') is False
    assert await page.evaluate("sessionStorage.length") == 0  # not even a session id

    # Control: once the signal is lifted the same page sends, so the probe sees
    # posts and the opted-out calls (made earlier) would have shown up first.
    await page.evaluate(define(target, name, "null"))
    assert await page.evaluate('liberation.trackAction("complete", {})') is True
    await wait_rows(cors_node.node.store, 1)
    [post] = probe.event_posts()
    assert json.loads(post.post_data or "")["action"] == "complete"


@pytest.mark.browser
async def test_no_cookies_no_local_storage(context: BrowserContext, host: HostSite, cors_node: RunningNode) -> None:
    page, _ = await new_page(context)
    await page.goto(host.page(script_url(cors_node)))
    await page.evaluate(TRACK_CALL)
    await wait_rows(cors_node.node.store, 1)

    assert await context.cookies() == []
    assert await page.evaluate("document.cookie") == ""
    assert await page.evaluate("localStorage.length") == 0
    storage = await page.evaluate("Object.assign({}, sessionStorage)")
    assert list(storage) == ["liberation_sid"]
    assert SESSION_ID.match(storage["liberation_sid"])


@pytest.mark.browser
async def test_page_talks_to_loopback_only(context: BrowserContext, host: HostSite, cors_node: RunningNode) -> None:
    page, probe = await new_page(context)
    await page.goto(host.page(script_url(cors_node)))
    await page.evaluate(TRACK_CALL)
    await wait_rows(cors_node.node.store, 1)

    hosts = {urlsplit(r.url).hostname for r in probe.requests}
    assert hosts == {"127.0.0.1"}
    assert len(probe.requests) == 3  # the page, the script, the event


async def test_script_is_small_on_the_wire_and_reads_no_fingerprint(cors_node: RunningNode) -> None:
    """What the node sends, measured as sent: gzipped bytes and their Content-Length (was 2,272 bytes plain)."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=WAIT_SECONDS), auto_decompress=False
    ) as session:
        async with session.get(script_url(cors_node), headers={"Accept-Encoding": "gzip, deflate, br"}) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/javascript"
            assert resp.headers["Content-Encoding"] == "gzip"
            assert "Accept-Encoding" in resp.headers["Vary"]
            wire = await resp.read()
            length = int(resp.headers["Content-Length"])
        async with session.get(script_url(cors_node), headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            plain = await resp.read()
        async with session.get(script_url(cors_node), headers={"If-None-Match": resp.headers["ETag"]}) as resp:
            assert resp.status == 304
    assert length == len(wire) < SIZE_LIMIT, f"{length} bytes on the wire"
    assert gzip.decompress(wire) == plain
    # Compacted, not just compressed: no comment, no indentation left.
    assert len(plain) < len(resources.files("node").joinpath("static/liberation.js").read_bytes())
    code = plain.decode()
    assert "/*" not in code and "\n  " not in code
    for api in FORBIDDEN_APIS:
        assert api not in code, f"the client script must not touch {api}"
