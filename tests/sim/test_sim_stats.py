"""``GET /sim/stats``: the simulator's counters for tests that run it in another process (the
cluster test bounds the upstream watches that replicas open with it)."""

from __future__ import annotations

import asyncio

import aiohttp

from watchgw.sim import running_simulator

WATCH = "/api/v1/namespaces/default/configmaps?watch=1"


async def test_open_watches_and_their_peak_are_counted() -> None:
    async with running_simulator() as (sim, url), aiohttp.ClientSession(url) as http:
        async with http.get("/sim/stats") as response:
            assert (await response.json())["peakOpenWatches"] == 0
        watches = [await http.get(WATCH) for _ in range(3)]
        await sim.wait_for(lambda: sim.open_watches == 3)
        for watch in watches[:2]:
            watch.close()
        await sim.wait_for(lambda: sim.open_watches == 1)
        async with http.get("/sim/stats") as response:
            stats = await response.json()
        assert stats["openWatches"] == 1
        assert stats["peakOpenWatches"] == 3, "the most open at once, not the number now"
        assert stats["watchRequests"] == 3
        watches[2].close()
        await asyncio.wait_for(sim.wait_for(lambda: sim.open_watches == 0), timeout=5)
