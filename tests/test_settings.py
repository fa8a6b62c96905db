"""Settings: every field documented in the example file, TOML and environment both work, typos fail."""

from __future__ import annotations

import base64
import secrets
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from federation.settings import HubSettings, load_hub_settings
from keeper.settings import KeeperSettings
from node.settings import NodeSettings, load_node_settings
from runtime.config import ConfigError

DEPLOY = Path(__file__).parent.parent / "deploy"


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _fields(annotation, f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


@pytest.mark.parametrize(
    ("model", "example"),
    [(NodeSettings, "node.example.toml"), (HubSettings, "hub.example.toml"), (KeeperSettings, "keeper.example.toml")],
)
def test_every_setting_is_documented(model: type[BaseModel], example: str) -> None:
    text = (DEPLOY / example).read_text()
    documented = set()
    section = ""
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.strip("[]") + "."
        elif "=" in stripped and not stripped.startswith(("Any", "Unset", "0 ")):
            key = stripped.split("=")[0].strip()
            if key.replace("_", "").isalnum():
                documented.add(section + key)
    missing = _fields(model) - documented
    assert not missing, f"settings not documented in deploy/{example}: {sorted(missing)}"
    # And the example itself is a valid settings file.
    model.model_validate(tomllib.loads(text))


def test_toml_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('port = 9000\nlog_level = "DEBUG"\n[rate_limit]\nburst = 5\n')
    monkeypatch.setenv("LIBERATION_NODE_PORT", "9100")
    monkeypatch.setenv("LIBERATION_NODE_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND", "2.5")
    settings = load_node_settings(config, host="127.0.0.2")
    assert settings.port == 9100
    assert settings.log_level == "DEBUG"
    assert settings.cors_origins == ("https://a.example",)
    assert settings.rate_limit.burst == 5 and settings.rate_limit.requests_per_second == 2.5
    assert settings.host == "127.0.0.2"


def test_a_typo_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("prot = 9000\n")
    with pytest.raises(ConfigError, match="prot"):
        load_node_settings(config)
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_node_settings(None, trusted_proxies=["not-a-network"])


def test_the_removed_ingest_workers_setting_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("ingest_workers = 2\n")
    with pytest.raises(ConfigError, match="`ingest_workers` was removed: a node is one process"):
        load_node_settings(config)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("x", id="one-character"),
        pytest.param(secrets.token_urlsafe(24), id="24-random-bytes"),
        pytest.param("change-me-to-a-long-random-string", id="compose-placeholder"),
        pytest.param("CHANGE-ME-" + secrets.token_urlsafe(32), id="placeholder-prefix"),
        pytest.param("ab" * 40, id="no-variety"),
        pytest.param("é" + secrets.token_urlsafe(32), id="not-ascii"),
        pytest.param(secrets.token_urlsafe(16) + " " + secrets.token_urlsafe(16), id="a-space"),
        pytest.param("", id="empty"),
    ],
)
def test_a_weak_admin_token_is_refused_with_a_hint(token: str) -> None:
    """The hub's admin API shares its port with public intake: a guessable token never starts."""
    with pytest.raises(ConfigError, match="admin_token") as caught:
        load_hub_settings(None, admin_token=token)
    message = str(caught.value)
    assert "secrets.token_urlsafe(32)" in message
    if len(token) > 2:
        assert token not in message  # the refused secret is never echoed


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(secrets.token_urlsafe(32), id="token_urlsafe-32"),
        pytest.param(base64.b64encode(secrets.token_bytes(32)).decode(), id="openssl-rand-base64-32"),
        pytest.param(secrets.token_hex(32), id="openssl-rand-hex-32"),
    ],
)
def test_a_strong_admin_token_is_accepted(token: str) -> None:
    settings = load_hub_settings(None, admin_token=token)
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == token


def test_a_hub_url_without_its_scheme_is_refused_with_the_fix() -> None:
    """It used to start and retry `127.0.0.1:8700/v1/snapshots` forever."""
    with pytest.raises(ConfigError, match=r"push.hub_url: a URL starts with its scheme: https://127.0.0.1:8700"):
        load_node_settings(None, environ={"LIBERATION_NODE_PUSH__HUB_URL": "127.0.0.1:8700"})
    with pytest.raises(ConfigError, match="push.hub_url"):
        load_node_settings(None, environ={"LIBERATION_NODE_PUSH__HUB_URL": "ftp://hub.example.org"})
    url = load_node_settings(None, environ={"LIBERATION_NODE_PUSH__HUB_URL": "https://hub.example.org/"}).push.hub_url
    assert url == "https://hub.example.org"


@pytest.mark.parametrize("word", ["null", "None", "", "false"])
def test_an_admin_token_of_null_is_refused_not_taken_for_off(word: str) -> None:
    with pytest.raises(ConfigError, match="admin_token: .* not a token; to turn the admin API off"):
        load_hub_settings(None, environ={"LIBERATION_HUB_ADMIN_TOKEN": word})


def test_off_turns_an_optional_setting_off() -> None:
    hub = load_hub_settings(None, environ={"LIBERATION_HUB_ADMIN_TOKEN": "off", "LIBERATION_HUB_METRICS_PORT": "off"})
    assert hub.admin_token is None and hub.metrics_port is None
    node = load_node_settings(None, environ={"LIBERATION_NODE_METRICS_PORT": "null", "LIBERATION_NODE_RETENTION_DAYS": "off"})
    assert node.metrics_port is None and node.retention_days is None


def test_numeric_looking_strings_stay_strings() -> None:
    """The old loader parsed every value as JSON first: an all-digit token became a number and failed."""
    digits = list("0123456789" * 6 + "0123")  # every digit present: a strong token, whatever the shuffle
    secrets.SystemRandom().shuffle(digits)
    token = "".join(digits)
    settings = load_hub_settings(None, environ={"LIBERATION_HUB_ADMIN_TOKEN": token})
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == token
    node = load_node_settings(None, environ={"LIBERATION_NODE_PLAUSIBLE__DOMAINS": '{"123.example": "456"}'})
    assert node.plausible.domains == {"123.example": "456"}


def test_lists_from_the_environment_as_json_or_commas() -> None:
    given = {"LIBERATION_NODE_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1/32"}
    assert load_node_settings(None, environ=given).trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32")
    given = {"LIBERATION_NODE_TRUSTED_PROXIES": '["10.0.0.0/8"]'}
    assert load_node_settings(None, environ=given).trusted_proxies == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        pytest.param("prot = 9000\n", {}, "prot: not a setting; did you mean port?", id="toml-top"),
        pytest.param('[push]\nhub_ulr = "https://h.example"\n', {}, "push.hub_ulr: not a setting; did you mean hub_url?",
                     id="toml-table"),
        pytest.param("", {"LIBERATION_NODE_PROT": "1"},
                     "LIBERATION_NODE_PROT is not a setting; did you mean LIBERATION_NODE_PORT?", id="env-top"),
        pytest.param("", {"LIBERATION_NODE_RATE_LIMIT__BRUST": "3"},
                     "did you mean LIBERATION_NODE_RATE_LIMIT__BURST?", id="env-table"),
    ],
)
def test_a_typo_names_the_closest_setting(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_node_settings(config, environ=env)
    assert message in str(caught.value)


def test_a_missing_or_broken_settings_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file .*: No such file or directory"):
        load_node_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_node_settings(broken)


def test_settings_built_in_code_never_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A demo or a test that builds settings in code gets exactly what it asked for."""
    monkeypatch.setenv("LIBERATION_NODE_PUSH__HUB_URL", "https://elsewhere.example")
    assert NodeSettings(data_dir=Path("x")).push.hub_url is None
