"""`watchgw serve` as systemd runs it (``Type=notify``, ``WatchdogSec=``, ``watchgw.socket``),
with the test in systemd's place: a notify socket it reads, a listening socket it passes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_process import config_for
from tests.fake_systemd import Notification, notify_socket, socket_activated
from tests.processes import free_port, next_log_event, running_watchgw
from watchgw.client.client import WatchClient
from watchgw.sim import running_simulator
from watchgw.web.supervision import DEBUG_BLOCK_LOOP_ENV, STATUS_EVERY_S

UNREACHABLE = "http://127.0.0.1:1"


def is_ready(m: Notification) -> bool:
    return "READY=1" in m


def is_ping(m: Notification) -> bool:
    return "WATCHDOG=1" in m


@contextlib.asynccontextmanager
async def gateway(
    config_text: str, tmp_path: Path, *args: str, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    path = tmp_path / "watchgw.toml"
    path.write_text(config_text)
    async with running_watchgw("serve", "--config", str(path), *args, env=env) as proc:
        yield proc


async def test_systemd_hears_ready_status_watchdog_reload_and_stopping(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with running_simulator() as (sim, sim_url), notify_socket() as systemd:
        sim.create("api/v1/secrets", {"metadata": {"name": "a"}}, namespace="default")
        env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "1000000"}
        async with gateway(config_for(sim_url), tmp_path, "--port", str(port), env=env) as proc:
            first, ready = await systemd.next(lambda m: True)
            assert "READY=1" in ready, "READY=1 is the first thing systemd hears"
            assert ready.fields["STATUS"] == "clients 0 (0 streaming), channels 0, upstream idle"
            # READY=1 means the listener is bound: a request made at once is answered.
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
                assert response.status == 200
            await systemd.next(is_ping, after=first + 1, timeout=5)

            client = WatchClient(url, record=True)
            try:
                await client.connect()
                channel = await client.subscribe(resourceType="api/v1/secrets", namespace="default")
                await client.wait_synced(channel)
                # Computed every STATUS_EVERY_S; sent when it changed (so a later one may be it).
                expected = "clients 1 (1 streaming), channels 1 (1 watching), upstream ok"
                await systemd.next(lambda m: m.fields.get("STATUS") == expected, timeout=3 * STATUS_EVERY_S)

                proc.send_signal(signal.SIGHUP)
                reloading, message = await systemd.next(lambda m: "RELOADING=1" in m)
                assert int(message.fields["MONOTONIC_USEC"]) > 0
                reloaded, _ = await systemd.next(is_ready, after=reloading + 1)

                proc.send_signal(signal.SIGTERM)
                stopping, _ = await systemd.next(lambda m: "STOPPING=1" in m, after=reloaded + 1)
                await client.wait_for(lambda c: c.reconnect_requested, timeout=5)
                assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
            finally:
                await client.close()
        received = systemd.received
        between = [m for m in received[reloading + 1 : reloaded] if not is_ping(m)]
        assert between == [], "nothing but pings while reloading"
        assert [m for m in received[stopping + 1 :] if not is_ping(m) and "STATUS" not in m.fields] == []


async def test_watchdog_pings_stop_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    block_s = 2.0
    # A file-system notify socket this time (an AF_UNIX path is at most 107 bytes: keep it short).
    with tempfile.TemporaryDirectory() as short:
        async with notify_socket(os.path.join(short, "notify")) as systemd:
            env = {
                "NOTIFY_SOCKET": systemd.address,
                "WATCHDOG_USEC": "200000",
                DEBUG_BLOCK_LOOP_ENV: str(block_s),
            }
            async with gateway(config_for(UNREACHABLE), tmp_path, "--port", "0", env=env) as proc:
                index, _ = await systemd.next(is_ready)
                for _ in range(3):  # every 0.1 s: half of WATCHDOG_USEC
                    index, _ = await systemd.next(is_ping, after=index + 1, timeout=5)
                blocked_at = time.monotonic()
                proc.send_signal(signal.SIGUSR2)
                await next_log_event(proc, "debug.loop_unblocked", timeout=block_s + 10)
                index = len(systemd.received)
                for _ in range(2):  # the loop works again, and so does the watchdog
                    index, _ = await systemd.next(is_ping, after=index, timeout=5)
                    index += 1
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    pings = [m.at for m in systemd.received if is_ping(m)]
    silence, since = max((b - a, a) for a, b in itertools.pairwise(pings))
    assert silence >= block_s - 0.3, "no ping while the loop was blocked"
    assert since >= blocked_at - 0.5, "the silence is the block, not a slow start"


async def test_a_restart_on_a_passed_socket_queues_connections_instead_of_refusing_them(
    tmp_path: Path,
) -> None:
    # The test holds the listening socket, as a socket unit does across restarts of its service.
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        port = listener.getsockname()[1]
        # server.port is the socket's own port: binding it would fail, so serving proves it was used.
        path = tmp_path / "watchgw.toml"
        path.write_text(config_for(UNREACHABLE).replace("port = 0", f"port = {port}"))
        async with socket_activated(listener, "serve", "--config", str(path)) as first:
            record = await next_log_event(first, "server.listening")
            assert record["url"] == f"http://127.0.0.1:{port}"
            assert record["socket"] == "systemd"
            async with aiohttp.ClientSession() as http, http.get(f"{record['url']}/healthz") as response:
                assert response.status == 200
            first.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(first.wait(), timeout=10) == 0

        # No gateway runs now, and a client still gets through: its connection waits in the backlog.
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=5)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: watchgw\r\nConnection: close\r\n\r\n")
            await writer.drain()
            async with socket_activated(listener, "serve", "--config", str(path)) as second:
                status_line = await asyncio.wait_for(reader.readline(), timeout=30)
                assert status_line.startswith(b"HTTP/1.1 200"), status_line
                second.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(second.wait(), timeout=10) == 0
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing")
async def test_systemd_socket_activate_starts_the_gateway_on_its_socket(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "watchgw.toml"
    path.write_text(config_for(UNREACHABLE))
    # Started on the first connection, on the tool's socket (it passes only the -E variables on).
    wrapper = ("systemd-socket-activate", "--listen", f"127.0.0.1:{port}")
    async with running_watchgw("serve", "--config", str(path), wrapper=wrapper) as proc:
        assert proc.stderr is not None
        async with asyncio.timeout(10):
            while not (await proc.stderr.readline()).startswith(b"Listening on"):
                pass
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
        record = await next_log_event(proc, "server.listening")
        assert record["url"] == f"http://127.0.0.1:{port}"
        assert record["socket"] == "systemd"
        proc.send_signal(signal.SIGTERM)  # the tool exec'd the gateway: same process
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
