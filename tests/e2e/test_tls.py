"""The upstream over TLS: ``ca_file`` verification and a client certificate (mutual TLS)."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.stacks import fast_upstream
from watchgw.client.client import WatchClient
from watchgw.config import Config
from watchgw.sim import Simulator, make_sim_app
from watchgw.web.app import make_app
from watchgw.web.server import running_app

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra, cwd=d)  # fmt: skip
    # Another CA that signed nothing here: trusting it must not be enough.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
            "-keyout", "other.key", "-out", "other.crt", cwd=d)  # fmt: skip
    return d


@pytest.fixture
async def tls_sim(pki: Path) -> AsyncIterator[tuple[Simulator, str]]:
    """The simulator on https, requiring a client certificate signed by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    sim = Simulator()
    runner = web.AppRunner(make_sim_app(sim), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield sim, f"https://127.0.0.1:{port}"
    finally:
        await sim.end_streams()
        await runner.cleanup()


def tls_config(url: str, pki: Path, **upstream: str) -> Config:
    config = fast_upstream(make_config(url))
    return dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, **upstream))


async def test_mutual_tls_with_ca_file_and_client_certificate(
    tls_sim: tuple[Simulator, str], pki: Path
) -> None:
    sim, url = tls_sim
    sim.create("api/v1/secrets", {"metadata": {"name": "over-tls"}}, namespace="default")
    config = tls_config(
        url,
        pki,
        ca_file=str(pki / "ca.crt"),
        client_cert=str(pki / "client.crt"),
        client_key=str(pki / "client.key"),
    )
    async with running_app(make_app(config)) as gateway, WatchClient(gateway) as client:
        channel = await client.subscribe(resourceType="api/v1/secrets", namespace="default")
        await client.wait_synced(channel)
        assert set(client.objects(channel)) == {"default/over-tls"}
        sim.create("api/v1/secrets", {"metadata": {"name": "live"}}, namespace="default")
        await client.wait_for(lambda c: "default/live" in c.objects(channel))


@pytest.mark.parametrize(
    "problem",
    ["untrusted server", "no client certificate"],
)
async def test_tls_failures_are_watch_errors_not_silence(
    tls_sim: tuple[Simulator, str], pki: Path, problem: str
) -> None:
    _sim, url = tls_sim
    if problem == "untrusted server":
        options = {
            "ca_file": str(pki / "other.crt"),
            "client_cert": str(pki / "client.crt"),
            "client_key": str(pki / "client.key"),
        }
    else:
        options = {"ca_file": str(pki / "ca.crt")}
    async with (
        running_app(make_app(tls_config(url, pki, **options))) as gateway,
        WatchClient(gateway) as client,
    ):
        channel = await client.subscribe(resourceType="api/v1/secrets", namespace="default")
        await client.wait_for(lambda c: channel in c.errors)
        assert channel not in client.synced
        assert client.errors[channel]["code"] >= 500
