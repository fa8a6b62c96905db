"""The `liberation` command as a user runs it: a real subprocess."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from protocol.catalog import load_catalog


def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liberation", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def test_help_lists_commands() -> None:
    out = run("--help").stdout
    for command in ("keys", "catalog", "demo"):
        assert command in out


def test_keys_generate_then_show(tmp_path: Path) -> None:
    out = run("keys", "generate", "--out", str(tmp_path / "k")).stdout
    key_file = tmp_path / "k" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_id = out.split("key id:")[1].split()[0]
    shown = run("keys", "show", str(tmp_path / "k")).stdout
    assert key_id in shown
    assert "-----BEGIN PUBLIC KEY-----" in shown
    assert "PRIVATE" not in shown


def test_keys_show_refuses_a_readable_key(tmp_path: Path) -> None:
    run("keys", "generate", "--out", str(tmp_path))
    os.chmod(tmp_path / "signing.key", 0o644)
    result = run("keys", "show", str(tmp_path), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("liberation: ")
    assert "Traceback" not in result.stderr


def test_catalog_hash_and_show() -> None:
    catalog = load_catalog()
    assert run("catalog", "hash").stdout.strip() == catalog.hash
    shown = run("catalog", "show").stdout
    for metric in catalog.metrics:
        assert metric.name in shown
    assert run("catalog", "show", "--json").stdout.strip().encode() == catalog.canonical_json


def test_bad_catalog_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('name = "x"\nversion = 1\n')
    result = run("catalog", "hash", "--catalog", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "invalid catalog" in result.stderr


def test_hub_serve_refuses_a_weak_admin_token(tmp_path: Path) -> None:
    """A 1-character token used to open the admin API; now the hub stops at start and says how to make one."""
    env = {"LIBERATION_HUB_DATA_DIR": str(tmp_path / "hub"), "LIBERATION_HUB_ADMIN_TOKEN": "x"}
    result = run("hub", "serve", "--port", "0", check=False, env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "admin_token" in result.stderr and "secrets.token_urlsafe(32)" in result.stderr
