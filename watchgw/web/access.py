"""Who a client is and what it may watch (PROTOCOL.md section 5).

``mode = "none"``: one identity, ``anonymous``, allowed everything (trusted networks, the demo).

``mode = "bearer"``: the client's token comes from ``Authorization: Bearer`` or the configured
cookie (``EventSource`` cannot set headers). Who it is comes from a ``SelfSubjectReview`` sent
with that token; whether it may watch a channel from a ``SelfSubjectAccessReview`` (verb
``watch``) sent with that token to the channel's own control plane (its project or org scope).
Both are asked again for every subscribe, including channels already open for someone else, so
sharing an upstream never shares access. Answers are cached for ``cache_ttl_s`` under a SHA-256
of the token, never the token itself; a control plane that cannot be reached is a 503, never an
allow.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog
from aiohttp import web

from watchgw.config import AuthConfig
from watchgw.hub.errors import Forbidden, HubError
from watchgw.kube.errors import APIError, ForbiddenError, UnauthorizedError
from watchgw.kube.types import WatchTarget

log = structlog.get_logger("watchgw.access")

ANONYMOUS = "anonymous"
MAX_TOKEN_BYTES = 8192


class Unauthenticated(HubError):
    status, code = 401, "unauthenticated"


class UpstreamUnavailable(HubError):
    status, code = 503, "upstream_unavailable"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated client: its identity and the token it proved it with (never logged)."""

    identity: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"Caller({self.identity!r})"


class Access(Protocol):
    async def authenticate(self, request: web.Request) -> Caller:
        """The caller, or :class:`Unauthenticated` / :class:`UpstreamUnavailable`."""

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        """Return when ``caller`` may watch ``target``; :class:`Forbidden` or 503 otherwise."""

    async def recheck(self, caller: Caller, target: WatchTarget, channel_key: str) -> bool | None:
        """A fresh decision for a held subscription: True, False, or None when undecidable now."""


class OpenAccess:
    """``mode = "none"``."""

    async def authenticate(self, request: web.Request) -> Caller:
        return Caller(ANONYMOUS)

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        return None

    async def recheck(self, caller: Caller, target: WatchTarget, channel_key: str) -> bool | None:
        return True


class Reviews(Protocol):
    """The two questions asked of the control plane (``kube.reviews`` in production)."""

    async def who_am_i(self, token: str) -> str: ...

    async def may_watch(self, token: str, target: WatchTarget) -> bool: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A bounded LRU of values that expire: enough tokens to matter, never unbounded memory."""

    def __init__(self, *, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl_s: float) -> None:
        self._data[key] = (self._clock() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class _SingleFlight(Generic[K, V]):
    """Concurrent lookups of one key share one request to the control plane."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        existing = self._inflight.get(key)
        if existing is not None:
            return await asyncio.shield(existing)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await make()
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]


class BearerAccess:
    """``mode = "bearer"``."""

    def __init__(
        self,
        config: AuthConfig,
        reviews: Reviews,
        *,
        max_entries: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._reviews = reviews
        self._identities: TTLCache[str, str] = TTLCache(max_entries=max_entries, clock=clock)
        self._rejected: TTLCache[str, bool] = TTLCache(max_entries=max_entries, clock=clock)
        self._decisions: TTLCache[tuple[str, str], bool] = TTLCache(max_entries=max_entries * 4, clock=clock)
        self._who: _SingleFlight[str, str] = _SingleFlight()
        self._may: _SingleFlight[tuple[str, str], bool] = _SingleFlight()

    def token_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            return token
        return request.cookies.get(self._config.cookie) or None

    async def authenticate(self, request: web.Request) -> Caller:
        token = self.token_of(request)
        if not token:
            raise Unauthenticated(
                f"send 'Authorization: Bearer <token>' or the '{self._config.cookie}' cookie"
            )
        if len(token) > MAX_TOKEN_BYTES or not token.isascii() or not token.isprintable():
            raise Unauthenticated("the token is malformed")
        key = token_hash(token)
        identity = self._identities.get(key)
        if identity is not None:
            return Caller(identity, token)
        if self._rejected.get(key):
            raise Unauthenticated("the control plane rejected this token")
        try:
            identity = await self._who.run(key, lambda: self._reviews.who_am_i(token))
        except UnauthorizedError:
            self._rejected.put(key, True, min(self._config.cache_ttl_s, 5.0))
            raise Unauthenticated("the control plane rejected this token") from None
        except APIError as exc:
            log.warning("auth.review_failed", error=str(exc), status=exc.status)
            raise UpstreamUnavailable("the control plane could not be asked who this token is") from None
        self._identities.put(key, identity, self._config.cache_ttl_s)
        return Caller(identity, token)

    async def _decide(self, caller: Caller, target: WatchTarget, channel_key: str) -> bool:
        if caller.token is None:
            return False
        key = (token_hash(caller.token), channel_key)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        token = caller.token
        try:
            allowed = await self._may.run(key, lambda: self._reviews.may_watch(token, target))
        except (UnauthorizedError, ForbiddenError):
            allowed = False
        self._decisions.put(key, allowed, self._config.cache_ttl_s)
        return allowed

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        try:
            allowed = await self._decide(caller, target, channel_key)
        except APIError as exc:
            log.warning("auth.review_failed", error=str(exc), status=exc.status, channel=channel_key)
            raise UpstreamUnavailable(
                "authorization could not be decided: the control plane is unreachable"
            ) from None
        if not allowed:
            log.info("auth.denied", identity=caller.identity, channel=channel_key)
            raise Forbidden("you may not watch this channel")

    async def recheck(self, caller: Caller, target: WatchTarget, channel_key: str) -> bool | None:
        try:
            return await self._decide(caller, target, channel_key)
        except APIError:
            return None
