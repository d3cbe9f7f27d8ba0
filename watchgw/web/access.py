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

User ids: a caller's ``user_id`` (filled into ``upstream.user_prefix`` for user-scoped channels)
is the ``auth.user_field`` of its SelfSubjectReview's ``status.userInfo`` (``uid`` by default, or
``username``), cached with the identity. A control plane that sends no ``uid`` leaves it ""
(authentication still succeeds; user-scoped subscribes are then refused by the web layer).

``mode = "forward"`` (:class:`ForwardAccess`, as nginx ``auth_request`` and Traefik ForwardAuth do
it): the client's ``Cookie`` and ``Authorization`` headers, and nothing else, are sent to
``auth.forward_url``. A 2xx answer carries the client's bearer token in ``forward_token_header``;
from there on the token is used exactly as in bearer mode (a :class:`BearerAccess` does the
reviews, the rechecks and hands the token to ``credential = "subscriber"``). Identity: when
``forward_user_header`` is configured and the answer carries it, that value is both the identity
and the user id, and no SelfSubjectReview is asked (the forward-auth service is trusted to vouch
for who the session is; the token is still checked by the control plane in every access review,
where a rejected token is a refusal). Otherwise identity and user id come from the
SelfSubjectReview, as in bearer mode. Any other answer (401, 403, a redirect to a login page,
5xx, a 2xx without the token header) is 401 ``unauthenticated``; a forward-auth service that
cannot be reached or does not answer within ``forward_timeout_s`` is 503
``upstream_unavailable``. Answers are cached for ``forward_cache_ttl_s`` under a SHA-256 of the
credentials (never the credentials), 5xx answers excepted, and concurrent lookups of the same
credentials share one request.

Failed authentications (bearer and forward) are limited per client address
(:mod:`watchgw.web.clientaddr`): each attempt that is not answered from the identity cache takes
one token of the address's bucket (``auth.failures_per_minute``, refilled over a minute) before
anything is asked upstream, and gets it back when it succeeds (or the control plane cannot be
reached, which is not the client's doing). So failures, and reviews still in flight, are bounded
per address, also for many concurrent requests; an address without tokens left gets 429
``rate_limited`` with ``Retry-After`` and nothing is asked. Every failure is logged as
``auth.failed`` with its reason and the address, never the credential; an address running out is
logged once a minute as ``auth.rate_limited``, not once per refused request.
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

import aiohttp
import structlog
from aiohttp import web

from watchgw.config import AuthConfig
from watchgw.hub.errors import Forbidden, HubError
from watchgw.kube.errors import APIError, ForbiddenError, UnauthorizedError
from watchgw.kube.reviews import UserInfo
from watchgw.kube.types import WatchTarget
from watchgw.web.body import RateLimited
from watchgw.web.clientaddr import request_limit_key
from watchgw.web.ratelimit import RateLimiter

log = structlog.get_logger("watchgw.access")

ANONYMOUS = "anonymous"
MAX_TOKEN_BYTES = 8192
MAX_USER_ID_BYTES = 253


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

    async def who_am_i(self, token: str) -> UserInfo | str:
        """Who ``token`` is; a plain ``str`` is a username whose uid is not known."""

    async def may_watch(self, token: str, target: WatchTarget) -> bool: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed_token(token: str) -> bool:
    """A bearer token that may be sent on: bounded, printable ASCII (no header injection)."""
    return 0 < len(token) <= MAX_TOKEN_BYTES and token.isascii() and token.isprintable()


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
        trusted_proxies: tuple[str, ...] = (),
    ) -> None:
        self._config = config
        self._reviews = reviews
        self._trusted_proxies = trusted_proxies
        per_minute = config.failures_per_minute
        self._failures = RateLimiter(
            rate_per_s=per_minute / 60.0, burst=per_minute, max_identities=max_entries, clock=clock
        )
        """Failed (or in-flight) authentications per client address."""
        self._limited_logged: TTLCache[str, bool] = TTLCache(max_entries=max_entries, clock=clock)
        self._identities: TTLCache[str, UserInfo] = TTLCache(max_entries=max_entries, clock=clock)
        self._rejected: TTLCache[str, bool] = TTLCache(max_entries=max_entries, clock=clock)
        self._decisions: TTLCache[tuple[str, str], bool] = TTLCache(max_entries=max_entries * 4, clock=clock)
        self._rechecked: TTLCache[tuple[str, str], tuple[int, bool]] = TTLCache(
            max_entries=max_entries * 4, clock=clock
        )
        """The latest recheck round's answer per (token hash, channel): one review per round."""
        self._who: _SingleFlight[str, UserInfo] = _SingleFlight()
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

    # ------------------------------------------------------------------ failures per address
    def address_of(self, request: web.BaseRequest) -> str:
        """The client address failures are counted by (an IPv6 address by its /64)."""
        return request_limit_key(request, self._trusted_proxies)

    def admit(self, address: str | None) -> None:
        """Reserve one failure of ``address`` before asking anyone: :class:`RateLimited` when it
        has none left. The caller gives it back (:meth:`succeeded`) unless the attempt failed."""
        if address is None:
            return
        wait_s = self._failures.acquire(address)
        if wait_s > 0:
            if self._limited_logged.get(address) is None:
                self._limited_logged.put(address, True, 60.0)
                log.warning("auth.rate_limited", address=address, retry_after_s=round(wait_s, 1))
            raise RateLimited(wait_s)

    def succeeded(self, address: str | None) -> None:
        if address is not None:
            self._failures.refund(address)

    @staticmethod
    def failed(address: str | None, reason: str) -> None:
        log.info("auth.failed", reason=reason, address=address)

    def refuse(self, address: str | None, reason: str, message: str) -> Unauthenticated:
        """A failure without a review: it costs the address one (429 once none are left)."""
        self.admit(address)
        self.failed(address, reason)
        return Unauthenticated(message)

    # ------------------------------------------------------------------ identity
    async def authenticate(self, request: web.Request) -> Caller:
        address = self.address_of(request)
        try:
            token = self.token_of(request)
        except Unauthenticated as exc:
            raise self.refuse(address, "bad_authorization_header", exc.message) from None
        if not token:
            raise self.refuse(
                address,
                "no_credentials",
                f"send 'Authorization: Bearer <token>' or the '{self._config.cookie}' cookie",
            )
        if not well_formed_token(token):
            raise self.refuse(address, "malformed_token", "the token is malformed")
        return await self.identify(token, address=address)

    async def identify(self, token: str, *, address: str | None = None) -> Caller:
        """The caller ``token`` is (a well-formed token): SelfSubjectReview, cached by its hash.
        ``address``: the client's, whose failures are limited (None: not limited)."""
        key = token_hash(token)
        info = self._identities.get(key)
        if info is not None:
            return self._caller(info, token)
        self.admit(address)
        if self._rejected.get(key):
            self.failed(address, "token_rejected_cached")
            raise Unauthenticated("the control plane rejected this token")
        try:
            info = await self._who.run(key, lambda: self._review_identity(key, token))
        except UnauthorizedError:
            self.failed(address, "token_rejected")
            raise Unauthenticated("the control plane rejected this token") from None
        except APIError as exc:
            self.succeeded(address)  # not the client's failure
            log.warning("auth.review_failed", error=str(exc), status=exc.status)
            raise UpstreamUnavailable("the control plane could not be asked who this token is") from None
        self.succeeded(address)
        return self._caller(info, token)

    def _caller(self, info: UserInfo, token: str) -> Caller:
        user_id = info.uid if self._config.user_field == "uid" else info.username
        return Caller(info.username, token, user_id=user_id)

    async def _review_identity(self, key: str, token: str) -> UserInfo:
        """The shared lookup: its answer is cached here, once, whichever callers are still waiting."""
        try:
            answer = await self._reviews.who_am_i(token)
        except UnauthorizedError:
            self._rejected.put(key, True, min(self._config.cache_ttl_s, 5.0))
            raise
        info = UserInfo(answer) if isinstance(answer, str) else answer
        self._identities.put(key, info, self._config.cache_ttl_s)
        return info

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
        if target.user_scoped and (not target.user or target.user != caller.user_id):
            return False  # only one's own user control plane (the web layer fills target.user)
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
        if caller.token is None or (target.user_scoped and not target.user):
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


@dataclass(frozen=True, slots=True)
class _Forwarded:
    """A forward-auth answer: the client's token (None: not authenticated) and the user id it sent."""

    token: str | None
    user_id: str = ""

    def __repr__(self) -> str:
        return f"_Forwarded(accepted={self.token is not None}, user_id={self.user_id!r})"


def credentials_hash(cookie: str, authorization: str) -> str:
    """The cache key of a client's forwarded credentials (never the credentials themselves)."""
    digest = hashlib.sha256()
    for value in (cookie, authorization):
        data = value.encode()
        digest.update(len(data).to_bytes(8, "big") + data)  # length-prefixed: no ambiguous joins
    return digest.hexdigest()


def _well_formed_user_id(value: str) -> bool:
    return 0 < len(value) <= MAX_USER_ID_BYTES and value.isascii() and value.isprintable()


class ForwardAccess:
    """``mode = "forward"``: the token comes from ``auth.forward_url``; the rest is ``bearer``'s.

    Owns the HTTP session it asks ``forward_url`` with (made on first use, closed by
    :meth:`close`). The session keeps no cookies: a ``Set-Cookie`` of one client's answer must
    never travel with another client's question.
    """

    def __init__(
        self,
        config: AuthConfig,
        bearer: BearerAccess,
        *,
        max_entries: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._bearer = bearer
        self._answers: TTLCache[str, _Forwarded] = TTLCache(max_entries=max_entries, clock=clock)
        self._forward: _SingleFlight[str, _Forwarded] = _SingleFlight()
        self._session: aiohttp.ClientSession | None = None

    @property
    def bearer(self) -> BearerAccess:
        return self._bearer

    async def authenticate(self, request: web.Request) -> Caller:
        bearer = self._bearer
        address = bearer.address_of(request)
        cookie = "; ".join(request.headers.getall("Cookie", ()))
        authorization = request.headers.get("Authorization", "")
        if not cookie and not authorization:
            raise bearer.refuse(
                address,
                "no_credentials",
                "send the session cookie of the sign-in (or an 'Authorization' header) that the "
                "forward-auth service accepts",
            )
        if not (cookie.isprintable() and authorization.isprintable()):
            raise bearer.refuse(
                address, "malformed_credentials", "the Cookie or Authorization header is malformed"
            )
        key = credentials_hash(cookie, authorization)
        answer = self._answers.get(key)
        if answer is None or answer.token is None:
            bearer.admit(address)  # a question to forward_url, or a failure: one of the address's
            if answer is None:
                try:
                    answer = await self._forward.run(key, lambda: self._ask(key, cookie, authorization))
                except UpstreamUnavailable:
                    bearer.succeeded(address)  # not the client's failure
                    raise
            if answer.token is None:
                bearer.failed(address, "forward_rejected")
                raise Unauthenticated("the forward-auth service did not accept these credentials")
            bearer.succeeded(address)
        if answer.user_id:
            return Caller(answer.user_id, answer.token, user_id=answer.user_id)
        return await bearer.identify(answer.token, address=address)

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        await self._bearer.authorize(caller, target, channel_key)

    async def recheck(
        self, caller: Caller, target: WatchTarget, channel_key: str, *, round_id: int | None = None
    ) -> bool | None:
        return await self._bearer.recheck(caller, target, channel_key, round_id=round_id)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self._config.forward_timeout_s),
            )
        return self._session

    async def _ask(self, key: str, cookie: str, authorization: str) -> _Forwarded:
        """The shared lookup: one GET of ``forward_url``; its answer is cached here (5xx aside)."""
        headers = {}
        if cookie:
            headers["Cookie"] = cookie
        if authorization:
            headers["Authorization"] = authorization
        config = self._config
        try:
            async with self._get_session().get(
                config.forward_url, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                token = response.headers.get(config.forward_token_header, "")
                user_header = config.forward_user_header
                user_id = response.headers.get(user_header, "") if user_header else ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("auth.forward_unreachable", error=type(exc).__name__, detail=str(exc))
            raise UpstreamUnavailable("the forward-auth service could not be asked who this is") from None
        answer = self._answer(status, token, user_id)
        if status < 500:
            self._answers.put(key, answer, config.forward_cache_ttl_s)
        return answer

    def _answer(self, status: int, token: str, user_id: str) -> _Forwarded:
        """What an answer of ``forward_url`` means; logs name headers and statuses, never values."""
        config = self._config
        if not 200 <= status < 300:
            level = log.warning if status >= 500 else log.debug
            level("auth.forward_rejected", status=status)
            return _Forwarded(None)
        scheme, _, rest = token.partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            token = rest.strip()  # a service answering with an Authorization-style value
        if not token:
            log.warning("auth.forward_no_token", status=status, header=config.forward_token_header)
            return _Forwarded(None)
        if not well_formed_token(token):
            log.warning("auth.forward_bad_token", header=config.forward_token_header)
            return _Forwarded(None)
        if user_id and not _well_formed_user_id(user_id):
            log.warning("auth.forward_bad_user", header=config.forward_user_header, length=len(user_id))
            user_id = ""  # ignored: the SelfSubjectReview says who the token is
        return _Forwarded(token, user_id)


def access_for(config: AuthConfig, reviews: Reviews, *, trusted_proxies: tuple[str, ...] = ()) -> Access:
    """The access ``[auth] mode`` selects; ``trusted_proxies``: ``server.trusted_proxies``, for
    the client addresses failed authentications are counted by."""
    if config.mode == "bearer":
        return BearerAccess(config, reviews, trusted_proxies=trusted_proxies)
    if config.mode == "forward":
        return ForwardAccess(config, BearerAccess(config, reviews, trusted_proxies=trusted_proxies))
    return OpenAccess()
