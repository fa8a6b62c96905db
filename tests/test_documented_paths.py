"""Verify by doing it: README and docs/operations.md followed literally, as a new operator would.

A hub and two nodes start from the documented example TOMLs (deploy/*.example.toml,
with their data dirs, ports and hub URL filled in), nodes are enrolled while the
hub runs (one through the documented admin API, one with README's `hub enroll`),
a tool's page on another origin sends with the README's snippet in Chromium, a
Plausible-shaped and an Umami-shaped request arrive, history is imported, the
budget is read with the node running and stopped, and the data is seen at the hub.
Every process's output and every command's output is searched for a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.browser import launch_chromium
from tests.servers import Process, admin_token

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
UMAMI_WEBSITE = "4fb7fa4c-5b46-438d-94b3-3a8fb9bc2e8b"
UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Documented/1.0"}
OUTPUTS: list[tuple[str, str]] = []


def liberation(*args: str, env: dict[str, str] | None = None) -> str:
    """A documented command, as typed; its output is kept for the traceback check."""
    import os

    result = subprocess.run([sys.executable, "-m", "liberation", *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **(env or {})})
    OUTPUTS.append((" ".join(args), result.stdout + result.stderr))
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def readme_snippet() -> str:
    """The README's HTML snippet for liberation.js, exactly as written there."""
    blocks = re.findall(r"```html\n(.*?)```", README, re.S)
    snippet = next(b for b in blocks if "liberation.js" in b)
    assert "liberation.track(" in snippet
    return snippet


def documented_toml(example: str, **values: str) -> str:
    """The example settings file with some settings given a value (as an operator edits it)."""
    text = (ROOT / "deploy" / example).read_text()
    for key, value in values.items():
        pattern = re.compile(rf"^#? ?{re.escape(key)} = .*$", re.M)
        assert pattern.search(text), f"{key} is not in {example}"
        text = pattern.sub(f"{key} = {value}", text, count=1)
    return text


def history(days: int) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return "".join(
        json.dumps({"app": "runway-calculator", "action": action, "timestamp": (today - timedelta(days=d, hours=-9)).isoformat(),
                    "session_id": f"import-{d}-{s:04d}", "geo_hint": "DE", "attributes": {"runway_months": 7}}) + "\n"
        for d in range(2, days + 2) for s in range(80) for action in ("start", "calculate")
    )


async def get_json(session: aiohttp.ClientSession, url: str) -> object:
    async with session.get(url) as resp:
        assert resp.status == 200, url
        return await resp.json()


async def test_readme_and_operations_work_as_written(tmp_path: Path) -> None:
    token = admin_token()
    processes: list[Process] = []
    # The tool's site, on its own origin, with the README's snippet; the node's URL is known only
    # once it runs, so the page is filled in then (the snippet's text is kept as written).
    page: dict[str, str] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=page["html"], content_type="text/html")

    site_app = web.Application()
    site_app.router.add_get("/tool.html", serve)
    site_runner = web.AppRunner(site_app, access_log=None)
    await site_runner.setup()
    await web.TCPSite(site_runner, "127.0.0.1", 0).start()
    site = f"http://127.0.0.1:{site_runner.addresses[0][1]}"
    try:
        # -- the hub: documented TOML, admin token from the environment (docs/operations.md) --
        hub_toml = tmp_path / "hub.toml"
        hub_toml.write_text(documented_toml("hub.example.toml", data_dir=json.dumps(str(tmp_path / "hub")), port="0"))
        hub = Process(["hub", "serve", "--config", str(hub_toml)], tmp_path / "hub.log",
                      env={"LIBERATION_HUB_ADMIN_TOKEN": token})
        processes.append(hub)

        # -- two nodes from the documented TOML, push.hub_url set, the tool's site added (README) --
        nodes = {}
        for name in ("node-a", "node-b"):
            config = tmp_path / f"{name}.toml"
            config.write_text(documented_toml("node.example.toml", data_dir=json.dumps(str(tmp_path / name)), port="0",
                                              display_name=json.dumps(f"{name} collective"),
                                              hub_url=json.dumps(hub.url)))
            nodes[name] = config
        assert "liberation node sites add https://tools.example.org --config node.toml" in README
        liberation("node", "sites", "add", site, "--config", str(nodes["node-a"]))
        liberation("node", "sites", "add", "https://tools.example.org", "--app", "runway-calculator",
                   "--plausible-domain", "tools.example.org", "--event", "pageview=start", "--config", str(nodes["node-a"]))
        liberation("node", "sites", "add", "https://tools.example.org", "--app", "runway-calculator",
                   "--umami-website", UMAMI_WEBSITE, "--event", "pageview=start", "--config", str(nodes["node-a"]))

        # -- enrollment with the hub running: `node key`, then the admin API as docs/operations.md shows,
        # and README's `hub enroll` with the node's key file (through the hub's admin socket) --
        assert "/v1/admin/nodes" in OPERATIONS and "Authorization: Bearer $LIBERATION_HUB_ADMIN_TOKEN" in OPERATIONS
        public = re.search(r"public key: (\S+)", liberation("node", "key", "--config", str(nodes["node-a"])))
        assert public
        async with aiohttp.ClientSession() as session:
            async with session.post(hub.url + "/v1/admin/nodes", json={"name": "node-a", "public_key": public.group(1)},
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 201, await resp.text()
        assert "liberation hub enroll --name berlin --key data/node/keys/signing.pub" in README
        liberation("node", "key", "--config", str(nodes["node-b"]))  # makes the key, and keys/signing.pub
        enrolled = liberation("hub", "enroll", "--name", "node-b", "--key", str(tmp_path / "node-b" / "keys" / "signing.pub"),
                              "--config", str(hub_toml))
        assert enrolled.startswith("enrolled node-b (node): key id ")

        # -- node-b: history imported before it first starts (docs/operations.md, Commands) --
        (tmp_path / "history.jsonl").write_text(history(3))
        imported = liberation("node", "import", str(tmp_path / "history.jsonl"), "--config", str(nodes["node-b"]))
        assert "480 events accepted" in imported

        node_a = Process(["node", "serve", "--config", str(nodes["node-a"])], tmp_path / "node-a.log")
        processes.append(node_a)
        node_b = Process(["node", "serve", "--config", str(nodes["node-b"])], tmp_path / "node-b.log")
        processes.append(node_b)
        page["html"] = ("<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'>"
                        + readme_snippet().replace("https://node.example.org", node_a.url)
                        + "</head><body>a tool</body></html>")

        async with aiohttp.ClientSession() as session:
            # -- the README snippet, from another origin, in Chromium --
            async with launch_chromium() as browser:
                context = await browser.new_context()
                tab = await context.new_page()
                errors: list[str] = []
                tab.on("pageerror", lambda exc: errors.append(str(exc)))
                tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                async with tab.expect_response(lambda r: r.url.endswith("/v1/events")) as sent:
                    await tab.goto(site + "/tool.html")
                assert (await sent.value).status == 202
                assert errors == []
                await context.close()

            # -- a Plausible-shaped and an Umami-shaped request (README, docs/operations.md) --
            plausible = {"n": "pageview", "u": "https://tools.example.org/rent", "d": "tools.example.org"}
            async with session.post(node_a.url + "/api/event", data=json.dumps(plausible),
                                    headers={**UA, "Content-Type": "text/plain", "Origin": "https://tools.example.org"}) as resp:
                assert resp.status == 202 and "x-plausible-dropped" not in resp.headers
            for fixture in ("umami_pageview.json", "umami_custom_event.json"):
                body = (ROOT / "tests" / "fixtures" / fixture).read_bytes()
                async with session.post(
                    node_a.url + "/api/send",
                    data=body,
                    headers={**UA, "Content-Type": "application/json", "Origin": "https://tools.example.org"},
                ) as resp:
                    assert (await resp.json())["accepted"] == 1

            # -- "Check your setup": today's events, as docs/operations.md says --
            setup = await get_json(session, node_a.metrics_url + "/setup.json")
            assert isinstance(setup, dict)
            assert setup["today"]["accepted"] == 4 and setup["today"]["refused"] == {}
            assert {(e["app"], e["action"]) for e in setup["last_events"]} == {
                ("runway-calculator", "calculate"), ("runway-calculator", "start")}

            # -- node-b exported its closed windows at start (the 3 imported days, and yesterday once it
            # closed an hour after midnight) and pushed them: the data at the hub --
            expected = 4 if datetime.now(UTC).hour >= 1 else 3
            for _ in range(300):
                windows = await get_json(session, hub.url + "/v1/windows")
                assert isinstance(windows, dict)
                if len(windows["windows"]) >= expected:
                    break
                await asyncio.sleep(0.1)
            assert [w["nodes"] for w in windows["windows"]] == [1] * expected
            headline = await get_json(session, hub.url + "/v1/views/headline")
            assert isinstance(headline, dict) and headline["windows"] == expected
            async with session.get(hub.url + "/v1/cells?metric=usage_sessions") as resp:
                cells = await resp.text()
            assert cells.startswith("window,metric,app_action,value,sd,nodes\n")
            # One community's 80 sessions a day stay within one window's noise: folded into `other`, not shown.
            rows = cells.splitlines()[1:]
            assert len(rows) >= expected and all(",usage_sessions," in r for r in rows)

        # -- the budget, read with the node running and stopped (README, docs/operations.md): the same --
        running_budget = liberation("node", "budget", "--config", str(nodes["node-b"]))
        assert node_b.stop() == 0
        processes.remove(node_b)
        budget = liberation("node", "budget", "--config", str(nodes["node-b"]))
        assert budget.startswith("epsilon cap per UTC day: 1") and budget.count("epsilon 1.0000") == expected
        assert budget == running_budget
    finally:
        for process in processes:
            process.stop()
        await site_runner.cleanup()
    logs = [(p.log_path.name, p.log_path.read_text(errors="replace")) for p in (hub, node_a, node_b)]
    for where, text in OUTPUTS + logs:
        assert "Traceback" not in text, f"a traceback in {where}:\n{text[-3000:]}"
