"""A stream's connection once its head and ``connected`` are written: aiohttp lets go of it.

An idle client should cost its socket and its session. While an aiohttp handler runs, a stream
also holds the connection's request parser and message queue, the parsed request (headers, URL,
query), the response, two tasks (the connection's request loop and the handler) and a coroutine
frame for every middleware: measured with tracemalloc over thousands of idle streams, more than
half of what an idle client cost. None of it is needed once the stream has started: the session
writes frames straight to the transport (``hub/session.py``) and an SSE client sends nothing
after its request.

So the stream handler hands the transport to a :class:`StreamConnection` (``set_protocol``), takes
the connection out of aiohttp's hands (:func:`hand_off`: aiohttp's protocol forgets the transport,
so it neither writes to it nor closes it, and leaves its request loop when the handler returns),
and returns; the stream's pump goes on as a task of its own (:class:`StreamTasks`, which the
server's drain waits for, since aiohttp no longer counts these connections).

This relies on aiohttp's ``RequestHandler`` attributes ``transport``, ``_force_close`` and
``_manager``, and on its public ``keep_alive`` (checked by tests/web/test_stream_handoff.py, which
fails loudly if a release changes them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("watchgw.server")


class StreamConnection(asyncio.Protocol):
    """The protocol of a stream's socket after the hand-off: write flow control and the end.

    Reading is over: anything the client sends is dropped (an ``EventSource`` sends nothing; a
    client that half-closes its side ends the stream)."""

    __slots__ = ("_on_lost", "_paused", "_waiter", "closed")

    def __init__(self, *, on_lost: Callable[[], None]) -> None:
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._on_lost = on_lost
        self.closed = False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._release()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes: the client is gone

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._paused = False
        self._release()
        self._on_lost()

    def _release(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Return once the transport's buffer is below its low-water mark (or the peer is gone)."""
        if not self._paused or self.closed:
            return
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter


def hand_off(request: web.BaseRequest, connection: StreamConnection) -> asyncio.Transport:
    """Move ``request``'s connection to ``connection``; aiohttp's objects for it can go.

    The response's head and first frames must be written already (they went through aiohttp)."""
    transport = request.transport
    protocol = request.protocol
    assert isinstance(transport, asyncio.Transport), "a stream whose connection is gone"
    transport.set_protocol(connection)
    if getattr(protocol, "_paused", False):
        connection.pause_writing()  # the transport's buffer is above its high-water mark now
    # aiohttp's protocol forgets the transport (so it never writes to it or closes it), ends its
    # request loop after this handler, and is removed from the server's connections: from now
    # on it and its parser, request and response are garbage once the handler returns.
    protocol.transport = None
    protocol._force_close = True
    protocol.keep_alive(False)  # also cancels its keep-alive timer, which would hold it for 75 s
    manager = protocol._manager
    if manager is not None:
        manager.connection_lost(protocol, None)
    if not transport.is_reading():
        transport.resume_reading()  # reading is how a vanished client is noticed
    return transport


class StreamTasks:
    """The pumps of handed-off streams: aiohttp's shutdown cannot wait for them, the drain does."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every stream to end; cancel the rest. Returns how many
        had to be cancelled."""
        if not self._tasks:
            return 0
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)
