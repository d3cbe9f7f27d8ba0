"""The Python client behind replicas (``auto_reconnect``): what it does when its requests and its
stream reach different replicas, and when a request fails on the way (PROTOCOL.md section 4,
"Replicas").

A small server plays the load balancer and the replicas behind it as one client sees them: which
replica its current stream is on, which one the load balancer routes its next requests and
streams to, and which requests fail. ``tests/e2e/test_cluster.py`` does the same with real
replicas and nginx; here each case is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from watchgw.client.client import WatchClient, WatchClientError
from watchgw.hub.keys import channel_key, target_from_fields
from watchgw.web.server import running_app

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-a", "namespace": "default"}
ZONES = {"resourceType": "apis/dns.networking.miloapis.com/v1alpha1/dnszones", "projectId": "proj-a"}


class Replicas:
    def __init__(self) -> None:
        self.route = "replica-a"
        """Where the load balancer sends this client's new streams and its requests now."""
        self.stream_replica = ""
        """The replica of the stream that is open (it stays where it was opened)."""
        self.resume = False
        """Whether a stream opened with Last-Event-ID is answered "resumed": true."""
        self.failures: list[tuple[str, int]] = []
        """(path, status) answered to the next requests to that path, in order."""
        self.end_stream_on_failure = False
        """A failure is the replica dying: its stream ends too."""
        self.gate: asyncio.Event | None = None
        """When set up, subscribes are answered only once it is set (a slow replica)."""
        self.streams: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._id = 1000
        self.rv = 10

    async def _note(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    def subscribes(self) -> list[dict[str, Any]]:
        return [body for path, body in self.requests if path == "subscribe"]

    def unsubscribes(self) -> list[dict[str, Any]]:
        return [body for path, body in self.requests if path == "unsubscribe"]

    def frame(self, event: str, data: dict[str, Any]) -> bytes:
        self._id += 1
        return f"id: {self._id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()

    def end_stream(self) -> None:
        """The stream's replica dies: the stream ends."""
        self._frames.put_nowait(None)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        last_event_id = request.headers.get("Last-Event-ID")
        self._frames = frames = asyncio.Queue()
        self.stream_replica = self.route
        self.streams.append({"last_event_id": last_event_id, "replica": self.route})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        resumed = self.resume and last_event_id is not None
        connected = {"clientId": request.query["cid"], "resumed": resumed, "replica": self.route}
        await response.write(b"retry: 10\n" + self.frame("connected", connected))
        await self._note()
        while (frame := await frames.get()) is not None:
            await response.write(frame)
        return response

    async def _failure(self, path: str) -> web.Response | None:
        if not self.failures or self.failures[0][0] != path:
            return None
        _, status = self.failures.pop(0)
        if self.end_stream_on_failure:
            self.end_stream()
        if status == 502:  # what nginx answers when the replica died under the request
            return web.Response(status=502, text="<html>502 Bad Gateway</html>", content_type="text/html")
        if status == 404:
            error = {"code": "unknown_client", "message": "no live stream for this client id"}
        else:
            error = {"code": "draining", "message": "the server is shutting down; reconnect shortly"}
        return web.json_response({"error": error}, status=status)

    async def subscribe(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("subscribe", body))
        await self._note()
        if self.gate is not None:
            await self.gate.wait()
            self.requests.append(("subscribe answered", body))
        failure = await self._failure("subscribe")
        if failure is not None:
            return failure
        fields = {k: v for k, v in body.items() if k not in ("clientId", "resourceVersion", "snapshot")}
        key = channel_key(target_from_fields(fields))
        if self.route == self.stream_replica:  # else: a session without a stream, elsewhere
            obj = {"metadata": {"name": "a", "namespace": "default", "resourceVersion": str(self.rv)}}
            self._frames.put_nowait(self.frame("subscribed", {"channel": key}))
            watch = {"channel": key, "type": "ADDED", "object": obj, "resourceVersion": ""}
            self._frames.put_nowait(self.frame("watch", watch))
            self._frames.put_nowait(self.frame("synced", {"channel": key, "resourceVersion": str(self.rv)}))
        return web.json_response({"channel": key, "replica": self.route})

    async def unsubscribe(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("unsubscribe", body))
        await self._note()
        failure = await self._failure("unsubscribe")
        return failure or web.json_response({"ok": True})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/api/watch/stream", self.stream)
        app.router.add_post("/api/watch/subscribe", self.subscribe)
        app.router.add_post("/api/watch/unsubscribe", self.unsubscribe)
        async with running_app(app) as url:
            try:
                yield url
            finally:
                self.end_stream()


@contextlib.asynccontextmanager
async def auto_client(replicas: Replicas) -> AsyncIterator[WatchClient]:
    async with replicas.running() as url:
        client = WatchClient(url, client_id="failover-client-1", auto_reconnect=True)
        try:
            await client.connect()
            yield client
        finally:
            await client.close()


@pytest.mark.parametrize("answer", ["other-replica", "unknown-client"])
async def test_requests_routed_to_another_replica_than_the_stream_start_it_over_there(answer: str) -> None:
    replicas = Replicas()
    async with auto_client(replicas) as client:
        secrets = await client.subscribe(**SECRETS)
        await client.wait_synced(secrets)
        assert client.replica == "replica-a"

        # The load balancer now sends this client to replica b (a replica that came back), while
        # the stream stays on a. The subscribe lands on b: in a session without a stream there
        # ("other-replica"), or where there is no session for it at all ("unknown-client").
        replicas.route = "replica-b"
        if answer == "unknown-client":
            replicas.failures.append(("subscribe", 404))
        zones = await client.subscribe(**ZONES)

        # It starts over: a stream without Last-Event-ID (to b), then both channels again, the
        # one it held from the resourceVersion it had reached.
        await client.wait_for(
            lambda c: c.in_sync and c.replica == "replica-b" and {secrets, zones} <= c.synced
        )
        assert [s["last_event_id"] is None for s in replicas.streams] == [True, True]
        again = replicas.subscribes()[2:]
        assert {"resourceVersion": "10"}.items() <= next(
            b for b in again if b["resourceType"] == SECRETS["resourceType"]
        ).items()
        assert client.misrouted == 1
        assert client.start_overs == 1
        assert set(client.objects(secrets)) == {"default/a"}


async def test_a_stream_resumed_by_another_replica_is_started_over() -> None:
    replicas = Replicas()
    async with auto_client(replicas) as client:
        secrets = await client.subscribe(**SECRETS)
        await client.wait_synced(secrets)

        # Replica a's stream breaks; the resume reaches b, which holds an old session of this cid
        # and claims to resume it. What b replays says nothing about what came from a.
        replicas.route = "replica-b"
        replicas.resume = True
        replicas.end_stream()
        await replicas.wait_for(lambda: len(replicas.streams) == 3)
        assert replicas.streams[1]["last_event_id"] is not None, "it tried to resume first"
        assert replicas.streams[2]["last_event_id"] is None, "then started over"
        await client.wait_for(lambda c: c.in_sync and c.replica == "replica-b" and secrets in c.synced)
        assert replicas.subscribes()[-1]["resourceVersion"] == "10"
        assert client.start_overs == 1


@pytest.mark.parametrize("status", [502, 503])
async def test_a_subscribe_that_fails_on_the_way_is_sent_again(status: int) -> None:
    replicas = Replicas()
    async with auto_client(replicas) as client:
        replicas.failures.append(("subscribe", status))
        channel = await client.subscribe(**SECRETS)  # no error for the caller: it is kept
        await client.wait_synced(channel)
        assert len(replicas.subscribes()) == 2
        assert client.kept_failures == 1
        assert len(replicas.streams) == 1, "the stream was fine: only the subscribe was sent again"


async def test_a_subscribe_lost_with_its_replica_is_sent_after_the_reconnect() -> None:
    replicas = Replicas()
    async with auto_client(replicas) as client:
        held = await client.subscribe(**SECRETS)
        await client.wait_synced(held)
        # The replica dies under the request: nginx answers 502, the stream breaks as well.
        replicas.failures.append(("subscribe", 502))
        replicas.end_stream_on_failure = True
        replicas.route = "replica-b"
        zones = await client.subscribe(**ZONES)
        await client.wait_for(lambda c: c.in_sync and c.replica == "replica-b" and {held, zones} <= c.synced)
        # (Resumed, or started over when a retry of the subscribe reached b before the client saw
        # its stream end: either way one new stream, on b, holding both channels.)
        assert len(replicas.streams) == 2
        assert set(client.subscriptions) == {held, zones}


async def test_an_unsubscribe_that_fails_on_the_way_is_sent_again() -> None:
    replicas = Replicas()
    async with auto_client(replicas) as client:
        channel = await client.subscribe(**SECRETS)
        await client.wait_synced(channel)
        replicas.failures.append(("unsubscribe", 502))
        await client.unsubscribe(channel)
        await replicas.wait_for(lambda: len(replicas.unsubscribes()) == 2)
        await client.wait_for(lambda c: c.in_sync)
        assert channel not in client.subscriptions


async def test_without_auto_reconnect_a_failed_subscribe_raises_and_stays_wanted() -> None:
    replicas = Replicas()
    async with replicas.running() as url, WatchClient(url, client_id="failover-client-2") as client:
        replicas.failures.append(("subscribe", 503))
        with pytest.raises(WatchClientError) as failed:
            await client.subscribe(**SECRETS)
        assert failed.value.status == 503
        key = channel_key(target_from_fields(SECRETS))
        assert key in client.subscriptions, "a failure on the way does not end the subscription"
        replicas.end_stream()
        await client.stream_ended.wait()
        await client.reconnect()  # not resumed: every wanted channel is subscribed again
        await client.wait_synced(key)


async def test_an_unsubscribe_asked_while_its_subscribe_is_in_flight_follows_it() -> None:
    """Sent at once, the unsubscribe could overtake the subscribe (two connections through a load
    balancer), and the subscribe's answer would leave the client wanting a channel the server
    ends up holding, or the other way round: a channel's requests go one at a time."""
    replicas = Replicas()
    sent: list[str] = []

    async def started(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        sent.append(f"{params.url.path.rsplit('/', 1)[1]} sent")

    async def ended(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        sent.append(f"{params.url.path.rsplit('/', 1)[1]} answered")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    async with (
        replicas.running() as url,
        aiohttp.ClientSession(trace_configs=[trace]) as http,
        WatchClient(url, client_id="failover-client-3", session=http, auto_reconnect=True) as client,
    ):
        replicas.gate = asyncio.Event()
        subscribing = asyncio.create_task(client.subscribe(**SECRETS))
        await replicas.wait_for(lambda: len(replicas.subscribes()) == 1)
        key = channel_key(target_from_fields(SECRETS))
        unsubscribing = asyncio.create_task(client.unsubscribe(key))
        # Callbacks run in order: the unsubscribe takes its first step (where, unordered, it
        # would send its request at once) before the subscribe is let through.
        asyncio.get_running_loop().call_soon(replicas.gate.set)
        await subscribing
        await unsubscribing
        assert [s for s in sent if "stream" not in s] == [
            "subscribe sent",
            "subscribe answered",
            "unsubscribe sent",
            "unsubscribe answered",
        ]
        assert key not in client.subscriptions
        assert client.in_sync
