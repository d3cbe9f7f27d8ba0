"""A Python asyncio client: one stream, many subscriptions, each channel's objects kept current.

    async with WatchClient("http://127.0.0.1:8080") as client:
        channel = await client.subscribe(resourceType="api/v1/secrets", projectId="proj-abc")
        await client.wait_synced(channel)
        print(client.objects(channel))
        await client.wait_for(lambda c: "default/db" in c.objects(channel))

It applies the events exactly as PROTOCOL.md section 4 says a client should, which is also what
the gateway's end-to-end tests check the gateway against.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
import ujson

from watchgw.client.sse import SSEEvent, SSEParser
from watchgw.hub.keys import InvalidField, channel_key, target_from_fields


class WatchClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    name = meta.get("name") or ""
    return f"{namespace}/{name}" if namespace else name


class WatchClient:
    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        base_path: str = "/api/watch",
        headers: dict[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        record: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.base_path = base_path
        self.client_id = client_id or uuid.uuid4().hex
        self.headers = dict(headers or {})
        self._session = session
        self._own_session = session is None
        self.record = record
        self.events: list[SSEEvent] = []
        """Every event received, when ``record`` is set (tests); otherwise nothing accumulates."""
        self.state: dict[str, dict[str, dict[str, Any]]] = {}
        self.synced: set[str] = set()
        self.resource_versions: dict[str, str] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.unsubscribed: dict[str, str] = {}
        self.resyncs = 0
        self.connected: dict[str, Any] | None = None
        self.last_event_id: str | None = None
        self.reconnect_requested = False
        self.events_received = 0
        self.ids_out_of_order = 0
        """Event ids that did not increase (duplicates or reordering): 0 for a correct server."""
        self._last_number = 0
        self.ids: list[int] = []
        """Event ids in arrival order, when ``record`` is set."""
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._response: aiohttp.ClientResponse | None = None
        self.subscriptions: dict[str, dict[str, Any]] = {}
        """Channel -> the fields it was subscribed with (for resubscribe)."""
        self._held_by_server: set[str] = set()
        """Channels subscribed on the server's side of this session (none after a fresh start)."""
        self.key_segments = 8
        """The server's channel key format, learned from its answers (8, or 7 for old servers)."""
        self._reading = asyncio.Event()
        self._reading.set()
        self.stream_ended = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _url(self, path: str) -> str:
        return f"{self.base_url}{self.base_path}/{path}"

    # ------------------------------------------------------------------ stream
    async def connect(self, *, resume: bool = False, timeout: float = 10.0) -> dict[str, Any]:
        """Open the stream (``resume``: send ``Last-Event-ID``); returns the ``connected`` data."""
        await self.disconnect()
        headers = dict(self.headers)
        if resume and self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        self._forget_connection()
        response = await self.session.get(
            self._url("stream"),
            params={"cid": self.client_id},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout),
        )
        if response.status != 200:
            error = await _error_of(response)
            response.release()
            raise error
        self._response = response
        self._reader = asyncio.create_task(self._read(response), name=f"sse {self.client_id}")
        await self.wait_for(lambda c: c.connected is not None or c.stream_ended.is_set(), timeout=timeout)
        if self.connected is None:
            raise WatchClientError(0, "stream_ended", "the stream ended before 'connected'")
        if not self.connected.get("resumed"):
            # The server holds no subscriptions for us any more. What we hold stays, so that
            # resubscribe() can ask for only what is newer than each channel's resourceVersion.
            self.synced.clear()
            self._held_by_server.clear()
        return self.connected

    async def reconnect(self) -> dict[str, Any]:
        """Reconnect as a browser would: resume with Last-Event-ID; if the session is gone,
        subscribe again to every channel from the last resourceVersion reached."""
        connected = await self.connect(resume=True)
        if not connected.get("resumed"):
            await self.resubscribe()
        return connected

    async def resubscribe(self) -> None:
        for channel, fields in list(self.subscriptions.items()):
            rv = self.resource_versions.get(channel)
            await self.subscribe(**fields, **({"resourceVersion": rv} if rv else {}))

    def pause_reading(self) -> None:
        """Stop reading the stream (a slow client): the socket fills and the server must cope."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def _forget_connection(self) -> None:
        self.connected = None
        self.stream_ended = asyncio.Event()

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        parser = SSEParser()
        try:
            async for chunk in response.content.iter_any():
                if not self._reading.is_set():
                    await self._reading.wait()
                events = parser.feed(chunk)
                if events:
                    for event in events:
                        self.apply(event)
                    async with self._changed:
                        self._changed.notify_all()
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.stream_ended.set()
            async with self._changed:
                self._changed.notify_all()

    def apply(self, event: SSEEvent) -> None:
        """Apply one event to the client's state (public so other transports can reuse it)."""
        self.events_received += 1
        if event.id is not None:
            self.last_event_id = event.id
            if event.id.isdigit() and event.event != "connected":
                # A resumed stream's ``connected`` repeats Last-Event-ID: a position, not an event.
                number = int(event.id)
                if number <= self._last_number:
                    self.ids_out_of_order += 1
                self._last_number = number
                if self.record:
                    self.ids.append(number)
        if self.record:
            self.events.append(event)
        data: dict[str, Any] = ujson.loads(event.data) if event.data else {}
        kind = event.event
        channel = data.get("channel", "")
        if kind == "watch":
            objects = self.state.setdefault(channel, {})
            obj = data["object"]
            kind_of_change = data["type"]
            if kind_of_change in ("ADDED", "MODIFIED"):
                objects[object_key(obj)] = obj
            elif kind_of_change == "DELETED":
                objects.pop(object_key(obj), None)
            if channel in self.synced:
                # Only a complete state has a version to resume from: during a snapshot, the
                # objects not yet received are not part of "what we hold at this version".
                self.resource_versions[channel] = data.get("resourceVersion", "")
        elif kind == "synced":
            self.synced.add(channel)
            self.state.setdefault(channel, {})
            self.resource_versions[channel] = data.get("resourceVersion", "")
        elif kind == "resync":
            self.resyncs += 1
            self.state[channel] = {}
            self.synced.discard(channel)
            self.resource_versions.pop(channel, None)
        elif kind == "subscribed":
            self.state.setdefault(channel, {})
            self.unsubscribed.pop(channel, None)
        elif kind == "unsubscribed":
            self._held_by_server.discard(channel)
            self.state.pop(channel, None)
            if data.get("reason") != "client":
                self.subscriptions.pop(channel, None)  # forbidden or gone: nothing to resubscribe
            self.synced.discard(channel)
            self.unsubscribed[channel] = data.get("reason", "")
        elif kind == "watch-error":
            self.errors[channel] = data
        elif kind == "connected":
            self.connected = data
        elif kind == "reconnect":
            self.reconnect_requested = True

    async def wait_for(self, predicate: Callable[[Self], bool], *, timeout: float = 5.0) -> None:
        """Wake on every batch of events until ``predicate(self)`` holds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_synced(self, channel: str, *, timeout: float = 5.0) -> None:
        await self.wait_for(lambda c: channel in c.synced, timeout=timeout)

    def objects(self, channel: str) -> dict[str, dict[str, Any]]:
        return self.state.get(channel, {})

    # ------------------------------------------------------------------ requests
    async def subscribe(self, **fields: Any) -> str:
        """Subscribe; without ``resourceVersion`` the channel's local state starts over (a
        snapshot follows), with one the local state is kept and only what is newer arrives."""
        body = {"clientId": self.client_id, **fields}
        channel_fields = {k: v for k, v in fields.items() if k not in ("resourceVersion", "snapshot")}
        with contextlib.suppress(InvalidField):
            key = channel_key(target_from_fields(channel_fields), segments=self.key_segments)
            # Before the request: what it causes may arrive before its answer.
            if key in self._held_by_server:
                pass  # held already: the server sends nothing new
            elif not fields.get("resourceVersion"):
                self.state[key] = {}
                self.synced.discard(key)
                self.resource_versions.pop(key, None)
            else:
                # Older events may be replayed onto what we hold: until ``synced``, our state is
                # only as good as the version we asked from.
                self.resource_versions[key] = str(fields["resourceVersion"])
        # ?cid= on every request: a load balancer in front of replicas routes on it (a body it
        # cannot see), so subscribe reaches the replica that holds this client's stream.
        async with self.session.post(
            self._url("subscribe"), params={"cid": self.client_id}, json=body, headers=self.headers
        ) as response:
            if response.status != 200:
                raise await _error_of(response)
            data = await response.json()
        channel: str = data["channel"]
        self.key_segments = channel.count(":") + 1
        self.subscriptions[channel] = channel_fields
        self._held_by_server.add(channel)
        return channel

    async def unsubscribe(self, channel: str) -> None:
        self.subscriptions.pop(channel, None)
        self._held_by_server.discard(channel)
        body = {"clientId": self.client_id, "channel": channel}
        async with self.session.post(
            self._url("unsubscribe"), params={"cid": self.client_id}, json=body, headers=self.headers
        ) as response:
            if response.status != 200:
                error = await _error_of(response)
                if error.code != "unknown_channel":  # 404: not held (any more): already gone
                    raise error

    # ------------------------------------------------------------------ teardown
    async def disconnect(self) -> None:
        """Drop the stream (the server keeps the session for ``session_ttl_s``)."""
        if self._response is not None:
            self._response.close()
            self._response = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def close(self) -> None:
        await self.disconnect()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


async def _error_of(response: aiohttp.ClientResponse) -> WatchClientError:
    try:
        body = await response.json(content_type=None)
        error = body["error"]
        return WatchClientError(response.status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
        return WatchClientError(response.status, "http_error", response.reason or "")
