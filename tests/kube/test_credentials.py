"""Upstream credentials: token file rotation (seen by a real server), override token, TLS."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from watchgw.config import UpstreamConfig
from watchgw.kube.client import KubeClient
from watchgw.kube.credentials import Credentials, build_ssl_context
from watchgw.kube.errors import CredentialError
from watchgw.kube.types import WatchTarget

TARGET = WatchTarget("api/v1/pods")


@pytest.fixture
async def auth_server(aiohttp_server: AiohttpServer) -> tuple[str, list[str | None]]:
    seen: list[str | None] = []

    async def pods(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response(
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}
        )

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/"), seen


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # what kubelet does (new inode), never a partial file


async def test_rotated_token_file_reaches_the_server(
    tmp_path: Path, auth_server: tuple[str, list[str | None]]
) -> None:
    url, seen = auth_server
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    async with KubeClient(UpstreamConfig(url=url, token_file=str(token_file))) as client:
        with structlog.testing.capture_logs() as logs:
            await client.list_all(TARGET)
            write_atomically(token_file, "second-token")
            await client.list_all(TARGET)
            token_file.write_text("third-token-longer")  # in place: size and mtime change
            await client.list_all(TARGET)
            await client.list_all(TARGET, token="subscriber-token")
    assert seen == [
        "Bearer first-token",
        "Bearer second-token",
        "Bearer third-token-longer",
        "Bearer subscriber-token",
    ]
    assert any(entry["event"] == "upstream.token_reloaded" for entry in logs)
    for secret in ("first-token", "second-token", "third-token-longer", "subscriber-token"):
        assert secret not in repr(logs)


def test_file_read_only_when_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t1")
    creds = Credentials(UpstreamConfig(url="http://x", token_file=str(token_file)))
    opened: list[str] = []
    real_open = open

    def spy_open(path: str, *args: object, **kwargs: object) -> object:
        opened.append(path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy_open)
    for _ in range(5):
        assert creds.headers() == {"Authorization": "Bearer t1"}
    assert opened == []
    creds.force_reload()
    assert opened == [str(token_file)]


def test_force_reload_sees_same_stat_change(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("aaaa")
    st = token_file.stat()
    creds = Credentials(UpstreamConfig(url="http://x", token_file=str(token_file)))
    token_file.write_text("bbbb")  # same size; force the same mtime: stat cannot tell
    os.utime(token_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert creds.token() == "aaaa"
    creds.force_reload()
    assert creds.token() == "bbbb"


def test_vanished_or_empty_file_keeps_last_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("keep-me")
    creds = Credentials(UpstreamConfig(url="http://x", token_file=str(token_file)))
    with structlog.testing.capture_logs() as logs:
        token_file.unlink()
        assert creds.token() == "keep-me"
        assert creds.token() == "keep-me"
        token_file.write_text("   \n")
        assert creds.token() == "keep-me"
        token_file.write_text("new-one")
        assert creds.token() == "new-one"
    events = [entry["event"] for entry in logs]
    assert events.count("upstream.token_file_unreadable") == 1  # once per failure, not per request
    assert "keep-me" not in repr(logs)
    assert "new-one" not in repr(logs)


def test_static_token_and_override() -> None:
    creds = Credentials(UpstreamConfig(url="http://x", token="static"))
    assert creds.headers() == {"Authorization": "Bearer static"}
    assert creds.headers("mine") == {"Authorization": "Bearer mine"}
    assert Credentials(UpstreamConfig(url="http://x")).headers() == {}
    assert "static" not in repr(creds)


def test_tls_settings(tmp_path: Path) -> None:
    insecure = build_ssl_context(UpstreamConfig(url="https://x", insecure_skip_tls_verify=True))
    assert insecure.verify_mode == ssl.CERT_NONE
    assert not insecure.check_hostname
    secure = build_ssl_context(UpstreamConfig(url="https://x"))
    assert secure.verify_mode == ssl.CERT_REQUIRED
    missing = tmp_path / "missing.pem"
    with pytest.raises(CredentialError) as caught:
        build_ssl_context(UpstreamConfig(url="https://x", ca_file=str(missing)))
    assert caught.value.reason == "TLSConfigError"
    assert f"upstream.ca_file {missing}" in caught.value.message
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    not_a_cert = tmp_path / "client.crt"
    not_a_cert.write_text("not a certificate")
    with pytest.raises(CredentialError) as caught:
        build_ssl_context(
            UpstreamConfig(url="https://x", client_cert=str(not_a_cert), client_key=str(not_a_cert))
        )
    assert "upstream.client_cert" in caught.value.message
    assert str(not_a_cert) in caught.value.message
