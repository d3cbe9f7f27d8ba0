"""Running an application on a socket: the daemon's main loop and the tests' helper.

Handlers are cancelled when their client disconnects (``handler_cancellation``). Streams are
not aiohttp's once started (``web/handoff.py``): their own connection protocol notices a client
that left. Shutdown is a bounded drain (uvicorn style): stop listening, tell clients to reconnect,
wait up to ``shutdown_timeout_s`` for streams to end (``app._drain_streams``), cancel what is left,
then cancel upstreams.

Connections are :class:`~watchgw.web.connections.GuardedRequestHandler` protocols on a listener
with an explicit backlog (``web/connections.py``: head timeout, pending-connection cap, throttled
accept errors); idle kept-alive connections close after ``server.keepalive_timeout_s``
(aiohttp's own timer, whose default is an hour). The listener is bound before the application
starts, or is the socket systemd passed (``web/activation.py``); under systemd the main loop
reports readiness, status, reloads, the drain and watchdog pings (``web/supervision.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from watchgw.config import ServerConfig
from watchgw.web.connections import ConnectionGuard, fd_headroom
from watchgw.web.keys import CONFIG, HUB
from watchgw.web.supervision import SystemdLink, status_line

log = structlog.get_logger("watchgw.server")


class _LateProtocolFactory:
    """The listener's protocol factory, known only once the runner's server exists: the socket is
    bound before the application starts (so a port in use fails before anything else does), and
    accepts nothing until the site starts serving."""

    __slots__ = ("make",)

    def __init__(self) -> None:
        self.make: Callable[[], asyncio.BaseProtocol] | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        assert self.make is not None, "a connection was accepted before the site started"
        return self.make()


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are :class:`GuardedRequestHandler` protocols (aiohttp's
    ``TCPSite`` always makes plain ``RequestHandler`` ones), with an explicit backlog. The
    listener is bound (or inherited from systemd) before the site is made; ``start`` serves it."""

    __slots__ = ("_factory", "_guard", "_handler_args", "_listener", "_url")

    def __init__(
        self,
        runner: web.AppRunner,
        listener: asyncio.Server,
        factory: _LateProtocolFactory,
        *,
        url: str,
        guard: ConnectionGuard,
        backlog: int,
        handler_args: dict[str, Any],
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._listener = listener
        self._factory = factory
        self._url = url
        self._guard = guard
        self._handler_args = handler_args

    @property
    def name(self) -> str:
        return self._url

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._factory.make = self._guard.protocol_factory(server, **self._handler_args)
        self._server = self._listener
        self._guard.install(asyncio.get_running_loop(), list(self._listener.sockets))
        await self._listener.start_serving()

    async def stop(self) -> None:
        self._guard.uninstall()
        await super().stop()


@dataclasses.dataclass
class Listening:
    runner: web.AppRunner
    port: int
    guard: ConnectionGuard
    url: str

    async def cleanup(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            self.guard.uninstall()


async def start_site(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    sock: socket.socket | None = None,
) -> Listening:
    """Start ``app`` with the connection limits of its ``[server]`` config; ``port=0`` picks a
    free port (read it back from the result). With ``sock`` (a listening socket from systemd),
    serve on it and ignore ``host`` and ``port``."""
    server_config = app[CONFIG].server if CONFIG in app else ServerConfig()
    loop = asyncio.get_running_loop()
    factory = _LateProtocolFactory()
    if sock is None:
        listener = await loop.create_server(
            factory, host, port, backlog=server_config.backlog, reuse_address=True, start_serving=False
        )
    else:
        listener = await loop.create_server(
            factory, sock=sock, backlog=server_config.backlog, start_serving=False
        )
    bound_host, bound_port = listener.sockets[0].getsockname()[:2]
    url = _url(host if sock is None else bound_host, bound_port)
    handler_args: dict[str, Any] = {
        "keepalive_timeout": server_config.keepalive_timeout_s,
        "access_log": None,
    }
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=shutdown_timeout_s, **handler_args
    )
    guard = ConnectionGuard(server_config)
    try:
        await runner.setup()
        site = GuardedSite(
            runner,
            listener,
            factory,
            url=url,
            guard=guard,
            backlog=server_config.backlog,
            handler_args=handler_args,
        )
        await site.start()
    except BaseException:
        listener.close()
        await runner.cleanup()
        raise
    _warn_if_few_file_descriptors(app)
    return Listening(runner=runner, port=bound_port, guard=guard, url=url)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
        yield listening.url
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
    sock: socket.socket | None = None,
    systemd: SystemdLink | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain within ``shutdown_timeout_s``. SIGHUP reloads.

    ``sock``: a listening socket passed by systemd, served instead of binding ``host:port``.
    ``systemd``: notifications for ``Type=notify`` (ready, reloading, stopping, status, watchdog).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if on_reload is not None:
        reload = systemd.reporting_reloads(on_reload) if systemd is not None else on_reload
        loop.add_signal_handler(signal.SIGHUP, reload)
    listening = await start_site(app, host=host, port=port, shutdown_timeout_s=shutdown_timeout_s, sock=sock)
    url = listening.url
    log.info("server.listening", url=url, **({"socket": "systemd"} if sock is not None else {}))
    if on_started is not None:
        on_started(url)
    supervised: contextlib.AbstractAsyncContextManager[None] = (
        systemd.serving(functools.partial(_status, app)) if systemd is not None else contextlib.nullcontext()
    )
    async with supervised:
        try:
            await stop.wait()
        finally:
            log.info("server.stopping", timeout_s=shutdown_timeout_s)
            if systemd is not None:
                systemd.stopping()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            # The whole drain is bounded: the aiohttp shutdown waits for handlers up to the timeout,
            # and this outer bound covers the cleanup of upstreams as well. The watchdog keeps
            # pinging meanwhile: the loop is working, and the drain may be longer than its interval.
            try:
                async with asyncio.timeout(shutdown_timeout_s + 2):
                    await listening.cleanup()
            except TimeoutError:
                log.warning("server.shutdown_timeout", timeout_s=shutdown_timeout_s)


def _status(app: web.Application) -> str:
    return status_line(app[HUB]) if HUB in app else "serving"
