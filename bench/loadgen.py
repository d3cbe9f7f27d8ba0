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

Behind a load balancer (``connect`` options):

- ``"byReplica": true``: once ``connected`` names the replica holding the stream, the client moves
  to group ``G@<replica>``, so each replica's clients have a latency histogram of their own.
- ``"reconnectInto": R``: when a ready client's stream ends, it reconnects with the same cid (a
  bounded retry with backoff), moves to group ``R`` (the histograms of the clients that stayed are
  not mixed with those of clients that were away), subscribes again to the same channels without a
  ``resourceVersion`` and waits for its ``synced`` events. ``{"cmd": "reconnects", "group": R}``
  answers how many streams ended, were ready again or gave up, and when.

Every request carries ``?cid=``, as the shipped clients do: a load balancer hashing on it sends a
client's subscribes to the replica holding its stream. With ``--relayed`` (streams through nginx)
response bodies go through a small ``Transfer-Encoding: chunked`` decoder: nginx re-chunks what it
relays at its own read boundaries, so a chunk header may fall in the middle of an event. The
gateway itself writes whole frames in each chunk: straight from it, the raw bytes are counted.

Counting is cheap on purpose: per received chunk, ``bytes.count`` of ``event: watch`` (a short
tail of the previous chunk covers markers split across reads) and one latency sample, from the last
``bench-ts`` timestamp in the chunk (so a chunk carrying many frames yields one, the newest, sample).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

WATCH = b"event: watch"
SYNCED = b"event: synced"
CONNECTED = b"event: connected"
REPLICA = b'"replica":"'
TS = b'"bench-ts":"'
TAIL = len(WATCH) - 1
BUCKET_S = 0.0001
BUCKETS = 600_000  # 60 s at 0.1 ms
CONNECT_CONCURRENCY = 200
SUBSCRIBE_POOL = 8
STEP_TIMEOUT_S = 30.0
STALL_RCVBUF = 4096
#: A response head, or the body before ``connected``, longer than this is not a gateway's.
MAX_HEAD_BYTES = 16384
#: A reconnecting client's retries: the first wait, doubled up to the cap, at most this many
#: attempts and this long in all (EventSource retries forever; a benchmark must end).
RECONNECT_BACKOFF_S = 0.05
RECONNECT_BACKOFF_MAX_S = 1.0
RECONNECT_ATTEMPTS = 30
RECONNECT_WITHIN_S = 110.0
#: Subscribe connections for reconnecting clients, each of which sends its subscribes at once (as
#: watch-client.js does after "connected"): a browser has a connection of its own, so a pool as
#: small as the initial connect's would make the load generator, not the servers, the bottleneck.
RECONNECT_POOL = 200


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _settle(fut: asyncio.Future[None], exc: BaseException) -> None:
    """Fail ``fut`` unless it is done; marked as retrieved, so a future nobody awaits any more (a
    client that failed before it) is not reported at exit. An awaiting caller still gets ``exc``."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()


class Group:
    """Counters shared by the clients of one group (e.g. the fast readers)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: list[StreamClient] = []
        self.reset()

    def reset(self) -> None:
        self.deliveries = 0
        self.chunks = 0
        self.bytes = 0
        self.t_last = 0.0
        self.hist = [0] * (BUCKETS + 1)


class StreamClient(asyncio.Protocol):
    """One SSE stream. Setup (connected / synced) looks for markers; afterwards only counts."""

    def __init__(
        self,
        *,
        cid: str,
        host: str,
        port: int,
        group: Group,
        stall: bool,
        subs: list[dict[str, Any]],
        ready: bytes = SYNCED,
        relayed: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.cid = cid
        self.relayed = relayed
        self.host = host
        self.port = port
        self.group = group
        self.stall = stall
        self.subs = subs
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.synced: asyncio.Future[None] = loop.create_future()
        self.synced_needed = len(subs)
        self.head: bytearray | None = bytearray()
        """The response head while it is incomplete."""
        self.chunked = False
        self.chunk_left = 0
        """Payload bytes of the current chunk still to come."""
        self.partial = b""
        """An incomplete chunk header, kept for the next read."""
        self.crlf_left = 0
        """Bytes of the CRLF closing a chunk still to skip at the start of the next read."""
        self.setup: bytearray | None = bytearray()
        """The body until ``connected`` is complete."""
        self.setting_up = True
        self.ready_seen = 0
        self.ready_tail = b""
        self.tail = b""
        self.replica = ""
        self.on_connected: Callable[[StreamClient], None] | None = None
        self.on_lost: Callable[[StreamClient], None] | None = None
        self.is_ready = False

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
            _settle(fut, ConnectionError(f"{self.cid}: stream closed"))
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None and self.is_ready:
            on_lost(self)

    def abort(self) -> None:
        """Close the stream at once, without reconnecting."""
        self.on_lost = None
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            data = self._head(data)
            if not data:
                return
        if self.relayed and self.chunked:
            self._relayed(data)
            return
        # Straight from the gateway, which writes whole frames in each chunk: no marker or
        # timestamp is ever cut by a chunk header, so the raw bytes are counted as they are.
        group = self.group
        group.chunks += 1
        group.bytes += len(data)
        count = data.count(WATCH)
        tail = self.tail
        if tail:
            count += (tail + data[:TAIL]).count(WATCH)
        self.tail = data[-TAIL:] if len(data) >= TAIL else (tail + data)[-TAIL:]
        if self.setting_up:
            self._setup(data)
        if count:
            self._delivered(count, data, 0, len(data))

    def _relayed(self, data: bytes) -> None:
        """A chunked body relayed by nginx, which re-chunks at its own read boundaries: a chunk
        header may fall inside a marker or a timestamp. The payload's spans between the chunk
        headers are counted in place (not copied), with the junctions between them."""
        if self.partial:
            data = self.partial + data
            self.partial = b""
        spans = self._one_chunk(data) or self._spans(data)
        if not spans:
            return
        group = self.group
        group.chunks += 1
        group.bytes += len(data)
        count = 0
        tail = self.tail
        for start, stop in spans:
            count += data.count(WATCH, start, stop)
            if tail:  # a marker across the previous span (or read) and this one
                count += (tail + data[start : start + TAIL]).count(WATCH)
            tail = data[stop - TAIL : stop] if stop - start >= TAIL else (tail + data[start:stop])[-TAIL:]
        self.tail = tail
        if self.setting_up:
            whole = len(spans) == 1 and spans[0] == (0, len(data))
            self._setup(data if whole else self._payload(data, spans))
        if count:
            self._delivered(count, data, spans[0][0], spans[-1][1])

    def _delivered(self, count: int, data: bytes, start: int, stop: int) -> None:
        """``count`` watch events arrived: counted, and one latency sample from the newest
        ``bench-ts`` in ``data[start:stop]``."""
        group = self.group
        now = time.time()
        group.deliveries += count
        group.t_last = now
        at = data.rfind(TS, start, stop)
        if at >= 0:
            at += len(TS)
            end = data.find(b'"', at)
            if end > 0:
                try:
                    bucket = int((now - float(data[at:end])) / BUCKET_S)
                except ValueError:  # a chunk header inside the timestamp: no sample this time
                    return
                group.hist[min(max(bucket, 0), BUCKETS)] += 1

    def _head(self, data: bytes) -> bytes:
        """Collect the response head; the body bytes after it (none while it is incomplete)."""
        head = self.head
        assert head is not None
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                self._fail(f"response head over {MAX_HEAD_BYTES} bytes")
            return b""
        self.head = None
        status = bytes(head[: head.find(b"\r\n")])
        if not status.startswith(b"HTTP/1.1 200"):
            self._fail(repr(status))
            return b""
        self.chunked = b"\r\ntransfer-encoding: chunked" in head[:end].lower()
        return bytes(head[end + 4 :])

    def _one_chunk(self, data: bytes) -> list[tuple[int, int]] | None:
        """The usual read from the gateway itself: exactly one whole chunk (it writes a batch of
        frames as one); None for anything else."""
        if self.chunk_left or self.crlf_left or not data.endswith(b"\r\n"):
            return None
        eol = data.find(b"\r\n", 0, 10)
        if eol <= 0:
            return None
        try:
            size = int(data[:eol], 16)
        except ValueError:  # a chunk extension, or not a header: the general path decides
            return None
        start = eol + 2
        return [(start, start + size)] if start + size + 2 == len(data) and size else None

    def _spans(self, data: bytes) -> list[tuple[int, int]]:
        """(start, stop) of each piece of payload in ``data``, between its chunk framing. The
        state is carried across reads: payload bytes of the current chunk still to come, the
        bytes of the CRLF after it still to skip, an incomplete chunk header (``partial``)."""
        end = len(data)
        pos = min(self.crlf_left, end)
        self.crlf_left -= pos
        left = self.chunk_left
        if not pos and left >= end:  # the whole read is inside one chunk
            self.chunk_left = left - end
            if left == end:
                self.crlf_left = 2
            return [(0, end)]
        spans: list[tuple[int, int]] = []
        while pos < end:
            if left:
                stop = pos + left
                if stop > end:
                    spans.append((pos, end))
                    left = stop - end
                    break
                spans.append((pos, stop))
                left = 0
                pos = stop + 2  # the CRLF that ends a chunk's payload
                if pos > end:
                    self.crlf_left = pos - end
                    break
                continue
            eol = data.find(b"\r\n", pos)  # a chunk header: the size in hex, CRLF
            if eol < 0:
                self.partial = data[pos:]
                break
            left = int(data[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if left == 0:  # the last chunk: the response ended
                break
        self.chunk_left = left
        return spans

    @staticmethod
    def _payload(data: bytes, spans: list[tuple[int, int]]) -> bytes:
        return b"".join(data[start:stop] for start, stop in spans)

    def _fail(self, why: str) -> None:
        self.setting_up = False
        _settle(self.connected, ConnectionError(f"{self.cid}: {why}"))
        _settle(self.synced, ConnectionError(f"{self.cid}: {why}"))
        if self.transport is not None:
            self.transport.close()

    def _setup(self, data: bytes) -> None:
        if self.setup is not None:
            buf = self.setup
            buf += data
            at = buf.find(CONNECTED)
            end = buf.find(b"\n\n", at) if at >= 0 else -1
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._fail(f"no complete 'connected' event in the first {MAX_HEAD_BYTES} bytes")
                return
            event = bytes(buf[at:end])
            name = event.find(REPLICA)
            if name >= 0:
                name += len(REPLICA)
                self.replica = event[name : event.find(b'"', name)].decode()
            self.setup = None
            data = bytes(buf[end:])
            self.connected.set_result(None)
            if self.on_connected is not None:
                self.on_connected(self)
        # The ready markers (``synced`` of each subscription), counted as they go by: a snapshot
        # may be megabytes, so nothing of it is kept but a tail for markers split across reads.
        marker = self.ready
        keep = len(marker) - 1
        tail = self.ready_tail
        seen = data.count(marker)
        if tail:
            seen += (tail + data[:keep]).count(marker)
        self.ready_tail = data[-keep:] if len(data) >= keep else (tail + data)[-keep:]
        self.ready_seen += seen
        if self.ready_seen >= self.synced_needed:
            self.setting_up = False
            self.is_ready = True
            if not self.synced.done():
                self.synced.set_result(None)
            if self.stall and self.transport is not None:
                self.transport.pause_reading()


class SubscribePool:
    """A few keep-alive connections carrying ``POST /subscribe`` one request at a time each."""

    def __init__(self, host: str, port: int, size: int = SUBSCRIBE_POOL) -> None:
        self.host = host
        self.port = port
        self.queue: asyncio.Queue[tuple[str, bytes, asyncio.Future[int]]] = asyncio.Queue()
        self.workers = [asyncio.create_task(self._worker()) for _ in range(size)]
        self.round_trips: list[float] = []
        """Seconds from writing each answered request to its whole answer (no queueing here)."""

    async def subscribe(self, cid: str, body: dict[str, Any]) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.queue.put((cid, json.dumps(body).encode(), fut))
        return await fut

    async def _worker(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while True:
                cid, payload, fut = await self.queue.get()
                # A kept-alive connection may have been closed by the other side meanwhile (nginx
                # closes one after keepalive_requests): then once more on a new connection. The
                # retry is safe: subscribing twice to a channel is idempotent.
                for attempt in range(2):
                    reused = writer is not None and not writer.is_closing()
                    try:
                        if reader is None or writer is None or writer.is_closing():
                            reader, writer = await asyncio.open_connection(self.host, self.port)
                        sent = time.monotonic()
                        # ?cid= as the shipped clients send it: what a load balancer hashes on.
                        writer.write(
                            b"POST /api/watch/subscribe?cid=%s HTTP/1.1\r\nHost: %s:%d\r\n"
                            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                            % (cid.encode(), self.host.encode(), self.port, len(payload), payload)
                        )
                        head = await reader.readuntil(b"\r\n\r\n")
                        status = int(head.split(b" ", 2)[1])
                        length = 0
                        close = False
                        for line in head.split(b"\r\n"):
                            lower = line.lower()
                            if lower.startswith(b"content-length:"):
                                length = int(line.split(b":", 1)[1])
                            elif lower.startswith(b"connection:") and b"close" in lower:
                                close = True
                        await reader.readexactly(length)
                        self.round_trips.append(time.monotonic() - sent)
                        if close:
                            writer.close()
                            reader = writer = None
                        if not fut.done():
                            fut.set_result(status)
                        break
                    except (
                        OSError,
                        asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError,
                        ValueError,
                    ) as exc:
                        if writer is not None:
                            writer.close()
                        reader = writer = None
                        if reused and attempt == 0:
                            continue
                        if not fut.done():
                            fut.set_exception(ConnectionError(f"subscribe failed: {exc!r}"))
                        break
        finally:
            if writer is not None:
                writer.close()

    async def close(self) -> None:
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


class Reconnects:
    """What the streams of one reconnect group went through (wall-clock times, for the
    orchestrator to compare with the moment it caused the streams to end)."""

    def __init__(self) -> None:
        self.lost = 0
        self.ready = 0
        self.failed = 0
        self.attempts = 0
        self.first_error: str | None = None
        self.t_lost: list[float] = []
        self.t_connected: list[float] = []
        self.t_ready: list[float] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.pool: SubscribePool | None = None

    def report(self, times: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "lost": self.lost,
            "ready": self.ready,
            "failed": self.failed,
            "attempts": self.attempts,
            "firstError": self.first_error,
        }
        if times:
            out.update(tLost=self.t_lost, tConnected=self.t_connected, tReady=self.t_ready)
            out["subscribeS"] = self.pool.round_trips if self.pool is not None else []
        return out


class LoadGen:
    def __init__(self, host: str, port: int, *, relayed: bool = False) -> None:
        self.host = host
        self.port = port
        self.relayed = relayed
        self.groups: dict[str, Group] = {}
        self.pool: SubscribePool | None = None
        self.reconnects: dict[str, Reconnects] = {}
        self.reconnect_sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

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
        self,
        client: StreamClient,
        sem: asyncio.Semaphore,
        connected_at: list[float] | None = None,
        pool: SubscribePool | None = None,
    ) -> str | None:
        """Open, wait for ``connected``, subscribe, wait until ready: an error, or None. With a
        ``pool`` of its own (reconnects) all subscribes go at once; else one after the other."""
        try:
            async with sem:
                await self._open(client)
                await asyncio.wait_for(client.connected, STEP_TIMEOUT_S)
            if connected_at is not None:
                connected_at.append(time.time())
            if pool is None:
                assert self.pool is not None
                statuses = []
                for sub in client.subs:
                    statuses.append(
                        await asyncio.wait_for(
                            self.pool.subscribe(client.cid, {"clientId": client.cid, **sub}), 60
                        )
                    )
                    if statuses[-1] != 200:
                        break
            else:
                statuses = await asyncio.wait_for(
                    asyncio.gather(
                        *(pool.subscribe(client.cid, {"clientId": client.cid, **s}) for s in client.subs)
                    ),
                    60,
                )
            failed = [status for status in statuses if status != 200]
            if failed:
                return f"subscribe {client.cid}: HTTP {failed[0]}"
            await asyncio.wait_for(client.synced, STEP_TIMEOUT_S * 2)
        except (OSError, TimeoutError) as exc:
            return f"{client.cid}: {exc!r}"
        return None

    def _regroup(self, client: StreamClient) -> None:
        """``byReplica``: into the group of the replica that ``connected`` named."""
        old = client.group
        new = self.group(f"{old.name}@{client.replica}")
        if new is not old:
            old.clients.remove(client)
            new.clients.append(client)
            client.group = new

    def _lost(self, into: str, client: StreamClient) -> None:
        stats = self.reconnects.setdefault(into, Reconnects())
        stats.lost += 1
        stats.t_lost.append(time.time())
        task = asyncio.get_running_loop().create_task(self._reconnect(client, into, stats))
        stats.tasks.add(task)
        task.add_done_callback(stats.tasks.discard)

    async def _reconnect(self, lost: StreamClient, into: str, stats: Reconnects) -> None:
        """The same cid again, its channels subscribed again, until synced: bounded retries.

        No ``resourceVersion`` on the subscribes: every channel's full snapshot, the worst case
        of a storm (a client that kept its positions would get only what changed)."""
        group = self.group(into)
        if stats.pool is None:
            stats.pool = SubscribePool(self.host, self.port, RECONNECT_POOL)
        subs = [{k: v for k, v in sub.items() if k != "resourceVersion"} for sub in lost.subs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WITHIN_S
        backoff = RECONNECT_BACKOFF_S
        error = "no attempt"
        for _ in range(RECONNECT_ATTEMPTS):
            stats.attempts += 1
            client = StreamClient(
                cid=lost.cid,
                host=self.host,
                port=self.port,
                relayed=self.relayed,
                group=group,
                stall=False,
                subs=subs,
                ready=lost.ready,
            )
            group.clients.append(client)
            try:
                async with asyncio.timeout_at(deadline):
                    failed = await self._client(client, self.reconnect_sem, stats.t_connected, stats.pool)
            except TimeoutError:
                failed = f"{client.cid}: not ready again within {RECONNECT_WITHIN_S} s"
            if failed is None:
                stats.ready += 1
                stats.t_ready.append(time.time())
                return
            error = failed
            client.abort()
            group.clients.remove(client)
            if loop.time() + backoff > deadline:
                break
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, RECONNECT_BACKOFF_MAX_S)
        stats.failed += 1
        if stats.first_error is None:
            stats.first_error = error

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
                relayed=self.relayed,
                group=group,
                stall=bool(cmd.get("stall", False)),
                subs=subs if cmd.get("allSubs") else [subs[i % len(subs)]],
                ready=b"event: " + str(cmd.get("ready", "synced")).encode(),
            )
            for i in range(start, stop)
        ]
        into = cmd.get("reconnectInto")
        for client in clients:
            if cmd.get("byReplica"):
                client.on_connected = self._regroup
            if into:
                client.on_lost = functools.partial(self._lost, str(into))
        group.clients.extend(clients)
        coros: list[Awaitable[str | None]] = [self._client(c, sem) for c in clients]
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
            "bytes": group.bytes,
            "tLast": group.t_last,
            "hist": hist,
            "open": sum(1 for c in group.clients if c.transport is not None),
        }

    async def close(self, only: str | None = None) -> dict[str, Any]:
        # Reconnects into a closed group stop first, so none opens a stream after the close.
        for name in [n for n in self.reconnects if only is None or n == only]:
            stats = self.reconnects.pop(name)
            for task in stats.tasks:
                task.cancel()
            await asyncio.gather(*stats.tasks, return_exceptions=True)
            if stats.pool is not None:
                await stats.pool.close()
        closed = 0
        for group in self.groups.values():
            if only is not None and group.name != only:
                continue
            for client in group.clients:
                if client.transport is not None:
                    closed += 1
                client.abort()
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
        if name == "reconnects":
            stats = self.reconnects.get(str(cmd["group"])) or Reconnects()
            return stats.report(bool(cmd.get("times")))
        if name == "close":
            return await self.close(cmd.get("group"))
        return {"error": f"unknown command {name!r}"}


async def serve(host: str, port: int, relayed: bool) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gen = LoadGen(host, port, relayed=relayed)
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
    parser.add_argument(
        "--relayed",
        action="store_true",
        help="the streams come through a proxy that re-chunks them (nginx): decode the chunking",
    )
    args = parser.parse_args()
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.relayed))


if __name__ == "__main__":
    main()
