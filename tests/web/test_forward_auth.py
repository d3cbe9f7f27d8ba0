"""Forward auth (``auth.mode = "forward"``): the client's cookie goes to a forward-auth service,
whose answer carries the token; from there on it is bearer mode. Against a forward-auth server
on a socket and the simulator as the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from tests.conftest import make_config
from tests.forward_auth import TOKEN_HEADER, USER_HEADER, ForwardAuthServer, captured_logs
from tests.processes import free_port
from watchgw.config import Config
from watchgw.hub.errors import Forbidden
from watchgw.kube.client import KubeClient
from watchgw.kube.reviews import KubeReviews
from watchgw.kube.types import WatchTarget
from watchgw.sim import Fault, Simulator, running_simulator
from watchgw.sim.rbac import Rules
from watchgw.web.access import (
    BearerAccess,
    Caller,
    ForwardAccess,
    Unauthenticated,
    UpstreamUnavailable,
    credentials_hash,
)
from watchgw.web.app import make_app
from watchgw.web.body import RateLimited
from watchgw.web.keys import ACCESS
from watchgw.web.server import running_app

TOKENS = {"tok-alice-0123456789": "alice", "tok-bob-0123456789": "bob"}
SESSIONS = {"sess-alice-abcdef": "tok-alice-0123456789", "sess-bob-abcdef": "tok-bob-0123456789"}
ALICE = {"Cookie": "session=sess-alice-abcdef"}
SECRETS = WatchTarget("api/v1/secrets", namespace="default")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Forward:
    sim: Simulator
    rules: Rules
    server: ForwardAuthServer
    access: ForwardAccess
    clock: Clock
    config: Config

    async def authenticate(self, headers: dict[str, str]) -> Caller:
        return await self.access.authenticate(
            make_mocked_request("GET", "/api/watch/stream", headers=headers)
        )


Factory = Callable[..., Any]


@pytest.fixture
async def forward_factory() -> AsyncIterator[Factory]:
    async with contextlib.AsyncExitStack() as exits:

        async def start(forward_url: str | None = None, **auth: Any) -> Forward:
            sim, sim_url = await exits.enter_async_context(running_simulator())
            sim.tokens = dict(TOKENS)
            rules = Rules()
            sim.authorizer = rules
            server = ForwardAuthServer(dict(SESSIONS))
            url = await exits.enter_async_context(server.running())
            forward_url = (forward_url or url).replace("{url}", url.replace("127.0.0.1", "localhost"))
            settings = {"mode": "forward", "forward_url": forward_url, "cache_ttl_s": 30, **auth}
            config = make_config(sim_url, auth=settings)
            kube = KubeClient(config.upstream)
            exits.push_async_callback(kube.close)
            clock = Clock()
            bearer = BearerAccess(config.auth, KubeReviews(kube), clock=clock)
            access = ForwardAccess(config.auth, bearer, clock=clock)
            exits.push_async_callback(access.close)
            return Forward(sim, rules, server, access, clock, config)

        yield start


@pytest.fixture
async def fwd(forward_factory: Factory) -> Forward:
    result: Forward = await forward_factory()
    return result


async def test_the_cookie_reaches_the_service_and_its_token_is_used(fwd: Forward) -> None:
    caller = await fwd.authenticate({**ALICE, "X-Other": "not forwarded", "Last-Event-ID": "12"})
    assert caller == Caller("alice", "tok-alice-0123456789", user_id=fwd.sim.uid_of("alice"))
    (seen,) = fwd.server.requests
    assert seen["Cookie"] == "session=sess-alice-abcdef"
    assert not {"X-Other", "Last-Event-ID", "Authorization"} & set(seen), "only the credentials go"
    # The token then works exactly as in bearer mode: access reviews with the caller's own token.
    fwd.rules.allow("alice", resource="secrets", namespace="default")
    await fwd.access.authorize(caller, SECRETS, "secrets-key")
    bob = await fwd.authenticate({"Cookie": "session=sess-bob-abcdef"})
    with pytest.raises(Forbidden):
        await fwd.access.authorize(bob, SECRETS, "secrets-key")
    assert await fwd.access.recheck(caller, SECRETS, "secrets-key") is True
    assert await fwd.access.recheck(bob, SECRETS, "secrets-key") is False


async def test_an_authorization_header_is_forwarded_too(forward_factory: Factory) -> None:
    # By host name: a cookie jar would keep the service's cookies for it (not for an address).
    fwd: Forward = await forward_factory(forward_url="{url}")
    fwd.server.bearers["api-key-for-bob"] = "tok-bob-0123456789"
    assert (await fwd.authenticate(ALICE)).identity == "alice"  # answered with a Set-Cookie
    caller = await fwd.authenticate({"Authorization": "Bearer api-key-for-bob"})
    assert caller.identity == "bob"
    seen = fwd.server.requests[-1]
    assert seen["Authorization"] == "Bearer api-key-for-bob"
    assert "Cookie" not in seen, "no cookie of the service's answer to another client is sent on"


async def test_no_credentials_is_401_naming_what_to_send_without_asking(fwd: Forward) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await fwd.authenticate({})
    assert "cookie" in caught.value.message
    assert "Authorization" in caught.value.message
    assert fwd.server.requests == []


@pytest.mark.parametrize("status", [401, 403, 302, 500, 503])
async def test_anything_but_a_2xx_is_401(fwd: Forward, status: int) -> None:
    fwd.server.status = status
    with pytest.raises(Unauthenticated):
        await fwd.authenticate(ALICE)
    assert len(fwd.server.requests) == 1, "a redirect to the sign-in page is not followed"


async def test_unknown_session_and_missing_token_header_are_401(fwd: Forward) -> None:
    with pytest.raises(Unauthenticated):
        await fwd.authenticate({"Cookie": "session=forged"})
    fwd.server.token_header = "X-Something-Else"  # a service not configured to pass the token
    with pytest.raises(Unauthenticated):
        await fwd.authenticate(ALICE)


async def test_a_token_the_control_plane_rejects_is_401(fwd: Forward) -> None:
    fwd.server.sessions["sess-stale"] = "tok-expired-0123456789"
    with pytest.raises(Unauthenticated):
        await fwd.authenticate({"Cookie": "session=sess-stale"})


async def test_an_unreachable_service_is_503(forward_factory: Factory) -> None:
    fwd: Forward = await forward_factory(forward_url=f"http://127.0.0.1:{free_port()}/oauth2/auth")
    with pytest.raises(UpstreamUnavailable):
        await fwd.authenticate(ALICE)


async def test_a_service_that_does_not_answer_in_time_is_503(forward_factory: Factory) -> None:
    fwd: Forward = await forward_factory(forward_timeout_s=0.2)
    fwd.server.gate = asyncio.Event()  # never opened while the request waits
    with pytest.raises(UpstreamUnavailable):
        await fwd.authenticate(ALICE)


async def test_answers_are_cached_for_the_ttl_then_asked_again(forward_factory: Factory) -> None:
    fwd: Forward = await forward_factory(forward_cache_ttl_s=5)
    for _ in range(5):
        assert (await fwd.authenticate(ALICE)).identity == "alice"
    assert len(fwd.server.requests) == 1
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await fwd.authenticate({"Cookie": "session=forged"})
    assert len(fwd.server.requests) == 2, "a rejection is an answer too"
    fwd.clock.now += 5
    await fwd.authenticate(ALICE)
    assert len(fwd.server.requests) == 3
    # Other credentials (another cookie alongside, another Authorization) are another key.
    await fwd.authenticate({"Cookie": "session=sess-alice-abcdef; theme=dark"})
    assert len(fwd.server.requests) == 4


async def test_server_errors_are_not_cached(fwd: Forward) -> None:
    fwd.server.status = 502
    with pytest.raises(Unauthenticated):
        await fwd.authenticate(ALICE)
    fwd.server.status = None
    assert (await fwd.authenticate(ALICE)).identity == "alice"
    assert len(fwd.server.requests) == 2


async def test_concurrent_identical_lookups_share_one_request(fwd: Forward) -> None:
    fwd.server.gate = asyncio.Event()
    tasks = [asyncio.create_task(fwd.authenticate(ALICE)) for _ in range(10)]
    await fwd.server.wait_requests(1)
    fwd.server.gate.set()
    callers = await asyncio.gather(*tasks)
    assert {c.identity for c in callers} == {"alice"}
    assert len(fwd.server.requests) == 1


async def test_a_user_header_is_the_identity_and_no_review_is_asked(forward_factory: Factory) -> None:
    fwd: Forward = await forward_factory(forward_user_header=USER_HEADER)
    fwd.server.user_ids["tok-alice-0123456789"] = "user-7f3a"
    # Were a SelfSubjectReview asked, this fault would make it a 503.
    fwd.sim.inject(Fault(kind="error500", on="any", count=100, path_contains="selfsubjectreviews"))
    caller = await fwd.authenticate(ALICE)
    assert caller == Caller("user-7f3a", "tok-alice-0123456789", user_id="user-7f3a")
    # Without the header in the answer, the SelfSubjectReview says who it is (here: cannot).
    with pytest.raises(UpstreamUnavailable):
        await fwd.authenticate({"Cookie": "session=sess-bob-abcdef"})


async def test_with_a_user_header_a_token_the_control_plane_rejects_is_refused_access(
    forward_factory: Factory,
) -> None:
    fwd: Forward = await forward_factory(forward_user_header=USER_HEADER)
    fwd.server.sessions["sess-stale"] = "tok-expired-0123456789"
    fwd.server.user_ids["tok-expired-0123456789"] = "user-stale"
    fwd.rules.allow("*", resource="*")  # no rule could let a token nobody is through
    caller = await fwd.authenticate({"Cookie": "session=sess-stale"})
    assert caller.identity == "user-stale"
    with pytest.raises(Forbidden):
        await fwd.access.authorize(caller, SECRETS, "secrets-key")
    assert await fwd.access.recheck(caller, SECRETS, "secrets-key") is False


async def test_no_credential_in_any_log_line(forward_factory: Factory) -> None:
    with captured_logs() as logs:
        fwd: Forward = await forward_factory(forward_cache_ttl_s=0)
        await fwd.authenticate(ALICE)
        with pytest.raises(Unauthenticated):
            await fwd.authenticate(
                {"Cookie": "session=forged-cookie-value", "Authorization": "Bearer abc-xyz"}
            )
        fwd.server.status = 500
        with pytest.raises(Unauthenticated):
            await fwd.authenticate(ALICE)
        fwd.server.status = None
        fwd.server.token_header = "X-Something-Else"
        with pytest.raises(Unauthenticated):
            await fwd.authenticate(ALICE)
        unreachable: Forward = await forward_factory(forward_url=f"http://127.0.0.1:{free_port()}/auth")
        with pytest.raises(UpstreamUnavailable):
            await unreachable.authenticate(ALICE)
    text = logs.getvalue()
    assert "auth.forward_rejected" in text
    assert "auth.forward_unreachable" in text
    assert "auth.forward_no_token" in text
    for secret in (*SESSIONS, *TOKENS, "forged-cookie-value", "abc-xyz", "service-cookie-of-this-client"):
        assert secret not in text


def test_the_cache_key_is_a_hash_of_both_credentials() -> None:
    key = credentials_hash("session=abc", "")
    assert len(key) == 64
    assert "abc" not in key
    assert key != credentials_hash("", "session=abc")
    assert credentials_hash("a", "bc") != credentials_hash("ab", "c")


async def test_the_gateway_closes_the_session_it_made() -> None:
    server = ForwardAuthServer(dict(SESSIONS))
    async with running_simulator() as (sim, sim_url), server.running() as url:
        sim.tokens = dict(TOKENS)
        config = make_config(sim_url, auth={"mode": "forward", "forward_url": url})
        app = make_app(config)
        async with running_app(app):
            access = app[ACCESS]
            assert isinstance(access, ForwardAccess)
            await access.authenticate(make_mocked_request("GET", "/", headers=ALICE))
            session = access._session
            assert session is not None
            assert not session.closed
        assert session.closed


def test_token_header_default_is_oauth2_proxys() -> None:
    assert make_config(auth={"mode": "forward", "forward_url": "http://x"}).auth.forward_token_header == (
        TOKEN_HEADER
    )


async def test_failures_are_limited_per_address_before_asking_the_service(forward_factory: Factory) -> None:
    fwd: Forward = await forward_factory(failures_per_minute=3)
    for i in range(3):
        with pytest.raises(Unauthenticated):
            await fwd.authenticate({"Cookie": f"session=forged-{i}"})
    for i in range(10):
        with pytest.raises(RateLimited) as caught:
            await fwd.authenticate({"Cookie": f"session=forged-more-{i}"})
        assert caught.value.retry_after_s > 0
    assert len(fwd.server.requests) == 3, "nothing more was asked once the address ran out"
    # One failure's worth back (3 per minute): a success gives it back, a failure uses it up.
    fwd.clock.now += 20.0
    assert (await fwd.authenticate(ALICE)).identity == "alice"
    with pytest.raises(Unauthenticated):
        await fwd.authenticate({"Cookie": "session=forged-later"})
    with pytest.raises(RateLimited):
        await fwd.authenticate({"Cookie": "session=sess-bob-abcdef"})
    assert (await fwd.authenticate(ALICE)).identity == "alice"  # cached: never refused
