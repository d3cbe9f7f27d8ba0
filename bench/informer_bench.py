"""Upstream hot-path benchmark: one NDJSON watch stream of ~1 KB objects -> client + informer.

The upstream is a minimal aiohttp server in a separate process (``multiprocessing`` spawn) that
pre-encodes the whole stream and writes it in 1 MiB batches, so it costs the measured process
nothing. The measured process runs :class:`KubeClient` + :class:`Informer` with a listener that
only counts, and reports wall-clock events/s and CPU microseconds per event of its own process
(``time.process_time`` deltas, from the first LIST to the last event).

    .venv/bin/python -c "import asyncio, bench.informer_bench as b; print(asyncio.run(b.run()))"
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from multiprocessing.connection import Connection
from typing import Any

import ujson

__all__ = ["make_stream", "run"]

BATCH_BYTES = 1 << 20


def make_object(i: int, rng: random.Random) -> dict[str, Any]:
    """A ~1 KB ConfigMap-like object."""
    name = f"bench-{i % 5000:05d}"
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": f"{rng.getrandbits(128):032x}",
            "resourceVersion": str(1000 + i),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "bench", "tier": rng.choice(["web", "db", "cache"])},
            "annotations": {"watchgw.example/note": "x" * 120},
        },
        "data": {f"key-{k}": f"{rng.getrandbits(200):050x}" for k in range(12)},
    }


def make_stream(events: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    lines = []
    for i in range(events):
        kind = "ADDED" if i < 5000 else ("DELETED" if i % 10 == 0 else "MODIFIED")
        obj = make_object(i, rng)
        lines.append(b'{"type":"' + kind.encode() + b'","object":' + ujson.dumps(obj).encode() + b"}\n")
    return b"".join(lines)


def _serve(conn: Connection, events: int) -> None:
    """Child process: serve one pre-encoded watch stream, then hold later watches open."""
    from aiohttp import web

    body = make_stream(events)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return web.Response(
                body=b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"1000"},"items":[]}',
                content_type="application/json",
            )
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        if request.query.get("resourceVersion") == "1000":
            view = memoryview(body)
            for start in range(0, len(body), BATCH_BYTES):
                await resp.write(view[start : start + BATCH_BYTES])
        await asyncio.Event().wait()  # stall until the parent stops us
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/bench/configmaps", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
        await runner.cleanup()

    asyncio.run(main())


class _Counter:
    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = asyncio.get_running_loop().create_future()

    def on_events(self, events: list[Any]) -> None:
        self.count += len(events)
        if self.count >= self.target and not self.done.done():
            self.done.set_result(None)

    def on_relist(self, events: list[Any], resource_version: str) -> None:
        self.on_events(events)

    def on_state(self, state: Any) -> None:
        pass


async def run(events: int = 100_000, *, gc_threshold0: int | None = None) -> dict[str, float]:
    """Events/s and CPU µs/event of the client+informer consuming one ``events``-long stream.

    ``gc_threshold0`` sets the cyclic GC's generation-0 threshold for the run (restored after):
    with the interpreter default (700), GC passes over the cached objects cost several µs per
    event in micro-benchmarks; the gateway process may choose a larger value (or ``gc.freeze()``).
    """
    import gc

    import structlog

    from watchgw.config import UpstreamConfig
    from watchgw.kube.client import KubeClient
    from watchgw.kube.informer import Informer
    from watchgw.kube.types import WatchTarget

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, events), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    try:
        if not await loop.run_in_executor(None, parent.poll, 120.0):
            raise RuntimeError("benchmark upstream did not start (see its stderr)")
        port = await loop.run_in_executor(None, parent.recv)
        config = UpstreamConfig(url=f"http://127.0.0.1:{port}", inactivity_timeout_s=600.0)
        counter = _Counter(events)
        # The bench measures the hot path, not log rendering of the few per-watch lines.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
        async with KubeClient(config) as client:
            informer = Informer(
                target=WatchTarget("api/v1/configmaps", namespace="bench"),
                client=client,
                config=config,
                listener=counter,
            )
            old_threshold = gc.get_threshold()
            if gc_threshold0 is not None:
                gc.set_threshold(gc_threshold0, *old_threshold[1:])
            cpu0, wall0 = time.process_time(), time.perf_counter()
            task = asyncio.create_task(informer.run())
            try:
                await asyncio.wait_for(counter.done, timeout=300)
            finally:
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0
                gc.set_threshold(*old_threshold)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return {
            "events": float(events),
            "events_per_s": events / wall,
            "cpu_us_per_event": cpu * 1e6 / events,
            "wall_s": wall,
            "objects": float(len(informer.objects)),
        }
    finally:
        structlog.reset_defaults()
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


if __name__ == "__main__":
    print("default gc:", asyncio.run(run()))
    print("gc threshold0=50000:", asyncio.run(run(gc_threshold0=50_000)))
