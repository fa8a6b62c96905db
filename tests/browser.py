"""Headless Chromium for browser tests: find it, launch it offline, skip (or, in CI, fail) without it.

The machine has no network and Playwright cannot download browsers, so tests
drive the system Chromium (Debian's `chromium` package) through Playwright's
async API: the node under test runs in-process on the same event loop, which
the sync API would block.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser

SYSTEM_CHROMIUM = Path("/usr/bin/chromium")

# Offline and quiet: nothing but the pages under test may touch the network.
# Playwright gives every launch a fresh temporary profile (--user-data-dir)
# and deletes it on close; it refuses that flag in `args`.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
)

LAUNCH_TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> None:
    """CI must never skip a browser test silently: there a missing browser is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    """Path of the system Chromium and a usable playwright package, or skip/fail the test."""
    if importlib.util.find_spec("playwright") is None:
        _unavailable("the `playwright` package is not installed (pip install playwright)")
    if SYSTEM_CHROMIUM.exists():
        return str(SYSTEM_CHROMIUM)
    found = shutil.which("chromium")
    if found is None:
        _unavailable("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)")
    return str(found)


@asynccontextmanager
async def launch_chromium(**options: Any) -> AsyncIterator[Browser]:
    """A headless system Chromium with a fresh profile, closed (with its driver) on exit."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_ARGS),
            timeout=LAUNCH_TIMEOUT_MS,
            **options,
        )
        try:
            yield browser
        finally:
            await browser.close()
