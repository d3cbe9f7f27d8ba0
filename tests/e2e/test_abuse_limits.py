"""Limits per identity and per client address, attack by attack, through real sockets against the
simulator: the attacker reaches its own bound (and the gateway stays within it), everyone else is
still served, and the hub's counts return to nothing once the sessions are gone.

Client addresses: the gateway trusts 127.0.0.1 as a reverse proxy here, so each test client
names its address in ``X-Forwarded-For`` (and ``tests/web/test_clientaddr.py`` shows that a
peer that is not trusted cannot do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.conftest import make_config
from tests.e2e.test_security import ALICE, BOB, Secure, with_rules
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClientError
from watchgw.config import Config
from watchgw.sim import Simulator

SECRETS = "api/v1/secrets"
ATTACKER = {"X-Forwarded-For": "203.0.113.9"}
OTHER = {"X-Forwarded-For": "198.51.100.7"}


def limited_config(sim_url: str, *, mode: str = "bearer", **limits: Any) -> Config:
    config = make_config(
        sim_url,
        server={"trusted_proxies": ["127.0.0.1"]},
        auth={"mode": mode, "cache_ttl_s": 0, "recheck_s": 3600, "failures_per_minute": 20},
        limits={"grace_period_s": 0.2, "session_ttl_s": 0.3, **limits},
    )
    return fast_upstream(config, token="tok-gateway-0123456789")


@pytest.fixture
async def stack_factory() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as exits:

        async def start(config_of: Callable[[str], Config]) -> Secure:
            rules: list[Any] = []
            sim, app, url = await exits.enter_async_context(
                sim_and_gateway(config_of, prepare=lambda sim: rules.append(with_rules(sim)))
            )
            secure = Secure(sim, rules[0], url, app, [])
            exits.push_async_callback(secure.close_clients)
            return secure

        yield start


async def refused(call: Any) -> tuple[int, str]:
    with pytest.raises(WatchClientError) as caught:
        await call
    return caught.value.status, caught.value.code


async def end_all(stack: Secure) -> None:
    """Close every client; the sessions end after session_ttl_s and the counts must be gone."""
    await stack.close_clients()
    stack.clients.clear()
    await stack.hub.wait_for(lambda: not stack.hub.sessions and not stack.hub.usage, timeout=5.0)


async def test_one_user_at_its_stream_limit_leaves_others_served(stack_factory: Callable[..., Any]) -> None:
    stack: Secure = await stack_factory(lambda url: limited_config(url, max_clients_per_identity=5))
    stack.rules.allow("alice", resource="secrets")
    stack.rules.allow("bob", resource="secrets")
    for _ in range(5):
        await stack.client(ALICE)
    for _ in range(3):  # bounded: every further tab of alice is refused, none is counted
        extra = await stack.client(ALICE, connect=False)
        assert await refused(extra.connect()) == (429, "too_many_clients_for_identity")
    assert stack.hub.usage_of("alice") == (5, 0, 0)
    assert len(stack.hub.sessions) == 5
    bob = await stack.client(BOB)
    channel = await bob.subscribe(resourceType=SECRETS, namespace="default")
    await bob.wait_synced(channel)
    # A tab of alice that reconnects with its own cid is no new session: still served.
    again = await stack.client(ALICE, connect=False, client_id=stack.clients[0].client_id)
    await again.connect()
    await end_all(stack)
    assert stack.hub.usage_of("alice") is None


async def test_subscriptions_and_channels_per_identity(stack_factory: Callable[..., Any]) -> None:
    stack: Secure = await stack_factory(
        lambda url: limited_config(
            url, max_subscriptions_per_client=3, max_subscriptions_per_identity=4, max_channels_per_identity=3
        )
    )
    stack.rules.allow("alice", resource="secrets")
    stack.rules.allow("bob", resource="secrets")
    bob = await stack.client(BOB)
    shared = await bob.subscribe(resourceType=SECRETS, namespace="shared")
    tab1 = await stack.client(ALICE)
    tab2 = await stack.client(ALICE)
    own = [await tab1.subscribe(resourceType=SECRETS, namespace=f"alice-{i}") for i in range(3)]
    assert stack.hub.usage_of("alice") == (2, 3, 3)
    # A fourth channel of her own would be a new upstream watch: refused; joining bob's is free.
    assert await refused(tab2.subscribe(resourceType=SECRETS, namespace="alice-3")) == (
        429,
        "too_many_channels_for_identity",
    )
    assert await tab2.subscribe(resourceType=SECRETS, namespace="shared") == shared
    assert stack.hub.usage_of("alice") == (2, 4, 4)
    # Four subscriptions across her tabs: the next is refused, even to an open channel.
    assert await refused(tab2.subscribe(resourceType=SECRETS, namespace="alice-0")) == (
        429,
        "too_many_subscriptions_for_identity",
    )
    channels_before = len(stack.hub.channels)
    # Bob is not affected: he opens new channels.
    for i in range(2):
        await bob.subscribe(resourceType=SECRETS, namespace=f"bob-{i}")
    assert len(stack.hub.channels) == channels_before + 2
    # Unsubscribing gives the subscription back, exactly once (twice is a no-op).
    await tab1.unsubscribe(own[0])
    with contextlib.suppress(WatchClientError):  # 404 or ok, as the web layer decides
        await tab1.unsubscribe(own[0])
    assert stack.hub.usage_of("alice") == (2, 3, 3)
    await tab2.subscribe(resourceType=SECRETS, namespace="bob-0")  # open already: allowed
    assert stack.hub.usage_of("alice") == (2, 4, 4)
    # A tab starting over parks its subscriptions: they still count until taken up again.
    restart = await stack.client(ALICE, connect=False, client_id=tab1.client_id)
    await restart.connect()
    assert stack.hub.usage_of("alice") == (2, 4, 4)
    assert await restart.subscribe(resourceType=SECRETS, namespace="alice-1") == own[1]  # taken up
    assert stack.hub.usage_of("alice") == (2, 4, 4)
    await end_all(stack)
    assert stack.hub.usage == {}


async def test_anonymous_fresh_cids_are_one_address(stack_factory: Callable[..., Any]) -> None:
    """The issue's attack without authentication: fresh cids dodged the per-client rate limit and
    opened thousands of upstream watches. Now a client address is the identity."""
    stack: Secure = await stack_factory(
        lambda url: limited_config(
            url,
            mode="none",
            max_clients_per_identity=4,
            max_channels_per_identity=10,
            subscribe_rate_per_s=1000,
            subscribe_burst=1000,
        )
    )
    quota = "addr:203.0.113.9"
    opened = 0
    refusals: list[tuple[int, str]] = []
    for n in range(40):  # bounded: each round a fresh cid, a fresh namespace
        client = await stack.client(ATTACKER, connect=False)
        try:
            await client.connect()
        except WatchClientError as exc:
            refusals.append((exc.status, exc.code))
            continue
        for i in range(5):
            try:
                await client.subscribe(resourceType=SECRETS, namespace=f"ns-{n}-{i}")
                opened += 1
            except WatchClientError as exc:
                refusals.append((exc.status, exc.code))
    assert opened == 10
    assert sorted(set(refusals)) == [
        (429, "too_many_channels_for_identity"),
        (429, "too_many_clients_for_identity"),
    ]
    assert refusals.count((429, "too_many_clients_for_identity")) == 36
    assert len(stack.hub.channels) == 10
    assert stack.hub.usage_of(quota) == (4, 10, 10)
    # Another address opens streams and channels as if nothing happened.
    other = await stack.client(OTHER)
    channel = await other.subscribe(resourceType=SECRETS, namespace="mine")
    await other.wait_synced(channel)
    assert stack.hub.usage_of("addr:198.51.100.7") == (1, 1, 1)
    await end_all(stack)


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    stack_factory: Callable[..., Any],
) -> None:
    def config_of(url: str) -> Config:  # no server.trusted_proxies: the peer is the client
        limits = {"max_clients_per_identity": 2, "session_ttl_s": 0.3, "grace_period_s": 0.2}
        return fast_upstream(make_config(url, limits=limits), token="tok-gateway-0123456789")

    stack: Secure = await stack_factory(config_of)
    for i in range(2):
        await stack.client({"X-Forwarded-For": f"192.0.2.{i}"})
    spoofer = await stack.client({"X-Forwarded-For": "192.0.2.99", "X-Real-IP": "192.0.2.98"}, connect=False)
    assert await refused(spoofer.connect()) == (429, "too_many_clients_for_identity")
    assert stack.hub.usage_of("addr:127.0.0.1") == (2, 0, 0)
    await end_all(stack)


def count_other_requests(sim: Simulator) -> list[int]:
    """Requests that are neither LIST nor WATCH (reviews, rejected tokens) reaching the simulator."""
    seen = [0]
    original = sim.request_started

    def counting(verb: Any) -> None:
        if verb == "other":
            seen[0] += 1
        original(verb)

    sim.request_started = counting  # type: ignore[method-assign]
    return seen


async def test_bad_tokens_are_rate_limited_per_address(stack_factory: Callable[..., Any]) -> None:
    stack: Secure = await stack_factory(limited_config)
    stack.rules.allow("bob", resource="secrets")
    reviews = count_other_requests(stack.sim)
    statuses: dict[int, int] = {}
    retry_after: set[str] = set()
    semaphore = asyncio.Semaphore(50)

    async with aiohttp.ClientSession() as http:

        async def attempt(i: int) -> None:
            headers = {**ATTACKER, "Authorization": f"Bearer bad-token-{i:06d}-0123456789"}
            async with (
                semaphore,
                http.get(f"{stack.url}/api/watch/stream?cid=attacker{i:06d}", headers=headers) as r,
            ):
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status == 429:
                    retry_after.add(r.headers["Retry-After"])
                    assert (await r.json())["error"]["code"] == "rate_limited"

        with capture_logs() as logs:
            await asyncio.gather(*(attempt(i) for i in range(2000)))
    assert sum(statuses.values()) == 2000
    assert set(statuses) == {401, 429}
    # 20 per minute, a few more refilled while the attack ran (one every 3 s).
    assert statuses[401] <= 25
    assert reviews[0] <= 25
    assert all(int(value) >= 1 for value in retry_after)
    failed = [entry for entry in logs if entry["event"] == "auth.failed"]
    assert len(failed) == statuses[401]
    assert {entry["address"] for entry in failed} == {"203.0.113.9"}
    assert {entry["reason"] for entry in failed} == {"token_rejected"}
    assert not [entry for entry in logs if "bad-token" in repr(entry)]
    assert len([entry for entry in logs if entry["event"] == "auth.rate_limited"]) == 1
    # Another address authenticates, subscribes and is served.
    bob = await stack.client({**BOB, **OTHER})
    channel = await bob.subscribe(resourceType=SECRETS, namespace="default")
    await bob.wait_synced(channel)
    # Missing credentials count as failures too (no review needed to refuse them).
    async with aiohttp.ClientSession() as http:
        codes = []
        for i in range(25):
            async with http.get(
                f"{stack.url}/api/watch/stream?cid=nocreds{i:04d}", headers={"X-Forwarded-For": "192.0.2.1"}
            ) as r:
                codes.append(r.status)
    assert codes[:20] == [401] * 20
    assert set(codes[20:]) == {429}


async def test_known_user_is_not_locked_out_by_failures_from_its_address(
    stack_factory: Callable[..., Any],
) -> None:
    """A user whose identity is cached keeps working behind an address that is rate limited."""
    stack: Secure = await stack_factory(lambda url: with_auth(limited_config(url), cache_ttl_s=30))
    stack.rules.allow("alice", resource="secrets")
    alice = await stack.client({**ALICE, **ATTACKER})
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            headers = {**ATTACKER, "Authorization": f"Bearer bad-token-{i:06d}-0123456789"}
            async with http.get(f"{stack.url}/api/watch/stream?cid=attacker{i:06d}", headers=headers):
                pass
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
    # A new tab of hers with the same (cached) token too; a token not seen yet is refused.
    await stack.client({**ALICE, **ATTACKER})
    late = await stack.client({**BOB, **ATTACKER}, connect=False)
    assert await refused(late.connect()) == (429, "rate_limited")


def with_auth(config: Config, **auth: Any) -> Config:
    return dataclasses.replace(config, auth=dataclasses.replace(config.auth, **auth))
