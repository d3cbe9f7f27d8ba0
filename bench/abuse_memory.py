"""Memory under abuse: sessions that subscribe to a big channel and drop their stream.

``python -m bench.abuse_memory [--sessions 200] [--objects 2000]`` starts the simulator and
``watchgw serve`` as processes, fills one channel with ``--objects`` objects of ~2.4 KB, then
opens ``--sessions`` streams, drops each at once and subscribes the session (which outlives its
stream for ``session_ttl_s``) to the channel. It prints the gateway's RSS (``/proc``) before,
while the sessions are held, and after they expired and the channel closed, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.harness import PYTHON, free_port, spawn, stop

PREFIX = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-a/control-plane"
SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-a", "namespace": "default"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Poll ``check()`` (an awaitable predicate) every 0.2 s, at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("condition not reached")


async def main(sessions: int, objects: int, ttl_s: float) -> dict[str, float]:
    sim_port, gw_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        sim = await spawn([PYTHON, "-m", "watchgw", "sim", "--port", str(sim_port)], log=Path(tmp, "sim.log"))
        config = Path(tmp, "watchgw.toml")
        config.write_text(  # noqa: ASYNC240 - a few bytes, before anything runs
            f'[server]\nport = {gw_port}\nstats = true\n[upstream]\nurl = "http://127.0.0.1:{sim_port}"\n'
            f'[limits]\nsession_ttl_s = {ttl_s}\ngrace_period_s = 1\n[log]\nlevel = "warning"\n'
        )
        gw = await spawn([PYTHON, "-m", "watchgw", "serve", "--config", str(config)], log=Path(tmp, "gw.log"))
        base = f"http://127.0.0.1:{gw_port}/api/watch"
        try:
            async with aiohttp.ClientSession() as http:

                async def up() -> bool:
                    try:
                        async with (
                            http.get(f"http://127.0.0.1:{gw_port}/healthz") as r1,
                            http.get(f"http://127.0.0.1:{sim_port}/version") as r2,
                        ):
                            return r1.status == 200 and r2.status < 500
                    except aiohttp.ClientError:
                        return False

                await until(up, 30)
                url = f"http://127.0.0.1:{sim_port}{PREFIX}/api/v1/namespaces/default/secrets"
                pad = "x" * 2200
                for i in range(objects):
                    meta = {"name": f"s{i}"}
                    body = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"pad": pad}}
                    async with http.post(url, json=body) as r:
                        assert r.status in (200, 201), await r.text()
                baseline = rss_mb(gw.pid)

                async def subscribe(cid: str) -> int:
                    async with http.post(f"{base}/subscribe", json={"clientId": cid, **SECRETS}) as r:
                        return r.status

                # One held subscriber keeps the channel warm and synced.
                for i in range(sessions):
                    cid = f"abuse-client-{i:05d}"
                    async with http.get(f"{base}/stream", params={"cid": cid}) as stream:
                        await stream.content.readuntil(b"event: connected")
                    # The stream is gone; the session lives on for session_ttl_s.
                    for _ in range(50):
                        if await subscribe(cid) == 200:
                            break
                        await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                during = rss_mb(gw.pid)

                async def expired() -> bool:
                    async with http.get(f"{base}/stats") as r:
                        stats = await r.json()
                    return stats["clients"] == 0 and stats["upstreams"] == 0

                await until(expired, ttl_s + 30)
                after = rss_mb(gw.pid)
        finally:
            await stop(gw)
            await stop(sim)
    return {
        "sessions": sessions,
        "objects": objects,
        "rss_baseline_mb": round(baseline, 1),
        "rss_during_mb": round(during, 1),
        "rss_after_expiry_mb": round(after, 1),
        "growth_mb": round(during - baseline, 1),
        "after_vs_baseline": round(after / baseline, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--ttl", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(asyncio.run(main(args.sessions, args.objects, args.ttl))), file=sys.stdout)
