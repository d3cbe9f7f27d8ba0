"""Connection hygiene: what a connection may cost before it is a stream.

aiohttp times idle kept-alive connections (``keepalive_timeout``) but not a request head that
arrives slowly or never: a connection that sends half a request line stays open for an hour. And
nothing bounds how many connections are open at once, nor how loudly asyncio complains when
accepting fails for want of file descriptors. This module adds, around aiohttp's own
:class:`~aiohttp.web_protocol.RequestHandler`:

- :class:`GuardedRequestHandler`: a request head must be complete within ``header_timeout_s`` of
  the accept, or of the first byte of a later request on a kept-alive connection (one timer per
  connection, armed in ``connection_made`` / ``data_received`` and cancelled as soon as the parser
  has a complete head; the body is the handler's to time, see ``web/body.py``). Past it the
  connection is closed, with a 408 when part of a head arrived. A response marked
  ``Connection: close`` (the body timeout's 408) closes the connection once written, without
  aiohttp's lingering read of a body that is not coming.
- :class:`ConnectionGuard`: counts the connections that are not (yet) SSE streams; beyond
  ``max_pending_connections`` a new connection is closed in ``connection_made``, before any
  parsing. A stream leaves the count when it starts (:func:`mark_stream`): streams are bounded by
  ``limits.max_clients``. It also folds asyncio's ``socket.accept() out of system resource``
  errors (one traceback per failed ``accept()``, and asyncio tries ``backlog`` of them per loop
  iteration before its 1 s back-off) into one log line per interval with a count.

Both are plain protocol-level code: no task per connection, one timer handle at most.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from watchgw.config import ServerConfig

log = structlog.get_logger("watchgw.server")

#: Seconds between two log lines about the same kind of trouble (refused connections, failed accepts).
LOG_INTERVAL_S = 10.0

_ACCEPT_FAILED = "socket.accept() out of system resource"
#: asyncio (3.11) schedules one retry per failed accept, 1 s later (``ACCEPT_RETRY_DELAY``); a
#: retry that runs after its listener closed fails with ValueError, reported under this name.
_STALE_RETRY = "BaseSelectorEventLoop._start_serving("
_RETRY_S = 2.0


def _head_timeout_response(timeout_s: float) -> bytes:
    body = (
        '{"error": {"code": "request_timeout", "message": "the request head was not received within '
        f'{timeout_s:g} s"}}}}\n'  # a newline, as every JSON answer (web/body.py)
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class ThrottledLog:
    """Counts occurrences of one event; logs the first at once, then at most one line per
    ``interval_s`` with the count since the previous line (and the rest on :meth:`flush`)."""

    def __init__(self, event: str, *, interval_s: float = LOG_INTERVAL_S, **fields: Any) -> None:
        self.event = event
        self.interval_s = interval_s
        self.fields = fields
        self.total = 0
        self._pending = 0
        self._last_detail: dict[str, Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, **detail: Any) -> None:
        self.total += 1
        self._last_detail = detail
        if self._timer is None:
            self._emit(1)
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)
        else:
            self._pending += 1

    def _tick(self) -> None:
        self._timer = None
        if self._pending:
            self._emit(self._pending)
            self._pending = 0
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _emit(self, count: int) -> None:
        log.warning(self.event, count=count, interval_s=self.interval_s, **self.fields, **self._last_detail)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._emit(self._pending)
            self._pending = 0


class ConnectionGuard:
    """The limits of one listener and the connections it has that are not streams."""

    def __init__(self, server: ServerConfig) -> None:
        self.header_timeout_s = server.header_timeout_s
        self.max_pending = server.max_pending_connections
        self.pending = 0
        self.head_timeouts = 0
        self.head_timeout_response = _head_timeout_response(server.header_timeout_s)
        self.refused = ThrottledLog(
            "server.connections_refused",
            limit=server.max_pending_connections,
            key="server.max_pending_connections",
        )
        self.accept_failed = ThrottledLog(
            "server.accept_failed",
            hint="the process is out of file descriptors (or kernel memory): raise LimitNOFILE",
        )
        self._sockets: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._installed = False
        self._heads: dict[GuardedRequestHandler, float] = {}
        """Connections waiting for a request head, with their deadlines. One sweep timer for all
        of them instead of a timer per connection: a cancelled timer stays in the loop's heap
        (with its handler) until its time, which cost every new stream ~0.5 KB for
        ``header_timeout_s``."""
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_every_s = min(1.0, max(0.05, server.header_timeout_s / 10))

    # -------------------------------------------------------------- head timeouts
    def wait_head(self, handler: GuardedRequestHandler) -> None:
        loop = asyncio.get_running_loop()
        self._heads[handler] = loop.time() + self.header_timeout_s
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every_s, self._sweep_heads)

    def head_done(self, handler: GuardedRequestHandler) -> None:
        self._heads.pop(handler, None)

    def waits_head(self, handler: GuardedRequestHandler) -> bool:
        return handler in self._heads

    def _sweep_heads(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for handler in [h for h, deadline in self._heads.items() if deadline <= now]:
            del self._heads[handler]
            handler.head_timed_out()
        if self._heads:
            self._sweep = loop.call_later(self._sweep_every_s, self._sweep_heads)

    # -------------------------------------------------------------- accept errors
    def install(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket]) -> None:
        """Take over asyncio's report of failed accepts on ``sockets``; other reports go on to
        the handler that was there before."""
        self._sockets = {s.fileno() for s in sockets}
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler)
        self._installed = True

    def uninstall(self) -> None:
        """The listener is closed: flush the counts. asyncio may still hold accept retries
        scheduled before the close (one per failed accept); they fail on the closed socket
        within ``_RETRY_S``, so the handler stays that long to silence them, then goes."""
        self.refused.flush()
        self.accept_failed.flush()
        if not self._installed or self._loop is None:
            return
        self._installed = False
        loop = self._loop
        if not loop.is_closed():
            loop.call_later(_RETRY_S, self._restore)

    def _restore(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() == self._exception_handler:
            self._loop.set_exception_handler(self._previous)
        # Otherwise a handler installed after this one chains to it: it stays and forwards.

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        sock = context.get("socket")
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if (
            self._installed
            and message == _ACCEPT_FAILED
            and sock is not None
            and sock.fileno() in self._sockets
        ):
            code = getattr(exc, "errno", None)
            self.accept_failed.note(error=errno.errorcode.get(code, str(code)) if code else repr(exc))
            return
        if _STALE_RETRY in message and isinstance(exc, ValueError):
            return  # an accept retry that outlived its listener (closed socket, fd -1): harmless
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    # -------------------------------------------------------------- protocol factory
    def protocol_factory(self, server: web.Server, **handler_args: Any) -> Any:
        loop = asyncio.get_running_loop()

        def make() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, guard=self, loop=loop, **handler_args)

        return make


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a head timeout and a place in the pending count."""

    __slots__ = ("_counted", "_guard", "_head_started", "_refused")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False
        self._refused = False
        self._head_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.pending >= guard.max_pending:
            # Before aiohttp sees it: no parser work, no task. Closed rather than answered 503,
            # because an EventSource retries after a network error but gives up on a 503.
            self._refused = True
            transport.close()
            guard.refused.note()
            return
        guard.pending += 1
        self._counted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._disarm_head_timer()
        self._uncount()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self._waiter is not None and not self._waiter.done()
        super().data_received(data)
        if self._messages:
            # A complete head is parsed (its body, if any, is the handler's to time).
            self._head_started = False
            self._disarm_head_timer()
        elif idle and data:
            # Bytes of a request on a connection that was waiting for one: its head is timed
            # from here (from the accept for the first request, where the timer already runs).
            self._head_started = True
            if not self._guard.waits_head(self):
                self._arm_head_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if not resp.keep_alive and not request.content.is_eof():
            # ``Connection: close`` with a body still owed (the body timeout's 408): close now,
            # not after aiohttp's lingering read of up to 10 s of a body that is not coming.
            self.force_close()
        return result

    def became_stream(self) -> None:
        """The connection carries an SSE stream from now on: out of the pending count, and its
        head is complete (no timer)."""
        self._disarm_head_timer()
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._guard.pending -= 1

    def _arm_head_timer(self) -> None:
        self._guard.wait_head(self)

    def _disarm_head_timer(self) -> None:
        self._guard.head_done(self)

    def head_timed_out(self) -> None:
        transport = self.transport
        if transport is None or not (self._waiter is not None and not self._waiter.done()):
            return  # closed already, or a request is being handled: not waiting for a head
        self._guard.head_timeouts += 1
        if self._head_started:
            transport.write(self._guard.head_timeout_response)  # sent before the close
        self.force_close()


def mark_stream(request: web.Request, response: web.StreamResponse) -> None:
    """``request``'s connection is an SSE stream now: it leaves the pending count, and it closes
    when the stream ends rather than going back to waiting for requests uncounted."""
    response.force_close()
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        protocol.became_stream()


def fd_headroom() -> int | None:
    """File descriptors this process may still open (``None`` where that cannot be read)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    return int(soft) - used
