"""A client that stops reading delays nobody, stays bounded, and converges once it reads again."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from tests.conftest import make_config
from tests.fakes import make_object
from tests.web.conftest import Gateway
from watchgw.client.client import WatchClient
from watchgw.client.sse import SSEParser
from watchgw.hub.keys import target_from_fields
from watchgw.hub.session import SNAPSHOT_PART_BYTES, WRITE_HIGH_WATER

SECRETS = {"resourceType": "api/v1/secrets", "namespace": "default"}
BUFFER = 64 * 1024


async def stalled_stream(url: str, cid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP/1.0 stream (plain SSE bytes) on a socket with a tiny receive buffer, not read."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    writer.write(f"GET /api/watch/stream?cid={cid} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await reader.readuntil(b"event: connected")
    return reader, writer


async def test_stalled_reader_is_bounded_and_resyncs(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(
        make_config(limits={"client_buffer_bytes": BUFFER, "stalled_client_timeout_s": 30})
    )
    fast = await gateway.client()
    channel = await fast.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=1)
    await fast.wait_synced(channel)

    reader, writer = await stalled_stream(gateway.url, "slow-client-1")
    try:
        slow = gateway.hub.sessions["slow-client-1"]
        gateway.hub.subscribe(slow, target_from_fields(SECRETS))
        # Many distinct objects (coalescing cannot help), ~1 KB each, far beyond every buffer.
        pad = "x" * 1000
        rv = 1
        for round_ in range(8):
            for i in range(1000):
                rv += 1
                upstream.emit("ADDED" if round_ == 0 else "MODIFIED", make_object(f"o{i}", rv=rv, pad=pad))
            # Let the loop write to the sockets between rounds, as a live upstream would.
            await fast.wait_for(lambda c, n=rv: c.resource_versions.get(channel) == str(n), timeout=20)
            # Bounded: the buffer (plus one frame), and in the transport at most one snapshot
            # part beyond its high-water mark (snapshots are written in parts, never queued whole).
            snapshot = sum(len(e.object_json) for e in upstream.objects.values())
            transport = slow.transport
            in_transport = transport.get_write_buffer_size() if transport is not None else 0
            assert slow.pending_bytes <= BUFFER + 2048
            assert in_transport <= WRITE_HIGH_WATER + SNAPSHOT_PART_BYTES + BUFFER
            pushed = (round_ + 1) * snapshot
            if round_ >= 3:
                assert slow.pending_bytes + in_transport < pushed / 2
        assert slow.resyncs >= 1
        expected = {f"default/o{i}" for i in range(1000)}
        assert set(fast.objects(channel)) == expected, "the fast client got everything"

        # The slow client reads again: it converges, through resync + snapshot.
        state = WatchClient(gateway.url, client_id="slow-client-1")
        parser = SSEParser()
        kinds: list[str] = []
        async with asyncio.timeout(20):
            while channel not in state.synced or state.objects(channel) != fast.objects(channel):
                chunk = await reader.read(2**16)
                assert chunk, "stream ended"
                for event in parser.feed(chunk):
                    kinds.append(event.event)
                    state.apply(event)
        assert "resync" in kinds
        assert state.objects(channel)["default/o5"]["metadata"]["resourceVersion"] == str(1 + 7 * 1000 + 6)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_session_expires_when_not_resumed(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(make_config(limits={"session_ttl_s": 0.2, "grace_period_s": 0}))
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    await client.disconnect()
    await gateway.hub.wait_for(lambda: not gateway.hub.sessions and upstream.cancelled)
    again = await gateway.client(connect=False)
    again.client_id = client.client_id
    await again.connect(resume=True)
    assert again.connected is not None
    assert again.connected["clientId"] == client.client_id
    assert again.connected["resumed"] is False


async def test_a_client_gone_before_its_stream_started_still_expires(
    gateway_factory: Callable[..., Any],
) -> None:
    gateway: Gateway = await gateway_factory(make_config(limits={"session_ttl_s": 0.2}))
    host, port = gateway.url.removeprefix("http://").split(":")
    for i in range(5):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /api/watch/stream?cid=vanishing-{i:03d} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        writer.transport.abort()  # gone at once, maybe before the handler even ran
    await gateway.hub.wait_for(lambda: not gateway.hub.sessions)
