"""``watchgw sim --rbac FILE``: bearer mode tried by hand, as the README shows it, with the shipped
example files (config/sim-rbac.toml for the simulator, config/sim-bearer.toml for the gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.processes import next_log_event, running_watchgw
from watchgw.cli import main
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.config import load_config
from watchgw.sim import running_simulator
from watchgw.sim.rbac import RbacFileError, load_rbac
from watchgw.web.app import make_app
from watchgw.web.server import running_app

CONFIG = Path(__file__).resolve().parents[2] / "config"
RBAC = CONFIG / "sim-rbac.toml"
ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"
ABC_ZONES = {"resourceType": ZONES, "projectId": "proj-abc", "namespace": "default"}


@contextlib.asynccontextmanager
async def sim_process(*args: str) -> AsyncIterator[str]:
    """``watchgw sim --port 0 ARGS`` in its own process; yields its URL; SIGTERM at the end."""
    async with running_watchgw("sim", "--port", "0", *args) as proc:
        record = await next_log_event(proc, "sim.listening")
        assert record["auth"] == ("rbac" if "--rbac" in args else "none")
        yield str(record["url"])
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.communicate()  # reads stderr to the end, so the process cannot block on it


@contextlib.asynccontextmanager
async def bearer_gateway(sim_url: str) -> AsyncIterator[str]:
    """The gateway of config/sim-bearer.toml, on a free port, in front of ``sim_url``."""
    config = load_config(CONFIG / "sim-bearer.toml")
    assert config.auth.mode == "bearer"
    config = dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, port=0),
        upstream=dataclasses.replace(config.upstream, url=sim_url),
    )
    async with running_app(make_app(config)) as url:
        yield url


async def test_the_example_grants_decide_through_a_bearer_gateway() -> None:
    async with sim_process("--demo", "--rbac", str(RBAC)) as sim_url, bearer_gateway(sim_url) as url:
        clients: list[WatchClient] = []

        async def client(token: str) -> WatchClient:
            made = WatchClient(url, headers={"Authorization": f"Bearer {token}"})
            clients.append(made)
            await made.connect()
            return made

        try:
            alice = await client("alice-token")
            channel = await alice.subscribe(**ABC_ZONES)
            await alice.wait_synced(channel, timeout=10)
            assert alice.objects(channel)  # the demo's zones of proj-abc
            with pytest.raises(WatchClientError) as elsewhere:
                await alice.subscribe(**{**ABC_ZONES, "projectId": "proj-xyz"})
            assert (elsewhere.value.status, elsewhere.value.code) == (403, "forbidden")
            bob = await client("bob-token")  # a user without grants: authenticated, never allowed
            with pytest.raises(WatchClientError) as denied:
                await bob.subscribe(**ABC_ZONES)
            assert (denied.value.status, denied.value.code) == (403, "forbidden")
            with pytest.raises(WatchClientError) as unknown:
                await client("not-in-the-file")
            assert (unknown.value.status, unknown.value.code) == (401, "unauthenticated")
        finally:
            for made in clients:
                await made.close()
        # The simulator itself requires a token now, as an API server does.
        async with aiohttp.ClientSession() as http, http.get(f"{sim_url}/api/v1/secrets") as response:
            assert response.status == 401


async def test_the_example_file_loads_into_an_in_process_simulator() -> None:
    rbac = load_rbac(RBAC)
    assert set(rbac.tokens.values()) == {"watchgw", "alice", "bob"}
    async with running_simulator() as (sim, sim_url), aiohttp.ClientSession(sim_url) as http:
        rbac.apply(sim)
        project = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-abc/control-plane"
        path = f"{project}/apis/dns.networking.miloapis.com/v1alpha1/namespaces/default/dnszones"
        for token, status in (("alice-token", 200), ("bob-token", 403), ("watchgw-gateway-token", 200)):
            async with http.get(path, headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == status, token


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[users]]\nname = 'a'\n", "users[0]: token is required"),
        ("[[users]]\nname = 'a'\ntoken = 't'\nuid = 'u'\n", "users[0]: unknown key 'uid'"),
        ("[[users]]\nname = 'a'\ntoken = 't'\n[[users]]\nname = 'b'\ntoken = 't'\n", "token already belongs"),
        ("[[users]]\nname = 'a'\ntoken = 't'\n[[grants]]\nuser = 'b'\n", "grants[0]: user 'b' is not among"),
        (
            "[[users]]\nname = 'a'\ntoken = 't'\n[[grants]]\nuser = 'a'\nverbs = 'watch'\n",
            "verbs must be a list",
        ),
        (
            "[[users]]\nname = 'a'\ntoken = 't'\n[[grants]]\nuser = 'a'\nresourse = 'x'\n",
            "unknown key 'resourse'",
        ),
        ("[grants]\n", "no [[users]]"),
        ("users = [", "not valid TOML"),
    ],
)
def test_a_file_that_cannot_be_used_is_refused_with_the_entry_named(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rbac.toml"
    path.write_text(text)
    with pytest.raises(RbacFileError, match=re.escape(message)):
        load_rbac(path)


def test_the_command_line_names_the_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rbac.toml"
    path.write_text("[[users]]\nname = 'alice'\n")
    assert main(["sim", "--rbac", str(path)]) == 1
    assert "users[0]: token is required" in capsys.readouterr().err
    assert main(["sim", "--rbac", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml" in capsys.readouterr().err
