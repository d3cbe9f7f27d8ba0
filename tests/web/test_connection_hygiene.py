"""What a connection may cost before it is a stream: head and body timeouts, idle keep-alive,
the pending-connection cap (``web/connections.py``); JSON-only POST bodies; unsubscribe of a
channel the client does not hold. Raw sockets on 127.0.0.1, so nothing in between completes or
times out a request for the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_config
from tests.web.conftest import Gateway
from watchgw.client.client import WatchClient

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-abc", "namespace": "default"}
CID = "hygiene-client-1"


class Conn:
    """One raw HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        async with asyncio.timeout(timeout):
            try:
                return await self.reader.read()
            except ConnectionResetError:
                return b""

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """One response with a Content-Length (the connection stays open)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head)
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.readuntil(marker)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


def error_code(raw: bytes) -> str:
    body = raw.split(b"\r\n\r\n", 1)[1]
    code: str = json.loads(body)["error"]["code"]
    return code


@pytest.fixture
async def conns() -> AsyncIterator[list[Conn]]:
    opened: list[Conn] = []
    yield opened
    for conn in opened:
        await conn.close()


async def start(gateway_factory: Callable[..., Any], **server: Any) -> Gateway:
    config = make_config(server=server, limits={"grace_period_s": 0.2, "session_ttl_s": 0.5})
    gateway: Gateway = await gateway_factory(config)
    return gateway


async def connect(gateway: Gateway, conns: list[Conn]) -> Conn:
    conn = await Conn.open(gateway.url)
    conns.append(conn)
    return conn


# ---------------------------------------------------------------------------- request heads
async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    gateway = await start(gateway_factory, header_timeout_s=0.3)
    conn = await connect(gateway, conns)
    assert await conn.until_closed() == b""  # nothing to answer: just closed


@pytest.mark.parametrize(
    "partial",
    [b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1"],
    ids=["request-line", "headers"],
)
async def test_a_half_sent_head_gets_408_and_the_connection_closes(
    gateway_factory: Callable[..., Any], conns: list[Conn], partial: bytes
) -> None:
    gateway = await start(gateway_factory, header_timeout_s=0.3)
    conn = await connect(gateway, conns)
    await conn.send(partial)
    answer = await conn.until_closed()
    status, headers = parse_head(answer.split(b"\r\n\r\n", 1)[0])
    assert (status, headers["connection"]) == (408, "close")
    assert error_code(answer) == "request_timeout"


async def test_a_trickled_head_does_not_extend_the_header_timeout(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    gateway = await start(gateway_factory, header_timeout_s=0.5)
    conn = await connect(gateway, conns)
    started = time.monotonic()
    await conn.send(b"GET /healthz HTTP/1.1\r\nX-Slow: ")

    async def trickle() -> None:  # slowloris: one byte every 50 ms, never the end of the head
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                await conn.send(b"a")
                await asyncio.sleep(0.05)  # the attack is the pace: nothing to await instead

    slowloris = asyncio.create_task(trickle())
    try:
        answer = await conn.until_closed()
    finally:
        slowloris.cancel()
        await asyncio.gather(slowloris, return_exceptions=True)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    gateway = await start(gateway_factory, keepalive_timeout_s=0.3)
    conn = await connect(gateway, conns)
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, _ = await conn.response()
    assert status == 200
    assert headers.get("connection") != "close"
    assert await conn.until_closed() == b""


async def test_the_header_timeout_does_not_close_an_idle_kept_alive_connection(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    gateway = await start(gateway_factory, header_timeout_s=0.2, keepalive_timeout_s=30)
    conn = await connect(gateway, conns)
    for _ in range(2):
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, _ = await conn.response()
        assert status == 200
        await asyncio.sleep(0.5)  # idle past the header timeout: nothing happens to await


async def test_a_stream_is_not_closed_by_the_header_timeout(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    config = make_config(server={"header_timeout_s": 0.2}, limits={"heartbeat_s": 0.6})
    gateway: Gateway = await gateway_factory(config)
    conn = await connect(gateway, conns)
    await conn.send(f"GET /api/watch/stream?cid={CID} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert b"event: connected" in await conn.read_until(b"event: connected")
    await conn.read_until(b": ping")  # 0.6 s in: well past the header timeout


# ---------------------------------------------------------------------------- bodies
async def test_a_body_not_received_in_time_gets_408_and_the_connection_closes_at_once(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    gateway = await start(gateway_factory, body_timeout_s=0.3)
    conn = await connect(gateway, conns)
    started = time.monotonic()
    await conn.send(
        b"POST /api/watch/subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 80\r\n\r\n{"clientId": "'
    )
    answer = await conn.until_closed()
    status, headers = parse_head(answer.split(b"\r\n\r\n", 1)[0])
    assert (status, headers["connection"], error_code(answer)) == (408, "close", "request_timeout")
    assert time.monotonic() - started < 3  # not after aiohttp's 10 s lingering read


# ---------------------------------------------------------------------------- pending connections
async def test_connections_beyond_max_pending_are_closed_at_once_and_streams_do_not_count(
    gateway_factory: Callable[..., Any], conns: list[Conn]
) -> None:
    gateway = await start(gateway_factory, max_pending_connections=2)
    stream = await connect(gateway, conns)
    await stream.send(f"GET /api/watch/stream?cid={CID} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await stream.read_until(b"event: connected")
    held = []
    for _ in range(2):  # the stream is not counted: two more fit, kept alive after a request
        conn = await connect(gateway, conns)
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await conn.response())[0] == 200
        held.append(conn)
    refused = await connect(gateway, conns)
    assert await refused.until_closed() == b""
    await held[0].close()
    for _ in range(100):  # until the server has seen the close (bounded)
        conn = await connect(gateway, conns)
        try:
            await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if (await conn.response())[0] == 200:
                break
        except (ConnectionError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.02)
    else:
        pytest.fail("no connection accepted after one was closed")
    assert not stream.reader.at_eof()


# ---------------------------------------------------------------------------- content type
async def post(
    gateway: Gateway, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/api/watch/{path}", data=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"],
)
@pytest.mark.parametrize("path", ["subscribe", "unsubscribe"])
async def test_post_bodies_must_be_application_json(
    gateway: Gateway, path: str, content_type: str | None
) -> None:
    client = await gateway.client()
    body = {"clientId": client.client_id, **SECRETS}
    if path == "unsubscribe":
        body = {"clientId": client.client_id, "channel": await client.subscribe(**SECRETS)}
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, answer = await post(gateway, path, json.dumps(body).encode(), headers)
    assert status == 415
    assert answer["error"]["code"] == "unsupported_media_type"
    assert "application/json" in answer["error"]["message"]


async def test_application_json_with_a_charset_is_accepted(gateway: Gateway) -> None:
    client = await gateway.client()
    body = json.dumps({"clientId": client.client_id, **SECRETS}).encode()
    status, answer = await post(
        gateway, "subscribe", body, {"Content-Type": "application/json; charset=utf-8"}
    )
    assert status == 200
    assert "channel" in answer


# ---------------------------------------------------------------------------- unsubscribe
async def test_unsubscribing_a_channel_not_held_is_404_unknown_channel(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    body = {"clientId": client.client_id, "channel": channel}
    json_header = {"Content-Type": "application/json"}
    assert await post(gateway, "unsubscribe", json.dumps(body).encode(), json_header) == (200, {"ok": True})
    status, answer = await post(gateway, "unsubscribe", json.dumps(body).encode(), json_header)
    assert (status, answer["error"]["code"]) == (404, "unknown_channel")
    other = {"clientId": client.client_id, "channel": "api/v1/configmaps::proj-abc:default::::"}
    status, answer = await post(gateway, "unsubscribe", json.dumps(other).encode(), json_header)
    assert (status, answer["error"]["code"]) == (404, "unknown_channel")
    await client.unsubscribe(channel)  # watchgw's client: already gone is not an error


async def test_a_channel_held_before_the_session_started_over_can_still_be_unsubscribed(
    gateway: Gateway, conns: list[Conn]
) -> None:
    first = await connect(gateway, conns)
    await first.send(f"GET /api/watch/stream?cid={CID} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await first.read_until(b"event: connected")
    json_header = {"Content-Type": "application/json"}
    status, answer = await post(
        gateway, "subscribe", json.dumps({"clientId": CID, **SECRETS}).encode(), json_header
    )
    assert status == 200
    channel = answer["channel"]
    gateway.upstreams.for_key(channel).listed(rv=1)
    await first.close()
    # The portal's client reconnects without Last-Event-ID: the session starts over, the
    # channel is parked for it, and it unsubscribes the keys it had.
    second = await connect(gateway, conns)
    await second.send(f"GET /api/watch/stream?cid={CID} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    connected = await second.read_until(b"\n\n")
    while b"event: connected" not in connected:
        connected = await second.read_until(b"\n\n")
    assert b'"resumed":false' in connected.replace(b" ", b"")
    session = gateway.hub.sessions[CID]
    assert channel in session.released
    assert channel not in session.channels
    body = json.dumps({"clientId": CID, "channel": channel}).encode()
    assert await post(gateway, "unsubscribe", body, json_header) == (200, {"ok": True})
    status, answer = await post(gateway, "unsubscribe", body, json_header)
    assert (status, answer["error"]["code"]) == (404, "unknown_channel")


async def test_watchgw_client_sends_json_and_ignores_an_unknown_channel(gateway: Gateway) -> None:
    async with WatchClient(gateway.url) as client:
        await client.connect()
        channel = await client.subscribe(**SECRETS)
        await client.unsubscribe(channel)
        await client.unsubscribe(channel)
