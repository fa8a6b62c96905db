"""Deploy files stay valid: the compose file, the systemd units, the Dockerfile's non-root user."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parent.parent / "deploy"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [need("docker-compose")]


def test_compose_file_validates() -> None:
    command = [*compose_command(), "-f", str(DEPLOY / "compose.yaml"), "config"]
    env = {**os.environ, "LIBERATION_HUB_ADMIN_TOKEN": secrets.token_urlsafe(32)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    for service in ("hub:", "node-a:", "node-b:"):
        assert service in result.stdout
    assert "healthcheck" in result.stdout
    # Without the admin token compose stops with a message, instead of starting on a public default.
    del env["LIBERATION_HUB_ADMIN_TOKEN"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and "LIBERATION_HUB_ADMIN_TOKEN" in result.stderr


def test_compose_requires_the_admin_token() -> None:
    """No fallback token in the compose file: every use of the variable is `${...:?message}` (fail fast)."""
    text = (DEPLOY / "compose.yaml").read_text()
    uses = re.findall(r"\$\{LIBERATION_HUB_ADMIN_TOKEN([^}]*)\}", text)
    assert uses, "the hub's admin token is not taken from the environment"
    assert all(use.startswith(":?") for use in uses), uses
    assert "change-me" not in text.lower()


@pytest.mark.parametrize("unit", ["liberation-node.service", "liberation-hub.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    # The units name /opt/liberation/bin/liberation; verify them against this install's command.
    command = Path(sys.executable).parent / "liberation"
    assert command.exists(), "the liberation console script is not installed next to this Python"
    text = (DEPLOY / "systemd" / unit).read_text()
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "LimitNOFILE=65536"):
        assert setting in text, setting
    local = tmp_path / unit
    local.write_text(text.replace("/opt/liberation/bin/liberation", str(command)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_dockerfile_runs_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert "ADD http" not in text and "curl" not in text  # nothing fetched outside the package index


def test_dockerfile_pins_its_base_and_checks_health() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert image and re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", image.group(1)), "base image not pinned by digest"
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)
    health = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "/healthz" in text.split("HEALTHCHECK", 1)[1].split("ENTRYPOINT")[0]


def test_dockerfile_copies_every_package() -> None:
    """The image once lacked `runtime/`: every package the distribution ships is copied in."""
    text = (DEPLOY / "Dockerfile").read_text()
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    packages = re.findall(r'"(\w+)\*"', pyproject.split("[tool.setuptools.packages.find]", 1)[1].split("\n\n", 1)[0])
    assert packages
    for package in packages:
        assert f"COPY {package} ./{package}" in text, package


def test_volume_ownership_is_documented() -> None:
    """The service runs as uid 10001 with /data 0700: a bind-mounted directory must be made for it."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert "useradd --system --uid 10001" in text and "chmod 0700 /data" in text
    operations = (DEPLOY.parent / "docs" / "operations.md").read_text()
    assert "10001" in operations and "install -d -m 0700 -o 10001 -g 10001" in operations
