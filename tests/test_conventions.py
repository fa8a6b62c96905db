"""Conventions an operator relies on: `--version`, help for every option, the version in /healthz and
metrics, one metric prefix per service, the standard process metrics, gauges to alert on."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from federation.settings import HubSettings
from liberation.cli import build_parser
from runtime.version import liberation_version
from tests.servers import node_settings, run_hub, run_node
from tests.test_cli_faults import LEAVES

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def test_version() -> None:
    version = liberation_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version)
    out = subprocess.run([sys.executable, "-m", "liberation", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == f"liberation {version}\n"


def test_every_option_of_every_command_says_what_it_takes() -> None:
    missing = [
        f"{leaf.name} {action.option_strings or action.dest}"
        for leaf in LEAVES for action in leaf.parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert not missing, missing
    top = [a for a in build_parser()._actions if "--version" in a.option_strings]
    assert top and top[0].help


def test_commands_on_a_services_data_say_they_run_while_it_runs() -> None:
    from liberation.cli import RUNS_WHILE_SERVING

    for words in ("node budget", "node import", "node export", "node adopt", "node push",
                  "hub enroll", "hub revoke", "hub nodes", "hub import"):
        leaf = next(leaf for leaf in LEAVES if leaf.name == words)
        assert RUNS_WHILE_SERVING in (leaf.parser.description or ""), words
    revoke = next(leaf for leaf in LEAVES if leaf.name == "hub revoke")
    assert "key id" in revoke.parser._actions[-1].help and "name" in revoke.parser._actions[-1].help


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


async def test_version_in_healthz_and_metrics_one_prefix_per_service(tmp_path: Path) -> None:
    day = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    async with (
        run_node(node_settings(tmp_path / "node", export_grace_seconds=0)) as node,
        run_hub(HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0)) as hub,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(node.url + "/v1/events", json={"app": "nope", "action": "x", "session_id": "s-000001",
                                                            "timestamp": day.isoformat()}) as resp:
            assert resp.status == 422  # a labelled counter's first child
        for service, prefix in ((node, "liberation_node_"), (hub, "liberation_hub_")):
            async with http.get(service.url + "/healthz") as resp:
                assert (await resp.json())["version"] == liberation_version()
            async with http.get(service.metrics_url + "/metrics") as resp:
                text = await resp.text()
            found = samples(text)
            assert found[f'{prefix}build_info{{version="{liberation_version()}"}}'] == 1
            assert found["process_cpu_seconds_total"] > 0 and found["process_resident_memory_bytes"] > 0
            assert "process_open_fds" in found and "process_start_time_seconds" in found
            names = {name.split("{")[0] for name in found}
            assert {n for n in names if not n.startswith((prefix, "process_", "python_"))} == set()
            # No `_created` series: a labelled counter's says when an event first got its label.
            assert not [n for n in names if n.endswith("_created")]
        gauges = samples(await (await http.get(node.metrics_url + "/metrics")).text())
        assert 'liberation_node_events_rejected_total{reason="undeclared-app"}' in gauges
        assert gauges["liberation_node_last_push_success_timestamp_seconds"] == 0
        before = gauges["liberation_node_last_export_timestamp_seconds"]
        node.node.export(int(day.replace(hour=0).timestamp()))  # yesterday, closed with no grace
        after = samples((await (await http.get(node.metrics_url + "/metrics")).text()))
        exported = after["liberation_node_last_export_timestamp_seconds"]
        assert before == 0 and exported == int(exported) and abs(exported - datetime.now(UTC).timestamp()) < 120
