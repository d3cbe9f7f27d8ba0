"""The benchmark's control plane: the simulator in its own process, plus ``/_bench/*`` control routes.

Run as ``python -m bench.upstream``; it prints one JSON line ``{"port": N}`` once it listens on
127.0.0.1 and serves until SIGTERM/SIGINT.

- ``POST /_bench/setup`` ``{"resourceType", "channels": [{"project", "namespace"}], "objects": K,
  "size": S}`` creates (or refreshes) objects ``obj-0`` .. ``obj-K-1`` in every channel.
- ``POST /_bench/burst`` ``{"resourceType", "channels", "objects", "count": N, "rate": R, "size": S}``
  updates those objects ``N`` times, round-robin over the channels, at ``R`` events/s (0: as fast as
  possible, yielding to the loop every few events so the watch streams are written meanwhile).
  Every object carries ``metadata.annotations["bench-ts"]``: ``time.time()`` when it was changed.
  Answers ``{"sent", "tFirst", "tLast"}`` (wall-clock seconds) when the last event is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from watchgw.sim import SimNotFound, Simulator, make_sim_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Bytes a stored object has beyond its padding (kind, apiVersion, uid, resourceVersion, ...).
OVERHEAD_BYTES = 330
#: Events between two yields to the loop when a burst runs as fast as possible.
YIELD_EVERY = 10
#: Upper bound of one burst, whatever it asks for.
MAX_BURST_S = 120.0


def make_object(name: str, pad: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"bench-ts": f"{time.time():.6f}"}},
        "data": {"pad": pad},
    }


def _channels(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(c.get("project", "")), str(c.get("namespace", ""))) for c in body["channels"]]


def _pad(size: int) -> str:
    return "x" * max(0, size - OVERHEAD_BYTES)


async def setup(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    resource_type = str(body["resourceType"])
    pad = _pad(int(body.get("size", 1024)))
    created = 0
    for index, (project, namespace) in enumerate(_channels(body)):
        for i in range(int(body.get("objects", 1))):
            obj = make_object(f"obj-{i}", pad)
            try:
                sim.update(resource_type, obj, project=project, namespace=namespace)
            except SimNotFound:
                sim.create(resource_type, obj, project=project, namespace=namespace)
            created += 1
        if index % 50 == 49:
            await asyncio.sleep(0)
    return {"objects": created}


async def burst(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    resource_type = str(body["resourceType"])
    channels = _channels(body)
    objects = max(1, int(body.get("objects", 1)))
    count = int(body["count"])
    rate = float(body.get("rate", 0))
    pad = _pad(int(body.get("size", 1024)))
    names = [f"obj-{i}" for i in range(objects)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + MAX_BURST_S
    t_first = t_last = 0.0
    sent = 0
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        elif i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if loop.time() > deadline:
            break
        project, namespace = channels[i % len(channels)]
        obj = make_object(names[(i // len(channels)) % objects], pad)
        sim.update(resource_type, obj, project=project, namespace=namespace)
        t_last = time.time()
        if i == 0:
            t_first = t_last
        sent += 1
    return {"sent": sent, "tFirst": t_first, "tLast": t_last}


def bench_middleware(sim: Simulator) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_bench/"):
            return await handler(request)
        if request.path == "/_bench/info":
            return web.json_response({"openWatches": sim.open_watches, "rv": sim.rv})
        body = await request.json()
        if request.path == "/_bench/setup" and request.method == "POST":
            return web.json_response(await setup(sim, body))
        if request.path == "/_bench/burst" and request.method == "POST":
            return web.json_response(await burst(sim, body))
        return web.json_response({"error": "unknown bench route"}, status=404)

    return middleware


async def serve(host: str, port: int) -> None:
    sim = Simulator()
    app = make_sim_app(sim)
    app.middlewares.append(bench_middleware(sim))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound = runner.addresses[0][1]
        print(json.dumps({"port": bound}), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
