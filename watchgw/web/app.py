"""The aiohttp application: routes, error middleware, lifecycle.

State lives on the application under typed keys (``web/keys.py``). The hub and the upstream client
are made in a ``cleanup_ctx`` and torn down there; ``on_shutdown`` drains the streams first: every
client gets ``reconnect``, its stream ends once that is written, then upstreams are cancelled.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import structlog
from aiohttp import web

from watchgw.config import Config
from watchgw.hub.channel import UpstreamFactory
from watchgw.hub.errors import HubError
from watchgw.hub.hub import WatchHub
from watchgw.web import routes
from watchgw.web.access import Access, OpenAccess
from watchgw.web.body import error_response
from watchgw.web.keys import ACCESS, CONFIG, HUB, STREAMS
from watchgw.web.metrics import install_metrics, metrics

log = structlog.get_logger("watchgw.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal becomes the JSON error shape; nothing else escapes as a stack trace."""
    try:
        return await handler(request)
    except HubError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error"
        )
        return error_response(exc.status, code, exc.reason)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("request.failed", path=request.path)
        return error_response(500, "internal_error", "the server failed to handle this request")


def make_app(
    config: Config,
    *,
    upstream_factory: UpstreamFactory | None = None,
    access: Access | None = None,
    static: bool = False,
) -> web.Application:
    """Build the gateway. ``upstream_factory`` replaces the real informer (tests, benchmarks)."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=config.limits.max_body_bytes)
    app[CONFIG] = config
    app[ACCESS] = access or OpenAccess()
    app[STREAMS] = weakref.WeakSet()
    base = config.server.base_path
    app.router.add_get(f"{base}/stream", routes.stream)
    app.router.add_post(f"{base}/subscribe", routes.subscribe)
    app.router.add_post(f"{base}/unsubscribe", routes.unsubscribe)
    if config.server.stats:
        app.router.add_get(f"{base}/stats", routes.stats)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    if config.server.metrics:
        install_metrics(app)
        app.router.add_get("/metrics", metrics)
    if static:
        add_static_routes(app)
    app.cleanup_ctx.append(_hub_ctx(upstream_factory))
    app.on_shutdown.append(_drain_streams)
    return app


def add_static_routes(app: web.Application) -> None:
    """The browser client and the live demo page, served from the package."""
    root = resources.files("watchgw") / "static"

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=(root / "index.html").read_bytes(), content_type="text/html")

    async def client_js(request: web.Request) -> web.Response:
        return web.Response(
            body=(root / "watch-client.js").read_bytes(), content_type="application/javascript"
        )

    app.router.add_get("/", index)
    app.router.add_get("/watch-client.js", client_js)


def _hub_ctx(
    upstream_factory: UpstreamFactory | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        client = None
        factory = upstream_factory
        if factory is None:
            from watchgw.kube.client import KubeClient
            from watchgw.kube.informer import Informer

            kube = KubeClient(config.upstream)
            client = kube

            def make_informer(target, listener):  # type: ignore[no-untyped-def]
                return Informer(target=target, client=kube, config=config.upstream, listener=listener)

            factory = make_informer
        hub = WatchHub(limits=config.limits, upstream_factory=factory)
        app[HUB] = hub
        log.info("server.started", base_path=config.server.base_path, upstream=config.upstream.url)
        try:
            yield
        finally:
            await hub.close()
            if client is not None:
                await client.close()
            log.info("server.stopped")

    return ctx


async def _drain_streams(app: web.Application) -> None:
    """SIGTERM: clients get ``reconnect``, their streams end once it is written."""
    hub = app[HUB]
    sessions = hub.drain(app[CONFIG].limits.retry_ms)
    for session in sessions:
        session.end_stream()
    log.info("server.draining", streams=len(sessions))
