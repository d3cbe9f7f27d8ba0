"""Where an idle client's bytes go: ``python -m bench.memory --clients N`` prints one JSON line.

The gateway runs in this process under ``tracemalloc`` (the simulator too, in-process and idle);
the clients run in a child process (``--serve-clients``), so only the gateway's side is traced.
After the streams are open and idle, the allocations still alive that were made after a warm-up
are grouped by the module that made them: aiohttp, asyncio (tasks, transports, handles), the
socket module, watchgw's hub (sessions) and web layer, and the rest. Traced bytes leave out what
the allocator keeps around them, which the RSS figure of ``idle-rss`` includes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import tracemalloc
from typing import Any

from tests.conftest import make_config
from watchgw.sim import running_simulator
from watchgw.web.app import make_app
from watchgw.web.server import running_app

WARM = 100
BATCH = 200
GROUPS = (
    ("aiohttp", "/aiohttp/"),
    ("yarl/multidict", "/yarl/"),
    ("yarl/multidict", "/multidict/"),
    ("asyncio", "/asyncio/"),
    ("socket", "/socket.py"),
    ("watchgw hub", "/watchgw/hub/"),
    ("watchgw web", "/watchgw/web/"),
)


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Stream(asyncio.Protocol):
    def __init__(self, cid: str, connected: asyncio.Future[None]) -> None:
        self.cid = cid
        self.connected = connected
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"GET /api/watch/stream?cid=%s HTTP/1.1\r\nHost: bench\r\n\r\n" % self.cid.encode())

    def data_received(self, data: bytes) -> None:
        if self.connected.done():
            return
        self.head += data
        if b"event: connected" in self.head:
            self.connected.set_result(None)
            self.head = b""
        elif b"\r\n\r\n" in self.head and not self.head.startswith(b"HTTP/1.1 200"):
            self.connected.set_exception(RuntimeError(self.head[:200].decode(errors="replace")))


async def _serve_clients(port: int, start: int, count: int) -> None:
    """The child: open ``count`` streams, say "ready", hold them until stdin closes."""
    _raise_nofile()
    loop = asyncio.get_running_loop()
    held: list[asyncio.BaseTransport] = []

    async def one(i: int) -> None:
        connected: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _Stream(f"memory-{i:07d}", connected), "127.0.0.1", port
        )
        await asyncio.wait_for(connected, 30)
        held.append(transport)

    for first in range(start, start + count, BATCH):
        await asyncio.gather(*(one(i) for i in range(first, min(first + BATCH, start + count))))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for transport in held:
        transport.close()


async def _clients(port: int, start: int, count: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory",
        "--serve-clients",
        str(port),
        str(start),
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 300)
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError("the client process failed to open its streams")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _group(filename: str) -> str:
    for name, marker in GROUPS:
        if marker in filename:
            return name
    return "other"


async def measure(clients: int) -> dict[str, Any]:
    _raise_nofile()
    async with running_simulator() as (_sim, url):
        limits = {"max_clients": clients + WARM + 10, "max_clients_per_identity": clients + WARM + 10}
        config = make_config(url, limits=limits, server={"max_pending_connections": clients + 1000})
        async with running_app(make_app(config)) as gateway_url:
            port = int(gateway_url.rsplit(":", 1)[1])
            warm = await _clients(port, 0, WARM)  # first-use allocations are not per client
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
            measured = await _clients(port, WARM, clients)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            groups: dict[str, int] = {}
            for stat in after.compare_to(before, "filename"):
                name = _group(stat.traceback[0].filename)
                groups[name] = groups.get(name, 0) + stat.size_diff
            for proc in (warm, measured):
                await _stop(proc)
    total = sum(groups.values())
    return {
        "clients": clients,
        "traced_bytes_per_client": round(total / clients),
        "by_module": {k: round(v / clients) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--serve-clients", nargs=3, type=int, metavar=("PORT", "START", "COUNT"))
    args = parser.parse_args()
    if args.serve_clients:
        asyncio.run(_serve_clients(*args.serve_clients))
        return
    import logging

    logging.disable(logging.CRITICAL)
    print(json.dumps(asyncio.run(measure(args.clients))), flush=True)


if __name__ == "__main__":
    main()
