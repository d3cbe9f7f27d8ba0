"""The aiohttp application: routes, error middleware, lifecycle.

State lives on the application under typed keys (``web/keys.py``). The hub and the upstream client
are made in a ``cleanup_ctx`` and torn down there; ``on_shutdown`` drains the streams first: every
client gets ``reconnect``, its stream ends once that is written, then upstreams are cancelled.
Open streams are found through the hub's sessions (no separate set of responses per client).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from watchgw.config import Config
from watchgw.hub.channel import Channel, UpstreamFactory
from watchgw.hub.errors import HubError
from watchgw.hub.hub import WatchHub
from watchgw.kube.client import KubeClient
from watchgw.kube.informer import Informer
from watchgw.kube.reviews import KubeReviews
from watchgw.kube.types import WatchTarget
from watchgw.kube.urls import upstream_target
from watchgw.web import routes
from watchgw.web.access import Access, ForwardAccess, access_for
from watchgw.web.body import RateLimited, RequestError, error_response
from watchgw.web.counters import RequestCounters
from watchgw.web.handoff import StreamTasks
from watchgw.web.keys import ACCESS, CONFIG, COUNTERS, HUB, RATE_LIMITER, STREAMS
from watchgw.web.metrics import install_metrics, metrics
from watchgw.web.ratelimit import RateLimiter
from watchgw.web.recheck import recheck_forever

log = structlog.get_logger("watchgw.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal becomes the JSON error shape; nothing else escapes as a stack trace."""
    try:
        return await handler(request)
    except RateLimited as exc:
        # One figure for both: the header and the body's retryAfter (whole seconds, rounded up).
        response = error_response(
            exc.status,
            exc.code,
            exc.message,
            headers={"Retry-After": str(exc.retry_after_s)},
            extra={"retryAfter": exc.retry_after_s},
        )
        code = exc.code
    except HubError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, RequestError) and exc.close_connection:
            response.force_close()  # and web/connections.py skips the lingering read
        code = exc.code
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error"
        )
        response = error_response(exc.status, code, exc.reason)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("request.failed", path=request.path)
        code = "internal_error"
        response = error_response(500, code, "the server failed to handle this request")
    request.app[COUNTERS].count_rejected(response, code)
    return response


def make_app(
    config: Config,
    *,
    upstream_factory: UpstreamFactory | None = None,
    access: Access | None = None,
    static: bool = False,
) -> web.Application:
    """Build the gateway. ``upstream_factory`` replaces the real informer (tests, benchmarks);
    ``access`` replaces the one ``[auth]`` selects."""
    # CORS always: without cors_origins every foreign preflight gets the documented 403 (rather
    # than the router's 405 for OPTIONS), and no answer carries CORS headers.
    cors = cors_middleware(frozenset(config.server.cors_origins))
    middlewares: list[Middleware] = [cors, errors_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=config.limits.max_body_bytes)
    app[CONFIG] = config
    app[COUNTERS] = RequestCounters()
    app[STREAMS] = StreamTasks()
    if access is not None:
        app[ACCESS] = access
    app[RATE_LIMITER] = RateLimiter(
        rate_per_s=config.limits.subscribe_rate_per_s, burst=config.limits.subscribe_burst
    )
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
    if config.auth.mode in ("bearer", "forward"):
        app.cleanup_ctx.append(_recheck_ctx)
    app.on_shutdown.append(_drain_streams)
    return app


#: Path -> (file in watchgw/static, content type). The client's script is also its SharedWorker's.
STATIC_FILES = {
    "/": ("index.html", "text/html"),
    "/watch-client.js": ("watch-client.js", "application/javascript"),
    "/watch-client.mjs": ("watch-client.mjs", "application/javascript"),
    # Declarations to read or download: no browser runs them, text/plain displays them.
    "/watch-client.d.ts": ("watch-client.d.ts", "text/plain"),
    "/watch-client.d.mts": ("watch-client.d.mts", "text/plain"),
}


def add_static_routes(app: web.Application) -> None:
    """The browser client and the live demo page, served from the package."""
    root = resources.files("watchgw") / "static"

    def serve(name: str, content_type: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=(root / name).read_bytes(), content_type=content_type)

        return handler

    for path, (name, content_type) in STATIC_FILES.items():
        app.router.add_get(path, serve(name, content_type))


def _hub_ctx(
    upstream_factory: UpstreamFactory | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        kube = KubeClient(config.upstream)
        created: Access | None = None
        if ACCESS not in app:
            app[ACCESS] = created = access_for(
                config.auth, KubeReviews(kube), trusted_proxies=config.server.trusted_proxies
            )
        factory = upstream_factory or informer_factory(kube, config)
        hub = WatchHub(
            limits=config.limits,
            upstream_factory=factory,
            key_segments=config.server.key_segments,
            resolve=functools.partial(upstream_target, config.upstream),
        )
        app[HUB] = hub
        log.info(
            "server.started",
            base_path=config.server.base_path,
            upstream=config.upstream.url,
            auth=config.auth.mode,
            credential=config.upstream.credential,
        )
        try:
            yield
        finally:
            await hub.close()
            if isinstance(created, ForwardAccess):
                await created.close()  # its session to forward_url (an access passed in is the caller's)
            await kube.close()
            log.info("server.stopped")

    return ctx


def informer_factory(kube: KubeClient, config: Config) -> UpstreamFactory:
    """One informer per channel. With ``credential = "subscriber"`` (and always for user-scoped
    channels) its token is a subscriber's."""

    def make(target: WatchTarget, listener: Channel) -> Informer:
        # A user-scoped channel is watched with its user's own token: the gateway's credential
        # has no business in (and usually no access to) a user's own control plane.
        subscriber = config.upstream.credential == "subscriber" or target.user_scoped
        provider = listener.subscriber_token if subscriber else None
        return Informer(
            target=target, client=kube, config=config.upstream, listener=listener, token_provider=provider
        )

    return make


async def _recheck_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        recheck_forever(app[HUB], app[ACCESS], app[CONFIG].auth.recheck_s, app[COUNTERS]),
        name="access recheck",
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cors_middleware(origins: frozenset[str]) -> Middleware:
    """Browsers on the listed origins may call the API with credentials; nobody else gets CORS:
    a preflight from any other origin (every origin when none is listed) is 403
    ``origin_not_allowed``, so the browser's console names the reason."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in origins
        if (
            request.method == "OPTIONS"
            and origin is not None
            and "Access-Control-Request-Method" in request.headers
        ):
            if not allowed:
                refused = error_response(403, "origin_not_allowed", "this origin may not call the API")
                request.app[COUNTERS].count_rejected(refused, "origin_not_allowed")
                return refused
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if allowed and origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers.add("Vary", "Origin")
        return response

    return middleware


async def _drain_streams(app: web.Application) -> None:
    """SIGTERM: clients get ``reconnect``, their streams end once it is written."""
    hub = app[HUB]
    sessions = hub.drain(app[CONFIG].limits.retry_ms)
    for session in sessions:
        session.end_stream()
    log.info("server.draining", streams=len(sessions))
    # Streams are handed off from aiohttp (web/handoff.py): its shutdown does not wait for them.
    cut = await app[STREAMS].wait(app[CONFIG].server.shutdown_timeout_s)
    if cut:
        log.warning("server.streams_cut", streams=cut, timeout_s=app[CONFIG].server.shutdown_timeout_s)
