"""Running an application on a socket: the daemon's main loop and the tests' helper.

Handlers are cancelled when their client disconnects (``handler_cancellation``), which is how a
stream learns that its reader is gone. Shutdown is a bounded drain (uvicorn style): stop
listening, tell clients to reconnect, wait up to ``shutdown_timeout_s`` for streams to end, cancel
what is left, then cancel upstreams.

Connections are :class:`~watchgw.web.connections.GuardedRequestHandler` protocols on a listener
with an explicit backlog (``web/connections.py``: head timeout, pending-connection cap, throttled
accept errors); idle kept-alive connections close after ``server.keepalive_timeout_s``
(aiohttp's own timer, whose default is an hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from watchgw.config import ServerConfig
from watchgw.web.connections import ConnectionGuard, fd_headroom
from watchgw.web.keys import CONFIG

log = structlog.get_logger("watchgw.server")


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are :class:`GuardedRequestHandler` protocols (aiohttp's
    ``TCPSite`` always makes plain ``RequestHandler`` ones), with an explicit backlog."""

    __slots__ = ("_guard", "_handler_args", "_host", "_port", "bound_port")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        backlog: int,
        handler_args: dict[str, Any],
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._handler_args = handler_args
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        listener = await loop.create_server(
            self._guard.protocol_factory(server, **self._handler_args),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )
        self._server = listener
        if listener.sockets:
            self.bound_port = listener.sockets[0].getsockname()[1]
        self._guard.install(loop, list(listener.sockets))

    async def stop(self) -> None:
        self._guard.uninstall()
        await super().stop()


@dataclasses.dataclass
class Listening:
    runner: web.AppRunner
    port: int
    guard: ConnectionGuard

    async def cleanup(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            self.guard.uninstall()


async def start_site(app: web.Application, *, host: str, port: int, shutdown_timeout_s: float) -> Listening:
    """Start ``app`` with the connection limits of its ``[server]`` config; ``port=0`` picks a
    free port (read it back from the result)."""
    server_config = app[CONFIG].server if CONFIG in app else ServerConfig()
    handler_args: dict[str, Any] = {
        "keepalive_timeout": server_config.keepalive_timeout_s,
        "access_log": None,
    }
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=shutdown_timeout_s, **handler_args
    )
    await runner.setup()
    guard = ConnectionGuard(server_config)
    site = GuardedSite(
        runner, host, port, guard=guard, backlog=server_config.backlog, handler_args=handler_args
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    _warn_if_few_file_descriptors(app)
    return Listening(runner=runner, port=site.bound_port, guard=guard)


def _warn_if_few_file_descriptors(app: web.Application) -> None:
    """The limits promise streams, pending connections and upstream watches: say so at start
    when the process may not open that many files (systemd: ``LimitNOFILE``)."""
    if CONFIG not in app:
        return
    config = app[CONFIG]
    needed = config.limits.max_clients + config.server.max_pending_connections + config.limits.max_channels
    headroom = fd_headroom()
    if headroom is not None and headroom < needed:
        log.warning(
            "server.few_file_descriptors",
            available=headroom,
            needed=needed,
            note="max_clients + max_pending_connections + max_channels; raise LimitNOFILE",
        )


@contextlib.asynccontextmanager
async def running_app(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0, shutdown_timeout_s: float = 5.0
) -> AsyncIterator[str]:
    """Serve ``app`` for the duration of the block; yields its base URL."""
    listening = await start_site(app, host=host, port=port, shutdown_timeout_s=shutdown_timeout_s)
    try:
        yield f"http://{host}:{listening.port}"
    finally:
        await listening.cleanup()


async def serve_until_signalled(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    on_reload: Callable[[], None] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain within ``shutdown_timeout_s``. SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    listening = await start_site(app, host=host, port=port, shutdown_timeout_s=shutdown_timeout_s)
    url = f"http://{host}:{listening.port}"
    log.info("server.listening", url=url)
    if on_started is not None:
        on_started(url)
    try:
        await stop.wait()
    finally:
        log.info("server.stopping", timeout_s=shutdown_timeout_s)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        # The whole drain is bounded: the aiohttp shutdown waits for handlers up to the timeout,
        # and this outer bound covers the cleanup of upstreams as well.
        try:
            async with asyncio.timeout(shutdown_timeout_s + 2):
                await listening.cleanup()
        except TimeoutError:
            log.warning("server.shutdown_timeout", timeout_s=shutdown_timeout_s)
