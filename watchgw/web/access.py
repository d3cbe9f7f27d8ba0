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

Concurrent questions with the same key (token hash, or token hash and channel) share one review:
it runs in a task of its own that every caller awaits through ``asyncio.shield``, so a caller that
goes away (its client disconnected and aiohttp cancelled the handler) takes only itself away. A
review whose callers have all gone is cancelled: nobody would read its answer, and no task
outlives the requests that asked for it.

The periodic recheck (:mod:`watchgw.web.recheck`) bypasses the decision cache: it asks the control
plane afresh and stores the answer, so a revocation ends held subscriptions within ``recheck_s``
and refuses new subscribes from then on, whatever ``cache_ttl_s`` is. Within one recheck round a
token's answer for a channel is asked once, however many of its sessions (tabs) hold the channel.
An undecidable recheck (control plane unreachable) is ``None`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

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
    user_id: str = ""
    """The user id filled into ``upstream.user_prefix`` for user-scoped channels ("" when none:
    anonymous callers cannot subscribe to those)."""

    def __repr__(self) -> str:
        return f"Caller({self.identity!r})"


class Access(Protocol):
    async def authenticate(self, request: web.Request) -> Caller:
        """The caller, or :class:`Unauthenticated` / :class:`UpstreamUnavailable`."""

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        """Return when ``caller`` may watch ``target``; :class:`Forbidden` or 503 otherwise."""

    async def recheck(
        self, caller: Caller, target: WatchTarget, channel_key: str, *, round_id: int | None = None
    ) -> bool | None:
        """A fresh decision for a held subscription: True, False, or None when undecidable now.

        Rechecks with the same ``round_id`` may share one answer per token and channel (many tabs
        of one user); ``None`` shares nothing."""


class OpenAccess:
    """``mode = "none"``."""

    async def authenticate(self, request: web.Request) -> Caller:
        return Caller(ANONYMOUS)

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        return None

    async def recheck(
        self, caller: Caller, target: WatchTarget, channel_key: str, *, round_id: int | None = None
    ) -> bool | None:
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


class _Flight(Generic[V]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[V]) -> None:
        self.task = task
        self.waiters = 0


class _SingleFlight(Generic[K, V]):
    """Concurrent lookups of one key share one request to the control plane.

    The request runs in a task owned here, not in the first caller: callers await it through
    ``asyncio.shield``, so cancelling one caller cancels only that caller. When the last caller
    has gone the task is cancelled and forgotten at once (the next caller starts a new one rather
    than join a dying one): work nobody waits for is not done, so nothing outlives its requests.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, _Flight[V]] = {}

    async def run(self, key: K, make: Callable[[], Coroutine[Any, Any, V]]) -> V:
        flight = self._inflight.get(key)
        if flight is None:
            flight = self._inflight[key] = self._start(key, make())
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                flight.task.cancel()
                self._forget(key, flight)

    def _start(self, key: K, lookup: Coroutine[Any, Any, V]) -> _Flight[V]:
        flight = _Flight(asyncio.create_task(lookup, name="access review"))
        flight.task.add_done_callback(lambda _: self._landed(key, flight))
        return flight

    def _forget(self, key: K, flight: _Flight[V]) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    def _landed(self, key: K, flight: _Flight[V]) -> None:
        self._forget(key, flight)
        if not flight.task.cancelled():
            # Mark the outcome read: the waiters got it through their shields, or nobody wants it
            # (a review that turned its cancellation into an error); never "never retrieved".
            flight.task.exception()


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
        self._rechecked: TTLCache[tuple[str, str], tuple[int, bool]] = TTLCache(
            max_entries=max_entries * 4, clock=clock
        )
        """The latest recheck round's answer per (token hash, channel): one review per round."""
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
            identity = await self._who.run(key, lambda: self._review_identity(key, token))
        except UnauthorizedError:
            raise Unauthenticated("the control plane rejected this token") from None
        except APIError as exc:
            log.warning("auth.review_failed", error=str(exc), status=exc.status)
            raise UpstreamUnavailable("the control plane could not be asked who this token is") from None
        return Caller(identity, token)

    async def _review_identity(self, key: str, token: str) -> str:
        """The shared lookup: its answer is cached here, once, whichever callers are still waiting."""
        try:
            identity = await self._reviews.who_am_i(token)
        except UnauthorizedError:
            self._rejected.put(key, True, min(self._config.cache_ttl_s, 5.0))
            raise
        self._identities.put(key, identity, self._config.cache_ttl_s)
        return identity

    async def _review_access(self, key: tuple[str, str], token: str, target: WatchTarget) -> bool:
        """The shared lookup: a fresh answer from the control plane, stored in the decision cache."""
        try:
            allowed = await self._reviews.may_watch(token, target)
        except (UnauthorizedError, ForbiddenError):
            allowed = False
        self._decisions.put(key, allowed, self._config.cache_ttl_s)
        return allowed

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        if not await self._decide(caller, target, channel_key):
            log.info("auth.denied", identity=caller.identity, channel=channel_key)
            raise Forbidden("you may not watch this channel")

    async def _decide(self, caller: Caller, target: WatchTarget, channel_key: str) -> bool:
        """The cached decision, else a review's (shared with concurrent callers of the same key)."""
        if caller.token is None:
            return False
        key = (token_hash(caller.token), channel_key)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        token = caller.token
        try:
            return await self._may.run(key, lambda: self._review_access(key, token, target))
        except APIError as exc:
            log.warning("auth.review_failed", error=str(exc), status=exc.status, channel=channel_key)
            raise UpstreamUnavailable(
                "authorization could not be decided: the control plane is unreachable"
            ) from None

    async def recheck(
        self, caller: Caller, target: WatchTarget, channel_key: str, *, round_id: int | None = None
    ) -> bool | None:
        # Never the decision cache: its answer may be cache_ttl_s old, and a revocation must end
        # held subscriptions within recheck_s. The fresh answer goes into the cache (by the
        # lookup), so a revoked token's next subscribe is refused too.
        if caller.token is None:
            return False
        key = (token_hash(caller.token), channel_key)
        if round_id is not None:
            done = self._rechecked.get(key)
            if done is not None and done[0] == round_id:
                return done[1]  # another session (tab) of this token, earlier in this round
        token = caller.token
        try:
            allowed = await self._may.run(key, lambda: self._review_access(key, token, target))
        except APIError:
            return None  # undecidable now: never a revocation, never an allow
        if round_id is not None:
            # Reused only within its round (a later round_id never matches), so no expiry of its
            # own: the LRU bound is what keeps it small.
            self._rechecked.put(key, (round_id, allowed), math.inf)
        return allowed
