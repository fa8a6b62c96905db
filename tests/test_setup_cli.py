"""`liberation node sites` and `liberation catalog check`, run as a user runs them: a real subprocess."""

from __future__ import annotations

import shutil
import stat
import tomllib
from pathlib import Path

from node.settings import load_node_settings
from protocol.catalog import load_catalog
from tests.test_cli import run

DEPLOY = Path(__file__).parent.parent / "deploy"
SITE = "https://tools.example.org"


def test_sites_add_writes_origin_and_mappings_keeping_the_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    shutil.copy(DEPLOY / "node.example.toml", config)
    before = config.read_text()
    out = run("node", "sites", "add", SITE + "/", "--app", "runway-calculator", "--plausible-domain", "tools.example.org",
              "--umami-website", "4fb7fa4c-5b46-438d-94b3-3a8fb9bc2e8b", "--event", "pageview=start",
              "--config", str(config)).stdout
    assert "restart the node" in out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    after = config.read_text()
    # Every comment line of the documented file is still there.
    assert [line for line in before.splitlines() if line.startswith("#")] == [
        line for line in after.splitlines() if line.startswith("#")
    ]
    settings = load_node_settings(config)
    assert settings.cors_origins == (SITE,)  # the trailing slash is not part of an origin
    assert settings.plausible.domains == {"tools.example.org": "runway-calculator"}
    assert settings.plausible.events == {"pageview": "start"}
    assert settings.umami.websites == {"4fb7fa4c-5b46-438d-94b3-3a8fb9bc2e8b": "runway-calculator"}
    assert settings.umami.events == {"pageview": "start"}
    # Again: nothing to change, the file stays as it is.
    assert "nothing changed" in run("node", "sites", "add", SITE, "--config", str(config)).stdout
    assert config.read_text() == after
    listed = run("node", "sites", "list", "--config", str(config)).stdout
    assert f"origin   {SITE}" in listed and "umami website" in listed


def test_sites_add_creates_a_missing_file_and_keeps_other_settings(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    run("node", "sites", "add", "http://127.0.0.1:8080", "--config", str(config))
    run("node", "sites", "add", "https://b.example:443", "--config", str(config))
    data = tomllib.loads(config.read_text())
    assert data == {"cors_origins": ["http://127.0.0.1:8080", "https://b.example"]}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    config.write_text('port = 9999\n\n[push]\nhub_url = "https://hub.example.org"\n')
    run("node", "sites", "add", SITE, "--app", "runway-calculator", "--plausible-domain", "tools.example.org",
        "--config", str(config))
    data = tomllib.loads(config.read_text())
    assert data["port"] == 9999 and data["push"] == {"hub_url": "https://hub.example.org"}
    assert data["cors_origins"] == [SITE] and data["plausible"]["domains"] == {"tools.example.org": "runway-calculator"}


def test_sites_add_refuses_what_the_node_would_not_take(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("# mine\nport = 8701\n")
    for args, words in (
        (["https://tools.example.org/page"], "not an origin"),
        (["tools.example.org"], "not an origin"),
        ([SITE, "--plausible-domain", "x.org"], "--app is required"),
        ([SITE, "--app", "no-such-tool", "--plausible-domain", "x.org"], "not in the node's catalog"),
        ([SITE, "--app", "runway-calculator", "--umami-website", "w", "--event", "pageview=nope"], "no action 'nope'"),
    ):
        result = run("node", "sites", "add", *args, "--config", str(config), check=False)
        assert result.returncode == 1, args
        assert words in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert config.read_text() == "# mine\nport = 8701\n"
    result = run("node", "sites", "add", SITE, check=False, env={"LIBERATION_NODE_CONFIG": ""})
    assert result.returncode == 1 and "--config" in result.stderr


def test_catalog_check_prints_epsilon_scales_thresholds_and_hash(tmp_path: Path) -> None:
    default = load_catalog()
    out = run("catalog", "check", str(DEPLOY.parent / "protocol" / "data" / "default_catalog.toml")).stdout
    assert default.hash in out and "built-in default" in out
    for metric in default.metrics:
        line = next(line for line in out.splitlines() if line.split() and line.split()[0] == metric.name)
        cells, kc, epsilon, scale = line.split()[2:6]
        assert (int(cells), int(kc)) == (default.domain_size(metric), metric.sensitivity)
        assert abs(float(epsilon) - default.epsilon(metric)) < 1e-4 and abs(float(scale) - default.scale(metric)) < 0.01
    # A catalog of one's own: valid, another hash, and how hubs take it.
    mine = tmp_path / "mine.toml"
    text = (DEPLOY.parent / "protocol" / "data" / "default_catalog.toml").read_text()
    mine.write_text(text.replace('name = "liberation-default"', 'name = "my-tools"'))
    out = run("catalog", "check", str(mine)).stdout
    assert load_catalog(mine).hash in out and "catalogs = [...]" in out
    # An invalid one: one line naming the fault, exit 1.
    mine.write_text(text.replace("weight = 0.25", "epsilon_share = 0.06", 1))
    result = run("catalog", "check", str(mine), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "replaced by `weight`" in result.stderr and "Traceback" not in result.stderr
