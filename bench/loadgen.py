"""Load generator: many SSE clients on raw asyncio protocols, driven over stdin/stdout (JSON lines).

Run as ``python -m bench.loadgen --port GATEWAY_PORT``. Commands, one JSON object per line on stdin,
each answered by one JSON line on stdout:

- ``{"cmd": "connect", "group": G, "prefix": P, "start": a, "stop": b, "subs": [...], "stall": false}``
  opens clients ``a .. b-1`` (``cid = P-<index>``), subscribes client ``i`` to ``subs[i % len(subs)]``
  (to every one of ``subs`` with ``"allSubs": true``) over a small pool of keep-alive connections
  and waits until each has its ``synced`` events (``"ready": "subscribed"``: its ``subscribed``
  events, for subscriptions with ``"snapshot": false``, which get no ``synced``). A ``stall``
  client stops reading its socket once ready (a reader that went away without closing).
- ``{"cmd": "arm"}``: reset every group's counters (what arrived before this is not measured).
- ``{"cmd": "wait", "group": G, "expect": N, "timeout": s, "idle": s}``: until the group received
  ``N`` watch events, nothing arrived for ``idle`` seconds, or ``timeout``. Answers the count, the
  wall-clock time of the last delivery and the latency histogram (sparse, 0.1 ms buckets).
- ``{"cmd": "close"}`` closes every client (``"group": G``: that group's); ``{"cmd": "quit"}`` exits.

Counting is cheap on purpose: per received chunk, ``bytes.count`` of ``event: watch`` (a short
tail of the previous chunk covers markers split across reads) and one latency sample, from the last
``bench-ts`` timestamp in the chunk (so a chunk carrying many frames yields one, the newest, sample).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
import time
from collections.abc import Awaitable
from typing import Any

WATCH = b"event: watch"
SYNCED = b"event: synced"
CONNECTED = b"event: connected"
TS = b'"bench-ts":"'
TAIL = len(WATCH) - 1
BUCKET_S = 0.0001
BUCKETS = 600_000  # 60 s at 0.1 ms
CONNECT_CONCURRENCY = 200
SUBSCRIBE_POOL = 8
STEP_TIMEOUT_S = 30.0
STALL_RCVBUF = 4096


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Group:
    """Counters shared by the clients of one group (e.g. the fast readers)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: list[StreamClient] = []
        self.reset()

    def reset(self) -> None:
        self.deliveries = 0
        self.chunks = 0
        self.t_last = 0.0
        self.hist = [0] * (BUCKETS + 1)


class StreamClient(asyncio.Protocol):
    """One SSE stream. Setup (connected / synced) parses a buffer; afterwards only counts."""

    def __init__(
        self, *, cid: str, host: str, port: int, group: Group, stall: bool, ready: bytes = SYNCED
    ) -> None:
        loop = asyncio.get_running_loop()
        self.cid = cid
        self.host = host
        self.port = port
        self.group = group
        self.stall = stall
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.synced: asyncio.Future[None] = loop.create_future()
        self.synced_needed = 1
        self.setup: bytearray | None = bytearray()
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            b"GET /api/watch/stream?cid=%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n"
            % (self.cid.encode(), self.host.encode(), self.port)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut in (self.connected, self.synced):
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.cid}: stream closed"))

    def data_received(self, data: bytes) -> None:
        group = self.group
        group.chunks += 1
        count = data.count(WATCH)
        tail = self.tail
        if tail:
            count += (tail + data[:TAIL]).count(WATCH)
        self.tail = data[-TAIL:] if len(data) >= TAIL else (tail + data)[-TAIL:]
        if self.setup is not None:
            self._setup(data)
        if count:
            now = time.time()
            group.deliveries += count
            group.t_last = now
            at = data.rfind(TS)
            if at >= 0:
                at += len(TS)
                end = data.find(b'"', at)
                if end > 0:
                    bucket = int((now - float(data[at:end])) / BUCKET_S)
                    group.hist[min(max(bucket, 0), BUCKETS)] += 1

    def _setup(self, data: bytes) -> None:
        buf = self.setup
        assert buf is not None
        buf += data
        if not self.connected.done():
            if not buf.startswith(b"HTTP/1.1 200"):
                if b"\r\n\r\n" in buf:
                    line = bytes(buf[: buf.find(b"\r\n")])
                    self.connected.set_exception(ConnectionError(f"{self.cid}: {line!r}"))
                    self.setup = None
                return
            if CONNECTED in buf:
                self.connected.set_result(None)
        if not self.synced.done() and buf.count(self.ready) >= self.synced_needed:
            self.synced.set_result(None)
            self.setup = None
            if self.stall and self.transport is not None:
                self.transport.pause_reading()
        elif len(buf) > 4 << 20:
            del buf[: len(buf) - 4096]  # a huge snapshot: keep only what the markers need


class SubscribePool:
    """A few keep-alive connections carrying ``POST /subscribe`` one request at a time each."""

    def __init__(self, host: str, port: int, size: int = SUBSCRIBE_POOL) -> None:
        self.host = host
        self.port = port
        self.queue: asyncio.Queue[tuple[bytes, asyncio.Future[int]]] = asyncio.Queue()
        self.workers = [asyncio.create_task(self._worker()) for _ in range(size)]

    async def subscribe(self, body: dict[str, Any]) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.queue.put((json.dumps(body).encode(), fut))
        return await fut

    async def _worker(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while True:
                payload, fut = await self.queue.get()
                try:
                    if writer is None or reader is None or writer.is_closing():
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(
                        b"POST /api/watch/subscribe HTTP/1.1\r\nHost: %s:%d\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (self.host.encode(), self.port, len(payload), payload)
                    )
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    await reader.readexactly(length)
                    if not fut.done():
                        fut.set_result(status)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    if not fut.done():
                        fut.set_exception(ConnectionError(f"subscribe failed: {exc!r}"))
        finally:
            if writer is not None:
                writer.close()

    async def close(self) -> None:
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


class LoadGen:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.groups: dict[str, Group] = {}
        self.pool: SubscribePool | None = None

    def group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(name)
        return self.groups[name]

    async def _open(self, client: StreamClient) -> None:
        loop = asyncio.get_running_loop()
        if client.stall:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (self.host, self.port))
            except OSError:
                sock.close()
                raise
            await loop.create_connection(lambda: client, sock=sock)
        else:
            await loop.create_connection(lambda: client, self.host, self.port)

    async def _client(
        self, client: StreamClient, subs: list[dict[str, Any]], sem: asyncio.Semaphore
    ) -> str | None:
        client.synced_needed = len(subs)
        try:
            async with sem:
                await self._open(client)
                await asyncio.wait_for(client.connected, STEP_TIMEOUT_S)
            assert self.pool is not None
            for sub in subs:
                status = await asyncio.wait_for(self.pool.subscribe({"clientId": client.cid, **sub}), 60)
                if status != 200:
                    return f"subscribe {client.cid}: HTTP {status}"
            await asyncio.wait_for(client.synced, STEP_TIMEOUT_S * 2)
        except (OSError, TimeoutError) as exc:
            return f"{client.cid}: {exc!r}"
        return None

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.group(str(cmd["group"]))
        subs: list[dict[str, Any]] = cmd["subs"]
        start, stop = int(cmd["start"]), int(cmd["stop"])
        if self.pool is None:
            self.pool = SubscribePool(self.host, self.port)
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        began = time.monotonic()
        clients = [
            StreamClient(
                cid=f"{cmd['prefix']}-{i:06d}",
                host=self.host,
                port=self.port,
                group=group,
                stall=bool(cmd.get("stall", False)),
                ready=b"event: " + str(cmd.get("ready", "synced")).encode(),
            )
            for i in range(start, stop)
        ]
        group.clients.extend(clients)
        coros: list[Awaitable[str | None]] = [
            self._client(c, subs if cmd.get("allSubs") else [subs[i % len(subs)]], sem)
            for i, c in zip(range(start, stop), clients, strict=True)
        ]
        errors = [e for e in await asyncio.gather(*coros) if e]
        return {
            "connected": len(clients) - len(errors),
            "errors": len(errors),
            "firstError": errors[0] if errors else None,
            "seconds": round(time.monotonic() - began, 3),
        }

    async def wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.group(str(cmd["group"]))
        expect = int(cmd["expect"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(cmd.get("timeout", 60))
        idle_s = float(cmd.get("idle", 5))
        last_count, last_change = -1, loop.time()
        while group.deliveries < expect:
            now = loop.time()
            if group.deliveries != last_count:
                last_count, last_change = group.deliveries, now
            if now > deadline or now - last_change > idle_s:
                break
            await asyncio.sleep(0.02)
        hist = [[b, n] for b, n in enumerate(group.hist) if n]
        return {
            "deliveries": group.deliveries,
            "chunks": group.chunks,
            "tLast": group.t_last,
            "hist": hist,
            "open": sum(1 for c in group.clients if c.transport is not None),
        }

    async def close(self, only: str | None = None) -> dict[str, Any]:
        closed = 0
        for group in self.groups.values():
            if only is not None and group.name != only:
                continue
            for client in group.clients:
                if client.transport is not None:
                    client.transport.abort()
                    closed += 1
            group.clients.clear()
        if only is None and self.pool is not None:
            await self.pool.close()
            self.pool = None
        await asyncio.sleep(0.1)
        return {"closed": closed}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        if name == "connect":
            return await self.connect(cmd)
        if name == "arm":
            for group in self.groups.values():
                group.reset()
            return {"armed": True}
        if name == "wait":
            return await self.wait(cmd)
        if name == "close":
            return await self.close(cmd.get("group"))
        return {"error": f"unknown command {name!r}"}


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gen = LoadGen(host, port)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                break
            try:
                reply = await gen.handle(cmd)
            except Exception as exc:  # reported to the orchestrator, which decides
                reply = {"error": repr(exc)}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await gen.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE load generator for the watchgw benchmark")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
