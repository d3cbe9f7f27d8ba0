"""The bytes on the wire: headers, first frames, ids, heartbeats; read by curl and a raw socket."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import make_config
from tests.fakes import make_object
from tests.web.conftest import Gateway
from watchgw.client.sse import SSEParser


async def open_raw_stream(
    url: str, cid: str, *, http10: bool = False
) -> tuple[asyncio.StreamReader, Any, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    version = "1.0" if http10 else "1.1"
    writer.write(f"GET /api/watch/stream?cid={cid} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


async def test_headers_and_first_frames(gateway: Gateway) -> None:
    reader, writer, head = await open_raw_stream(gateway.url, "raw-client-1")
    try:
        text = head.decode().lower()
        assert text.startswith("http/1.1 200")
        assert "content-type: text/event-stream" in text
        assert "cache-control: no-cache" in text
        assert "x-accel-buffering: no" in text
        assert "transfer-encoding: chunked" in text
        first = await reader.readuntil(b"\n\n\r\n")
        payload = dechunk(first)
        assert payload.startswith(b"retry: 2000\nid: ")
        assert b"\nevent: connected\ndata: " in payload
    finally:
        writer.close()
        await writer.wait_closed()


async def test_http10_client_gets_unchunked_frames(gateway: Gateway) -> None:
    reader, writer, head = await open_raw_stream(gateway.url, "raw-client-10", http10=True)
    try:
        assert b"chunked" not in head.lower()
        client_id = "raw-client-10"
        body = await reader.readuntil(b"\n\n")
        assert body.startswith(b"retry: ")
        channel_fields = {"resourceType": "api/v1/secrets"}
        gw_session = gateway.hub.sessions[client_id]
        channel = gateway.hub.subscribe(gw_session, _target(channel_fields))
        more = await reader.readuntil(b"\n\n")
        assert more.startswith(b"id: ")
        assert b"event: subscribed" in more
        assert channel.encode() in more
    finally:
        writer.close()
        await writer.wait_closed()


def _target(fields: dict[str, str]) -> Any:
    from watchgw.hub.keys import target_from_fields

    return target_from_fields(fields)


async def test_heartbeat_comments(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(make_config(limits={"heartbeat_s": 0.1}))
    reader, writer, _head = await open_raw_stream(gateway.url, "raw-client-2")
    try:
        parser = SSEParser()
        async with asyncio.timeout(5):
            while parser.comments < 2:
                parser.feed(await reader.read(4096))
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_reads_the_stream(gateway: Gateway) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sN",
        "--max-time",
        "10",
        f"{gateway.url}/api/watch/stream?cid=curl-client-1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        parser = SSEParser()
        events = parser.feed(await asyncio.wait_for(proc.stdout.readuntil(b"\n\n"), 5))
        assert events[0].event == "connected"
        session = gateway.hub.sessions["curl-client-1"]
        channel = gateway.hub.subscribe(session, _target({"resourceType": "api/v1/secrets"}))
        gateway.upstreams.for_key(channel).listed(make_object("x"), rv=1)
        seen: list[tuple[str, str | None]] = []
        async with asyncio.timeout(5):
            while "synced" not in [event for event, _ in seen]:
                for event in parser.feed(await proc.stdout.read(4096)):
                    seen.append((event.event, event.id))
        assert [event for event, _ in seen] == ["subscribed", "watch", "synced"]
        subscribed_id, snapshot_id, synced_id = (fid for _, fid in seen)
        # Snapshot frames carry no id (their bytes are shared by every client that snapshots
        # the channel): the position stays at the frame before, never a half-applied snapshot.
        assert snapshot_id is None
        assert subscribed_id is not None
        assert synced_id is not None
        assert int(synced_id) > int(subscribed_id)
    finally:
        proc.kill()
        await proc.wait()
