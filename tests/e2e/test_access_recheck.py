"""Bearer access end to end against the simulator's RBAC: shared reviews and prompt revocation.

A subscribe whose client disconnects mid-review must not fail the other tabs waiting on the same
review; a revocation must reach held subscriptions within one recheck round even while the
decision cache (``cache_ttl_s``) still holds the old allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.e2e.test_security import ALICE, BOB, SECRETS, bearer_config, with_rules
from tests.stacks import sim_and_gateway
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.config import Config
from watchgw.kube.client import KubeClient
from watchgw.kube.reviews import KubeReviews
from watchgw.kube.types import WatchTarget
from watchgw.sim import Simulator, running_simulator
from watchgw.sim.rbac import Rules
from watchgw.web.access import BearerAccess, Caller
from watchgw.web.app import make_app
from watchgw.web.keys import ACCESS, HUB
from watchgw.web.recheck import recheck_once
from watchgw.web.server import running_app

GATEWAY_TOKEN = "tok-gateway-0123456789"


def cached_for_an_hour(sim_url: str, *, recheck_s: float = 3600) -> Config:
    config = bearer_config(sim_url, token=GATEWAY_TOKEN)
    return dataclasses.replace(
        config, auth=dataclasses.replace(config.auth, cache_ttl_s=3600, recheck_s=recheck_s)
    )


class CountingRules(Rules):
    """The simulator's RBAC, counting the access reviews asked on behalf of each user (a review
    asks two questions, ``list`` and ``watch``: counted once, by its ``watch``)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: dict[str, int] = {}

    def __call__(self, user: str, attrs: dict[str, str]) -> bool:
        if attrs.get("verb") == "watch":
            self.asked[user] = self.asked.get(user, 0) + 1
        return super().__call__(user, attrs)


@dataclasses.dataclass
class Stack:
    sim: Simulator
    rules: CountingRules
    url: str
    app: Any
    clients: list[WatchClient]

    async def client(self, headers: dict[str, str]) -> WatchClient:
        client = WatchClient(self.url, headers=headers, record=True)
        self.clients.append(client)
        await client.connect()
        return client


def counting_rules(sim: Simulator) -> CountingRules:
    with_rules(sim)  # tokens, and the gateway's own grant
    rules = CountingRules()
    rules.allow("gateway", resource="*")
    sim.authorizer = rules
    return rules


@pytest.fixture
async def stack_factory() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as exits:

        async def start(config_of: Callable[[str], Config]) -> Stack:
            made: list[CountingRules] = []
            sim, app, url = await exits.enter_async_context(
                sim_and_gateway(config_of, prepare=lambda sim: made.append(counting_rules(sim)))
            )
            stack = Stack(sim, made[0], url, app, [])
            exits.push_async_callback(lambda: asyncio.gather(*(c.close() for c in stack.clients)))
            return stack

        yield start


async def test_revocation_reaches_held_subscriptions_in_one_round_despite_the_cache(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(cached_for_an_hour)
    grant = stack.rules.allow("alice", resource="secrets", namespace="default")
    stack.rules.allow("bob", resource="secrets", namespace="default")
    tabs = [await stack.client(ALICE) for _ in range(3)]
    bob = await stack.client(BOB)
    channel = ""
    for client in (*tabs, bob):
        channel = await client.subscribe(resourceType=SECRETS, namespace="default")
        await client.wait_synced(channel)
    assert stack.rules.asked["alice"] == 1, "subscribes of one token share the cached answer"
    stack.rules.revoke(grant)
    assert await recheck_once(stack.app[HUB], stack.app[ACCESS]) == 3
    assert stack.rules.asked["alice"] == 2, "one review for the three tabs"
    for tab in tabs:
        await tab.wait_for(lambda c: c.unsubscribed.get(channel) == "forbidden")
    # The fresh answer replaced the cached allow: a new subscribe is refused without asking again.
    with pytest.raises(WatchClientError) as caught:
        await tabs[0].subscribe(resourceType=SECRETS, namespace="default")
    assert caught.value.status == 403
    assert stack.rules.asked["alice"] == 2
    stack.sim.create(SECRETS, {"metadata": {"name": "after-revoke"}}, namespace="default")
    await bob.wait_for(lambda c: "default/after-revoke" in c.objects(channel))
    assert channel not in bob.unsubscribed


async def test_recheck_loop_revokes_within_recheck_s_despite_the_cache(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(lambda url: cached_for_an_hour(url, recheck_s=0.1))
    grant = stack.rules.allow("alice", resource="secrets")
    alice = await stack.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    stack.rules.revoke(grant)
    await alice.wait_for(lambda c: c.unsubscribed.get(channel) == "forbidden", timeout=5)


# ---------------------------------------------------------------- a tab going away mid-review
class GatedReviews:
    """The real reviews against the simulator, each access review held at ``gate`` first."""

    def __init__(self, inner: KubeReviews) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.may_calls = 0

    async def who_am_i(self, token: str) -> str:
        return await self.inner.who_am_i(token)

    async def may_watch(self, token: str, target: WatchTarget) -> bool:
        self.may_calls += 1
        self.entered.set()
        await self.gate.wait()
        return await self.inner.may_watch(token, target)


class ObservedAccess(BearerAccess):
    """Bearer access that lets the test see subscribes arrive and handlers being cancelled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.authorizing = 0
        self.changed = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def authorize(self, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        self.authorizing += 1
        self.changed.set()
        try:
            await super().authorize(caller, target, channel_key)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def wait_authorizing(self, n: int) -> None:
        while self.authorizing < n:
            self.changed.clear()
            await self.changed.wait()


async def test_a_tab_disconnecting_mid_review_never_fails_the_other_tabs() -> None:
    async with running_simulator() as (sim, sim_url):
        rules = counting_rules(sim)
        rules.allow("alice", resource="secrets")
        config = bearer_config(sim_url, token=GATEWAY_TOKEN)
        kube = KubeClient(config.upstream)
        reviews = GatedReviews(KubeReviews(kube))
        access = ObservedAccess(config.auth, reviews)
        try:
            async with (
                running_app(make_app(config, access=access)) as url,
                WatchClient(url, headers=ALICE) as leaving,
                WatchClient(url, headers=ALICE) as staying,
            ):
                first = asyncio.create_task(leaving.subscribe(resourceType=SECRETS, namespace="default"))
                await reviews.entered.wait()
                second = asyncio.create_task(staying.subscribe(resourceType=SECRETS, namespace="default"))
                await access.wait_authorizing(2)  # both wait on the one review now
                first.cancel()  # the first tab's HTTP request is dropped mid-review
                with pytest.raises(asyncio.CancelledError):
                    await first
                await access.cancelled.wait()  # and aiohttp cancelled its handler
                reviews.gate.set()
                channel = await second
                await staying.wait_synced(channel)
                assert reviews.may_calls == 1
                assert rules.asked["alice"] == 1
        finally:
            await kube.close()
