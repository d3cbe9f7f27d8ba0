"""Configuration: defaults, the example file, and errors that name the key and the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from watchgw.config import ConfigError, config_from_mapping, load_config

ROOT = Path(__file__).resolve().parent.parent


EXAMPLE = ROOT / "config" / "watchgw.toml"


def example_as_systemd_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example file with its token file a systemd credential: ``${CREDENTIALS_DIRECTORY}``
    names a directory that holds one (what ``LoadCredential=`` sets up for the unit)."""
    (tmp_path / "token").write_text("t0ken\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    return EXAMPLE


def test_example_config_loads_with_documented_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(example_as_systemd_runs_it(tmp_path, monkeypatch))
    assert config.upstream.token_file == str(tmp_path / "token")
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


PATH_KEYS = ["ca_file", "client_cert", "client_key", "token_file"]


def write_config(tmp_path: Path, key: str, value: Path) -> Path:
    upstream = {key: str(value)}
    if key in ("client_cert", "client_key"):
        pem = tmp_path / "pair.pem"
        pem.write_text("")
        upstream = {"client_cert": str(pem), "client_key": str(pem), key: str(value)}
    path = tmp_path / "gw.toml"
    lines = ['url = "https://x"', *(f'{k} = "{v}"' for k, v in upstream.items())]
    path.write_text("[upstream]\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("key", PATH_KEYS)
def test_missing_upstream_files_are_named(tmp_path: Path, key: str) -> None:
    missing = tmp_path / "nowhere" / "file.pem"
    path = write_config(tmp_path, key, missing)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert f"upstream.{key}" in text
    assert str(missing) in text
    assert "not found" in text
    assert str(path) in text


@pytest.mark.parametrize("key", PATH_KEYS)
def test_unreadable_upstream_files_are_named(tmp_path: Path, key: str) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, key, directory))
    assert f"upstream.{key}" in str(caught.value)
    assert str(directory) in str(caught.value)
    assert "cannot be read" in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_file_without_read_permission_is_named(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("t")
    secret.chmod(0)
    with pytest.raises(ConfigError, match=r"upstream\.token_file"):
        load_config(write_config(tmp_path, "token_file", secret))


def test_files_are_checked_when_loading_a_file_not_when_building_in_code(tmp_path: Path) -> None:
    # Tests and the demo build configs in code, pointing at files they create later (or never use).
    config = config_from_mapping({"upstream": {"url": "https://x", "ca_file": str(tmp_path / "later.pem")}})
    assert config.upstream.ca_file == str(tmp_path / "later.pem")
    readable = tmp_path / "ca.pem"
    readable.write_text("")
    assert load_config(write_config(tmp_path, "ca_file", readable)).upstream.ca_file == str(readable)


def test_token_from_environment() -> None:
    config = config_from_mapping({"upstream": {"url": "http://x"}}, env={"WATCHGW_UPSTREAM_TOKEN": "s3cr3t"})
    assert config.upstream.token == "s3cr3t"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchgw", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_example_config_outside_systemd_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as refused:
        load_config(EXAMPLE)
    assert "upstream.token_file ${CREDENTIALS_DIRECTORY}/token" in str(refused.value)
    assert "LoadCredential=" in str(refused.value)


def test_check_config_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = check_config(example_as_systemd_runs_it(tmp_path, monkeypatch))
    assert good.returncode == 0, good.stderr
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[upstream]\nurl = "http://x"\n[server]\nprot = 1\n')
    bad = check_config(bad_file)
    assert bad.returncode == 1
    assert "server.prot" in bad.stderr
    assert str(bad_file) in bad.stderr
    missing_ca = tmp_path / "missing-ca.pem"
    no_ca = check_config(write_config(tmp_path, "ca_file", missing_ca))
    assert no_ca.returncode == 1
    assert f"upstream.ca_file {missing_ca}" in no_ca.stderr


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
