"""The ``abuse`` scenario of ``make bench``: the gateway under attack stays within its bounds and
keeps serving everyone else.

Its own processes (``watchgw sim`` and ``watchgw serve``, configured to trust 127.0.0.1 as a
reverse proxy so that each simulated attacker or user is its own client address through
``X-Forwarded-For``; nothing is sent anywhere but loopback), then three attacks:

1. memory: ``sessions`` clients subscribe to a channel of ``objects`` objects of ~2.4 KB and drop
   their streams (each session outlives its stream for ``session_ttl_s``). RSS of the gateway
   before (the channel open and synced for one held subscriber), while the sessions are held,
   and after they expired. Goal: growth under 100 MB, back within 20 % of the baseline.
2. stalled half-requests: ``stalled`` connections that send half a request line and stop. Time
   until the gateway has closed every one (goal: ``server.header_timeout_s``), and the latency
   of ``/healthz`` meanwhile (goal: p99 under 50 ms).
3. one identity at its limits: it opens streams and distinct channels until refused; meanwhile
   another identity subscribes to the big channel. Its time to ``synced``, compared with the
   same subscribe before the attack (goal: normal).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import PYTHON, spawn, stop
from tests.processes import free_port

PREFIX = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-a/control-plane"
SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-a", "namespace": "default"}
JSON = {"Content-Type": "application/json"}
HEADER_TIMEOUT_S = 3.0
SESSION_TTL_S = 8.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def read_until(response: aiohttp.ClientResponse, marker: bytes) -> None:
    """Read the stream until ``marker`` went by (a snapshot may be megabytes: keep only a tail)."""
    tail = b""
    async for chunk in response.content.iter_any():
        tail = tail[-len(marker) :] + chunk
        if marker in tail:
            return
    raise ConnectionError(f"stream ended before {marker!r}")


def progress(what: str) -> None:
    print(f"abuse: {what}", file=sys.stderr, flush=True)


def quantile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def addr(group: int, n: int) -> dict[str, str]:
    """A client address of the attack (only a header: the gateway trusts 127.0.0.1 as a proxy)."""
    return {"X-Forwarded-For": f"10.{group}.{n // 250}.{n % 250 + 1}"}


async def until(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.1) -> None:
    """Poll ``check`` (a process that is not ours cannot wake us) every ``every`` s, bounded."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(every)


async def run(*, sessions: int, objects: int, stalled: int) -> dict[str, Any]:
    sim_port, gw_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="watchgw-abuse-") as tmp:
        sim = await spawn([PYTHON, "-m", "watchgw", "sim", "--port", str(sim_port)], log=Path(tmp, "sim.log"))
        config = Path(tmp, "watchgw.toml")
        config.write_text(  # noqa: ASYNC240 - a few bytes, before anything runs
            f'[server]\nport = {gw_port}\nstats = true\ntrusted_proxies = ["127.0.0.1"]\n'
            f"header_timeout_s = {HEADER_TIMEOUT_S}\nmax_pending_connections = {stalled + 500}\n"
            f'[upstream]\nurl = "http://127.0.0.1:{sim_port}"\n'
            f"[limits]\nsession_ttl_s = {SESSION_TTL_S}\ngrace_period_s = 1\n"
            '[log]\nlevel = "warning"\n'
        )
        gw = await spawn([PYTHON, "-m", "watchgw", "serve", "--config", str(config)], log=Path(tmp, "gw.log"))
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                return await _attacks(http, gw.pid, gw_port, sim_port, sessions, objects, stalled)
        finally:
            await stop(gw)
            await stop(sim)


async def _attacks(
    http: aiohttp.ClientSession,
    gw_pid: int,
    gw_port: int,
    sim_port: int,
    sessions: int,
    objects: int,
    stalled: int,
) -> dict[str, Any]:
    gw = f"http://127.0.0.1:{gw_port}"
    base = f"{gw}/api/watch"

    async def up() -> bool:
        try:
            async with (
                http.get(f"{gw}/healthz") as r1,
                http.get(f"http://127.0.0.1:{sim_port}/version") as r2,
            ):
                return r1.status == 200 and r2.status < 500
        except aiohttp.ClientError:
            return False

    await until(up, 30)
    url = f"http://127.0.0.1:{sim_port}{PREFIX}/api/v1/namespaces/default/secrets"
    pad = "x" * 2200
    for i in range(objects):
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"}, "data": {"pad": pad}}
        async with http.post(url, json=body) as r:
            assert r.status in (200, 201), await r.text()

    async def stats() -> dict[str, Any]:
        async with http.get(f"{base}/stats") as r:
            result: dict[str, Any] = await r.json()
            return result

    async def time_to_synced(cid: str, headers: dict[str, str]) -> float:
        """Open a stream, subscribe to the big channel, read until ``synced``; seconds taken."""
        began = time.monotonic()
        async with http.get(f"{base}/stream", params={"cid": cid}, headers=headers) as stream:
            await read_until(stream, b"event: connected")
            body = {"clientId": cid, **SECRETS}
            async with http.post(f"{base}/subscribe", json=body, headers={**headers, **JSON}) as r:
                assert r.status == 200, await r.text()
            await read_until(stream, b"event: synced")
        return time.monotonic() - began

    figures: dict[str, Any] = {"sessions": sessions, "objects": objects, "stalled": stalled}
    progress("objects made")
    # A held subscriber keeps the channel open and synced: the baseline is a gateway at work.
    held = await http.get(f"{base}/stream", params={"cid": "abuse-held-0001"}, headers=addr(9, 0))
    await read_until(held, b"event: connected")
    async with http.post(
        f"{base}/subscribe", json={"clientId": "abuse-held-0001", **SECRETS}, headers={**addr(9, 0), **JSON}
    ) as r:
        assert r.status == 200
    await read_until(held, b"event: synced")
    figures["synced_s_alone"] = round(await time_to_synced("abuse-alice-0001", addr(7, 0)), 3)
    await asyncio.sleep(1.0)
    baseline = rss_mb(gw_pid)

    progress("baseline taken")
    # 1. Sessions that subscribe and drop their streams.
    for i in range(sessions):
        cid = f"abuse-drop-{i:05d}"
        async with http.get(f"{base}/stream", params={"cid": cid}, headers=addr(1, i)) as stream:
            await read_until(stream, b"event: connected")
        async with http.post(
            f"{base}/subscribe", json={"clientId": cid, **SECRETS}, headers={**addr(1, i), **JSON}
        ) as r:
            assert r.status == 200, await r.text()
    during = rss_mb(gw_pid)

    async def expired() -> bool:
        return (await stats())["clients"] <= 1

    await until(expired, SESSION_TTL_S + 30, every=0.5)
    await asyncio.sleep(1.0)
    after = rss_mb(gw_pid)
    figures |= {
        "rss_baseline_mb": round(baseline, 1),
        "rss_during_mb": round(during, 1),
        "rss_after_mb": round(after, 1),
        "growth_mb": round(during - baseline, 1),
        "after_vs_baseline": round(after / baseline, 3),
    }

    progress("dropped sessions expired")
    # 2. Stalled half-requests, and /healthz meanwhile.
    conns = []
    began = time.monotonic()
    for _ in range(stalled):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw_port)
        writer.write(b"GET /api/watch/stream?cid=stalled")  # and never the rest
        conns.append((reader, writer))

    async def closed_at(reader: asyncio.StreamReader) -> float:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # EOF when the gateway closes it
        return time.monotonic() - began

    closing = [asyncio.ensure_future(closed_at(r)) for r, _ in conns]
    latencies: list[float] = []
    failures = 0
    while not all(task.done() for task in closing) and time.monotonic() - began < HEADER_TIMEOUT_S + 20:
        t0 = time.monotonic()
        try:
            async with http.get(f"{gw}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    failures += 1
        except (aiohttp.ClientError, TimeoutError):
            failures += 1
        latencies.append(time.monotonic() - t0)
        await asyncio.sleep(0.01)
    done = [task.result() for task in closing if task.done()]
    for task in closing:
        task.cancel()
    for _, writer in conns:
        writer.close()
    figures |= {
        "stalled_closed": len(done),
        "stalled_all_closed_s": round(max(done), 2) if done else None,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "healthz_p50_ms": round(quantile_ms(latencies, 0.5), 2),
        "healthz_p99_ms": round(quantile_ms(latencies, 0.99), 2),
        "healthz_failures": failures,
    }

    progress("stalled requests closed")
    # 3. One identity at its limits while another subscribes.
    mallory = addr(66, 0)
    streams: list[aiohttp.ClientResponse] = []
    refused_stream = ""
    for i in range(1000):
        response = await http.get(f"{base}/stream", params={"cid": f"abuse-mallory-{i:05d}"}, headers=mallory)
        if response.status != 200:
            refused_stream = (await response.json())["error"]["code"]
            response.release()
            break
        await read_until(response, b"event: connected")
        streams.append(response)
    refused_channel = ""
    opened = 0
    for i in range(1000):
        cid = f"abuse-mallory-{i // 90:05d}"  # within max_subscriptions_per_client
        body = {
            "clientId": cid,
            "resourceType": "api/v1/configmaps",
            "projectId": "proj-a",
            "namespace": f"n{i}",
        }
        async with http.post(f"{base}/subscribe", json=body, headers={**mallory, **JSON}) as r:
            if r.status != 200:
                refused_channel = (await r.json())["error"]["code"]
                if refused_channel != "rate_limited":
                    break
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                continue
        opened += 1
    figures |= {
        "attacker_streams": len(streams),
        "attacker_stream_refused": refused_stream,
        "attacker_channels": opened,
        "attacker_channel_refused": refused_channel,
        "synced_s_during": round(await time_to_synced("abuse-alice-0002", addr(7, 1)), 3),
    }
    for response in streams:
        response.close()
    held.close()
    return figures
