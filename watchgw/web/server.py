"""Running an application on a socket: the daemon's main loop and the tests' helper.

Handlers are cancelled when their client disconnects (``handler_cancellation``), which is how a
stream learns that its reader is gone. Shutdown is a bounded drain (uvicorn style): stop
listening, tell clients to reconnect, wait up to ``shutdown_timeout_s`` for streams to end, cancel
what is left, then cancel upstreams.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("watchgw.server")


async def start_site(
    app: web.Application, *, host: str, port: int, shutdown_timeout_s: float
) -> tuple[web.AppRunner, int]:
    """Start ``app``; returns the runner and the bound port (``port=0`` picks a free one)."""
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout_s,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=4096)
    await site.start()
    bound = port
    server = site._server  # the asyncio Server: the only place the bound port can be read back
    if isinstance(server, asyncio.Server) and server.sockets:
        sock: socket.socket = server.sockets[0]
        bound = sock.getsockname()[1]
    return runner, bound


@contextlib.asynccontextmanager
async def running_app(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0, shutdown_timeout_s: float = 5.0
) -> AsyncIterator[str]:
    """Serve ``app`` for the duration of the block; yields its base URL."""
    runner, bound = await start_site(app, host=host, port=port, shutdown_timeout_s=shutdown_timeout_s)
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


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
    runner, bound = await start_site(app, host=host, port=port, shutdown_timeout_s=shutdown_timeout_s)
    url = f"http://{host}:{bound}"
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
                await runner.cleanup()
        except TimeoutError:
            log.warning("server.shutdown_timeout", timeout_s=shutdown_timeout_s)
