"""The daemon as an operator runs it: `watchgw serve` in its own process, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.processes import free_port, next_log_event, running_watchgw
from watchgw.client.client import WatchClient
from watchgw.sim import running_simulator


@contextlib.asynccontextmanager
async def serving(
    config_text: str, tmp_path: Path, *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    path = tmp_path / "watchgw.toml"
    path.write_text(config_text)
    env = {"WATCHGW_UPSTREAM_TOKEN": "tok-never-logged-123"}
    async with running_watchgw("serve", "--config", str(path), *args, env=env) as proc:
        record = await next_log_event(proc, "server.listening")
        yield proc, record["url"]


def config_for(upstream: str, *, shutdown_timeout_s: float = 3) -> str:
    return (
        f'[server]\nhost = "127.0.0.1"\nport = 0\nshutdown_timeout_s = {shutdown_timeout_s}\n'
        f'[upstream]\nurl = "{upstream}"\n[log]\nformat = "json"\n'
    )


async def test_sigterm_drains_clients_and_exits_zero_in_time(tmp_path: Path) -> None:
    async with running_simulator() as (sim, sim_url), serving(config_for(sim_url), tmp_path) as (proc, url):
        sim.create("api/v1/secrets", {"metadata": {"name": "a"}}, namespace="default")
        clients = [WatchClient(url, record=True) for _ in range(3)]
        try:
            for client in clients:
                await client.connect()
                channel = await client.subscribe(resourceType="api/v1/secrets", namespace="default")
                await client.wait_synced(channel)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            for client in clients:
                await client.wait_for(lambda c: c.reconnect_requested and c.stream_ended.is_set(), timeout=5)
            assert proc.stderr is not None
            rest = await asyncio.wait_for(proc.stderr.read(), timeout=10)
            code = await asyncio.wait_for(proc.wait(), timeout=10)
            assert code == 0
            assert time.monotonic() - started < 3 + 2
            events = [json.loads(line)["event"] for line in rest.splitlines() if line.startswith(b"{")]
            assert "server.draining" in events
            assert "server.stopped" in events
            assert b"tok-never-logged-123" not in rest
            await sim.wait_for(lambda: sim.open_watches == 0)
        finally:
            for client in clients:
                await client.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_idle_server_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    async with running_simulator() as (_sim, sim_url), serving(config_for(sim_url), tmp_path) as (proc, _url):
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_sighup_reloads_log_settings(tmp_path: Path) -> None:
    async with running_simulator() as (_sim, sim_url), serving(config_for(sim_url), tmp_path) as (proc, _url):
        path = tmp_path / "watchgw.toml"
        path.write_text(path.read_text().replace('format = "json"', 'format = "json"\nlevel = "debug"'))
        proc.send_signal(signal.SIGHUP)
        await next_log_event(proc, "config.reloaded", timeout=10)
        path.write_text("[upstream\nbroken")
        proc.send_signal(signal.SIGHUP)
        record = await next_log_event(proc, "config.reload_failed", timeout=10)
        assert "not valid TOML" in record["error"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_sim_command_serves_the_watch_protocol_and_stops_on_sigterm() -> None:
    async with running_watchgw("sim", "--port", "0", "--demo") as proc:
        url = (await next_log_event(proc, "sim.listening"))["url"]
        project = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-abc/control-plane"
        path = project + "/api/v1/namespaces/default/secrets"
        async with aiohttp.ClientSession() as http, http.get(url + path) as response:
            body = await response.json()
        assert body["kind"] == "SecretList"
        assert body["items"], "--demo seeds sample resources"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_port_option_overrides_the_config_for_one_instance_per_core(tmp_path: Path) -> None:
    """``watchgw@<port>.service`` runs ``serve --port <port>`` with the shared config file."""
    port = free_port()
    async with serving(config_for("http://127.0.0.1:1"), tmp_path, "--port", str(port)) as (proc, url):
        assert url.endswith(f":{port}")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
