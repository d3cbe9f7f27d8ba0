"""Configuration: defaults, the example file, and errors that name the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watchgw.config import ConfigError, config_from_mapping, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_with_documented_values() -> None:
    config = load_config(ROOT / "config" / "watchgw.toml")
    assert config.server.port == 8080
    assert config.server.stats is False
    assert config.limits.grace_period_s == 10
    assert config.limits.client_buffer_bytes == 1048576
    assert config.upstream.url == "https://control-plane.example"


def test_defaults_need_only_the_upstream_url() -> None:
    config = config_from_mapping({"upstream": {"url": "http://127.0.0.1:6443"}})
    assert config.server.base_path == "/api/watch"
    assert config.limits.heartbeat_s == 15
    assert config.auth.mode == "none"
    assert "{project}" in config.upstream.project_prefix


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({}, "upstream.url"),
        ({"upstream": {"url": "ftp://x"}}, "upstream.url"),
        ({"upstream": {"url": "http://x", "tokn": "a"}}, "upstream.tokn"),
        ({"upstream": {"url": "http://x"}, "bogus": {}}, "[bogus]"),
        ({"upstream": {"url": "http://x"}, "server": {"port": "8080"}}, "server.port"),
        ({"upstream": {"url": "http://x"}, "server": {"port": 70000}}, "server.port"),
        ({"upstream": {"url": "http://x"}, "server": {"stats": "yes"}}, "server.stats"),
        ({"upstream": {"url": "http://x"}, "limits": {"max_clients": 0}}, "limits.max_clients"),
        ({"upstream": {"url": "http://x"}, "limits": {"grace_period_s": -1}}, "limits.grace_period_s"),
        ({"upstream": {"url": "http://x"}, "auth": {"mode": "magic"}}, "auth.mode"),
        ({"upstream": {"url": "http://x"}, "log": {"level": "loud"}}, "log.level"),
        ({"upstream": {"url": "http://x", "token": "a", "token_file": "/f"}}, "upstream.token"),
        ({"upstream": {"url": "http://x", "client_cert": "/c"}}, "upstream.client_key"),
        ({"upstream": {"url": "http://x", "project_prefix": "/p"}}, "upstream.project_prefix"),
        ({"upstream": {"url": "http://x"}, "server": {"base_path": "api/"}}, "server.base_path"),
        ({"upstream": {"url": "http://x"}, "limits": {"heartbeat_s": True}}, "limits.heartbeat_s"),
        ({"upstream": "x"}, "[upstream]"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(raw)
    assert names in str(caught.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[upstream]\nurl = "http://x"\n[limits]\nmax_channels = -3\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "limits.max_channels" in str(caught.value)
    path.write_text("[upstream\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_token_from_environment() -> None:
    config = config_from_mapping({"upstream": {"url": "http://x"}}, env={"WATCHGW_UPSTREAM_TOKEN": "s3cr3t"})
    assert config.upstream.token == "s3cr3t"


def test_check_config_command(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "watchgw", "check-config", "--config", str(ROOT / "config" / "watchgw.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[upstream]\nurl = "http://x"\n[server]\nprot = 1\n')
    bad = subprocess.run(
        [sys.executable, "-m", "watchgw", "check-config", "--config", str(bad_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "server.prot" in bad.stderr
    assert str(bad_file) in bad.stderr


def test_version_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "watchgw", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0
    assert out.stdout.startswith("watchgw ")
