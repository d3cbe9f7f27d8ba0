"""A forward-auth service for tests (what oauth2-proxy's ``/oauth2/auth`` is to nginx
``auth_request``): a session cookie, or a bearer token it knows, is answered with the user's
control-plane token in a response header; anything else is 401. Served on 127.0.0.1 with a free
port; it records the headers of every request it gets, and can be held at a gate or made to
answer with a given status."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Iterator

import structlog
from aiohttp import web

from watchgw.config import LogConfig
from watchgw.logs import configure_logging
from watchgw.web.server import running_app

AUTH_PATH = "/oauth2/auth"
TOKEN_HEADER = "X-Auth-Request-Access-Token"
USER_HEADER = "X-Auth-Request-User"


class ForwardAuthServer:
    def __init__(
        self,
        sessions: dict[str, str],
        *,
        cookie: str = "session",
        bearers: dict[str, str] | None = None,
        user_ids: dict[str, str] | None = None,
    ) -> None:
        self.sessions = sessions
        """Session cookie value -> the control-plane token of its user."""
        self.cookie = cookie
        self.bearers = dict(bearers or {})
        """``Authorization: Bearer`` value -> the control-plane token (an API client's way in)."""
        self.user_ids = dict(user_ids or {})
        """Token -> user id, sent in :data:`USER_HEADER` when present."""
        self.token_header = TOKEN_HEADER
        self.requests: list[dict[str, str]] = []
        """The headers of each request received, in order."""
        self.status: int | None = None
        """Answer every request with this status (and no token) instead."""
        self.gate: asyncio.Event | None = None
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async with self._changed:
            self.requests.append(dict(request.headers))
            self._changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if self.status is not None:
            headers = {"Location": "/oauth2/sign_in"} if 300 <= self.status < 400 else {}
            return web.Response(status=self.status, headers=headers, text="no")
        token = self.sessions.get(request.cookies.get(self.cookie, ""))
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        if token is None and scheme.lower() == "bearer":
            token = self.bearers.get(bearer.strip())
        if token is None:
            return web.Response(status=401, text="sign in first")
        headers = {self.token_header: token}
        if token in self.user_ids:
            headers[USER_HEADER] = self.user_ids[token]
        response = web.Response(status=202, headers=headers, text="ok")
        # A cookie refreshed by the service: it must never travel with another client's request.
        response.set_cookie("refreshed", "service-cookie-of-this-client")
        return response

    async def wait_requests(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve until the block ends; yields the ``forward_url``."""
        app = web.Application()
        app.router.add_get(AUTH_PATH, self.handle)
        try:
            async with running_app(app) as url:
                yield url + AUTH_PATH
        finally:
            if self.gate is not None:
                self.gate.set()


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line (JSON, debug level) written while the block runs, as one ``StringIO``."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    configure_logging(LogConfig(level="debug", format="json"), stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
