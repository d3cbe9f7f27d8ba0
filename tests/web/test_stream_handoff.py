"""A stream's connection after its start belongs to the session and a small protocol, not to
aiohttp (web/handoff.py): what an idle client costs, and what still works on such a connection."""

from __future__ import annotations

import asyncio
import gc

from tests.fakes import make_object
from tests.web.conftest import Gateway
from tests.web.test_wire import open_raw_stream
from watchgw.client.sse import SSEParser
from watchgw.hub.keys import target_from_fields
from watchgw.web.connections import GuardedRequestHandler

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-abc", "namespace": "default"}


def _request_handlers() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, GuardedRequestHandler))


async def test_idle_streams_keep_no_aiohttp_request_objects(gateway: Gateway) -> None:
    # The per-request objects (parser, request, response, tasks) were most of an idle client's
    # memory; once streams have started, none of them may be left.
    before = _request_handlers()
    clients = [await gateway.client() for _ in range(20)]
    channel = await clients[0].subscribe(**SECRETS)
    gateway.upstreams.for_key(channel).listed(make_object("a"), rv=1)
    await clients[0].wait_synced(channel)
    # One is the kept-alive connection the subscribe came on; without the hand-off, 21.
    assert _request_handlers() <= before + 1, "aiohttp still holds objects of started streams"
    assert gateway.hub.stats()["streams"] == 20
    # And the streams still work: a live event reaches a client, a new subscribe too.
    channel = await clients[19].subscribe(**SECRETS)
    await clients[19].wait_synced(channel)
    gateway.upstreams.for_key(channel).emit("ADDED", make_object("b", rv=2))
    for client in (clients[0], clients[19]):
        await client.wait_for(lambda c: "default/b" in c.objects(channel))


async def test_bytes_a_client_sends_on_its_stream_are_ignored(gateway: Gateway) -> None:
    reader, writer, _head = await open_raw_stream(gateway.url, "chatty-client-1")
    try:
        parser = SSEParser()
        assert parser.feed(await reader.readuntil(b"\n\n\r\n"))[0].event == "connected"
        # An SSE client sends nothing after its request; one that does (even another request)
        # neither disturbs its stream nor gets an answer on it.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 100_000)
        await writer.drain()
        session = gateway.hub.sessions["chatty-client-1"]
        channel = gateway.hub.subscribe(session, target_from_fields(SECRETS))
        gateway.upstreams.for_key(channel).listed(make_object("a"), rv=1)
        seen: list[str] = []
        async with asyncio.timeout(5):
            while "synced" not in seen:
                seen += [e.event for e in parser.feed(await reader.read(65536))]
        assert seen == ["subscribed", "watch", "synced"]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_client_that_half_closes_its_stream_is_gone(gateway: Gateway) -> None:
    reader, writer, _head = await open_raw_stream(gateway.url, "leaving-client-1")
    try:
        await reader.readuntil(b"\n\n\r\n")
        assert gateway.hub.sessions["leaving-client-1"].attached
        writer.write_eof()  # no more requests: for a stream, the client has left
        await gateway.hub.wait_for(lambda: not gateway.hub.sessions["leaving-client-1"].attached)
        # The server ends the chunked body and closes its side.
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest.endswith(b"0\r\n\r\n") or rest == b""
    finally:
        writer.close()
        await writer.wait_closed()
