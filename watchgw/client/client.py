"""A Python asyncio client: one stream, many subscriptions, each channel's objects kept current.

    async with WatchClient("http://127.0.0.1:8080", auto_reconnect=True) as client:
        channel = await client.subscribe(resourceType="api/v1/secrets", projectId="proj-abc")
        await client.wait_synced(channel)
        print(client.objects(channel))
        await client.wait_for(lambda c: "default/db" in c.objects(channel))

It applies the events exactly as PROTOCOL.md section 4 says a client should, which is also what
the gateway's end-to-end tests check the gateway against.

With ``auto_reconnect=True`` it keeps itself connected, as a browser's ``EventSource`` and
``watch-client.js`` do, also behind a load balancer in front of several replicas: a lost stream is
resumed with ``Last-Event-ID`` (after the server's ``retry``, then with backoff), a stream that
cannot be resumed (``"resumed": false``) gets every channel subscribed again from its last
``resourceVersion``, and the client starts over (a stream without ``Last-Event-ID``) when its
requests and its stream are served by different replicas: a subscribe answered by another replica
than the stream's ``connected`` (the load balancer routes the cid to a replica that came back while
the stream still sits on the one it failed over to), an ``unknown_client`` answer while the stream
is up, or a "resumed" stream on another replica than before. A subscribe or unsubscribe that fails
on the way (connection error, 502/503/504, 429 ``rate_limited``) is kept and sent again. Without
it (tests) the caller drives: ``connect``, ``reconnect``, ``resubscribe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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


STABLE_S = 10.0
"""A stream up this long ends a streak of trouble: the next loss waits only the server's retry."""

TRANSIENT_STATUSES = frozenset({502, 503, 504})
"""What a load balancer answers while a replica dies or drains (it does not retry a POST that
reached one), and what watchgw answers while draining or when authorization cannot be decided:
the request may succeed when sent again, so the subscription is kept."""


def is_transient(error: BaseException) -> bool:
    """Whether a subscribe/unsubscribe failure is worth sending again (versus a refusal)."""
    if isinstance(error, WatchClientError):
        return error.status in TRANSIENT_STATUSES or error.code == "rate_limited"
    return isinstance(error, aiohttp.ClientError | OSError | TimeoutError)


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
        auto_reconnect: bool = False,
        request_timeout_s: float = 10.0,
        max_retry_delay_s: float = 5.0,
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
        """Event ids that did not increase within a session (duplicates or reordering): 0 for a
        correct server."""
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
        self.auto_reconnect = auto_reconnect
        self.request_timeout_s = request_timeout_s
        self.max_retry_delay_s = max_retry_delay_s
        self.retry_ms = 2000
        """How long to wait before reconnecting: the server's ``retry:`` (or ``reconnect``'s)."""
        self.replica: str | None = None
        """The replica serving the current stream, as its ``connected`` named it (None: unnamed)."""
        self.pending: set[str] = set()
        """Wanted channels that this stream's session does not hold yet (a subscribe that failed
        on the way, or was asked for while the stream was down): subscribed on the next chance."""
        self._unwanted: set[str] = set()
        """Channels given up that the server may still hold (an unsubscribe that did not get
        through, or one asked for while a resumable stream was down): unsubscribed first."""
        self.refused: dict[str, WatchClientError] = {}
        """Channels a re-subscribe was refused for (403, 429 limits ...): no longer wanted."""
        self.reconnects = 0
        """Streams opened again by the client itself (``auto_reconnect``)."""
        self.start_overs = 0
        """Of those, streams started over without ``Last-Event-ID`` because another replica served
        the client's requests (or "resumed" it) than the one its stream was on."""
        self.misrouted = 0
        """Subscribe answers from another replica than the stream's (or ``unknown_client`` while
        the stream was up): each leads to a start-over."""
        self.kept_failures = 0
        """Subscribes and unsubscribes that failed on the way and were kept to send again."""
        self._start_over = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._generation = 0
        """Streams opened so far: an answer to a request sent under an earlier stream says
        nothing about the current stream's session."""
        self._attention = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

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
        """Open the stream (``resume``: send ``Last-Event-ID``); returns the ``connected`` data.

        A stream "resumed" by another replica than the one the client was on is started over at
        once (without ``Last-Event-ID``): the id it sent was written by another process, so what
        that replica replays says nothing about what the client holds."""
        previous = self.replica
        connected = await self._open_stream(resume=resume, timeout=timeout)
        replica = connected.get("replica")
        if (
            resume
            and connected.get("resumed")
            and previous is not None
            and replica is not None
            and replica != previous
        ):
            self.start_overs += 1
            connected = await self._open_stream(resume=False, timeout=timeout)
        self.replica = connected.get("replica")
        if not connected.get("resumed"):
            # The server holds no subscriptions for us any more. What we hold stays, so that
            # resubscribe() can ask for only what is newer than each channel's resourceVersion.
            self.synced.clear()
            self._held_by_server.clear()
            self._unwanted.clear()
            self.pending = set(self.subscriptions)
        if self.auto_reconnect and self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise {self.client_id}")
        if self.auto_reconnect and (self.pending or self._unwanted):
            self._attention.set()
        await self._notify()
        return connected

    async def _open_stream(self, *, resume: bool, timeout: float) -> dict[str, Any]:
        await self.disconnect()
        self._generation += 1
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
        return self.connected

    async def reconnect(self) -> dict[str, Any]:
        """Reconnect as a browser would: resume with Last-Event-ID; if the session is gone,
        subscribe again to every channel from the last resourceVersion reached. After a
        subscribe answered by another replica than the stream's, start over instead."""
        start_over, self._start_over = self._start_over, False
        connected = await self.connect(resume=not start_over)
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
        lost = False
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
            lost = True
        except (aiohttp.ClientError, ConnectionError):
            lost = True
        finally:
            self.stream_ended.set()
            if lost:  # ended by the server or the network, not by disconnect()
                self._attention.set()
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
        if event.retry is not None:
            self.retry_ms = event.retry
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
            if not data.get("resumed"):
                # Ids increase within a session: a new one (on another replica, whose counter
                # started at another time) may start below the last session's ids.
                self._last_number = 0
        elif kind == "reconnect":
            self.reconnect_requested = True
            if isinstance(data.get("retryMs"), int):
                self.retry_ms = data["retryMs"]

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
        snapshot follows), with one the local state is kept and only what is newer arrives.

        The channel stays wanted when the request fails on the way (see :func:`is_transient`):
        with ``auto_reconnect`` it is sent again and this returns the key; without it the error
        is raised and ``reconnect``/``resubscribe`` send it again."""
        channel_fields = {k: v for k, v in fields.items() if k not in ("resourceVersion", "snapshot")}
        key: str | None = None
        with contextlib.suppress(InvalidField):
            key = channel_key(target_from_fields(channel_fields), segments=self.key_segments)
        if key is not None and self.auto_reconnect and not self._stream_up():
            # No stream to subscribe for: the next ``connected`` subscribes it.
            self._prepare(key, fields.get("resourceVersion"))
            self._want(key, channel_fields)
            self._attention.set()
            return key
        was_wanted = key is not None and key in self.subscriptions
        if key is not None:
            self._want(key, channel_fields)
        try:
            return await self._send_subscribe(fields, channel_fields, key)
        except (WatchClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # No session for us where it went, and our stream ended meanwhile: the session went
            # with it (a replica that died), and the next "connected" subscribes it again.
            gone = isinstance(exc, WatchClientError) and exc.code == "unknown_client"
            if key is not None and (is_transient(exc) or (gone and self.auto_reconnect)):
                self.kept_failures += 1
                self._attention.set()
                if self.auto_reconnect:
                    return key
            elif key is not None and not was_wanted:
                self.subscriptions.pop(key, None)  # refused: never wanted
                self.pending.discard(key)
            raise

    def _prepare(self, key: str, resource_version: Any) -> None:
        """The local state of a channel about to be subscribed: before the request, since what
        it causes may arrive before its answer."""
        if key in self._held_by_server:
            return  # held already: the server sends nothing new
        if not resource_version:
            self.state[key] = {}
            self.synced.discard(key)
            self.resource_versions.pop(key, None)
        else:
            # Older events may be replayed onto what we hold: until ``synced``, our state is
            # only as good as the version we asked from.
            self.resource_versions[key] = str(resource_version)

    def _want(self, key: str, channel_fields: dict[str, Any]) -> None:
        # Left in _unwanted if there: the server may still hold it, and its unsubscribe goes
        # first, so that this subscribe is answered with a snapshot (see _send_subscribe).
        self.subscriptions[key] = channel_fields
        if key not in self._held_by_server:
            self.pending.add(key)

    def _lock(self, key: str) -> asyncio.Lock:
        """One request at a time per channel, in the order they were asked for: a subscribe and
        an unsubscribe of one channel in flight together (the supervisor's re-subscribe and the
        caller's unsubscribe) could reach the server in either order and leave the client
        believing the opposite of what the server holds. One lock per channel key used."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _send_subscribe(
        self,
        fields: dict[str, Any],
        channel_fields: dict[str, Any],
        key: str | None,
        *,
        only_pending: bool = False,
    ) -> str:
        if key is None:
            return await self._post_subscribe(fields, channel_fields, None)
        async with self._lock(key):
            if key not in self.subscriptions or (only_pending and key not in self.pending):
                return key  # given up, or subscribed by another request, while waiting its turn
            if key in self._unwanted:
                # Given up earlier without the server hearing of it: undo that first, or the
                # server, still holding it, would answer this subscribe with nothing new.
                await self._send_unsubscribe(key)
                self._unwanted.discard(key)
            self._prepare(key, fields.get("resourceVersion"))
            return await self._post_subscribe(fields, channel_fields, key)

    async def _post_subscribe(
        self, fields: dict[str, Any], channel_fields: dict[str, Any], key: str | None
    ) -> str:
        body = {"clientId": self.client_id, **fields}
        # ?cid= on every request: a load balancer in front of replicas routes on it (a body it
        # cannot see), so subscribe reaches the replica that holds this client's stream.
        stream_replica = self.replica
        generation = self._generation
        async with self.session.post(
            self._url("subscribe"),
            params={"cid": self.client_id},
            json=body,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
        ) as response:
            if response.status != 200:
                error = await _error_of(response)
                if generation != self._generation and key is not None:
                    return key  # about an earlier stream: the current one subscribes it again
                if error.code == "unknown_client" and self._stream_up() and key is not None:
                    # Our stream is up, yet this replica has no session for us: the request
                    # went to another replica than the stream. Start over where it goes now.
                    self._misrouted()
                    return key
                raise error
            data = await response.json()
        channel: str = data["channel"]
        self.key_segments = channel.count(":") + 1
        if key is not None and key != channel:  # the server's key format: its key wins
            self.subscriptions.pop(key, None)
            self.pending.discard(key)
        replica = data.get("replica")
        if key is not None and key not in self.subscriptions:
            # Unsubscribed while this was in flight: its unsubscribe waits for this lock and
            # follows, so the server ends without it. Not wanted, not held.
            return channel
        self.subscriptions[channel] = channel_fields
        if generation != self._generation:
            # Held by the session of an earlier stream: the current one has not got it (a
            # stream that is not resumed made every wanted channel pending).
            if channel not in self._held_by_server:
                self.pending.add(channel)
            return channel
        if replica is not None and stream_replica is not None and replica != stream_replica:
            # Held by a session on another replica, which has no stream to send its events on.
            self.pending.add(channel)
            self._misrouted()
            return channel
        self._held_by_server.add(channel)
        self.pending.discard(channel)
        await self._notify()
        return channel

    def _misrouted(self) -> None:
        self.misrouted += 1
        self._start_over = True
        self._attention.set()

    async def unsubscribe(self, channel: str) -> None:
        self.subscriptions.pop(channel, None)
        self.pending.discard(channel)
        held = channel in self._held_by_server
        self._held_by_server.discard(channel)
        if self.auto_reconnect and not self._stream_up():
            if held:
                self._unwanted.add(channel)  # the session may still hold it if it resumes
            return
        try:
            # Sent even when wanted again meanwhile: that subscribe waits for this lock, and
            # needs the server to have let go of the channel to answer with a snapshot.
            async with self._lock(channel):
                await self._send_unsubscribe(channel)
        except (WatchClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if not is_transient(exc):
                raise
            self.kept_failures += 1
            self._unwanted.add(channel)
            self._attention.set()
            if not self.auto_reconnect:
                raise
        else:
            self._unwanted.discard(channel)
            await self._notify()

    async def _send_unsubscribe(self, channel: str) -> None:
        body = {"clientId": self.client_id, "channel": channel}
        async with self.session.post(
            self._url("unsubscribe"),
            params={"cid": self.client_id},
            json=body,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
        ) as response:
            if response.status != 200:
                error = await _error_of(response)
                if error.code == "unknown_client" and self._stream_up():
                    # No session where it went, yet our stream is up: requests and stream are
                    # on different replicas. Starting over drops the channel there too.
                    self._misrouted()
                    return
                # 404: not held (any more), or no session (the stream is gone): gone either way.
                if error.code not in ("unknown_channel", "unknown_client"):
                    raise error

    # ------------------------------------------------------------------ auto_reconnect
    @property
    def streaming(self) -> bool:
        """A stream is open and has said ``connected``."""
        return self._response is not None and self.connected is not None and not self.stream_ended.is_set()

    @property
    def in_sync(self) -> bool:
        """Streaming, and the stream's session holds exactly the wanted channels (as far as the
        client knows: nothing to subscribe, unsubscribe or start over)."""
        return self.streaming and not (self.pending or self._unwanted or self._start_over)

    def _stream_up(self) -> bool:
        return self.streaming

    async def _notify(self) -> None:
        """Wake ``wait_for`` on what answers change (events wake it by themselves)."""
        async with self._changed:
            self._changed.notify_all()

    def _delay_s(self, streak: int) -> float:
        """Backoff with jitter: the first try after the server's ``retry``, then doubling up to
        ``max_retry_delay_s``, so thousands of clients of a dead replica do not come back at once."""
        # At least 0.1 s: a server's "retry: 0" must not turn refused connections into a hot loop.
        base = max(self.retry_ms / 1000, 0.1) * 2.0 ** min(streak, 10)
        return min(self.max_retry_delay_s, base) * random.uniform(0.5, 1.0)

    async def _supervise(self) -> None:
        """Keeps the stream open and the wanted channels subscribed (``auto_reconnect``)."""
        loop = asyncio.get_running_loop()
        streak = 0  # trouble in a row; a stream up for STABLE_S (or channels in sync) ends it
        up_since = loop.time()
        while not self._closed:
            await self._attention.wait()
            self._attention.clear()
            if loop.time() - up_since > STABLE_S:
                streak = 0
            if self._stream_up() and not self._start_over:
                if not (self.pending or self._unwanted):
                    continue
                if streak:
                    await asyncio.sleep(self._delay_s(streak))  # a retry, not a hot loop
                streak += 1
                if await self._sync_channels():
                    streak = 0
                continue
            if not self._start_over or streak:
                # A lost stream waits for the server's ``retry`` (a start-over needs no wait the
                # first time: the replica it goes to is up).
                await asyncio.sleep(self._delay_s(streak))
            streak += 1
            start_over, self._start_over = self._start_over, False
            try:
                await self.connect(resume=not start_over)
            except (WatchClientError, aiohttp.ClientError, OSError, TimeoutError):
                self._start_over = self._start_over or start_over
                self._attention.set()
                continue
            self.reconnects += 1
            if start_over:
                self.start_overs += 1
            up_since = loop.time()
            await self._sync_channels()

    async def _sync_channels(self) -> bool:
        """Unsubscribe what is held and not wanted, then subscribe what is wanted and not held.
        Stops at the first failure or misrouted answer (which set ``_attention``)."""
        for channel in list(self._unwanted):
            if not self._stream_up() or self._start_over:
                return False
            try:
                async with self._lock(channel):
                    if channel in self._unwanted:  # else: undone by a subscribe meanwhile
                        await self._send_unsubscribe(channel)
                        self._unwanted.discard(channel)
            except (WatchClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                if is_transient(exc):
                    self.kept_failures += 1
                    self._attention.set()
                    return False
                self._unwanted.discard(channel)  # refused: nothing more to undo there
        for channel in list(self.pending):
            fields = self.subscriptions.get(channel)
            if fields is None:
                self.pending.discard(channel)
                continue
            if not self._stream_up() or self._start_over:
                return False
            rv = self.resource_versions.get(channel)
            try:
                await self._send_subscribe(
                    {**fields, **({"resourceVersion": rv} if rv else {})}, fields, channel, only_pending=True
                )
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.kept_failures += 1
                self._attention.set()
                return False
            except WatchClientError as exc:
                if is_transient(exc):
                    self.kept_failures += 1
                    self._attention.set()
                    return False
                # Refused (access revoked, a limit): it cannot be had any more.
                self.refused[channel] = exc
                self.subscriptions.pop(channel, None)
                self.pending.discard(channel)
        await self._notify()
        return not (self.pending or self._unwanted or self._start_over)

    # ------------------------------------------------------------------ teardown
    async def disconnect(self) -> None:
        """Drop the stream (the server keeps the session for ``session_ttl_s``)."""
        if self._response is not None:
            connection = self._response.connection
            if connection is not None and connection.transport is not None:
                # Abort, not close: closing a TLS transport waits for the peer's close_notify,
                # which a proxy in the middle of a response never sends, so the TCP connection
                # stayed open and the replica behind kept the stream until its next write
                # (up to heartbeat_s) or any later close: measured 15 s behind nginx.
                connection.transport.abort()
            self._response.close()
            self._response = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
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
